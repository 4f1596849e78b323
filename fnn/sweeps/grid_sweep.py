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

Between compiled calls every member's run is carried by ``fnn.sweeps.population``, so a
sweep may stop at epoch boundaries and go on with fewer members: ``compact_every=k``
drops the members that stopped early or diverged every ``k`` epochs, and
``schedule=fnn.halving(...)`` keeps the best ``1/eta`` after each rung
(``fnn.sweeps.successive_halving``). ``result.member_epochs`` says what was computed.

Each member's seed is its seed index ``s`` (``0 .. seeds-1``, or the given seed values),
so member (grid point g, seed s) matches ``fit(config(**g), x, y, key=s, ...)`` run alone
to float32 rounding (the tests check ``rtol=1e-5``): under ``vmap`` XLA batches the
matmuls and may add up sums in another order, so the numbers are not bit-identical.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import jax
import numpy as np
from jax.typing import ArrayLike

from fnn import memory as memory_lib
from fnn import multihost
from fnn import options as options_lib
from fnn import progress as progress_lib
from fnn import tensorboard as tensorboard_lib
from fnn.checks import check_bool, check_int, check_whole
from fnn.distributed import resolve_devices, warn_unused_cores
from fnn.fit import check_checkpoint_options, check_fit, resolve_monitor
from fnn.loop import history_names
from fnn.programs import device_array, host_array
from fnn.sweeps import resume as sweep_resume
from fnn.sweeps.members import check_configurations, members
from fnn.sweeps.population import Population
from fnn.sweeps.successive_halving import Halving, run_rungs
from fnn.sweeps.table import SweepResult
from fnn.train import Trainer


def sweep(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    *,
    seeds: int | Sequence[int] = 1,
    grid: dict[str, Any] | None = None,
    product: bool = True,
    chunk_size: int | str | None = None,
    memory_budget: int | float | None = None,
    devices: int | Sequence[jax.Device] | None = None,
    compact_every: int | None = None,
    schedule: Halving | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
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
        CPU devices together on the host): an int, or a whole float such as ``2e9``;
        default half of the memory free now.
      devices: shard each chunk's members over these devices: ``None`` (all local
        devices), a count (the first that many) or a list; ``[jax.devices()[0]]`` or ``1``
        runs on one. See ``fnn.distributed.member_sharding``. Left at ``None`` on a single
        CPU device of a machine with more cores, the sweep warns once how to use them
        (``fnn.distributed.use_cpu_cores``).
      compact_every: stop the compiled run every this many epochs and drop the members
        that stopped (early, with ``patience``, or by divergence), so that the compute
        goes to the live ones; each later call runs the live members padded to one of a
        few population sizes (``fnn.sweeps.population``). The results are those of the
        sweep without compaction; ``result.member_epochs`` says what was computed.
        Default ``None``: one call per chunk, to the end.
      schedule: ``fnn.halving(rung_epochs, eta, monitor)``: successive halving — after
        each rung of ``rung_epochs`` epochs only the best ``1/eta`` of the members go on
        (``fnn.sweeps.successive_halving``); the result's ``rung`` column says where each stopped,
        and its row holds its metrics there. Default ``None``: every member trains on.
      checkpoint: a file path: after every compiled call (each chunk, rung and interval)
        the whole population is saved there atomically (``fnn.sweeps.resume``); its
        folder is checked before anything runs. Default ``None``: nothing is saved.
      checkpoint_every: also stop the compiled run every this many epochs to save (as
        ``compact_every`` does, dropping the members that stopped: numbers as without
        it to float32 rounding). Default: save only at the calls the sweep makes anyway.
      resume: continue from ``checkpoint`` if the file exists (else start): the result
        is bit-identical to the uninterrupted sweep's; a file written for another sweep
        (members, epochs, schedule, chunk, options, data, model) is refused, naming what
        differs. With ``progress=True`` a line says where the sweep resumed.
      tensorboard: a folder: when the sweep ends, one TensorBoard run per member and the
        HParams dashboard are written there (``fnn.tensorboard.write_sweep``, from process
        0); needs ``fnn[tensorboard]``.
      **fit_kwargs: passed to ``fit`` (epochs, batch_size, validation, patience, ...).
        ``key`` and ``train_state`` are per-run options and are refused here.
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
    table = members(config, {} if grid is None else grid, seeds, product)
    log = options_lib.checked_host("tensorboard", tensorboard)
    compact = None if compact_every is None else check_int("compact_every", compact_every)
    if schedule is not None and not isinstance(schedule, Halving):
        raise ValueError(f"schedule must be fnn.halving(...) or None; got {type(schedule).__name__}")
    population = populate(config, x, y, table, chunk_size, memory_budget, devices, fit_kwargs, "fnn.sweep")
    epochs = fit_kwargs["epochs"]
    saves = check_checkpoint_options(checkpoint, checkpoint_every, resume, epochs)
    resume = check_bool("resume", resume)
    monitor = "" if schedule is None else _monitor(schedule, population, fit_kwargs)
    stops = tuple(every for every in (compact, None if checkpoint_every is None else saves) if every is not None)

    def advance(population: Population, which: np.ndarray, end: int, label: str = "") -> None:
        _advance(population, which, end, stops, label)

    with reporting(fit_kwargs):
        if checkpoint is not None:
            settings = dict(epochs=epochs, schedule=repr(schedule), compact_every=compact, checkpoint_every=saves)
            _keep_saved(population, checkpoint, resume, x, y, settings, fit_kwargs)
        rung = None
        if schedule is None:
            advance(population, np.arange(population.size), epochs)
        else:
            rung = run_rungs(population, schedule, epochs, monitor, advance)
    result = result_table(population, rung)
    if log is not None:
        with multihost.process_zero_writes("fnn.sweep tensorboard") as writing:
            if writing:
                tensorboard_lib.write_sweep(log, result)
    return result


