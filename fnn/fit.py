"""``fit``: a whole training run as one compiled program, checked at the door.

``fit`` reads top to bottom as the run it performs:

1. :func:`build_run` checks every argument eagerly — each option on its own, as
   declared once in :mod:`fnn.options`, then types, shapes, label ranges, finite values,
   the params and model state against the model, the checkpoint destination — and builds
   the run: the static :class:`~fnn.loop.Settings`, the arrays it reads
   (:class:`~fnn.loop.RunData`) and the initial loop carry.
2. The compiled epoch loop (:mod:`fnn.loop`) runs once, or in chunks of
   ``checkpoint_every`` epochs with an atomic checkpoint after each (:mod:`fnn.resume`
   restores and extends one). The same compiled program serves every chunk: the epoch
   to stop at is a traced argument.
3. The loop's carry holds the :class:`FitResult`; called from the host, ``fit`` raises
   :class:`DivergenceError` carrying it when the run diverged. Under an outer
   ``jit``/``vmap`` nothing can raise: read ``result.diverged``.

Convergence: with ``patience`` set, the run stops when the monitored value has not
improved by more than ``tol`` for ``patience`` epochs. Divergence: an update whose loss
is not finite or exceeds ``divergence_threshold``, or whose new parameters are not
finite, is not applied; the run stops and keeps the last good state.

Entry points that trace ``fit`` inside (``fnn.sweep``) call :func:`check_fit` first with
concrete values: under a trace the value checks (finite data, label ranges) cannot run.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.typing import ArrayLike

from fnn import checkpoint as checkpoint_lib
from fnn import losses as losses_lib
from fnn import multihost
from fnn import options as options_lib
from fnn import progress as progress_lib
from fnn import resume as resume_lib
from fnn import tensorboard as tensorboard_lib
from fnn.averaging import check_state as check_ema_state
from fnn.checks import as_key, check_int, is_concrete
from fnn.data_checks import as_arrays, check_run_data
from fnn.distributed import check_batch_divisible
from fnn.layers import check_params
from fnn.loop import FitResult, Loop, RunData, Settings, float_array, history_names, initial_loop, run_epochs
from fnn.loss_scaling import check_state as check_loss_scale_state
from fnn.options import OPTIONS
from fnn.programs import jit_program
from fnn.train import Trainer, TrainState
from fnn.types import ModelState, Params, PRNGKeyLike

__all__ = ["DivergenceError", "FitResult", "check_checkpoint_options", "check_fit", "fit", "plan", "resolve_monitor"]


class DivergenceError(FloatingPointError):
    """Training diverged; ``.result`` holds the FitResult with the last good state."""

    def __init__(self, result: FitResult):
        self.result = result
        epoch, step = int(result.diverged_epoch), int(result.diverged_step)
        super().__init__(
            f"training diverged at epoch {epoch} (0-based), update {step}: the loss or the updated parameters "
            f"became non-finite, or the loss exceeded divergence_threshold; the last good mini-batch loss was "
            f"{float(result.last_finite_loss):.6g}. The state before that update is in this error's "
            ".result.train_state; try a smaller learning rate or gradient clipping."
        )


class Run(NamedTuple):
    """A checked run, ready to execute: the trainer, the loop carry before the first
    epoch (only its shapes when built by ``check_fit``), the arrays the run reads, its
    static settings and what the host does around it."""

    trainer: Trainer
    loop: Loop
    data: RunData
    settings: Settings
    epochs: int
    saving: Saving


class Saving(NamedTuple):
    """fit's host options, checked: the checkpoint file (or None), epochs per compiled
    chunk between saves, whether to resume from the file, and the TensorBoard run folder
    (or None) written after each compiled chunk."""

    path: str | os.PathLike[str] | None
    every: int
    resume: bool
    tensorboard: str | os.PathLike[str] | None = None


def fit(
    trainer: Trainer,
    x: ArrayLike,
    y: ArrayLike,
    *,
    key: PRNGKeyLike | None = None,
    epochs: int,
    batch_size: int,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    drop_last: bool = False,
    max_steps: int | None = None,
    train_state: TrainState | None = None,
    params: Params = None,
    model_state: ModelState = None,
    tol: ArrayLike = 0.0,
    patience: int | None = None,
    monitor: str | None = None,
    divergence_threshold: ArrayLike | None = None,
    eval_batch_size: int = 1024,
    progress: bool = False,
    checkpoint: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    tensorboard: str | os.PathLike[str] | None = None,
    batch_sharding: NamedSharding | None = None,
) -> FitResult:
    """Train ``trainer``'s model on (x, y) for ``epochs`` epochs of mini-batches.

    Args:
      trainer: model, optimizer, loss and regularizer (``fnn.Trainer``).
      x, y: [n, ...] training inputs and targets (kept on the device).
      key: int seed or PRNG key of the run: params init, data order and dropout all
        derive from it. Required unless ``train_state`` is given.
      epochs: number of epochs (static); the total, counted from epoch 0, also when
        continuing from a ``train_state`` that has run some (its history has
        ``epochs`` entries).
      batch_size: examples per update (static), 1 <= batch_size <= n.
      validation: optional pair ``(x_val, y_val)`` of non-empty arrays, evaluated after
        every epoch.
      drop_last: drop the last partial mini-batch (else it is used, padded with
        weight-0 rows, so no example is lost).
      max_steps: stop after this many updates in all (static; ``None``: no limit): the
        epoch in which the limit falls is the run's last, its remaining mini-batches
        computed and discarded, then it is evaluated and recorded as any epoch
        (``train_state.step`` counts the updates). ``fnn.lr_range`` trains its members so.
      train_state: continue from this TrainState (``result.train_state`` of an earlier
        run) instead of a fresh one; ``epochs`` must exceed the epochs it has run.
      params, model_state: initial params (needed for a plain-function model) and the
        model's state (batch-norm running statistics; needed with ``params`` when the
        model has state). Both are checked against the model's structure.
      tol, patience: early stopping when the monitored value has not improved by more
        than ``tol`` (a scalar >= 0) for ``patience`` epochs (``None``: never stop early).
      monitor: history entry to watch; default "val_loss" with validation data, else
        "loss". Metrics declared ``fnn.losses.higher_is_better`` (accuracy is) are
        maximized, the loss and ``lower_is_better`` metrics minimized; monitoring a metric of
        no declared direction is an error. The best
        params are those at the best monitored epoch.
      divergence_threshold: a mini-batch training loss above it counts as divergence,
        like a non-finite one (``None``: only non-finite values diverge).
      eval_batch_size: examples per forward pass when evaluating (bounds memory).
      progress: print a progress line per epoch from inside the compiled run.
      checkpoint: file to save the run to (atomically) every ``checkpoint_every`` epochs;
        its folder must exist and be writable (checked before training).
      checkpoint_every: epochs per compiled chunk between checkpoints (default: all).
      resume: continue from ``checkpoint`` if that file exists; a finished run resumed
        with a larger ``epochs`` continues where it stopped.
      tensorboard: a folder: the history's epochs are written there as TensorBoard
        scalars (``fnn.tensorboard.write_history``) after each compiled chunk (every
        ``checkpoint_every`` epochs, else at the end); needs ``fnn[tensorboard]``.
      batch_sharding: a ``jax.sharding.NamedSharding`` that splits each mini-batch's
        example axis over devices (data-parallel training; see
        ``fnn.distributed.data_parallel``). Params stay replicated.

    Returns:
      a ``FitResult``.

    Raises:
      ValueError: for bad input, before anything is traced.
      DivergenceError: when the run diverged (only when called eagerly).
    """
    options = {name: value for name, value in locals().items() if name in OPTIONS}
    run = build_run(trainer, x, y, options)  # every argument checked before anything is traced
    if progress and is_concrete(run.loop):  # a run of its own; a caller that traces fit (a sweep) starts its own
        progress_lib.start()
    result = _execute(run).result
    if is_concrete(result.diverged) and np.ndim(result.diverged) == 0 and bool(result.diverged):
        raise DivergenceError(result)
    return result


def check_fit(trainer: Trainer, x: ArrayLike, y: ArrayLike, **options: Any) -> None:
    """Make every eager check that ``fit(trainer, x, y, **options)`` makes, without training.

    Entry points that trace ``fit`` (a sweep) call this first with concrete values. The
    initial state is only shaped (``jax.eval_shape``: nothing is compiled or drawn).

    Raises:
      ValueError: naming the argument, as ``fit`` would; also for an unknown option.
    """
    build_run(trainer, x, y, options_lib.complete(options, "check_fit"), abstract=True)


def plan(trainer: Trainer, x: ArrayLike, y: ArrayLike, **options: Any) -> Run:
    """The checked run of ``fit(trainer, x, y, **options)``, built but not executed.

    Entry points that run ``fit``'s loop in pieces (``fnn.sweeps``: halving, compaction,
    population-based training) start from ``plan(...).loop`` and advance it with
    ``fnn.loop.run_epochs(run.trainer, loop, run.data, end_epoch, run.settings)``; run to
    ``epochs`` in one go, that is exactly ``fit``.

    Raises:
      ValueError: as ``check_fit``.
    """
    return build_run(trainer, x, y, options_lib.complete(options, "plan"))


def build_run(trainer: Trainer, x: ArrayLike, y: ArrayLike, options: dict[str, Any], abstract: bool = False) -> Run:
    """Check fit's arguments and build the run.

    Each option is first checked on its own (``fnn.options.checked``), then the ones
    that go together: the trainer, the batch sharding against the batch size, the
    checkpoint destination, the data and validation pair, the initial state (from the key,
    a train state or given params) against the model, the data against the model and the
    loss, and the monitor against the history.

    Args:
      trainer, x, y: as ``fit``.
      options: every option of ``fnn.options.OPTIONS`` (``fnn.options.complete``).
      abstract: build only the shapes of the initial loop carry (``check_fit``).
    Returns:
      the ``Run``.
    Raises:
      ValueError: naming the argument and what was expected, before anything is traced.
    """
    o = options_lib.checked(options)
    if not isinstance(trainer, Trainer):
        raise ValueError(f"trainer must be an fnn.Trainer(model, optimizer, loss); got {type(trainer).__name__}")
    check_batch_divisible(o["batch_size"], o["batch_sharding"])
    every = check_checkpoint_options(o["checkpoint"], o["checkpoint_every"], o["resume"], o["epochs"])
    x, y, validation = as_arrays(x, y, o["validation"])
    state = _initial_state(trainer, o, abstract)
    check_run_data(
        trainer.model,
        trainer.loss,
        state.params,
        state.model_state,
        x,
        y,
        validation,
        o["batch_size"],
        trainer.accumulate,
    )
    monitor, maximize = resolve_monitor(trainer, o["monitor"], validation is not None)
    settings = Settings(
        batch_size=o["batch_size"],
        drop_last=o["drop_last"],
        eval_batch_size=min(o["eval_batch_size"], len(validation[0]) if validation else 1),
        patience=o["patience"],
        monitor=monitor,
        maximize=maximize,
        progress=o["progress"],
        batch_sharding=o["batch_sharding"],
        max_steps=o["max_steps"],
    )
    threshold = jnp.inf if o["divergence_threshold"] is None else o["divergence_threshold"]
    data = RunData(x, y, validation, float_array(o["tol"]), float_array(threshold))

    def start(state: TrainState) -> Loop:
        return initial_loop(trainer, state, o["epochs"], validation is not None, maximize)

    loop = jax.eval_shape(start, state) if abstract else start(state)
    saving = Saving(o["checkpoint"], every, o["resume"], o["tensorboard"])
    return Run(trainer, loop, data, settings, o["epochs"], saving)


def resolve_monitor(trainer: Trainer, monitor: str | None, has_validation: bool, what: str = "monitor"):
    """The history entry a run monitors and whether it is maximized: the one place that
    decides both for fit's best epoch and early stopping, halving and PBT.

    Args:
      trainer: the run's trainer (its metrics and their declared directions).
      monitor: a history entry's name, or ``None``: "val_loss" with validation data, else "loss".
      has_validation: whether the run has validation data.
      what: the argument's name in messages (e.g. "halving's monitor").
    Returns:
      ``(monitor, maximize)`` (``fnn.losses.maximizes``).
    Raises:
      ValueError: ``monitor`` is not a history entry, or a metric of no declared direction.
    """
    names = history_names(trainer, has_validation)
    monitor = monitor or ("val_loss" if has_validation else "loss")
    if monitor not in names:
        raise ValueError(f"{what} must be one of the history's entries {names}; got {monitor!r}")
    return monitor, losses_lib.maximizes(monitor, trainer.metrics)


def check_checkpoint_options(path, every, resume, epochs: int) -> int:
    """The epochs per chunk; checks the checkpoint destination before any training."""
    if path is None:
        if every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint= (a file path)")
        return epochs
    checkpoint_lib.check_destination(path)
    return check_int("checkpoint_every", epochs if every is None else every)


def _initial_state(trainer: Trainer, options: dict[str, Any], abstract: bool = False) -> TrainState:
    """The run's first TrainState: the given ``train_state`` (checked), or ``trainer.init``
    from ``key`` (with ``params`` and ``model_state`` if given; only its shapes when ``abstract``)."""
    key, params, model_state = options["key"], options["params"], options["model_state"]
    if options["train_state"] is not None:
        return _check_train_state(trainer, options["train_state"], options["epochs"])
    if key is None:
        raise ValueError("key is required (an int seed or a jax.random key) unless train_state= is given")
    if params is None:
        if model_state is not None:
            raise ValueError(
                "model_state= goes with params= (a warm start); without params the model is initialized from key"
            )
        if abstract:  # the key too is only traced: no program runs
            return jax.eval_shape(lambda: trainer.init(as_key(key)))
        return _init_program(trainer, as_key(key))
    return trainer.init(as_key(key), params, model_state)


# The initial state as one compiled program (params drawn for every layer at once): run
# eagerly, each initializer would compile its own small program at XLA's default options.
_init_program = jit_program(lambda trainer, key: trainer.init(key), ())


def _check_train_state(trainer: Trainer, state, epochs: int) -> TrainState:
    """A given TrainState: params and model state fit the model, its moving average the
    trainer's ``ema``, its loss scale the trainer's ``loss_scaling``, counters are int32
    scalars, the key is a key, and epochs still remain (``epochs`` counts the total)."""
    if not isinstance(state, TrainState):
        raise ValueError(f"train_state must be an fnn.TrainState; got {type(state).__name__}")
    check_params(
        trainer.model, state.params, state.model_state, names=("train_state.params", "train_state.model_state")
    )
    check_ema_state(trainer.ema, state)
    check_loss_scale_state(trainer.loss_scaling, state)
    for name in ("step", "epoch"):
        value = getattr(state, name)
        if jnp.shape(value) != () or jnp.result_type(value) != jnp.int32:
            raise ValueError(f"train_state.{name} must be an int32 scalar; got {value!r}")
    if not jnp.issubdtype(jnp.result_type(state.key), jax.dtypes.prng_key):
        raise ValueError(f"train_state.key must be a typed jax.random key; got {state.key!r}")
    if is_concrete(state.epoch) and int(state.epoch) >= epochs:
        raise ValueError(
            f"train_state has run {int(state.epoch)} epochs and epochs={epochs} counts the total (history has "
            f"one entry per epoch): pass epochs > {int(state.epoch)} to train on"
        )
    return state


def _execute(run: Run) -> Loop:
    """Run the compiled program once, or in chunks with a checkpoint after each; the
    epochs each chunk ran go to TensorBoard after it, when asked."""
    saving = run.saving
    if saving.path is None and saving.tensorboard is None:
        return _call(run, run.loop, run.epochs)
    if not is_concrete(run.loop):
        raise ValueError(
            "checkpoint= and tensorboard= cannot be used under an outer jit or vmap (nothing can be written from "
            "inside a trace)"
        )
    description = resume_lib.describe(run.trainer, run.loop, run.settings, run.data, run.epochs)
    loop = run.loop
    if saving.path is not None and saving.resume and os.path.exists(saving.path):
        loop = resume_lib.restore(saving.path, run.loop, description)
    while _still_running(loop, run.epochs, run.settings.max_steps):
        start = int(loop.result.train_state.epoch)
        loop = _call(run, loop, min(start + saving.every, run.epochs))
        if saving.path is not None:
            checkpoint_lib.save(saving.path, loop, metadata=description)
        if saving.tensorboard is not None:
            _log_epochs(saving.tensorboard, loop.result, start)
    return loop


def _log_epochs(folder, result: FitResult, start: int) -> None:
    """The epochs from ``start`` to where ``result`` stands, to the TensorBoard run ``folder``
    (from process 0 in a multi-process run)."""
    history = jax.device_get(multihost.collect(result.history))
    with multihost.process_zero_writes("fnn.fit tensorboard") as writing:
        if writing:
            tensorboard_lib.write_history(folder, history, start_epoch=start, end_epoch=int(result.train_state.epoch))


def _still_running(loop: Loop, epochs: int, max_steps: int | None) -> bool:
    """``fnn.loop.running`` on the host (no eager program): whether another chunk runs."""
    r, state = loop.result, loop.result.train_state
    steps_left = max_steps is None or int(state.step) < max_steps
    return int(state.epoch) < epochs and steps_left and not bool(r.stopped_early) and not bool(r.diverged)


def _call(run: Run, loop: Loop, end: int) -> Loop:
    return run_epochs(run.trainer, loop, run.data, np.int32(end), run.settings)
