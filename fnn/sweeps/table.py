"""The result of a sweep as a table: one row per member, aggregates over seeds."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np


class SweepResult(NamedTuple):
    """The sweep as a table: one row per member.

    Attributes:
      hyperparameters: ``{name: [members] array}`` — each member's hyperparameters and ``seed``.
      results: the stacked ``FitResult`` (every field with a leading [members] axis,
        histories [members, epochs]).
      chunk_size: members per compiled call, as it ran (padded to a multiple of the
        devices it was sharded over).
      calls: the compiled calls it took.
      member_epochs: the compute the sweep spent, in member-epochs: for each compiled
        call, its members (padding included) times the epochs its loop ran (under
        ``vmap`` a member that stopped rides along until the last one stops).
      rung: with ``fnn.sweeps.halving``, the rung (0-based) at which each member stopped
        ([members] ints); ``None`` otherwise.
    """

    hyperparameters: dict[str, np.ndarray]
    results: Any
    chunk_size: int = 0
    calls: int = 0
    member_epochs: int = 0
    rung: np.ndarray | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per member: hyperparameters, seed, stop epoch, best epoch, divergence,
        and the final and best value of every history entry."""
        r = self.results
        out = []
        for i in range(len(self.hyperparameters["seed"])):
            row = {k: _scalar(v[i]) for k, v in self.hyperparameters.items()}
            row |= {
                "stop_epoch": int(r.stop_epoch[i]),
                "best_epoch": int(r.best_epoch[i]),
                "diverged": bool(r.diverged[i]),
            }
            if self.rung is not None:
                row["rung"] = int(self.rung[i])
            for name, h in r.history.items():
                row[f"final_{name}"] = _last_finite(np.asarray(h[i]))
                if name != "lr" and int(r.best_epoch[i]) >= 0:
                    row[f"best_{name}"] = float(h[i][int(r.best_epoch[i])])
            out.append(row)
        return out

    def groups(self) -> list[tuple[dict[str, float], list[int]]]:
        """``(grid point, member indices)`` per grid point — the members that share every
        hyperparameter but the seed — in the order of first appearance."""
        names = [k for k in self.hyperparameters if k != "seed"]
        groups: dict[tuple, list[int]] = {}
        for i in range(len(self.hyperparameters["seed"])):
            groups.setdefault(tuple(_scalar(self.hyperparameters[k][i]) for k in names), []).append(i)
        return [(dict(zip(names, point)), members) for point, members in groups.items()]

    def aggregate(self, metric: str) -> list[dict[str, Any]]:
        """Mean, std, min and max of row field ``metric`` over seeds, per grid point (in
        the order of ``groups()``)."""
        values = [row[metric] for row in self.rows()]
        out = []
        for point, members in self.groups():
            v = [values[i] for i in members]
            out.append(
                point | {"seeds": len(v), "mean": np.mean(v), "std": np.std(v), "min": np.min(v), "max": np.max(v)}
            )
        return out

    def ensemble(self, config, x, y, **options) -> list[dict[str, Any]]:
        """Each grid point's seed ensemble scored on (x, y), next to its members' mean:
        ``fnn.ensemble(config, self, x, y, **options)`` (see :mod:`fnn.sweeps.ensemble`)."""
        from fnn.sweeps.ensemble import ensemble  # that module reads SweepResult: imported here, when called

        return ensemble(config, self, x, y, **options)

    def summary(self, metric: str = "final_loss") -> str:
        """A markdown table of ``aggregate(metric)``: one line per grid point, then how
        the members ran (members per compiled call)."""
        rows = self.aggregate(metric)
        head = [k for k in rows[0] if k not in ("seeds", "mean", "std", "min", "max")]
        lines = [
            "| " + " | ".join([*head, "seeds", f"{metric} mean ± std", "min", "max"]) + " |",
            "|" + "---|" * (len(head) + 4),
        ]
        for r in rows:
            cells = [f"{r[k]:.4g}" for k in head] + [
                str(r["seeds"]),
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                f"{r['min']:.4f}",
                f"{r['max']:.4f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        members = len(self.hyperparameters["seed"])
        if self.chunk_size:
            lines.append(
                f"\n{members} members in {self.calls} compiled call(s) of up to {self.chunk_size} members; "
                f"{self.member_epochs} member-epochs computed"
            )
        return "\n".join(lines)


def _scalar(v):
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


def _last_finite(h: np.ndarray) -> float:
    finite = h[np.isfinite(h)]
    return float(finite[-1]) if finite.size else float("nan")
