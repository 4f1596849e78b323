"""The result of a sweep as a table: one row per member, aggregates over seeds, and each
grid point's seed ensemble (scored by :mod:`fnn.sweeps.ensembles`)."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from fnn.sweeps import ensembles


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
      rung: with ``fnn.sweeps.successive_halving``, the rung (0-based) at which each member stopped
        ([members] ints); ``None`` otherwise.
    """

    hyperparameters: dict[str, np.ndarray]
    results: Any
    chunk_size: int = 0
    calls: int = 0
    member_epochs: int = 0
    rung: np.ndarray | None = None

    def rows(self) -> list[dict[str, Any]]:
        """One dict per member, every row with the same keys: its hyperparameters,
        ``seed``, ``stop_epoch``, ``best_epoch``, ``diverged``, ``rung`` (with halving),
        and for every history entry ``name`` its ``final_{name}`` (the last finite value;
        NaN if none) and, but for ``lr``, its ``best_{name}`` at the best epoch (NaN for a
        member without one: it diverged in its first epoch)."""
        r = self.results
        out = []
        for i in range(len(self.hyperparameters["seed"])):
            best = int(r.best_epoch[i])
            row = {k: _scalar(v[i]) for k, v in self.hyperparameters.items()}
            row |= {"stop_epoch": int(r.stop_epoch[i]), "best_epoch": best, "diverged": bool(r.diverged[i])}
            if self.rung is not None:
                row["rung"] = int(self.rung[i])
            for name, h in r.history.items():
                row[f"final_{name}"] = _last_finite(np.asarray(h[i]))
                if name != "lr":
                    row[f"best_{name}"] = float(h[i][best]) if best >= 0 else float("nan")
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
        """Row field ``metric`` over seeds, per grid point (in the order of ``groups()``).

        Args:
          metric: a key of ``rows()``, e.g. ``"final_val_accuracy"`` or ``"best_loss"``.
        Returns:
          one dict per grid point: its hyperparameters, ``seeds`` (its members),
          ``diverged`` (how many of them diverged), ``missing`` (how many have no value:
          NaN, a ``best_*`` of a member that diverged in its first epoch), and the
          ``mean``, ``std``, ``min`` and ``max`` over the members with a value (NaN if none).
        Raises:
          ValueError: for a ``metric`` that is not a key of the rows.
        """
        rows = self.rows()
        if metric not in rows[0]:
            raise ValueError(f"metric must be one of the rows' keys {list(rows[0])}; got {metric!r}")
        out = []
        for point, members in self.groups():
            values = np.array([rows[i][metric] for i in members], dtype=float)
            diverged = sum(rows[i]["diverged"] for i in members)
            counts = {"seeds": len(members), "diverged": diverged, "missing": int(np.isnan(values).sum())}
            out.append(point | counts | _statistics(values[~np.isnan(values)]))
        return out

    def ensemble(self, config, x, y, **options) -> list[dict[str, Any]]:
        """Each grid point's seed ensemble scored on (x, y), next to its members' mean:
        ``fnn.ensemble(config, self, x, y, **options)`` (see :mod:`fnn.sweeps.ensembles`)."""
        return ensembles.ensemble(config, self, x, y, **options)

    def summary(self, metric: str = "final_loss") -> str:
        """A markdown table of ``aggregate(metric)``: one line per grid point, then how
        the members ran (members per compiled call). When members diverged, a
        ``diverged`` column counts them per grid point and a line below says how many
        diverged and how many have no value (left out of mean, std, min and max)."""
        rows = self.aggregate(metric)
        counted = ["seeds", "diverged"] if any(r["diverged"] for r in rows) else ["seeds"]
        head = [k for k in rows[0] if k not in ("seeds", "diverged", "missing", "mean", "std", "min", "max")]
        lines = [
            "| " + " | ".join([*head, *counted, f"{metric} mean ± std", "min", "max"]) + " |",
            "|" + "---|" * (len(head) + len(counted) + 3),
        ]
        for r in rows:
            cells = [f"{r[k]:.4g}" for k in head] + [str(r[k]) for k in counted]
            cells += [f"{r['mean']:.4f} ± {r['std']:.4f}", f"{r['min']:.4f}", f"{r['max']:.4f}"]
            lines.append("| " + " | ".join(cells) + " |")
        members = len(self.hyperparameters["seed"])
        diverged, missing = (sum(r[k] for r in rows) for k in ("diverged", "missing"))
        if diverged or missing:
            left_out = f"; {missing} have no {metric} (left out of mean, std, min and max)" if missing else ""
            lines.append(f"\n{diverged} of {members} members diverged{left_out}")
        if self.chunk_size:
            lines.append(
                f"\n{members} members in {self.calls} compiled call(s) of up to {self.chunk_size} members; "
                f"{self.member_epochs} member-epochs computed"
            )
        return "\n".join(lines)


def _scalar(v):
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


def _statistics(values: np.ndarray) -> dict[str, float]:
    """Mean, std, min and max of ``values`` (NaN each when there is none)."""
    if not values.size:
        return dict.fromkeys(("mean", "std", "min", "max"), float("nan"))
    return {
        "mean": float(np.mean(values)),
        "std": float(np.std(values)),
        "min": float(values.min()),
        "max": float(values.max()),
    }


def _last_finite(h: np.ndarray) -> float:
    finite = h[np.isfinite(h)]
    return float(finite[-1]) if finite.size else float("nan")
