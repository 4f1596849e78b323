"""A whole training run as one compiled program: epochs of mini-batches, evaluation,
early stopping, divergence detection and history, all inside ``jit``.

``fit`` runs ``lax.while_loop`` over epochs; each epoch draws its permutation in-graph
and ``lax.scan``s the training step over its mini-batches, then evaluates the validation
set (evaluation mode, in batches) and writes one entry of every history array. The host
sees the run only at its end, or at the end of every chunk of ``checkpoint_every``
epochs when it saves a checkpoint (the same compiled program serves every chunk: the
epoch to stop at is a traced argument).

Convergence: with ``patience`` set, the run stops when the monitored value has not
improved by more than ``tol`` for ``patience`` epochs. Divergence: an update whose loss
or new parameters are not finite is not applied; the run stops and keeps the last finite
state. Called from the host, ``fit`` then raises ``DivergenceError`` carrying the result.
Under an outer ``jit``/``vmap`` nothing can raise: read ``result.diverged``.

Under ``vmap`` a member that stopped (early or by divergence) keeps its state unchanged
while the others go on (JAX batches the while loop by masking); run alone, a stopped run
skips the remaining epochs (steps after a divergence, within its epoch, are computed
and discarded).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn import checkpoint as checkpoint_lib
from fnn import losses as losses_lib
from fnn import progress as progress_lib
from fnn.batching import epoch_batches
from fnn.distributed import check_batch_divisible
from fnn.train import Trainer, TrainState
from fnn.checks import check_finite, check_int, check_nonnegative, is_concrete


class FitResult(NamedTuple):
    """What ``fit`` returns (under ``vmap`` every field gains a leading member axis).

    Attributes:
      state: the final TrainState (the last finite one if the run diverged).
      best_params, best_model_state: the params and model state at the best epoch of the
        monitored value (the final ones if nothing was monitored).
      best_epoch: index of that epoch (-1 before any epoch completed).
      history: ``{name: [epochs] array}`` — "loss" (mean training loss of the epoch),
        the trainer's metrics (e.g. "accuracy"), "lr" (learning rate of the epoch's last
        update) and, with validation data, "val_loss" and "val_<metric>". Epochs that did
        not run hold NaN.
      stop_epoch: number of epochs run.
      stopped_early: True when patience ran out.
      diverged: True when a non-finite loss or parameter stopped the run.
      diverged_epoch, diverged_step: where (epoch index; global update index), -1 if not.
      last_finite_loss: the last finite mini-batch loss seen.
    """

    state: TrainState
    best_params: Any
    best_model_state: Any
    best_epoch: jax.Array
    history: dict
    stop_epoch: jax.Array
    stopped_early: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    diverged_step: jax.Array
    last_finite_loss: jax.Array


class DivergenceError(FloatingPointError):
    """Training produced a non-finite loss or parameters; ``.result`` holds the
    FitResult with the last finite state."""

    def __init__(self, result: FitResult):
        self.result = result
        epoch, step = int(result.diverged_epoch), int(result.diverged_step)
        super().__init__(
            f"training diverged at epoch {epoch} (0-based), update {step}: the loss or the updated "
            f"parameters became non-finite; the last finite mini-batch loss was {float(result.last_finite_loss):.6g}. "
            "The state before that update is in this error's .result.state; try a smaller learning rate "
            "or gradient clipping."
        )


class _Loop(NamedTuple):
    """The carry of the epoch loop (what a checkpoint saves)."""

    state: TrainState
    best_params: Any
    best_model_state: Any
    best_value: jax.Array
    best_epoch: jax.Array
    wait: jax.Array
    stopped: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    diverged_step: jax.Array
    last_loss: jax.Array
    history: dict


@dataclasses.dataclass(frozen=True)
class _Config:
    """The static (structural) settings of a run; the jit cache keys on them."""

    batch_size: int
    drop_last: bool
    eval_batch_size: int
    patience: int | None
    monitor: str
    maximize: bool
    progress: bool
    batch_sharding: Any = None


def _float(value=jnp.nan):
    return jnp.asarray(value, jnp.result_type(float))


def _tree_where(condition, new, old):
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def _all_finite(tree):
    """True when every element is finite (one fused reduction: a sum is finite iff its terms are)."""
    return jnp.isfinite(sum(jnp.sum(leaf) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)))


def _shard(batch, sharding):
    """Split a mini-batch's example axis over devices (data parallelism); the compiler
    then averages the gradients across them. No-op without a sharding."""
    if sharding is None:
        return batch
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)


def _history_names(trainer: Trainer, has_validation: bool) -> list[str]:
    names = ["loss", *(name for name, _ in trainer.metrics), "lr"]
    if has_validation:
        names += ["val_loss", *(f"val_{name}" for name, _ in trainer.metrics)]
    return names


def _initial_loop(trainer: Trainer, state: TrainState, epochs: int, has_validation: bool, maximize: bool) -> _Loop:
    history = {name: jnp.full((epochs,), jnp.nan, jnp.result_type(float)) for name in _history_names(trainer, has_validation)}
    minus_one = jnp.asarray(-1, jnp.int32)
    return _Loop(
        state=state,
        best_params=state.params,
        best_model_state=state.model_state,
        best_value=_float(-jnp.inf if maximize else jnp.inf),
        best_epoch=minus_one,
        wait=jnp.asarray(0, jnp.int32),
        stopped=jnp.asarray(False),
        diverged=jnp.asarray(False),
        diverged_epoch=minus_one,
        diverged_step=minus_one,
        last_loss=_float(),
        history=history,
    )


def _train_epoch(trainer: Trainer, loop: _Loop, x, y, cfg: _Config):
    """Scan the training step over one epoch's mini-batches; returns (loop, epoch means)."""
    state = loop.state
    indices, weights = epoch_batches(
        jax.random.fold_in(jax.random.fold_in(state.key, 0), state.epoch), x.shape[0], cfg.batch_size, cfg.drop_last
    )
    names = ["loss", *(name for name, _ in trainer.metrics)]

    def step(carry, batch):
        state, diverged, diverged_step, last_loss, sums, lr = carry
        idx, w = batch
        new_state, metrics = trainer.train_step(state, _shard((x[idx], y[idx], w), cfg.batch_sharding))
        # an update counts only while the run is healthy and it keeps everything finite;
        # a masked select rather than lax.cond: under vmap a cond would become a select
        # of the whole carry anyway, and unbatched the epoch loop stops after this epoch.
        ok = jnp.isfinite(metrics["loss"]) & _all_finite(new_state.params) & ~diverged
        total = jnp.sum(w)
        counted = {k: metrics[k] * total for k in names} | {"weight": total}
        carry = (
            _tree_where(ok, new_state, state),
            diverged | ~ok,
            jnp.where(ok | diverged, diverged_step, state.step),
            jnp.where(ok, metrics["loss"], last_loss),
            {k: sums[k] + jnp.where(ok, counted[k], 0) for k in sums},
            jnp.where(ok, metrics["lr"], lr).astype(lr.dtype),
        )
        return carry, None

    sums = {k: _float(0.0) for k in [*names, "weight"]}
    init = (state, loop.diverged, loop.diverged_step, loop.last_loss, sums, _float())
    (state, diverged, diverged_step, last_loss, sums, lr), _ = jax.lax.scan(step, init, (indices, weights))
    means = {k: sums[k] / sums["weight"] for k in names} | {"lr": lr}
    loop = loop._replace(
        state=state,
        diverged=diverged,
        diverged_step=diverged_step,
        diverged_epoch=jnp.where(diverged, state.epoch, -1).astype(jnp.int32),
        last_loss=last_loss,
    )
    return loop, means


