"""Many runs as one program: seeds × a hyperparameter grid, one ``jax.vmap``-ed ``fit``.

A sweep takes a *configuration*: a function whose keyword arguments are the swept
hyperparameters and which returns a ``Trainer``::

    def config(lr=1e-3, l2=0.0, dropout=0.0):
        model = fnn.mlp([64, 32, 10], dropout=dropout)
        return fnn.Trainer(model, fnn.adam(lr), fnn.cross_entropy, regularizer=fnn.l2(l2))

    table = fnn.sweep(config, x, y, seeds=8, grid={"lr": [1e-3, 1e-2]}, epochs=20, batch_size=32)
    print(table.summary("val_accuracy"))

Because fnn's hyperparameters are pytree leaves, ``config`` called on traced values
builds a Trainer whose numbers are traced: every member (grid point × seed) runs the same
compiled program, vmapped over the member axis. Members run in chunks of at most
``chunk_size`` per compiled call (the same program serves every chunk; a last, smaller
chunk is padded by repeating members and the extra results dropped). With several
devices, each chunk's member axis is sharded over them (see ``fnn.distributed``).

Each member's seed is its seed index ``s`` (``0 .. seeds-1``, or the given seed values),
so member (grid point g, seed s) matches ``fit(config(**g), x, y, key=s, ...)`` run alone
to float32 rounding (the tests check ``rtol=1e-5``): under ``vmap`` XLA batches the
matmuls and may add up sums in another order, so the numbers are not bit-identical.
"""

from __future__ import annotations

import functools
import inspect
import itertools
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import progress as progress_lib
from fnn.checks import check_int
from fnn.distributed import member_sharding
from fnn.fit import check_fit, fit
from fnn.train import Trainer


class SweepResult(NamedTuple):
    """The sweep as a table: one row per member.

    Attributes:
      hyperparameters: ``{name: [members] array}`` — each member's hyperparameters and ``seed``.
      results: the stacked ``FitResult`` (every field with a leading [members] axis,
        histories [members, epochs]).
    """

    hyperparameters: dict[str, np.ndarray]
    results: Any

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
            for name, h in r.history.items():
                row[f"final_{name}"] = _last_finite(np.asarray(h[i]))
                if name != "lr" and int(r.best_epoch[i]) >= 0:
                    row[f"best_{name}"] = float(h[i][int(r.best_epoch[i])])
            out.append(row)
        return out

    def aggregate(self, metric: str) -> list[dict[str, Any]]:
        """Mean, std, min and max of row field ``metric`` over seeds, per grid point."""
        names = [k for k in self.hyperparameters if k != "seed"]
        groups: dict = {}
        for row in self.rows():
            groups.setdefault(tuple(row[k] for k in names), []).append(row[metric])
        return [
            dict(zip(names, point))
            | {"seeds": len(v), "mean": np.mean(v), "std": np.std(v), "min": np.min(v), "max": np.max(v)}
            for point, v in groups.items()
        ]

    def summary(self, metric: str = "final_loss") -> str:
        """A markdown table of ``aggregate(metric)``: one line per grid point."""
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
        return "\n".join(lines)


def _scalar(v):
    v = np.asarray(v)
    return int(v) if np.issubdtype(v.dtype, np.integer) else float(v)


def _last_finite(h: np.ndarray) -> float:
    finite = h[np.isfinite(h)]
    return float(finite[-1]) if finite.size else float("nan")


def grid_points(config: Callable[..., Any], grid: dict[str, Any], product: bool = True) -> dict[str, np.ndarray]:
    """Expand ``grid`` into one array per hyperparameter, one entry per grid point.

    Args:
      config: the configuration function; every grid key must be one of its parameters.
      grid: ``{name: values}``; 1-D sequences of numbers.
      product: Cartesian product of the value lists (default), or zip them (equal lengths).
    Returns:
      ``{name: [points] float array}``.
    """
    parameters = inspect.signature(config).parameters
    for name in grid:
        if name not in parameters:
            raise ValueError(
                f"grid key {name!r} is not a hyperparameter of the configuration; it takes {list(parameters)}"
            )
    values = {k: _grid_values(k, v) for k, v in grid.items()}
    if not values:
        return {}
    if product:
        combos = list(itertools.product(*values.values()))
        return {k: np.array([c[i] for c in combos]) for i, k in enumerate(values)}
    lengths = {k: v.size for k, v in values.items()}
    if len(set(lengths.values())) > 1:
        raise ValueError(f"grid arrays must have equal lengths when product=False (zip); got {lengths}")
    return values


def _grid_values(name: str, values) -> np.ndarray:
    """One grid entry as a 1-D float array: numbers only, finite, at least one."""
    try:
        v = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"grid[{name!r}] must be a sequence of numbers; got {values!r}") from None
    if v.size == 0:
        raise ValueError(f"grid[{name!r}] must list at least one value")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"grid[{name!r}] must hold finite numbers; got {v.tolist()}")
    return v


def check_configurations(config: Callable[..., Trainer], table: dict[str, np.ndarray]) -> Trainer:
    """Build the configuration once at every grid point of ``table``, with concrete values.

    Under the sweep's ``vmap`` the configuration is built from traced values, which skip
    the constructors' range checks; building it here first makes those checks run.

    Returns:
      the Trainer of the first member (for the data checks).
    Raises:
      ValueError: naming the grid point (every key and value) that the configuration
        refuses, and why; or a configuration that does not return an fnn.Trainer.
    """
    names = [k for k in table if k != "seed"]
    points = dict.fromkeys(tuple(float(table[k][i]) for k in names) for i in range(len(table["seed"])))
    trainers = [_build(config, dict(zip(names, point))) for point in points]
    return trainers[0]


