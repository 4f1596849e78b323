"""The training step: forward, loss, backward (``jax.grad``), update.

A ``Trainer`` bundles what one training step needs — the model, the optimizer, the loss
and an optional regularizer — as a pytree: the optimizer's and regularizer's numbers
(learning rate, momentum, L2 strength, dropout rate, ...) are leaves, so a compiled step
takes new values without recompiling and ``jax.vmap`` maps over them; the structure
(layer sizes, the loss function) is static.

A ``TrainState`` is everything that changes during training, also a pytree::

    params        trainable parameters (the model's params pytree)
    model_state   non-trainable state: batch-norm running statistics (or ())
    opt_state     the optimizer's state (moments, accumulators, its step count)
    step          number of updates applied so far (int32)
    epoch         number of epochs completed (int32)
    key           the run's base PRNG key; every random draw of the run comes from it
                  (:func:`params_key`, :func:`order_key`, :func:`dropout_key`), so a run
                  is a function of this key alone.
    ema_params, ema_model_state
                  the exponential moving average of the params and model state
                  (``Trainer(ema=fnn.ema(decay))``, :mod:`fnn.averaging`), updated after
                  every update; ``None`` without ``ema`` (nothing is added to the run).
    loss_scale    the dynamic loss scale's state (float16 compute, :mod:`fnn.loss_scaling`);
                  ``None`` without ``loss_scaling``.

One update (``Trainer.train_step``), for a mini-batch (x, y) with example weights w::

    L(θ) = loss(model(θ, x), y, w) + regularizer(θ)
    g    = ∇θ L(θ)                       (jax.grad — backpropagation)
    θ, opt_state = optimizer.update(g, opt_state, θ)      (e.g. θ ← θ - lr · g)
    a ← (1 - w_t) · a + w_t · θ          (with ema: the moving average, fnn.averaging)

With ``compute_dtype=jnp.float16`` the step differentiates ``S · L(θ)`` and divides ``g`` by
the loss scale ``S``; a step whose ``g`` is not finite is skipped and lowers ``S``, unless
``S`` is at its floor (dynamic loss scaling, :mod:`fnn.loss_scaling`).

Two options of the Trainer change how ``g`` is computed (:meth:`Trainer.gradients`), never
the update: ``accumulate=k`` sums the gradient over ``k`` micro-batches of the
mini-batch in a ``lax.scan`` (the memory of one micro-batch; :mod:`fnn.accumulation`),
and ``privacy=fnn.dp_sgd(clip_norm, noise_multiplier)`` clips every example's gradient
and adds Gaussian noise (DP-SGD; :mod:`fnn.privacy`). Either way ``g`` is the gradient
of the mini-batch's weighted mean loss (clipped and noised under DP-SGD), divided by
the mini-batch's weight, plus the regularizer's gradient, and the optimizer takes one
update.

Keys inside an update, all from its key ``k`` (``dropout_key(run_key, step)`` or the key
passed to ``train_step``): micro-batch ``i``'s dropout key is ``fold_in(k, i)``, DP-SGD's
example ``j``'s ``fold_in(k, j)`` (its row in the mini-batch) and its noise key
:func:`noise_key` ``= fold_in(k, 2**31 - 1)``.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import accumulation, loss_scaling, precision
from fnn import losses as losses_lib
from fnn.averaging import EMA
from fnn.batching import eval_batches
from fnn.checks import as_key, check_int, is_concrete
from fnn.data_checks import check_data
from fnn.layers import as_model, check_params
from fnn.loss_scaling import DynamicLossScale, LossScaleState
from fnn.privacy import DPSGD
from fnn.pytree import pytree_dataclass, static_field
from fnn.tree_util import all_finite, tree_where
from fnn.types import ModelState, OptState, Params, PRNGKeyLike


class TrainState(NamedTuple):
    """Everything that changes during training (see the module docstring)."""

    params: Params
    model_state: ModelState
    opt_state: OptState
    step: jax.Array
    epoch: jax.Array
    key: jax.Array
    ema_params: Params = None
    ema_model_state: ModelState = None
    loss_scale: LossScaleState | None = None


# The run key's streams (the PRNG contract), derived here and nowhere else.
_ORDER, _DROPOUT, _PARAMS = 0, 1, 2


def params_key(run_key: jax.Array) -> jax.Array:
    """The key the model's params are drawn from: ``fold_in(run_key, 2)``."""
    return jax.random.fold_in(run_key, _PARAMS)


