"""Population-based training as one compiled program.

PBT (Jaderberg et al., "Population Based Training of Neural Networks", 2017, §3 and
Appendix A.1 "truncation selection" and "perturb") trains a population of members and,
every ``interval`` epochs, lets the worst copy the best: each member of the bottom
``fraction`` (by the monitored value) takes the whole state of a member drawn uniformly
from the top ``fraction`` — params, optimizer state, batch-norm statistics, history —
and its hyperparameters, each multiplied by a factor drawn uniformly from ``perturb``
(*exploit*, then *explore*). fnn's hyperparameters are traced leaves, so exploiting is
a gather on the member axis and exploring a multiplication: the population size is
fixed and the whole run — a ``lax.scan`` over intervals, each a vmapped ``fit`` loop
over its epochs, then the exploit/explore step — is **one** compiled program.

Randomness comes from ``key``: the draws of interval ``i`` use ``fold_in(key, i)``, and a
member that copies another gets a fresh PRNG key for its data order and dropout,
``fold_in(parent's key, i * population + member)``. The run is deterministic given
``key`` and the seeds.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import checkpoint as checkpoint_lib
from fnn import multihost
from fnn import options as options_lib
from fnn import tensorboard as tensorboard_lib
from fnn.checks import as_key, check_bool, check_int, check_number
from fnn.distributed import member_sharding, resolve_devices
from fnn.fit import check_checkpoint_options, resolve_monitor
from fnn.loop import Loop
from fnn.losses import ranking
from fnn.programs import device_array, host_array, jit_program
from fnn.sweeps import resume as sweep_resume
from fnn.sweeps.grid_sweep import check_members, reporting, split_options
from fnn.sweeps.members import build, grid_points
from fnn.sweeps.population import advance_members, place, start_members, zeros
from fnn.train import Trainer


class PBTResult(NamedTuple):
    """What ``pbt`` returns.

    Attributes:
      hyperparameters: ``{name: [intervals, population]}`` — each member's value during
        each interval (its trajectory), and ``seed`` ([population]).
      parents: [intervals, population] ints: after interval ``i``, member ``j`` went on
        from the state of member ``parents[i, j]`` (``j`` itself when it was kept; the
        last interval keeps everyone).
      scores: [intervals, population]: the monitored value at the end of each interval.
      results: the final ``FitResult`` of every member (fields with a leading
        [population] axis; histories [population, epochs], inherited across copies).
      monitor: the history entry that ranked the members.
      maximize: whether a higher ``monitor`` is better (its declared direction).
    """

    hyperparameters: dict[str, np.ndarray]
    parents: np.ndarray
    scores: np.ndarray
    results: Any
    monitor: str
    maximize: bool

    def lineage(self, member: int) -> list[int]:
        """The member whose state ``member`` carried during each interval ([intervals])."""
        who = [int(member)]
        for i in range(self.parents.shape[0] - 2, -1, -1):
            who.append(int(self.parents[i, who[-1]]))
        return who[::-1]

    def best(self) -> int:
        """The member with the best monitored value at the end (ties: the lowest index),
        among those that did not diverge and have a finite value.

        Raises:
          ValueError: when no member qualifies (every member diverged): there is no best.
        """
        keys = np.asarray(ranking(self.scores[-1], self.maximize, ~np.asarray(self.results.diverged)))
        if not np.isfinite(keys).any():
            raise ValueError(
                f"no best member: all {keys.size} members diverged or have no finite final {self.monitor} "
                "(see results.diverged); try smaller hyperparameters or bounds= for the perturbed ones"
            )
        return int(np.argmin(keys))


@dataclasses.dataclass(frozen=True)
class _Spec:
    """The static shape of a PBT run (part of the compiled program's key)."""

    names: tuple[str, ...]  # the perturbed hyperparameters
    interval: int
    epochs: int
    replaced: int  # members replaced per interval (and the size of the top set)
    perturb: tuple[float, ...]
    bounds: tuple[tuple[str, float, float], ...]
    monitor: str
    maximize: bool  # the monitor's direction (fnn.fit.resolve_monitor)


def pbt(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    *,
    population: int | Mapping[str, Sequence[float]],
    interval: int,
    hyperparameters: Sequence[str],
    fraction: float = 0.25,
    perturb: Sequence[float] = (0.8, 1.25),
    bounds: Mapping[str, tuple[float, float]] | None = None,
    seeds: Sequence[int] | None = None,
    key: ArrayLike = 0,
    devices: int | Sequence[jax.Device] | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
    **fit_kwargs: Any,
) -> PBTResult:
    """Population-based training of ``config``'s members in one compiled program.

    Args:
      config: ``config(**hyperparameters) -> Trainer``, as for ``fnn.sweep``.
      x, y: training data, shared by all members.
      population: the number of members (all starting from ``config``'s defaults), or
        ``{name: [population] values}``: each member's starting hyperparameters.
      interval: epochs between exploit/explore steps (>= 1, < ``epochs``: the last
        interval keeps everyone, so with ``interval >= epochs`` nothing would be exploited).
      hyperparameters: the names to perturb (parameters of ``config``).
      fraction: the bottom ``fraction`` copy the top ``fraction`` (a Python or NumPy
        number, 0 < fraction <= 0.5; at least one member).
      perturb: factors; each copied hyperparameter is multiplied by one drawn uniformly
        (multiplicative, as in the paper: a hyperparameter that starts at 0 stays 0).
        Every value exploring can reach (each start times up to ``intervals - 1``
        factors, clipped to ``bounds``) must be one the configuration accepts: it is
        built at the extremes before anything runs, so a dropout rate that could grow
        past 1 is refused, naming ``bounds=`` as the remedy.
      bounds: ``{name: (low, high)}`` (a dict): clip perturbed values into these ranges.
        A finite end counts as reachable (a clipped value sits on it), so it must be a
        value the configuration accepts: ``(0, 1)`` for a dropout rate is refused.
      seeds: one int seed per member (default 0 .. population-1): init, data order, dropout.
      key: int or PRNG key of the exploit/explore draws.
      devices: shard the members over these devices (as ``sweep``; the largest number of
        them that divides the population).
      checkpoint: a file path: the run is split into compiled calls of whole intervals
        and the whole population (every member's run, hyperparameters, the intervals'
        records) is saved there atomically after each (``fnn.sweeps.resume``); its folder
        is checked before anything runs. Default ``None``: one compiled call, nothing saved.
      checkpoint_every: epochs between saves, rounded down to whole intervals (at least
        one); default every interval.
      resume: continue from ``checkpoint`` if the file exists (else start): the result is
        bit-identical to the uninterrupted run's with the same options; a file written
        for another run is refused, naming what differs. With ``progress=True`` a line
        says where the run resumed.
      tensorboard: a folder: when the run ends, one TensorBoard run per member with its
        history and hyperparameter trajectory is written there
        (``fnn.tensorboard.write_pbt``, from process 0); needs ``fnn[tensorboard]``.
      **fit_kwargs: ``fit``'s options (epochs, batch_size, validation, monitor, ...);
        ``patience`` is refused (a member's run does not stop early in PBT).
    Returns:
      a ``PBTResult``.
    Raises:
      ValueError: for bad input, before anything is compiled.
    """
    table = _initial_table(config, population, seeds)
    log = options_lib.checked_host("tensorboard", tensorboard)
    size = len(table["seed"])
    names = _check_names(config, table, hyperparameters)
    if fit_kwargs.get("patience") is not None:
        raise ValueError("patience= is not a pbt option: members do not stop early (the worst copy the best)")
    trainer = check_members(config, x, y, table, fit_kwargs, "fnn.pbt", devices)
    has_validation = fit_kwargs.get("validation") is not None
    monitor, maximize = resolve_monitor(trainer, fit_kwargs.get("monitor"), has_validation)
    spec = _Spec(
        names=names,
        interval=_interval(interval, fit_kwargs["epochs"]),
        epochs=fit_kwargs["epochs"],
        replaced=_replaced(fraction, size),
        perturb=_factors(perturb),
        bounds=_bounds(bounds, names),
        monitor=monitor,
        maximize=maximize,
    )
    _check_reachable(config, table, spec)
    intervals = -(-spec.epochs // spec.interval)
    saves = check_checkpoint_options(checkpoint, checkpoint_every, resume, spec.epochs)
    per_call = (
        intervals if checkpoint is None else max(1, (saves if checkpoint_every else spec.interval) // spec.interval)
    )
    resume = check_bool("resume", resume)
    options, arrays = split_options(fit_kwargs)
    sharding = member_sharding(_dividing(devices, size), size)
    *data, key = multihost.shared((device_array(x), device_array(y), arrays, as_key(key)), sharding)
    run = functools.partial(_program, config, options, spec, *data, place(table, sharding))
    carry, records, done = None, None, 0
    with reporting(fit_kwargs):
        if checkpoint is not None:
            shapes = jax.eval_shape(functools.partial(run, count=1), None, key, host_array(0, int))
            settings = {"entry": "fnn.pbt", "spec": repr(spec), "per call": per_call}
            settings["key"] = np.asarray(jax.random.key_data(key)).tolist()
            description = sweep_resume.describe(table, shapes[0][0], x, y, settings, fit_kwargs, trainer)
            if resume and os.path.exists(checkpoint):
                carry, records, done = _restore(checkpoint, description, shapes, sharding)
                if fit_kwargs.get("progress"):
                    print(f"resumed from {checkpoint}: {done} of {intervals} intervals done", flush=True)
        while done < intervals:
            count = min(per_call, intervals - done)
            carry, record = run(carry, key, host_array(done, int), count)  # the default int, as i
            records, done = _joined(records, jax.device_get(multihost.collect(record))), done + count
            if checkpoint is not None:
                sweep_resume.save(checkpoint, {"carry": carry, "records": records}, description, {"done": done})
    trajectory, parents, scores = cast(tuple, records)
    result = PBTResult(
        hyperparameters=trajectory | {"seed": table["seed"]},
        parents=parents,
        scores=scores,
        results=jax.device_get(multihost.collect(cast(tuple, carry)[0].result)),
        monitor=monitor,
        maximize=maximize,
    )
    if log is not None:
        with multihost.process_zero_writes("fnn.pbt tensorboard") as writing:
            if writing:
                tensorboard_lib.write_pbt(log, result, interval=spec.interval)
    return result


def _joined(records, new):
    """The intervals' records so far (``None``: none yet) followed by ``new``'s (NumPy)."""
    new = jax.tree.map(np.asarray, new)
    return new if records is None else jax.tree.map(lambda a, b: np.concatenate([a, b]), records, new)


def _restore(path, description: dict, shapes, sharding):
    """``(carry, records, intervals done)`` saved at ``path`` for the run ``description``;
    ``shapes``: those of one interval's ``_run`` (its carry and records)."""
    done = sweep_resume.load(path, description)["done"]
    carry, record = shapes
    records = jax.tree.map(lambda r: np.zeros((done, *r.shape[1:]), r.dtype), record)
    tree = checkpoint_lib.restore(path, {"carry": zeros(carry), "records": records})
    carry = multihost.distribute(tree["carry"], sharding)
    return carry, jax.device_get(tree["records"]), done


def _run(config: Callable, options: tuple, spec: _Spec, x, y, arrays: dict, members: dict, carry, key, first, count):
    """Intervals ``first`` .. ``first + count - 1`` of a PBT run, compiled (``count``
    static): from ``carry`` = (every member's loop carry, hyperparameters), or, for
    ``None``, every member from its start; each interval advances the population to its
    end, then exploits and explores.

    Returns:
      ``(carry, (hyperparameters, parents, scores))``: the new carry, and each interval's
      hyperparameters ``{name: [count, population]}``, parents and monitored values.
    """
    size = members["seed"].shape[0]
    if carry is None:
        hyper = {k: v for k, v in members.items() if k != "seed"}
        loops = start_members(config, options, x, y, arrays, members)
    else:
        loops, hyper = carry

    def advance(hyper: dict, loops: Loop, end) -> Loop:  # the population engine, with this interval's hyperparameters
        return advance_members(config, options, x, y, arrays, hyper | {"seed": members["seed"]}, loops, end)

    def interval(carry, i):
        loops, hyper = carry
        end = jnp.minimum((i + 1) * spec.interval, spec.epochs).astype(jnp.int32)
        loops = advance(hyper, loops, end)
        scores = loops.result.history[spec.monitor][jnp.arange(size), end - 1]
        parents = _exploit(spec, scores, loops.result.diverged, jax.random.fold_in(key, i))
        parents = jnp.where(i == intervals - 1, jnp.arange(size), parents)
        new_loops, new_hyper = _explore(spec, loops, hyper, parents, jax.random.fold_in(key, i), i)
        return (new_loops, new_hyper), (hyper, parents, scores)

    intervals = -(-spec.epochs // spec.interval)
    return jax.lax.scan(interval, (loops, hyper), first + jnp.arange(count))


_program = jit_program(_run, ("config", "options", "spec", "count"))


def _exploit(spec: _Spec, scores, diverged, key) -> jax.Array:
    """Truncation selection: [population] parent indices — each of the bottom
    ``spec.replaced`` members draws one of the top ``spec.replaced``; the others keep
    their own. Ranked by ``scores`` in the monitor's direction (``fnn.losses.ranking``:
    non-finite or diverged last; ties by member index)."""
    size = scores.shape[0]
    order = jnp.argsort(ranking(scores, spec.maximize, ~diverged), stable=True)
    top, bottom = order[: spec.replaced], order[size - spec.replaced :]
    chosen = top[jax.random.randint(jax.random.fold_in(key, 0), (spec.replaced,), 0, spec.replaced)]
    return jnp.arange(size).at[bottom].set(chosen)


def _explore(spec: _Spec, loops: Loop, hyper: dict, parents, key, i):
    """Copy each parent's state and hyperparameters; a member that copied gets a fresh
    PRNG key and its perturbed hyperparameters multiplied by factors drawn from
    ``spec.perturb`` (then clipped to ``spec.bounds``)."""
    size = parents.shape[0]
    copied = parents != jnp.arange(size)
    loops = jax.tree.map(lambda a: a[parents], loops)
    state = loops.result.train_state
    fresh = jax.vmap(jax.random.fold_in)(state.key, i * size + jnp.arange(size))
    data = jnp.where(copied[:, None], jax.random.key_data(fresh), jax.random.key_data(state.key))
    state = state._replace(key=jax.random.wrap_key_data(data, impl=jax.random.key_impl(state.key)))
    loops = loops._replace(result=loops.result._replace(train_state=state))
    draws = jax.random.randint(jax.random.fold_in(key, 1), (size, len(spec.names)), 0, len(spec.perturb))
    factors = jnp.asarray(spec.perturb, jnp.result_type(float))[draws]
    low_high = {name: (low, high) for name, low, high in spec.bounds}
    new = {k: v[parents] for k, v in hyper.items()}
    for j, name in enumerate(spec.names):
        value = new[name] * factors[:, j]
        if name in low_high:
            value = jnp.clip(value, *low_high[name])
        new[name] = jnp.where(copied, value, new[name])
    return loops, new


def _initial_table(config: Callable, population, seeds) -> dict[str, np.ndarray]:
    """The members' starting hyperparameters and seeds: ``{name: [population]}`` + seed."""
    if isinstance(population, Mapping):
        table = grid_points(config, dict(population), product=False, argument="population")
        size = len(next(iter(table.values())))
    else:
        size, table = check_int("population", population), {}
    if size < 2:
        raise ValueError(f"population must have at least 2 members; got {size}")
    seed_values = np.arange(size) if seeds is None else np.asarray(seeds).reshape(-1)
    if seed_values.shape != (size,) or not np.issubdtype(seed_values.dtype, np.integer):
        raise ValueError(f"seeds must be {size} int seeds, one per member; got {seeds!r}")
    return table | {"seed": seed_values}


def _check_names(config: Callable, table: dict, names: Sequence[str]) -> tuple[str, ...]:
    """The perturbed hyperparameters; those not in ``table`` start at config's defaults."""
    if isinstance(names, str) or not names:
        raise ValueError(f"hyperparameters must be a non-empty list of names; got {names!r}")
    parameters = inspect.signature(config).parameters
    size = len(table["seed"])
    for name in names:
        if name not in parameters:
            raise ValueError(f"hyperparameters: {name!r} is not a parameter of the configuration ({list(parameters)})")
        if name not in table:
            default = parameters[name].default
            if not isinstance(default, (int, float)) or isinstance(default, bool):
                raise ValueError(
                    f"hyperparameters: {name!r} has no numeric default in the configuration; give its starting "
                    f"values in population={{{name!r}: [...]}}"
                )
            table[name] = np.full(size, float(default))
    return tuple(names)


def _interval(interval, epochs: int) -> int:
    """``interval`` checked: an int >= 1 below ``epochs`` (else PBT never exploits)."""
    interval = check_int("interval", interval)
    if interval >= epochs:
        raise ValueError(
            f"interval must be < epochs: members are exploited after every interval but the last, so interval="
            f"{interval} with epochs={epochs} would never exploit (that is fnn.sweep)"
        )
    return interval


def _replaced(fraction, size: int) -> int:
    """Members replaced per interval: ``fraction`` of ``size``, at least one."""
    return max(1, int(check_number("fraction", fraction, 0, 0.5, low_open=True) * size))


def _factors(perturb) -> tuple[float, ...]:
    try:
        factors = tuple(float(f) for f in perturb)
    except (TypeError, ValueError):
        raise ValueError(f"perturb must be a sequence of positive factors; got {perturb!r}") from None
    if not factors or not all(np.isfinite(f) and f > 0 for f in factors):
        raise ValueError(f"perturb must be a non-empty sequence of positive, finite factors; got {perturb!r}")
    return factors


def _bounds(bounds, names: tuple[str, ...]) -> tuple[tuple[str, float, float], ...]:
    """``bounds`` checked: ``(name, low, high)`` for each perturbed name given."""
    if bounds is None:
        return ()
    if not isinstance(bounds, Mapping):
        raise ValueError(f"bounds must be a dict {{name: (low, high)}} or None; got {type(bounds).__name__} {bounds!r}")
    out = []
    for name, pair in bounds.items():
        if name not in names:
            raise ValueError(f"bounds: {name!r} is not one of the perturbed hyperparameters {list(names)}")
        try:
            low, high = (float(v) for v in pair)
        except (TypeError, ValueError):
            raise ValueError(f"bounds[{name!r}] must be a pair (low, high); got {pair!r}") from None
        if not low <= high:
            raise ValueError(f"bounds[{name!r}] must have low <= high; got {pair!r}")
        out.append((name, low, high))
    return tuple(out)


def _check_reachable(config: Callable, table: dict, spec: _Spec) -> None:
    """Build the configuration at the extreme values exploring can give each perturbed
    hyperparameter (:func:`_reach`), the others at member 0's starting values (the
    constructors check each argument on its own): under the trace those values would
    skip the constructors' checks, and a dropout rate of 1.2 would train.

    Raises:
      ValueError: naming the hyperparameter, the value it can reach and why the
        configuration refuses it, with ``bounds=`` as the remedy.
    """
    explores = -(-spec.epochs // spec.interval) - 1
    first = {k: float(v[0]) for k, v in table.items() if k != "seed"}
    limits = {name: (low, high) for name, low, high in spec.bounds}
    for name in spec.names:
        for value in _reach(table[name], spec.perturb, explores, limits.get(name, (-np.inf, np.inf))):
            try:
                build(config, first | {name: value}, where=f"{name}={value:.4g}")
            except ValueError as error:
                raise ValueError(
                    f"hyperparameters: exploring can take {name!r} to {value:.4g} (factors {spec.perturb}, up to "
                    f"{explores} times, clipped to its bounds): {error}; give bounds={{{name!r}: (low, high)}} "
                    "inside the range the configuration accepts"
                ) from None


def _reach(starts: np.ndarray, perturb: tuple[float, ...], explores: int, bounds: tuple[float, float]) -> list[float]:
    """The lowest and highest value exploring can give a hyperparameter that starts at
    ``starts``: ``start * f_1 * ... * f_k`` for ``1 <= k <= explores`` factors of
    ``perturb``, clipped to ``bounds`` after each (a clipped value goes on from a finite
    bound, so those count as starts too). A range that holds every reachable value."""
    low, high = bounds
    points = np.concatenate([np.asarray(starts, float), [b for b in bounds if np.isfinite(b)]])
    with np.errstate(over="ignore", invalid="ignore"):  # many explores: inf, and 0 * inf
        fmin, fmax = np.float64(min(perturb)), np.float64(max(perturb))
        factors = np.array([min(fmin, fmin**explores), max(fmax, fmax**explores)])
        values = np.where(points[:, None] == 0, 0.0, points[:, None] * factors)
    values = np.clip(values, low, high)
    return [float(values.min()), float(values.max())]


def _dividing(devices, size: int):
    """The first ``k`` of ``devices`` (default every process's) for the largest ``k`` that
    divides ``size``.

    Raises:
      ValueError: in a multi-process run, when those devices leave a process out (each
        process takes part in every call): the population must divide evenly over them.
    """
    available = resolve_devices(devices, jax.devices())
    chosen = next(available[:k] for k in range(len(available), 0, -1) if size % k == 0)
    left_out = sorted({d.process_index for d in available} - {d.process_index for d in chosen})
    if left_out:
        raise ValueError(
            f"population of {size} members does not divide over the {len(available)} devices of every process "
            f"(process(es) {left_out} would get none): use a multiple of {len(available)} members, or devices="
        )
    return chosen