def _build(config: Callable, hyperparameters: dict) -> Trainer:
    try:
        trainer = config(**hyperparameters)
    except (TypeError, ValueError) as error:
        raise ValueError(f"grid point {hyperparameters} is refused by the configuration: {error}") from None
    if not isinstance(trainer, Trainer):
        raise ValueError(
            f"config must return an fnn.Trainer; at grid point {hyperparameters} it returned {type(trainer).__name__}"
        )
    return trainer


def members(
    config: Callable[..., Trainer], grid: dict[str, Any], seeds: int | Sequence[int], product: bool = True
) -> dict[str, np.ndarray]:
    """The sweep's members: grid points × seeds, as ``{name: [members]}`` plus ``seed``."""
    seed_values = (
        np.arange(check_int("seeds", seeds)) if isinstance(seeds, (int, np.integer)) else np.asarray(seeds).reshape(-1)
    )
    if seed_values.size == 0 or not np.issubdtype(seed_values.dtype, np.integer):
        raise ValueError(f"seeds must be a count >= 1 or a non-empty sequence of int seeds; got {seeds!r}")
    points = grid_points(config, grid, product)
    n_points = len(next(iter(points.values()))) if points else 1
    table = {k: np.repeat(v, seed_values.size) for k, v in points.items()}
    table["seed"] = np.tile(seed_values, n_points)
    return table


def sweep(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    *,
    seeds: int | Sequence[int] = 1,
    grid: dict[str, Any] | None = None,
    product: bool = True,
    chunk_size: int | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    **fit_kwargs: Any,
) -> SweepResult:
    """Train every member of seeds × grid with one vmapped, compiled ``fit``.

    Args:
      config: ``config(**hyperparameters) -> Trainer`` (see the module docstring).
      x, y: training data, shared by all members.
      seeds: number of seeds (0..seeds-1) or a sequence of int seeds.
      grid: ``{hyperparameter: values}``; keys must be parameters of ``config``.
      product: Cartesian product of the grid (default) or zip of equal-length lists.
      chunk_size: at most this many members per compiled call (bounds memory); default all.
      devices: shard each chunk's members over these devices: ``None`` (all local
        devices), a count (the first that many) or a list; ``[jax.devices()[0]]`` or ``1``
        runs on one. See ``fnn.distributed.member_sharding``.
      **fit_kwargs: passed to ``fit`` (epochs, batch_size, validation, patience, ...).
        ``key``, ``train_state`` and checkpoints are per-run options and are refused here.
        Everything ``fit`` checks is checked first, eagerly (``fnn.fit.check_fit``),
        and the configuration is built once at every grid point with concrete values
        (``check_configurations``), so a sweep refuses what ``fit`` refuses.
    Returns:
      a ``SweepResult`` with one row per member.
    Raises:
      ValueError: for bad input, before anything is compiled; a refused grid point is
        named with its keys and values.
    """
    for name in ("key", "train_state", "checkpoint", "checkpoint_every", "resume"):
        if name in fit_kwargs:
            raise ValueError(f"{name}= is not a sweep option: members take their keys from seeds")
    table = members(config, grid or {}, seeds, product)
    check_fit(check_configurations(config, table), x, y, key=int(table["seed"][0]), **fit_kwargs)
    if fit_kwargs.get("progress"):
        progress_lib.start()
    n = len(table["seed"])
    chunk = n if chunk_size is None else check_int("chunk_size", chunk_size)
    sharding = member_sharding(devices, min(chunk, n))
    chunk = sharding.num_devices * -(-min(chunk, n) // sharding.num_devices) if sharding else min(chunk, n)
    pieces = [
        _run_chunk(config, fit_kwargs, x, y, _take(table, range(start, start + chunk), n), sharding)
        for start in range(0, n, chunk)
    ]
    results = jax.tree.map(lambda *parts: jnp.concatenate(parts)[:n], *pieces)
    return SweepResult(hyperparameters=table, results=results)


def _take(table: dict, index, n: int) -> dict:
    """Rows ``index`` of the member table (indices past the end wrap round: padding)."""
    rows = np.asarray(list(index)) % n
    return {k: v[rows] for k, v in table.items()}


_ARRAY_OPTIONS = ("validation", "params", "model_state")  # fit options passed as traced data


@functools.partial(jax.jit, static_argnames=("config", "options"))
def _run_members(config: Callable, options: tuple, x, y, arrays: dict, chunk: dict):
    """One vmapped ``fit`` over a chunk of members (compiled once per configuration).

    ``options`` are fit's static options (hashable); ``arrays`` its array-valued ones,
    shared by all members.
    """

    def one(member):
        hyper = {k: v for k, v in member.items() if k != "seed"}
        return fit(config(**hyper), x, y, key=member["seed"], **arrays, **dict(options))

    return jax.vmap(one)(chunk)


def _run_chunk(config, fit_kwargs: dict, x, y, chunk: dict, sharding):
    """Place a chunk's member table (sharded over devices if asked) and run it."""
    chunk = {k: jnp.asarray(v, jnp.int32 if k == "seed" else jnp.result_type(float)) for k, v in chunk.items()}
    if sharding is not None:
        chunk = jax.device_put(chunk, sharding)
    arrays = {k: jax.tree.map(jnp.asarray, v) for k, v in fit_kwargs.items() if k in _ARRAY_OPTIONS and v is not None}
    options = tuple(sorted((k, v) for k, v in fit_kwargs.items() if k not in _ARRAY_OPTIONS))
    for name, value in options:
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"sweep option {name}= must be a hashable (static) value; got {type(value).__name__}"
            ) from None
    return _run_members(config, options, jnp.asarray(x), jnp.asarray(y), arrays, chunk)
