"""The epoch loop: one run's epochs of mini-batches as one compiled program.

``run_epochs`` is a ``lax.while_loop`` over epochs; each epoch draws its permutation
in-graph and ``lax.scan``s the training step over its mini-batches
(:func:`train_epoch`), then evaluates the validation set, writes one entry of every
history array and decides on early stopping (:func:`end_epoch`). The carry of the loop,
:class:`Loop`, is a :class:`FitResult` plus the two numbers early stopping needs; a
checkpoint saves it whole.

Divergence: an update whose mini-batch loss is not finite or exceeds
``divergence_threshold``, or whose new parameters are not finite, is not applied; the
run stops and keeps the last good state. Under ``vmap`` a member that stopped (early or
by divergence) keeps its state unchanged while the others go on (JAX batches the while
loop by masking); run alone, a stopped run skips the remaining epochs (steps after a
divergence, within its epoch, are computed and discarded).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding

from fnn import progress as progress_lib
from fnn.averaging import evaluated
from fnn.batching import epoch_batches
from fnn.programs import host_array, jit_program
from fnn.train import Trainer, TrainState, order_key
from fnn.tree_util import all_finite, tree_where
from fnn.types import ModelState, Params


class FitResult(NamedTuple):
    """What ``fit`` returns (under ``vmap`` every field gains a leading member axis).

    Attributes:
      train_state: the final TrainState (the last good one if the run diverged).
      best_params, best_model_state: the params and model state at the best epoch of the
        monitored value (the final ones if nothing was monitored); with
        ``trainer.ema`` evaluating (``fnn.ema(..., evaluate=True)``), the moving average's.
      best_epoch: index of that epoch (-1 before any epoch completed).
      history: ``{name: [epochs] array}`` — "loss" (mean training loss of the epoch),
        the trainer's metrics (e.g. "accuracy"), "lr" (learning rate of the epoch's last
        update) and, with validation data, "val_loss" and "val_<metric>". Epochs that did
        not run hold NaN.
      stopped_early: True when patience ran out.
      diverged: True when a non-finite loss or parameter, or a loss above
        ``divergence_threshold``, stopped the run.
      diverged_epoch, diverged_step: where (epoch index; global update index), -1 if not.
      last_finite_loss: the last mini-batch loss of an applied update.
    """

    train_state: TrainState
    best_params: Params
    best_model_state: ModelState
    best_epoch: jax.Array
    history: dict
    stopped_early: jax.Array
    diverged: jax.Array
    diverged_epoch: jax.Array
    diverged_step: jax.Array
    last_finite_loss: jax.Array

    @property
    def stop_epoch(self) -> jax.Array:
        """Number of epochs run (``train_state.epoch``)."""
        return self.train_state.epoch

    @property
    def ema_params(self) -> Params:
        """The moving average of the params at the end of the run (``train_state.ema_params``;
        ``None`` without ``trainer.ema``)."""
        return self.train_state.ema_params

    @property
    def ema_model_state(self) -> ModelState:
        """The moving average of the model state at the end of the run (``train_state.ema_model_state``)."""
        return self.train_state.ema_model_state


class Loop(NamedTuple):
    """The carry of the epoch loop (what a checkpoint saves): the result so far, the best
    monitored value and the epochs waited since it improved."""

    result: FitResult
    best_value: jax.Array
    wait: jax.Array


class RunData(NamedTuple):
    """The arrays a run reads: training data, optional validation pair and the traced
    convergence thresholds (new values reuse the compiled program)."""

    x: jax.Array
    y: jax.Array
    validation: tuple[jax.Array, jax.Array] | None
    tol: jax.Array
    divergence_threshold: jax.Array


@dataclasses.dataclass(frozen=True)
class Settings:
    """The static (structural) settings of a run; the jit cache keys on them."""

    batch_size: int
    drop_last: bool
    eval_batch_size: int
    patience: int | None
    monitor: str
    maximize: bool
    progress: bool
    batch_sharding: NamedSharding | None = None
    max_steps: int | None = None


class _StepCarry(NamedTuple):
    """The carry of one epoch's scan over mini-batches."""

    state: TrainState
    diverged: jax.Array
    diverged_step: jax.Array
    last_loss: jax.Array
    sums: dict  # example-weighted sums of the loss and metrics
    weight: jax.Array  # the sum of the example weights
    lr: jax.Array


