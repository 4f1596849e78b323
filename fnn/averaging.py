"""Parameter averaging: an exponential moving average (EMA) of the params over the updates.

Evaluating a network with an average of its recent parameters instead of the last ones
often gives a lower and smoother validation loss: the average cancels part of the
noise of the stochastic updates. ``fnn.Trainer(..., ema=fnn.ema(0.999))`` keeps one,
updated after every update, in the ``TrainState`` (``ema_params``, ``ema_model_state``:
batch-norm running statistics are averaged too, as timm's ``ModelEmaV2`` and Lightning's
``WeightAveraging`` with buffers do); with ``evaluate=True`` (the default) the run's
validation, early stopping and ``best_params`` use the average.

With ``θ_t`` the params after update ``t`` (``t = 1, 2, ...``: ``TrainState.step`` after
the update; ``θ_0`` the initial params), the average ``a_t`` takes a weight ``w_t`` of the
new params::

    a_0 = θ_0
    a_t = (1 - w_t) · a_{t-1} + w_t · θ_t

and ``w_t`` is, for decay ``d``:

* plain (``debias=False``): ``w_t = 1 - d``, i.e. ``a_t = d · a_{t-1} + (1 - d) · θ_t``,
  started from the initial params: TensorFlow's ``tf.train.ExponentialMovingAverage``
  without ``num_updates`` (shadow variables start at the variables' initial values) and
  Keras's ``use_ema`` / ``ema_momentum`` rule (Keras copies the params at its first step
  instead). The initial params keep the weight ``d^t``: with ``d = 0.999`` they still
  count 37% after 1,000 updates.
* ``debias=True`` (the default): ``w_t = (1 - d) / (1 - d^t)``. Then ``a_t`` is exactly the
  zero-started average divided by its total weight, Adam's bias correction (Kingma & Ba
  2015, Section 3; optax's ``ema(debias=True)``, TensorFlow's ``zero_debias``)::

      m_0 = 0,   m_t = d · m_{t-1} + (1 - d) · θ_t,   a_t = m_t / (1 - d^t)
                                                         = Σ_{i=1..t} d^(t-i) θ_i / Σ_{i=1..t} d^(t-i)

  a weighted mean of the params seen so far: ``a_1 = θ_1`` and the initial params count
  for nothing. (Proof: ``(1 - d^t) a_t = d (1 - d^{t-1}) a_{t-1} + (1 - d) θ_t``, and
  ``d (1 - d^{t-1}) = (1 - d^t) - (1 - d)``.) ``1 - d^t`` is computed as
  ``-expm1(t · log1p(-(1 - d)))``, exact to rounding where ``1 - d**t`` would lose digits.
* ``warmup=True`` (with ``debias=False``): TensorFlow's ``num_updates`` rule, the decay
  ``d_t = min(d, (1 + t) / (10 + t))`` and ``w_t = 1 - d_t``: the average follows the
  params closely at first (``d_1 = 2/11``) and reaches ``d`` after about ``(10d - 1) / (1 - d)``
  updates.

The stored ``a_t`` is the usable average in every mode (no correction is left to apply
when reading it). Polyak & Juditsky (1992), "Acceleration of stochastic approximation by
averaging", SIAM J. Control Optim. 30(4), show that averaging the iterates of stochastic
approximation attains the optimal rate; the exponential weights here forget the early
iterates, as the moving averages of TensorFlow, Keras, Flax's examples, timm and
Lightning do.

The average has the dtype of each params leaf (float32 for fnn's models); the weights are
computed in the default float dtype and cast to it. Integer leaves of the model state
are not averaged: they take the new value. ``decay`` is a pytree leaf: traced, so a new
value reuses the compiled program and a sweep can grid it (``config(decay=...)``);
``debias``, ``warmup`` and ``evaluate`` are static.

fnn's construction convention (docs/architecture.md): :class:`EMA` carries this
documentation and checks its arguments when built (``__post_init__``); the lowercase
public name ``fnn.ema`` is the class itself.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.checks import FRACTION, check_fields, check_same_structure
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Hyperparameter, ModelState, Params, PyTree


@pytree_dataclass
class EMA:
    """An exponential moving average of the params (and model state), for ``fnn.Trainer(ema=...)``.

    The equations, their sources and the modes are in the module docstring
    (:mod:`fnn.averaging`): ``a_t = (1 - w_t) · a_{t-1} + w_t · θ_t`` after every update
    ``t``, with ``w_t = (1 - d) / (1 - d^t)`` (``debias=True``), ``1 - min(d, (1 + t) /
    (10 + t))`` (``warmup=True``) or ``1 - d``.

    Args:
      decay: ``d`` in [0, 1): the weight of the old average at each update (a scalar,
        traced or not; a sweep may grid it). The average spans about ``1 / (1 - d)``
        updates: 0.99 for runs of hundreds of updates, 0.999 for thousands. 0 keeps the
        last params.
      debias: divide out the weight of the zero start (Adam's bias correction), so the
        average is a weighted mean of the params after each update (static).
      warmup: TensorFlow's ``num_updates`` warm-up of the decay instead (static; needs
        ``debias=False``).
      evaluate: validate, early-stop and keep ``best_params`` / ``best_model_state``
        with the average (static). ``False``: with the raw params, as without an EMA;
        the average is only carried (``result.train_state.ema_params``). The training
        loss and metrics of the history are always those of the raw params' updates.

    Raises:
      ValueError: naming the argument: ``decay`` not a number in [0, 1) (when concrete),
        a flag not a bool, or both ``debias`` and ``warmup``.
    """

    decay: Hyperparameter
    debias: bool = static_field(default=True)
    warmup: bool = static_field(default=False)
    evaluate: bool = static_field(default=True)

    def __post_init__(self):
        check_fields(self, ("debias", "warmup", "evaluate"), decay=FRACTION)
        if self.debias and self.warmup:
            raise ValueError(
                "ema takes debias=True or warmup=True, not both: debias divides out the zero start's weight, "
                "warmup lowers the decay at first; pass debias=False with warmup=True"
            )

    def weight(self, count: jax.Array) -> jax.Array:
        """``w_t``, the weight of the params after update ``t``.

        Args:
          count: ``t`` >= 1, the updates applied including this one (an int scalar).
        Returns:
          a scalar of the default float dtype, in (0, 1] (``1 - d`` without debiasing or
          warm-up).
        """
        dtype = jnp.result_type(float)
        d = jnp.asarray(self.decay, dtype)
        t = jnp.asarray(count, dtype)
        if self.debias:
            return (1 - d) / -jnp.expm1(t * jnp.log1p(-(1 - d)))  # (1 - d) / (1 - d^t)
        if self.warmup:
            return 1 - jnp.minimum(d, (1 + t) / (10 + t))
        return 1 - d

    def average(self, averages: PyTree, values: PyTree, count: jax.Array) -> PyTree:
        """One update of the average: ``(1 - w_t) · averages + w_t · values``, leaf by leaf.

        Args:
          averages: ``a_{t-1}``, a pytree of the structure and leaf shapes of ``values``
            (``TrainState.ema_params`` or ``ema_model_state``).
          values: ``θ_t``, the params (or model state) after update ``t``.
          count: ``t`` >= 1, the updates applied including this one.
        Returns:
          ``a_t``: floating leaves in their dtype; other leaves (integer counters of a
          model state) take the new value.
        Raises:
          ValueError: ``averages`` is ``None`` (a TrainState made by a Trainer without
            ``ema``) or does not fit ``values``.
        """
        if averages is None:
            raise ValueError(
                "the TrainState has no moving average (ema_params / ema_model_state is None): it was made by a "
                "Trainer without ema; start from this trainer's init, or warm-start from its params"
            )
        check_same_structure("the moving average", averages, "the params it averages", values)
        w = self.weight(count)

        def one(a, v):
            if not jnp.issubdtype(jnp.result_type(v), jnp.inexact):
                return v
            dtype = jnp.result_type(v)
            return jnp.asarray(1 - w, dtype) * a + jnp.asarray(w, dtype) * v

        return jax.tree.map(one, averages, values)


def evaluated(ema: EMA | None, state: Any) -> tuple[Params, ModelState]:
    """The params and model state a run evaluates and keeps as its best.

    Args:
      ema: the trainer's ``ema`` (or ``None``).
      state: a ``fnn.TrainState``.
    Returns:
      ``(state.ema_params, state.ema_model_state)`` when ``ema.evaluate``, else
      ``(state.params, state.model_state)``. Decided from the trainer's structure, so
      it branches statically.
    """
    if ema is not None and ema.evaluate:
        return state.ema_params, state.ema_model_state
    return state.params, state.model_state


def check_state(ema: EMA | None, state: Any, name: str = "train_state") -> None:
    """Check that a given TrainState's moving average fits the trainer's ``ema``.

    Args:
      ema: the trainer's ``ema`` (or ``None``).
      state: a ``fnn.TrainState`` (``fit(train_state=...)``).
      name: the state's name in messages.
    Raises:
      ValueError: the state has an average and the trainer no ``ema``, or the reverse,
        or the average does not have the structure, shapes and dtypes of the params and
        model state.
    """
    if ema is None and state.ema_params is not None:
        raise ValueError(
            f"{name} carries a moving average of the params ({name}.ema_params) but trainer.ema is None: "
            f"pass a trainer with ema=fnn.ema(...) to continue it, or drop it with "
            f"{name}._replace(ema_params=None, ema_model_state=None)"
        )
    if ema is None:
        return
    if state.ema_params is None:
        raise ValueError(
            f"trainer.ema is set but {name} has no moving average ({name}.ema_params is None: it was made by a "
            f"trainer without ema); start from the trainer's init, or warm-start from its params with "
            f"params={name}.params, model_state={name}.model_state"
        )
    for part, model_part in (("ema_params", "params"), ("ema_model_state", "model_state")):
        average, values = getattr(state, part), getattr(state, model_part)
        check_same_structure(f"{name}.{part}", average, f"{name}.{model_part}", values)
        for a, v in zip(jax.tree.leaves(average), jax.tree.leaves(values)):
            if np.dtype(jnp.result_type(a)) != np.dtype(jnp.result_type(v)):
                raise ValueError(
                    f"{name}.{part} must have the dtypes of {name}.{model_part}; got {jnp.result_type(a)} "
                    f"for {jnp.result_type(v)}"
                )


# The public name is the class itself: one signature, one docstring, one check.
ema = EMA