def _advance(population: Population, which: np.ndarray, end: int, stops: tuple[int, ...], label: str) -> None:
    """Run the live members of ``which`` to epoch ``end``: in one call, or stopping at
    every multiple of each of ``stops`` (``compact_every``, ``checkpoint_every``) to drop
    the members that stopped early or diverged (compaction). The first call pads every
    chunk to a whole chunk (one program); later calls pad to the smallest population
    bucket that holds their members. Members already at ``end`` are not run again (a
    resumed sweep), and a resumed call in progress is finished first."""
    population.finish_pending(f"{label} (resumed)".strip())
    start = int(population.epochs()[which].min()) if which.size else end
    boundaries = sorted({end, *(b for every in stops for b in range(start - start % every + every, end, every))})
    for stop in boundaries:
        live = which[population.live()[which] & (population.epochs()[which] < stop)]
        if live.size:
            text = label if not stops else f"{label} to epoch {stop}".strip()
            population.run(live, stop, label=text, compact=population.loops is not None)


def _keep_saved(population: Population, path, resume: bool, x, y, settings: dict, fit_kwargs: dict) -> None:
    """Resume ``population`` from ``path`` (when asked and the file exists), and save it
    there after every compiled call from now on."""
    settings = {"entry": "fnn.sweep", **settings, "chunk": population.buckets[0]}
    description = sweep_resume.describe(
        population.table, population.carry_shapes(1), x, y, settings, fit_kwargs, population.trainer
    )
    if resume and os.path.exists(path):
        sweep_resume.restore_population(path, population, description)
        if population.progress:
            epochs = population.epochs()
            print(
                f"resumed from {path}: {population.calls} compiled calls done, members at epochs "
                f"{epochs.min()}-{epochs.max()}" + ("" if population.pending is None else ", finishing a call"),
                flush=True,
            )
    population.after_piece = lambda p: sweep_resume.save_population(path, p, description)


def _monitor(schedule: Halving, population: Population, fit_kwargs: dict) -> str:
    """The history entry that ranks a halving sweep's members (checked against the history)."""
    monitor = schedule.monitor or fit_kwargs.get("monitor")
    has_validation = fit_kwargs.get("validation") is not None
    return resolve_monitor(population.trainer, monitor, has_validation, "halving's monitor")[0]