def order_key(run_key: jax.Array, epoch) -> jax.Array:
    """The key of epoch ``epoch``'s data order: ``fold_in(fold_in(run_key, 0), epoch)``."""
    return jax.random.fold_in(jax.random.fold_in(run_key, _ORDER), epoch)


def dropout_key(run_key: jax.Array, step) -> jax.Array:
    """The dropout key of update ``step``: ``fold_in(fold_in(run_key, 1), step)``."""
    return jax.random.fold_in(jax.random.fold_in(run_key, _DROPOUT), step)


_NOISE = 2**31 - 1  # a stream of an update's key apart from its micro-batches' and examples' (0, 1, ...)


def noise_key(step_key: ArrayLike) -> jax.Array:
    """The key of an update's gradient noise (DP-SGD, :mod:`fnn.privacy`): ``fold_in(step_key, 2**31 - 1)``
    of the update's key ``step_key`` (:func:`dropout_key`, or the key passed to ``train_step``)."""
    return jax.random.fold_in(step_key, _NOISE)


_RESERVED = ("loss", "lr")  # history entries the engine writes itself


def _checked_metrics(metrics) -> tuple:
    """``metrics`` as ``((name, metric), ...)``: string names (not a reserved history entry
    nor ``val_*``) mapped to functions; a ValueError names what is wrong."""
    pairs = metrics.items() if isinstance(metrics, dict) else metrics
    try:
        pairs = tuple((name, metric) for name, metric in pairs)
    except (TypeError, ValueError):
        raise ValueError(
            f"metrics must be a dict {{name: metric(predictions, targets, weights)}}; got {metrics!r}"
        ) from None
    for name, metric in pairs:
        if not isinstance(name, str) or not callable(metric):
            raise ValueError(f"metrics must map string names to functions; got {name!r}: {metric!r}")
        if name in _RESERVED or name.startswith("val_"):
            raise ValueError(f"metric name {name!r} is taken by the history ({', '.join(_RESERVED)}, val_*): rename it")
    return pairs