def _end_epoch(trainer: Trainer, loop: _Loop, means: dict, validation, tol, cfg: _Config) -> _Loop:
    """Evaluate, record history, track the best epoch and decide on early stopping."""
    state = loop.state
    if validation is not None:
        scores = trainer.evaluate(state.params, state.model_state, *validation, batch_size=cfg.eval_batch_size)
        means = means | {f"val_{k}": v for k, v in scores.items()}
    epoch = state.epoch
    history = {k: h.at[epoch].set(means[k].astype(h.dtype)) for k, h in loop.history.items()}
    value = means[cfg.monitor]
    improved = (value > loop.best_value + tol) if cfg.maximize else (value < loop.best_value - tol)
    improved = improved & ~loop.diverged
    wait = jnp.where(improved, 0, loop.wait + 1).astype(jnp.int32)
    stopped = jnp.asarray(False) if cfg.patience is None else wait >= cfg.patience
    if cfg.progress:
        progress_lib.report(epoch, len(loop.history["loss"]), means)
    return loop._replace(
        state=state._replace(epoch=jnp.where(loop.diverged, epoch, epoch + 1).astype(jnp.int32)),
        best_params=_tree_where(improved, state.params, loop.best_params),
        best_model_state=_tree_where(improved, state.model_state, loop.best_model_state),
        best_value=jnp.where(improved, value, loop.best_value).astype(loop.best_value.dtype),
        best_epoch=jnp.where(improved, epoch, loop.best_epoch).astype(jnp.int32),
        wait=wait,
        stopped=stopped & ~loop.diverged,
        history=history,
    )