def result_table(population: Population, rung: np.ndarray | None = None) -> SweepResult:
    """The population's results as a ``SweepResult`` (one row per member)."""
    return SweepResult(
        hyperparameters=population.table,
        results=population.results,
        chunk_size=population.buckets[0],
        calls=population.calls,
        member_epochs=population.member_epochs,
        rung=rung,
    )


@contextlib.contextmanager
def reporting(fit_kwargs: dict) -> Iterator[None]:
    """Progress lines around a sweep's calls when ``progress=True`` (one clock for all)."""
    if not fit_kwargs.get("progress"):
        yield
        return
    progress_lib.start()  # the clock counts compilation too, as in fit
    try:
        yield
    finally:
        progress_lib.finish()


def populate(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    table: dict[str, np.ndarray],
    chunk_size: int | str | None,
    memory_budget: int | float | None,
    devices: int | Sequence[jax.Device] | None,
    fit_kwargs: dict,
    entry: str,
) -> Population:
    """Check a sweep's input (``check_members``) and build its population, before
    anything is compiled. ``entry`` names the public caller of this function.

    Raises:
      ValueError: for bad input (see ``sweep``).
    """
    trainer = check_members(config, x, y, table, fit_kwargs, entry, devices, depth=3)
    chunk = _chunk_size(chunk_size, memory_budget, devices, len(table["seed"]), trainer, x, y, fit_kwargs)
    options, arrays = split_options(fit_kwargs)
    return Population(config, trainer, device_array(x), device_array(y), table, options, arrays, chunk, devices)


def check_members(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    table: dict[str, np.ndarray],
    fit_kwargs: dict,
    entry: str,
    devices: int | Sequence[jax.Device] | None,
    depth: int = 2,
) -> Trainer:
    """Everything ``fit`` checks, for every member of ``table``, with concrete values:
    the configuration at every grid point (``check_configurations``) and the data and
    options (``fnn.fit.check_fit``); per-run options are refused; in a multi-process run,
    data that differs between processes is refused. Then warns (once) when
    ``entry`` leaves cores unused (``depth``: calls from ``entry`` down to this one).

    Returns:
      the Trainer of the first member.
    Raises:
      ValueError: for bad input.
    """
    for name in options_lib.names(options_lib.PER_RUN):
        if name in fit_kwargs:
            raise ValueError(f"{name}= is not a sweep option: members take their keys from seeds")
    trainer = check_configurations(config, table)
    check_fit(trainer, x, y, key=table["seed"][0], **fit_kwargs)  # an int seed, or raw key data
    multihost.check_same_data((x, y, fit_kwargs.get("validation")), "x, y and validation")
    warn_unused_cores(entry, devices, depth=depth)
    return trainer


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
        else check_whole("memory_budget", memory_budget)
    )
    epochs = fit_kwargs["epochs"]
    entries = len(history_names(trainer, fit_kwargs.get("validation") is not None))
    per_member = memory_lib.member_bytes(
        trainer, x, y, batch_size=fit_kwargs["batch_size"], epochs=epochs, history_entries=entries
    )
    shared = memory_lib.nbytes((host_array(x), host_array(y), fit_kwargs.get("validation")))
    return memory_lib.chunk_for_budget(per_member, shared, int(budget), n, used)


def split_options(fit_kwargs: dict) -> tuple[tuple, dict]:
    """fit's options split by their role (``fnn.options``): static ones (a sorted,
    hashable tuple: part of the compiled program's key) and traced ones (arrays shared by
    every member; scalars in fit's float dtype, so that 0.1 and np.array(0.1) share a
    program; ``None`` is static)."""
    traced, scalars = options_lib.names(options_lib.TRACED), options_lib.names(scalar=True)
    arrays = {
        k: host_array(v, float) if k in scalars else jax.tree.map(device_array, v)
        for k, v in fit_kwargs.items()
        if k in traced and v is not None
    }
    options = tuple(sorted((k, v) for k, v in fit_kwargs.items() if k not in arrays))
    for name, value in options:
        try:
            hash(value)
        except TypeError:
            raise ValueError(
                f"sweep option {name}= must be a hashable (static) value; got {type(value).__name__}"
            ) from None
    return options, arrays