@pytree_dataclass
class Trainer:
    """What a training step needs: ``model``, ``optimizer``, ``loss``, ``regularizer``.

    Args:
      model: an fnn Layer (e.g. ``fnn.mlp(...)``) or a pure function ``f(params, x)``
        (then pass ``params=`` to ``init``/``fit``).
      optimizer: an fnn optimizer, e.g. ``fnn.adam(1e-3)``.
      loss: ``loss(predictions, targets, weights) -> scalar`` (see ``fnn.losses``).
      regularizer: optional ``reg(params) -> scalar`` added to the loss (``fnn.l2``).
      metrics: ``{name: metric(predictions, targets, weights)}``; by default the loss's
        declared metrics (accuracy for the classification losses, nothing for mse). Names
        must not be "loss" or "lr" or start with "val_" (history entries).
      ema: optional ``fnn.ema(decay, ...)``: keep an exponential moving average of the
        params and model state in the TrainState (``ema_params``, ``ema_model_state``),
        by default the params that validation and ``best_params`` use
        (:mod:`fnn.averaging`).
      accumulate: micro-batches per update (static int >= 1; default 1): each mini-batch
        of ``fit``'s ``batch_size`` (the effective batch, which it must divide) is split
        into ``accumulate`` micro-batches whose gradients are summed in a ``lax.scan``
        before one update (:mod:`fnn.accumulation`: dropout keys, batch norm).
      privacy: ``fnn.dp_sgd(clip_norm, noise_multiplier)`` for DP-SGD's clipped, noised
        per-example gradients (:class:`fnn.privacy.DPSGD`), or ``None``; its numbers are
        leaves (a sweep grids them). Refused for a model with state (batch norm).
      compute_dtype: ``jnp.bfloat16`` or ``jnp.float16`` for mixed precision (static;
        default ``None``: the params' dtype): the training forward and backward passes in
        that dtype, the params, optimizer state, loss, metrics and means in float32
        (:mod:`fnn.precision`).
      loss_scaling: for float16 compute, the dynamic loss scale (default
        ``fnn.dynamic_loss_scale()`` with float16, :mod:`fnn.loss_scaling`); refused with
        another compute dtype (bfloat16 has float32's exponent range and needs none) and
        with ``privacy`` (the clip norm would apply to scaled gradients).
    """

    model: Any
    optimizer: Any
    loss: Callable = static_field(default=losses_lib.mse)
    regularizer: Any = None
    metrics: Any = static_field(default=None)
    ema: Any = None
    accumulate: int = static_field(default=1)
    privacy: Any = None
    compute_dtype: Any = static_field(default=None)
    loss_scaling: Any = None

    def __post_init__(self):
        object.__setattr__(self, "model", as_model(self.model))
        if not callable(self.loss):
            raise ValueError(f"loss must be a function loss(predictions, targets, weights); got {self.loss!r}")
        for name in ("init", "update", "learning_rate"):
            if not hasattr(self.optimizer, name):
                raise ValueError(
                    f"optimizer must be an fnn optimizer (with .{name}); got {type(self.optimizer).__name__}"
                )
        metrics = losses_lib.default_metrics(self.loss) if self.metrics is None else self.metrics
        object.__setattr__(self, "metrics", _checked_metrics(metrics))
        object.__setattr__(self, "accumulate", check_int("accumulate", self.accumulate))
        object.__setattr__(self, "compute_dtype", precision.check_compute_dtype(self.compute_dtype))
        if self.privacy is not None and not isinstance(self.privacy, DPSGD):
            raise ValueError(
                f"privacy must be fnn.dp_sgd(clip_norm, noise_multiplier) or None; got {type(self.privacy).__name__}"
            )
        if self.privacy is not None and jax.tree.leaves(self.model._state_shapes()):
            raise ValueError(
                "privacy (DP-SGD) needs per-example gradients, and this model has state (batch norm, whose "
                "statistics mix the examples of a batch): use a model without state (LayerNorm instead of BatchNorm)"
            )
        if self.ema is not None and not isinstance(self.ema, EMA):
            raise ValueError(f"ema must be fnn.ema(decay, ...) or None; got {self.ema!r}")
        self._check_loss_scaling()

    def _check_loss_scaling(self):
        """Default float16's dynamic loss scale; refuse one without float16, or with DP-SGD."""
        float16 = self.compute_dtype == jnp.float16
        if float16 and self.loss_scaling is None:
            object.__setattr__(self, "loss_scaling", DynamicLossScale())
        if self.loss_scaling is None:
            return
        if not isinstance(self.loss_scaling, DynamicLossScale):
            raise ValueError(
                f"loss_scaling must be fnn.dynamic_loss_scale(...) or None; got {type(self.loss_scaling).__name__}"
            )
        if not float16:
            raise ValueError(
                f"loss_scaling is for compute_dtype=jnp.float16 (float16's narrow exponent range); got "
                f"compute_dtype={self.compute_dtype}: drop loss_scaling (bfloat16 and float32 need none)"
            )
        if self.privacy is not None:
            raise ValueError(
                "compute_dtype=float16 (with its loss scaling) and privacy (DP-SGD) do not go together: DP-SGD clips "
                "each example's gradient to clip_norm, and a scaled gradient is loss_scale times too large; use "
                "compute_dtype=jnp.bfloat16 with privacy"
            )

    def init(self, key: PRNGKeyLike, params: Params = None, model_state: ModelState = None) -> TrainState:
        """A fresh TrainState: params from ``model.init`` (unless given), optimizer state,
        step 0, epoch 0, the run key and, with ``ema``, the average started at the params.

        Args:
          key: int seed or PRNG key; params are drawn from :func:`params_key`.
          params, model_state: start from these instead of ``model.init`` (a warm
            start); ``model_state`` may be left out only for a model without state.
            Both are checked against the model's structure.
        Raises:
          ValueError: a bad key, or params / model_state that do not fit the model.
        """
        run_key = as_key(key)
        if params is None:
            params, model_state = self.model.init(params_key(run_key))
        else:
            model_state = check_params(self.model, params, model_state, names=("params", "model_state"))
            for path, leaf in jax.tree_util.tree_leaves_with_path(params):
                if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
                    where = "params" + jax.tree_util.keystr(path)
                    raise ValueError(
                        f"{where} must be floating point (it is trained); got dtype {jnp.result_type(leaf)}"
                    )
        opt_state = self.optimizer.init(params)
        zero = jnp.zeros((), jnp.int32)
        state = TrainState(params, model_state, opt_state, zero, zero, run_key)
        if self.loss_scaling is not None:
            state = state._replace(loss_scale=self.loss_scaling.init())
        if self.ema is None:
            return state
        return state._replace(ema_params=params, ema_model_state=model_state)  # a_0 = θ_0 (fnn.averaging)

    def objective(
        self,
        params: Params,
        model_state: ModelState,
        x: jax.Array,
        y: jax.Array,
        weights: jax.Array | None,
        key: ArrayLike | None,
    ) -> tuple[jax.Array, tuple[jax.Array, ModelState, jax.Array]]:
        """The training objective and what the step reports.

        Returns:
          ``(total, (loss, new_model_state, predictions))`` where total = loss + penalty.
        """
        loss, (new_model_state, predictions) = self.data_loss(params, model_state, x, y, weights, key)
        penalty = 0.0 if self.regularizer is None else self.regularizer(params)
        return loss + penalty, (loss, new_model_state, predictions)

    def data_loss(
        self,
        params: Params,
        model_state: ModelState,
        x: jax.Array,
        y: jax.Array,
        weights: jax.Array | None,
        key: ArrayLike | None,
    ) -> tuple[jax.Array, tuple[ModelState, jax.Array]]:
        """The loss on a batch, without the regularizer: the training-mode forward pass and the loss.

        With ``compute_dtype``, the params and x are cast to it for the forward pass and
        the predictions back to x's dtype for the loss (:mod:`fnn.precision`).

        Returns:
          ``(loss, (new_model_state, predictions))``.
        """
        if self.compute_dtype is None:
            predictions, new_model_state = self.model.apply_train(params, x, state=model_state, key=key)
        else:
            low_params, low_x = precision.cast((params, x), self.compute_dtype)
            predictions, new_model_state = self.model.apply_train(low_params, low_x, state=model_state, key=key)
            predictions = predictions.astype(precision.output_dtype(x))
        return self.loss(predictions, y, weights), (new_model_state, predictions)

    def gradients(
        self,
        params: Params,
        model_state: ModelState,
        x: jax.Array,
        y: jax.Array,
        weights: jax.Array | None,
        key: ArrayLike | None,
        scale: jax.Array | None = None,
    ) -> tuple[Any, tuple[jax.Array, ModelState, jax.Array]]:
        """The gradient of the objective on a mini-batch, and what the step reports.

        By default ``jax.grad`` of :meth:`objective`. With ``accumulate=k`` or ``privacy``:
        the example-weighted gradient sums of the ``k`` micro-batches
        (:func:`fnn.accumulation.accumulate`; per-example and clipped under DP-SGD,
        :meth:`fnn.privacy.DPSGD.batch_sums`), DP-SGD's noise added once
        (:func:`noise_key`), divided by the mini-batch's weight, plus the regularizer's gradient.
        With a loss ``scale`` ``S`` (float32 scalar; :mod:`fnn.loss_scaling`): the gradient
        of ``S`` times the loss, divided by ``S``.

        Returns:
          ``(grads, (loss, new_model_state, predictions))``: loss and predictions of the whole mini-batch.
        """
        if scale is not None and self.privacy is not None:
            raise ValueError("gradients takes a loss scale only without privacy (DP-SGD clips unscaled gradients)")
        if self.accumulate == 1 and self.privacy is None:
            objective = loss_scaling.scaled(self.objective, scale)
            grads, aux = jax.grad(objective, has_aux=True)(params, model_state, x, y, weights, key)
            return loss_scaling.unscale(grads, scale), aux
        if self.privacy is None:
            data_loss = loss_scaling.scaled(self.data_loss, scale)
            sums = functools.partial(accumulation.batch_sums, data_loss, params)
        elif key is None:
            raise ValueError("privacy (DP-SGD) draws noise: gradients needs the update's key (train_step's default)")
        else:
            sums = functools.partial(self.privacy.batch_sums, self.data_loss, params, key)
        total, model_state, predictions = accumulation.accumulate(
            sums, self.accumulate, model_state, x, y, weights, key
        )
        noise = None if self.privacy is None or key is None else self.privacy.noise(noise_key(key), total.grads)
        grads, loss = loss_scaling.unscale(accumulation.mean(total, noise), scale)
        if self.regularizer is not None:
            grads = jax.tree.map(jnp.add, grads, jax.grad(self.regularizer)(params))
        return grads, (loss, model_state, predictions)

    def train_step(
        self,
        state: TrainState,
        batch: tuple[jax.Array, jax.Array] | tuple[jax.Array, jax.Array, jax.Array],
        key: ArrayLike | None = None,
    ) -> tuple[TrainState, dict[str, jax.Array]]:
        """One update on a mini-batch; pure and jit-able.

        Args:
          state: the TrainState before the update.
          batch: ``(x, y)`` or ``(x, y, weights)``; x [b, ...], y [b, ...], weights [b].
          key: dropout key; default :func:`dropout_key` of the run key and ``state.step``.
        Returns:
          ``(new_state, metrics)``: metrics is a dict with "loss" (the data loss, without
          the penalty), "lr" (the learning rate used) and the trainer's metrics.
        """
        x, y, weights = batch if len(batch) == 3 else (*batch, None)
        if key is None:
            key = dropout_key(state.key, state.step)
        loss_scaling.check_state(self.loss_scaling, state, name="state")
        scale = None if state.loss_scale is None else state.loss_scale.scale
        grads, (loss, model_state, predictions) = self.gradients(
            state.params, state.model_state, x, y, weights, key, scale
        )
        lr = self.optimizer.learning_rate(state.opt_state)
        params, opt_state = self.optimizer.update(grads, state.opt_state, state.params)
        new_state = state._replace(params=params, model_state=model_state, opt_state=opt_state, step=state.step + 1)
        if self.ema is not None:  # static (the trainer's structure): without ema nothing is added to the program
            new_state = new_state._replace(
                ema_params=self.ema.average(state.ema_params, new_state.params, new_state.step),
                ema_model_state=self.ema.average(state.ema_model_state, new_state.model_state, new_state.step),
            )
        if self.loss_scaling is not None:  # a non-finite gradient above the floor: skip the step, lower the scale
            finite = all_finite(grads)
            new_state = tree_where(self.loss_scaling.skips(state.loss_scale, finite), state, new_state)._replace(
                loss_scale=self.loss_scaling.adjust(state.loss_scale, finite)
            )
        metrics = {"loss": loss, "lr": jnp.asarray(lr), **self.measure(predictions, y, weights)}
        return new_state, metrics

    def measure(self, predictions: jax.Array, y: ArrayLike, weights: ArrayLike | None) -> dict[str, jax.Array]:
        """The trainer's metrics on one batch: ``{name: scalar}``."""
        return {name: metric(predictions, y, weights) for name, metric in self.metrics}

    def evaluate(
        self, params: Params, model_state: ModelState, x: ArrayLike, y: ArrayLike, batch_size: int = 1024
    ) -> dict[str, jax.Array]:
        """Loss and metrics in evaluation mode over a whole dataset, in batches.

        Memory stays bounded by ``batch_size`` examples; the last batch is padded with
        weight-0 rows. Pure and jit-able (``batch_size`` static).

        Args:
          params, model_state: the model's parameters and running statistics.
          x, y: [n, ...] inputs and targets.
          batch_size: examples per forward pass.
        Returns:
          dict ``{"loss": scalar, <metric>: scalar, ...}`` — example-weighted means.
        """
        batch_size = check_int("batch_size", batch_size)
        x, y = jnp.asarray(x), jnp.asarray(y)
        if is_concrete((x, y)):
            check_data(self.model, self.loss, params, model_state, x, y)
        n = x.shape[0]
        indices, weights = eval_batches(n, min(batch_size, n))

        def body(totals, batch):
            idx, w = batch
            predictions = self.model.apply(params, x[idx], state=model_state)
            values = {"loss": self.loss(predictions, y[idx], w), **self.measure(predictions, y[idx], w)}
            count = jnp.sum(w).astype(jnp.result_type(float))  # totals are in the default float dtype
            return jax.tree.map(lambda t, v: t + jnp.asarray(v, t.dtype) * count, totals, values), None

        zeros = {name: jnp.zeros((), jnp.result_type(float)) for name in ("loss", *dict(self.metrics))}
        totals, _ = jax.lax.scan(body, zeros, (indices, weights))
        return jax.tree.map(lambda t: t / n, totals)