@functools.partial(jax.jit, static_argnames=("cfg",))
def _run_epochs(trainer: Trainer, loop: _Loop, x, y, validation, tol, end_epoch, cfg: _Config) -> _Loop:
    """Run epochs until ``end_epoch``, early stop or divergence: the compiled program."""

    def running(loop):
        return (loop.state.epoch < end_epoch) & ~loop.stopped & ~loop.diverged

    def epoch(loop):
        loop, means = _train_epoch(trainer, loop, x, y, cfg)
        return _end_epoch(trainer, loop, means, validation, tol, cfg)

    return jax.lax.while_loop(running, epoch, loop)


def _check_data(trainer: Trainer, x, y, validation, batch_size: int, params, model_state):
    """Eager checks of the data before anything is compiled; a ValueError names the argument."""
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] == 0:
        raise ValueError(f"x must be a non-empty array of examples [n, ...]; got shape {jnp.shape(x)}")
    if jnp.ndim(y) < 1 or jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(f"x and y must have the same number of examples; got x {jnp.shape(x)} and y {jnp.shape(y)}")
    n = jnp.shape(x)[0]
    if batch_size > n:
        raise ValueError(f"batch_size must be <= the number of examples ({n}); got {batch_size}: use a smaller batch_size")
    if not jnp.issubdtype(jnp.result_type(x), jnp.inexact):
        raise ValueError(f"x must be floating point; got dtype {jnp.result_type(x)} (scale integer pixels with fnn.prepare_images)")
    check_finite("x", x)
    out = _output_shape(trainer, x, params, model_state, "x")
    _check_targets(trainer, y, out, "y")
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise ValueError("validation must be a pair (x_val, y_val)")
        xv, yv = validation
        if jnp.shape(xv)[1:] != jnp.shape(x)[1:] or jnp.ndim(yv) < 1 or jnp.shape(yv)[0] != jnp.shape(xv)[0]:
            raise ValueError(
                f"validation must be (x_val, y_val) with x_val of shape [m, {', '.join(map(str, jnp.shape(x)[1:]))}] and "
                f"as many y_val; got x_val {jnp.shape(xv)} and y_val {jnp.shape(yv)}"
            )
        check_finite("validation x", xv)
        _check_targets(trainer, yv, out, "validation y")


def _output_shape(trainer: Trainer, x, params, model_state, name):
    """The model's output shape for one example, found by abstract evaluation (no compute)."""
    try:
        out = jax.eval_shape(lambda p, s, xb: trainer.model.apply(p, xb, state=s), params, model_state, x[:1])
    except ValueError as error:
        raise ValueError(f"{name} does not fit the model: {error}") from None
    return out.shape[1:]


def _check_targets(trainer: Trainer, y, out_shape, name):
    base = getattr(trainer.loss, "func", trainer.loss)
    if base is losses_lib.cross_entropy and jnp.ndim(y) == 1:
        losses_lib.check_labels(name, y, out_shape[-1])
    elif tuple(jnp.shape(y)[1:]) != tuple(out_shape):
        raise ValueError(f"{name} must have shape [n, {', '.join(map(str, out_shape))}] to match the model's output; got {jnp.shape(y)}")
    elif base is not losses_lib.cross_entropy:
        check_finite(name, y)