def float_array(value=jnp.nan):
    """``value`` as an array of JAX's default float dtype."""
    return host_array(value, jnp.result_type(float))


def _shard(batch, sharding):
    """Split a mini-batch's example axis over devices (data parallelism); the compiler
    then averages the gradients across them. No-op without a sharding."""
    if sharding is None:
        return batch
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, sharding), batch)


def history_names(trainer: Trainer, has_validation: bool) -> list[str]:
    """The history entries of a run: loss, the trainer's metrics, lr, and their val_ twins."""
    names = ["loss", *(name for name, _ in trainer.metrics), "lr"]
    if has_validation:
        names += ["val_loss", *(f"val_{name}" for name, _ in trainer.metrics)]
    return names


def initial_loop(trainer: Trainer, state: TrainState, epochs: int, has_validation: bool, maximize: bool) -> Loop:
    """The carry before the first epoch: histories of NaN, no best epoch, nothing stopped."""
    history = {name: float_array(np.full(epochs, np.nan)) for name in history_names(trainer, has_validation)}
    minus_one = host_array(-1, np.int32)
    params, model_state = evaluated(trainer.ema, state)  # the moving average's with trainer.ema evaluating
    result = FitResult(
        train_state=state,
        best_params=params,
        best_model_state=model_state,
        best_epoch=minus_one,
        history=history,
        stopped_early=host_array(False),
        diverged=host_array(False),
        diverged_epoch=minus_one,
        diverged_step=minus_one,
        last_finite_loss=float_array(),
    )
    return Loop(result=result, best_value=float_array(-jnp.inf if maximize else jnp.inf), wait=host_array(0, np.int32))


def train_epoch(trainer: Trainer, result: FitResult, data: RunData, settings: Settings):
    """Scan the training step over one epoch's mini-batches.

    Returns:
      ``(result, means)``: the result with the new train state and divergence record,
      and the epoch's example-weighted means of the loss and metrics (plus "lr").
    """
    state = result.train_state
    indices, weights = epoch_batches(
        order_key(state.key, state.epoch), data.x.shape[0], settings.batch_size, settings.drop_last
    )
    names = ["loss", *(name for name, _ in trainer.metrics)]

    def step(carry: _StepCarry, batch):
        idx, w = batch
        batch = _shard((data.x[idx], data.y[idx], w), settings.batch_sharding)
        new_state, metrics = trainer.train_step(carry.state, batch)
        # an update counts only while the run is healthy, within max_steps, and it keeps
        # everything finite; a masked select rather than lax.cond: under vmap a cond would
        # become a select of the whole carry anyway, and unbatched the epoch loop stops
        # after this epoch. An update past max_steps is discarded, not a divergence.
        loss = float_array(metrics["loss"])  # float32 for a float32 model; sums and thresholds are float64 under x64
        healthy = jnp.isfinite(loss) & (loss <= data.divergence_threshold) & all_finite(new_state.params)
        within = True if settings.max_steps is None else carry.state.step < settings.max_steps
        fails = ~healthy & within & ~carry.diverged
        ok = healthy & within & ~carry.diverged
        total = float_array(jnp.sum(w))
        counted = {k: float_array(metrics[k]) * total for k in names}
        return _StepCarry(
            state=tree_where(ok, new_state, carry.state),
            diverged=carry.diverged | fails,
            diverged_step=jnp.where(fails, carry.state.step, carry.diverged_step),
            last_loss=jnp.where(ok, loss, carry.last_loss),
            sums={k: carry.sums[k] + jnp.where(ok, counted[k], 0) for k in carry.sums},
            weight=carry.weight + jnp.where(ok, total, 0),
            lr=jnp.where(ok, float_array(metrics["lr"]), carry.lr),
        ), None

    sums = {k: float_array(0.0) for k in names}
    start = _StepCarry(
        state, result.diverged, result.diverged_step, result.last_finite_loss, sums, float_array(0.0), float_array()
    )
    end, _ = jax.lax.scan(step, start, (indices, weights))
    means = {k: end.sums[k] / end.weight for k in names} | {"lr": end.lr}
    result = result._replace(
        train_state=end.state,
        diverged=end.diverged,
        diverged_step=end.diverged_step,
        diverged_epoch=jnp.where(end.diverged, end.state.epoch, -1).astype(jnp.int32),
        last_finite_loss=end.last_loss,
    )
    return result, means


