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
chunk is padded by repeating members at its end and the extra results dropped).
Hyperparameters reach ``config`` as traced float scalars, so a configuration must use
them as numbers, not as Python values (``int(hidden)``, ``if lr < 1``): the sweep traces
it once abstractly first and refuses such a configuration with a ValueError. With several
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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import memory as memory_lib
from fnn import progress as progress_lib
from fnn.checks import check_int
from fnn.distributed import member_sharding, resolve_devices, warn_unused_cores
from fnn.fit import check_fit, fit
from fnn.loop import history_names
from fnn.programs import jit_program
from fnn.train import Trainer

# fit's options in a sweep (one place). Per-run options are refused: members take their
# keys from seeds. Array options are passed to the compiled program as traced data, shared
# by every member (tol and divergence_threshold too, when not None: a new value reuses
# the compiled program); every other option is static (hashable) and part of its key.
_PER_RUN_OPTIONS = ("key", "train_state", "checkpoint", "checkpoint_every", "resume")
_ARRAY_OPTIONS = ("validation", "params", "model_state", "tol", "divergence_threshold")
_SCALAR_OPTIONS = ("tol", "divergence_threshold")  # as fit's float dtype: 0.1 and np.array(0.1) share a program


class SweepResult(NamedTuple):
    """The sweep as a table: one row per member.

    Attributes:
      hyperparameters: ``{name: [members] array}`` — each member's hyperparameters and ``seed``.
      results: the stacked ``FitResult`` (every field with a leading [members] axis,
        histories [members, epochs]).
      chunk_size: members per compiled call, as it ran (padded to a multiple of the
        devices it was sharded over).
    """

    hyperparameters: dict[str, np.ndarray]
    results: Any
    chunk_size: int = 0

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
            calls = -(-members // self.chunk_size)
            lines.append(f"\n{members} members in {calls} compiled call(s) of up to {self.chunk_size} members")
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
    if not isinstance(grid, Mapping):
        raise ValueError(f"grid must be a dict {{hyperparameter: values}}; got {type(grid).__name__}: {grid!r}")
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
    the constructors' range checks; building it here first makes those checks run. It is
    then traced once abstractly (``jax.eval_shape``), as the sweep will call it, so that a
    configuration that needs its hyperparameters as Python values is refused here.

    Returns:
      the Trainer of the first member (for the data checks).
    Raises:
      ValueError: naming the grid point (every key and value) that the configuration
        refuses, and why; a configuration that does not return an fnn.Trainer; or one
        that uses hyperparameters as Python values (``int(h)``, ``if lr < 1``).
    """
    names = [k for k in table if k != "seed"]
    points = dict.fromkeys(tuple(float(table[k][i]) for k in names) for i in range(len(table["seed"])))
    trainers = [_build(config, dict(zip(names, point))) for point in points]
    _check_traceable(config, dict(zip(names, next(iter(points)))))
    return trainers[0]


def _check_traceable(config: Callable, first: dict) -> None:
    """Trace ``config`` with the hyperparameters as abstract float scalars, as the sweep does.

    ``first`` is a grid point (``{name: float}``); when the trace fails, each hyperparameter
    is traced alone (the others at ``first``) to name the ones used as Python values.
    """
    if not first:
        return
    failure = _trace_error(config, first, list(first))
    if failure is None:
        return
    culprits = [k for k in first if _trace_error(config, first, [k]) is not None] or list(first)
    if isinstance(failure, (jax.errors.JAXTypeError, jax.errors.JAXIndexError)):
        reason = "as Python values (int(), float(), if, range(), NumPy, ...)"
    else:
        reason = "in a way that fails when they are traced"
    detail = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    raise ValueError(
        f"the configuration uses hyperparameter(s) {culprits} {reason}: a sweep passes them as traced "
        f"float scalars (one compiled program for every member); sweep only numeric hyperparameters "
        f"(learning rates, l2, dropout, ...) and set the others in the configuration (grid keys: {list(first)}). "
        f"{type(failure).__name__}: {detail}"
    ) from None


def _trace_error(config: Callable, point: dict, traced: list) -> Exception | None:
    """The error tracing ``config`` at ``point`` with the ``traced`` names abstract, or None."""
    fixed = {k: v for k, v in point.items() if k not in traced}
    abstract = {k: jax.ShapeDtypeStruct((), jnp.result_type(float)) for k in traced}
    try:
        jax.eval_shape(lambda h: config(**fixed, **h), abstract)
    except (jax.errors.JAXTypeError, jax.errors.JAXIndexError, TypeError, ValueError) as error:
        return error
    return None


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
    chunk_size: int | str | None = None,
    memory_budget: int | None = None,
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
      chunk_size: at most this many members per compiled call (bounds memory); default
        all; ``"auto"``: the largest chunk whose estimated live memory fits
        ``memory_budget`` (see ``fnn.memory``). The chunk that ran is in the result.
      memory_budget: bytes for ``chunk_size="auto"`` (per device on accelerators, for all
        CPU devices together on the host); default half of the memory free now.
      devices: shard each chunk's members over these devices: ``None`` (all local
        devices), a count (the first that many) or a list; ``[jax.devices()[0]]`` or ``1``
        runs on one. See ``fnn.distributed.member_sharding``. Left at ``None`` on a single
        CPU device of a machine with more cores, the sweep warns once how to use them
        (``fnn.distributed.use_cpu_cores``).
      **fit_kwargs: passed to ``fit`` (epochs, batch_size, validation, patience, ...).
        ``key``, ``train_state`` and checkpoints are per-run options and are refused here.
        Everything ``fit`` checks is checked first, eagerly (``fnn.fit.check_fit``),
        and the configuration is built once at every grid point with concrete values
        and traced once abstractly (``check_configurations``), so a sweep refuses what
        ``fit`` refuses. ``tol`` and ``divergence_threshold`` are traced: new values
        reuse the compiled program. With ``progress=True`` each chunk prints its lines
        labelled ``chunk i/m``, summarizing only its real members (not the padding).
    Returns:
      a ``SweepResult`` with one row per member.
    Raises:
      ValueError: for bad input, before anything is compiled; a refused grid point is
        named with its keys and values.
    """
    for name in _PER_RUN_OPTIONS:
        if name in fit_kwargs:
            raise ValueError(f"{name}= is not a sweep option: members take their keys from seeds")
    table = members(config, {} if grid is None else grid, seeds, product)
    trainer = check_configurations(config, table)
    check_fit(trainer, x, y, key=int(table["seed"][0]), **fit_kwargs)
    warn_unused_cores("fnn.sweep", devices)
    n = len(table["seed"])
    chunk = _chunk_size(chunk_size, memory_budget, devices, n, trainer, x, y, fit_kwargs)
    sharding = member_sharding(devices, min(chunk, n))
    chunk = sharding.num_devices * -(-min(chunk, n) // sharding.num_devices) if sharding else min(chunk, n)
    starts = range(0, n, chunk)
    if fit_kwargs.get("progress"):
        progress_lib.start()  # the clock counts compilation too, as in fit
    program = _program(config, fit_kwargs, x, y)
    pieces = []
    try:
        for i, start in enumerate(starts):
            members_table = _place(_take(table, range(start, start + chunk), n), sharding)  # padding at the end
            if fit_kwargs.get("progress"):
                label = f"chunk {i + 1}/{len(starts)}" if len(starts) > 1 else ""
                progress_lib.start(members=min(chunk, n - start), label=label, restart_clock=False)
                pieces.append(jax.block_until_ready(program(members_table)))  # its lines before the next chunk's
            else:
                pieces.append(program(members_table))
    finally:
        if fit_kwargs.get("progress"):
            progress_lib.finish()
    results = pieces[0] if chunk == n else jax.tree.map(lambda *parts: jnp.concatenate(parts)[:n], *pieces)
    return SweepResult(hyperparameters=table, results=results, chunk_size=chunk)


def _chunk_size(chunk_size, memory_budget, devices, n: int, trainer: Trainer, x, y, fit_kwargs: dict) -> int:
    """Members per compiled call: all, the given count, or the largest that fits the budget."""
    if memory_budget is not None and chunk_size != "auto":
        raise ValueError(f"memory_budget= is used only with chunk_size='auto'; got chunk_size={chunk_size!r}")
    if chunk_size is None:
        return n
    if chunk_size != "auto":
        if isinstance(chunk_size, str):
            raise ValueError(f"chunk_size must be an int >= 1, 'auto' or None; got {chunk_size!r}")
        return check_int("chunk_size", chunk_size)
    used = resolve_devices(devices, jax.local_devices())[:n]
    budget = (
        memory_lib.DEFAULT_FRACTION * memory_lib.free_memory(used[0])
        if memory_budget is None
        else check_int("memory_budget", memory_budget)
    )
    epochs = fit_kwargs["epochs"]
    entries = len(history_names(trainer, fit_kwargs.get("validation") is not None))
    per_member = memory_lib.member_bytes(
        trainer, x, y, batch_size=fit_kwargs["batch_size"], epochs=epochs, history_entries=entries
    )
    shared = memory_lib.nbytes((jnp.asarray(x), jnp.asarray(y), fit_kwargs.get("validation")))
    return memory_lib.chunk_for_budget(per_member, shared, int(budget), n, used)


def _take(table: dict, index, n: int) -> dict:
    """Rows ``index`` of the member table (indices past the end wrap round: padding)."""
    rows = np.asarray(list(index)) % n
    return {k: v[rows] for k, v in table.items()}


def _one_chunk(config: Callable, options: tuple, x, y, arrays: dict, chunk: dict):
    """One vmapped ``fit`` over a chunk of members (compiled once per configuration).

    ``options`` are fit's static options (hashable); ``arrays`` its array-valued ones,
    shared by all members.
    """

    def one(member):
        hyper = {k: v for k, v in member.items() if k != "seed"}
        return fit(config(**hyper), x, y, key=member["seed"], **arrays, **dict(options))

    return jax.vmap(one)(chunk)


_run_members = jit_program(_one_chunk, ("config", "options"))


def _place(chunk: dict, sharding) -> dict:
    """A chunk's member table as arrays, sharded over devices if asked."""
    chunk = {k: jnp.asarray(v, jnp.int32 if k == "seed" else jnp.result_type(float)) for k, v in chunk.items()}
    return chunk if sharding is None else jax.device_put(chunk, sharding)


def _program(config, fit_kwargs: dict, x, y) -> Callable[[dict], Any]:
    """The sweep program for this configuration and options: ``run(chunk)``, compiled
    once (on the first chunk) and cached across sweeps of the same shapes.

    Array-valued fit options are passed as traced data, the others as static options.
    """
    arrays = {
        k: jnp.asarray(v, jnp.result_type(float)) if k in _SCALAR_OPTIONS else jax.tree.map(jnp.asarray, v)
        for k, v in fit_kwargs.items()
        if k in _ARRAY_OPTIONS and v is not None
    }
    options = tuple(sorted((k, v) for k, v in fit_kwargs.items() if k not in arrays))
    for name, value in options:
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"sweep option {name}= must be a hashable (static) value; got {type(value).__name__}"
            ) from None
    x, y = jnp.asarray(x), jnp.asarray(y)
    return functools.partial(_run_members, config, options, x, y, arrays)