def fit(
    trainer: Trainer,
    x,
    y,
    *,
    key=None,
    epochs: int,
    batch_size: int,
    validation=None,
    drop_last: bool = False,
    state: TrainState | None = None,
    params=None,
    model_state=(),
    tol=0.0,
    patience: int | None = None,
    monitor: str | None = None,
    eval_batch_size: int = 1024,
    progress: bool = False,
    checkpoint: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    batch_sharding=None,
) -> FitResult:
    """Train ``trainer``'s model on (x, y) for ``epochs`` epochs of mini-batches.

    Args:
      trainer: model, optimizer, loss and regularizer (``fnn.Trainer``).
      x, y: [n, ...] training inputs and targets (kept on the device).
      key: int seed or PRNG key of the run: params init, data order and dropout all
        derive from it. Required unless ``state`` is given.
      epochs: number of epochs (static).
      batch_size: examples per update (static), 1 <= batch_size <= n.
      validation: optional ``(x_val, y_val)`` evaluated after every epoch.
      drop_last: drop the last partial mini-batch (else it is used, padded with
        weight-0 rows, so no example is lost).
      state: continue from this TrainState instead of a fresh one.
      params, model_state: initial params (needed for a plain-function model).
      tol, patience: early stopping when the monitored value has not improved by more
        than ``tol`` for ``patience`` epochs (``None``: never stop early).
      monitor: history entry to watch; default "val_loss" with validation data, else
        "loss". Names ending in "accuracy" are maximized, others minimized. The best
        params are those at the best monitored epoch.
      eval_batch_size: examples per forward pass when evaluating (bounds memory).
      progress: print a progress line per epoch from inside the compiled run.
      checkpoint: file to save the run to (atomically) every ``checkpoint_every`` epochs.
      checkpoint_every: epochs per compiled chunk between checkpoints.
      resume: continue from ``checkpoint`` if that file exists.
      batch_sharding: a ``jax.sharding.NamedSharding`` that splits each mini-batch's
        example axis over devices (data-parallel training; see
        ``fnn.distributed.data_parallel``). Params stay replicated.

    Returns:
      a ``FitResult``.

    Raises:
      ValueError: for bad input, before anything is traced.
      DivergenceError: when the run diverged (only when called eagerly).
    """
    epochs = check_int("epochs", epochs)
    batch_size = check_int("batch_size", batch_size)
    eval_batch_size = check_int("eval_batch_size", eval_batch_size)
    check_batch_divisible(batch_size, batch_sharding)
    if patience is not None:
        check_int("patience", patience)
    check_nonnegative("tol", tol)
    if not isinstance(trainer, Trainer):
        raise ValueError(f"trainer must be an fnn.Trainer(model, optimizer, loss); got {type(trainer).__name__}")
    if state is None:
        if key is None:
            raise ValueError("key is required (an int seed or a jax.random key) unless state= is given")
        state = trainer.init(key, params, model_state) if params is not None else trainer.init(key)
    x, y = jnp.asarray(x), jnp.asarray(y)
    if validation is not None:
        validation = tuple(jnp.asarray(a) for a in validation)
    _check_data(trainer, x, y, validation, batch_size, state.params, state.model_state)
    monitor = monitor or ("val_loss" if validation is not None else "loss")
    names = _history_names(trainer, validation is not None)
    if monitor not in names:
        raise ValueError(f"monitor must be one of {names}; got {monitor!r}")
    cfg = _Config(batch_size, drop_last, min(eval_batch_size, len(validation[0])) if validation else 1, patience,
                  monitor, monitor.endswith("accuracy"), bool(progress), batch_sharding)
    loop = _initial_loop(trainer, state, epochs, validation is not None, cfg.maximize)
    if progress:
        progress_lib.start()
    loop = _run_chunks(trainer, loop, x, y, validation, tol, epochs, cfg, checkpoint, checkpoint_every, resume)
    result = _result(loop)
    if is_concrete(result.diverged) and np.any(np.asarray(result.diverged)) and np.ndim(result.diverged) == 0:
        raise DivergenceError(result)
    return result


def _run_chunks(trainer, loop, x, y, validation, tol, epochs, cfg, path, every, resume) -> _Loop:
    """Run the compiled program once, or in chunks of ``every`` epochs with a checkpoint after each."""
    if path is None:
        if every is not None or resume:
            raise ValueError("checkpoint_every and resume need checkpoint= (a file path)")
        return _call(trainer, loop, x, y, validation, tol, epochs, cfg)
    every = check_int("checkpoint_every", every if every is not None else epochs)
    if not is_concrete(loop):
        raise ValueError("checkpoint= cannot be used under an outer jit or vmap (nothing can be saved from inside a trace)")
    if resume and os.path.exists(path):
        loop = checkpoint_lib.restore(path, like=loop)
    while _still_running(loop, epochs):
        end = min(int(loop.state.epoch) + every, epochs)
        loop = _call(trainer, loop, x, y, validation, tol, end, cfg)
        checkpoint_lib.save(path, loop)
    return loop


def _still_running(loop: _Loop, epochs: int) -> bool:
    return int(loop.state.epoch) < epochs and not bool(loop.stopped) and not bool(loop.diverged)


def _call(trainer, loop, x, y, validation, tol, end, cfg) -> _Loop:
    return _run_epochs(trainer, loop, x, y, validation, _float(tol), jnp.asarray(end, jnp.int32), cfg)


def _result(loop: _Loop) -> FitResult:
    stop_epoch = loop.state.epoch
    return FitResult(
        state=loop.state,
        best_params=loop.best_params,
        best_model_state=loop.best_model_state,
        best_epoch=loop.best_epoch,
        history=loop.history,
        stop_epoch=stop_epoch,
        stopped_early=loop.stopped,
        diverged=loop.diverged,
        diverged_epoch=loop.diverged_epoch,
        diverged_step=loop.diverged_step,
        last_finite_loss=loop.last_loss,
    )