def end_epoch(trainer: Trainer, loop: Loop, means: dict, data: RunData, settings: Settings) -> Loop:
    """Evaluate, record history, track the best epoch and decide on early stopping.

    The params evaluated and kept as the best are the moving average's when the trainer
    has an evaluating ``ema`` (``fnn.averaging.evaluated``), else the raw params."""
    result = loop.result
    state = result.train_state
    params, model_state = evaluated(trainer.ema, state)
    if data.validation is not None:
        scores = trainer.evaluate(params, model_state, *data.validation, batch_size=settings.eval_batch_size)
        means = means | {f"val_{k}": v for k, v in scores.items()}
    epoch = state.epoch
    history = {k: h.at[epoch].set(means[k].astype(h.dtype)) for k, h in result.history.items()}
    value = means[settings.monitor]
    if settings.maximize:
        improved = value > loop.best_value + data.tol
    else:
        improved = value < loop.best_value - data.tol
    improved = improved & ~result.diverged
    wait = jnp.where(improved, 0, loop.wait + 1).astype(jnp.int32)
    stopped = jnp.asarray(False) if settings.patience is None else wait >= settings.patience
    result = result._replace(
        train_state=state._replace(epoch=jnp.where(result.diverged, epoch, epoch + 1).astype(jnp.int32)),
        best_params=tree_where(improved, params, result.best_params),
        best_model_state=tree_where(improved, model_state, result.best_model_state),
        best_epoch=jnp.where(improved, epoch, result.best_epoch).astype(jnp.int32),
        history=history,
        stopped_early=stopped & ~result.diverged,
    )
    best_value = jnp.where(improved, value, loop.best_value).astype(loop.best_value.dtype)
    return Loop(result=result, best_value=best_value, wait=wait)


def running(loop: Loop, end_epoch_index, max_steps: int | None = None) -> jax.Array:
    """Whether the run goes on: before ``end_epoch_index`` and ``max_steps`` updates
    (``None``: no limit), not stopped, not diverged."""
    r = loop.result
    going = (r.train_state.epoch < end_epoch_index) & ~r.stopped_early & ~r.diverged
    return going if max_steps is None else going & (r.train_state.step < max_steps)


def _report(names: list[str], before: Loop, after: Loop, end_epoch_index, max_steps: int | None) -> Loop:
    """Plant the progress report of the epoch just run (see ``fnn.progress``).

    ``names``: the history entries in the order to print (the carry's dict comes back
    sorted by key). The report's acknowledgement (always 0) is added to the epoch counter, which the
    loop's condition reads: a callback whose result could be pruned would be dropped
    by the compiler (an outer ``jit`` keeps only the carry it returns).
    """
    epoch = before.result.train_state.epoch
    values = {k: after.result.history[k][epoch] for k in names}
    epochs = len(after.result.history["loss"])
    ack = progress_lib.report(epoch, epochs, values, running(before, end_epoch_index, max_steps))
    state = after.result.train_state
    return after._replace(result=after.result._replace(train_state=state._replace(epoch=state.epoch + ack)))


def _run_epochs(trainer: Trainer, loop: Loop, data: RunData, end_epoch_index, settings: Settings) -> Loop:
    """Run epochs until ``end_epoch_index``, early stop or divergence: the compiled program."""

    def epoch(loop: Loop) -> Loop:
        result, means = train_epoch(trainer, loop.result, data, settings)
        after = end_epoch(trainer, loop._replace(result=result), means, data, settings)
        if not settings.progress:
            return after
        names = history_names(trainer, data.validation is not None)
        return _report(names, loop, after, end_epoch_index, settings.max_steps)

    return jax.lax.while_loop(lambda loop: running(loop, end_epoch_index, settings.max_steps), epoch, loop)


run_epochs = jit_program(_run_epochs, ("settings",))
