"""Dynamic loss scaling: float16 gradients that neither underflow nor overflow.

float16 keeps 5 exponent bits: its normal numbers span 6.1e-5 to 65504 and its smallest
subnormal is 6.0e-8. In a float16 backward pass (``fnn.Trainer(...,
compute_dtype=jnp.float16)``, :mod:`fnn.precision`) many activation gradients are
smaller than that and flush to zero. Micikevicius et al. (2018), "Mixed Precision
Training", ICLR, Section 3.3, multiply the loss by a scale ``S`` before the backward
pass, so every gradient of the chain rule is ``S`` times larger and lands in float16's
range, and divide the float32 weight gradients by ``S`` before the update. A fixed ``S``
too large overflows to inf; *dynamic* scaling finds the largest ``S`` that does not,
and follows it as training goes on:

    g = ∇θ (S · L(θ)) / S                   (the backward pass sees S · L; g is float32)
    if every element of g is finite:         apply the update
        n ← n + 1
        if n = N:  S ← f · S,  n ← 0        (try a larger scale after N good steps)
    else if S > S_min:                       skip the step: params, model state, optimizer
        S ← max(S / f, S_min),  n ← 0          state, step count and EMA stay as they were
    else:                                    apply it: a divergence (below)

with the growth factor ``f`` (2), the period ``N`` (2000 steps) and the floor ``S_min``
(1). The defaults and the skip rule are those of PyTorch's ``torch.amp.GradScaler``
(``init_scale=2**16``, ``growth_factor=2``, ``backoff_factor=0.5``,
``growth_interval=2000``), Keras' ``LossScaleOptimizer`` (``initial_scale=2**15``,
``dynamic_growth_steps=2000``) and DeepMind's ``jmp.DynamicLossScale``; fnn starts at
Keras' ``2**15``, which the first overflowing steps lower if it is too large. Scales are
powers of two (for a power-of-two start, factor and floor), so scaling and unscaling are
exact: with finite gradients, a scaled step gives the gradient of the unscaled loss up
to float16's rounding of the backward pass, never through the scale.

A skipped step changes nothing but the scale: ``TrainState.step`` counts applied
updates, so the optimizer's step count, the schedules, the EMA and ``max_steps`` count
them too, and the next mini-batch takes the skipped step's dropout key. The loss and
metrics of a skipped step are still reported in the epoch's means (its forward pass
ran).

What the scale cannot rescue is a divergence, as in float32. A non-finite gradient at the
floor ``S = S_min`` is not an overflow that a smaller scale would avoid: that step is
applied, its non-finite params stop ``fit`` with a ``DivergenceError`` naming the update
(rather than a run that skips every step and never trains). A forward pass that
overflows (a loss of inf) stops it at once. Scales are held in float32:
``initial_scale`` and ``min_scale`` must be normal float32 numbers (about 1.2e-38 to
3.4e38), and a growth that would overflow float32 keeps the scale.

The scale's state lives in ``TrainState.loss_scale`` (:class:`LossScaleState`: the scale,
the good steps since the last change, and the skipped steps of the run), so it is
checkpointed and resumed with the run. ``initial_scale``, ``factor`` and ``min_scale``
are pytree leaves (traced: a sweep can grid them); ``period`` is static.

fnn's construction convention (docs/architecture.md): :class:`DynamicLossScale` carries
the documentation and checks its arguments when built; ``fnn.dynamic_loss_scale`` is the
class itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.checks import check_fields, check_int, hyperparameter, is_concrete
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Hyperparameter, PyTree

_FLOAT32 = np.finfo(np.float32)
FLOAT32_SCALE = {"low": float(_FLOAT32.tiny), "high": float(_FLOAT32.max)}  # a normal float32 number


class LossScaleState(NamedTuple):
    """The dynamic loss scale's state, ``TrainState.loss_scale``.

    Attributes:
      scale: ``S``, float32 scalar.
      good_steps: ``n``, the steps with finite gradients since the scale last changed
        (int32 scalar).
      skipped: the steps of the run skipped for a non-finite gradient (int32 scalar).
    """

    scale: jax.Array
    good_steps: jax.Array
    skipped: jax.Array


@pytree_dataclass
class DynamicLossScale:
    """Dynamic loss scaling for float16 compute, ``fnn.Trainer(..., loss_scaling=...)``.

    The rule and its sources are in the module docstring (:mod:`fnn.loss_scaling`):
    gradients of ``S · loss`` divided by ``S``; a step with a non-finite gradient is
    skipped and lowers ``S`` by ``factor``; ``period`` good steps in a row raise it.

    Args:
      initial_scale: ``S`` at the first step (default ``2**15``; leaf), a normal float32
        number (1.2e-38 to 3.4e38).
      factor: ``f`` > 1, the scale's growth and back-off factor (default 2; leaf).
      period: ``N``, good steps in a row before the scale grows (int >= 1; default 2000;
        static).
      min_scale: ``S_min``, the floor of the back-off (default 1; leaf), a normal float32
        number at most ``initial_scale``; a non-finite gradient at the floor is applied
        (a divergence), not skipped.

    Raises:
      ValueError: naming the argument, for a value out of its range (when concrete).
    """

    initial_scale: Hyperparameter = 2.0**15
    factor: Hyperparameter = 2.0
    period: int = static_field(default=2000)
    min_scale: Hyperparameter = 1.0

    def __post_init__(self):
        check_fields(self, initial_scale=FLOAT32_SCALE, min_scale=FLOAT32_SCALE)
        object.__setattr__(self, "factor", hyperparameter("factor", self.factor, low=1, low_open=True))
        object.__setattr__(self, "period", check_int("period", self.period))
        if is_concrete((self.initial_scale, self.min_scale)) and float(self.min_scale) > float(self.initial_scale):
            raise ValueError(
                f"min_scale must be at most initial_scale (the back-off's floor); got min_scale={self.min_scale} "
                f"and initial_scale={self.initial_scale}"
            )

    def init(self) -> LossScaleState:
        """The state before the first step: ``S = initial_scale``, no good or skipped steps."""
        zero = jnp.zeros((), jnp.int32)
        return LossScaleState(jnp.asarray(self.initial_scale, jnp.float32), zero, zero)

    def skips(self, state: LossScaleState, finite: jax.Array) -> jax.Array:
        """Whether a step is skipped: its gradient is not finite and the scale is above
        the floor ``min_scale`` (a bool scalar; at the floor the step is applied).

        Args:
          state: the state the step's loss was scaled with.
          finite: a bool scalar: every element of the step's gradient was finite.
        """
        return ~finite & (state.scale > jnp.asarray(self.min_scale, jnp.float32))

    def adjust(self, state: LossScaleState, finite: jax.Array) -> LossScaleState:
        """The state after a step whose gradient was finite (``finite`` True) or not.

        Args:
          state: the state the step's loss was scaled with.
          finite: a bool scalar: every element of the step's gradient was finite.
        Returns:
          the next state: the scale grown by ``factor`` after ``period`` good steps in a
          row (kept if growing would overflow float32), lowered by ``factor`` (not below
          ``min_scale``) after a non-finite gradient; the counters follow (``skipped``
          counts :meth:`skips`).
        """
        factor = jnp.asarray(self.factor, jnp.float32)
        grows = state.good_steps + 1 >= self.period
        grown = jnp.where(grows, state.scale * factor, state.scale)
        grown = jnp.where(jnp.isfinite(grown), grown, state.scale)
        lowered = jnp.maximum(state.scale / factor, jnp.asarray(self.min_scale, jnp.float32))
        return LossScaleState(
            scale=jnp.where(finite, grown, lowered),
            good_steps=jnp.where(finite & ~grows, state.good_steps + 1, 0).astype(jnp.int32),
            skipped=state.skipped + self.skips(state, finite).astype(jnp.int32),
        )


def scaled(value_and_aux: Callable, scale: jax.Array | None) -> Callable:
    """``value_and_aux`` with its value multiplied by ``scale``: the function ``jax.grad``
    differentiates under loss scaling.

    Args:
      value_and_aux: ``f(*args) -> (value, aux)``, value a float scalar (the loss).
      scale: ``S`` (a float32 scalar), or ``None`` for ``value_and_aux`` itself (no
        scaling: nothing is added to the program).
    Returns:
      ``g(*args) -> (S · value, aux)``, the product in the value's dtype.
    """
    if scale is None:
        return value_and_aux

    def scaled_value(*args):
        value, aux = value_and_aux(*args)
        return value * scale.astype(value.dtype), aux

    return scaled_value


def unscale(tree: PyTree, scale: jax.Array | None) -> PyTree:
    """Every leaf of ``tree`` (gradients, a summed loss) divided by ``scale`` in its own
    dtype; ``tree`` itself when ``scale`` is ``None``."""
    if scale is None:
        return tree
    return jax.tree.map(lambda a: a / scale.astype(a.dtype), tree)


def check_state(loss_scaling: DynamicLossScale | None, state: Any, name: str = "train_state") -> None:
    """Check that a given TrainState's loss scale fits the trainer's ``loss_scaling``.

    Args:
      loss_scaling: the trainer's ``loss_scaling`` (or ``None``).
      state: a ``fnn.TrainState`` (``fit(train_state=...)``).
      name: the state's name in messages.
    Raises:
      ValueError: the state has a loss scale and the trainer no ``loss_scaling``, or the
        reverse, or the loss scale is not a :class:`LossScaleState` of a float32 scale
        (positive, when concrete) and int32 counters, all scalars.
    """
    has = state.loss_scale is not None
    if has == (loss_scaling is not None):
        if has:
            _check_fields(state.loss_scale, name)
        return
    if has:
        raise ValueError(
            f"{name} carries a loss scale ({name}.loss_scale) but the trainer has no loss_scaling (it computes "
            f"in float16 only with one): pass the trainer it was made with, or drop it with "
            f"{name}._replace(loss_scale=None)"
        )
    raise ValueError(
        f"the trainer scales its loss (compute_dtype=float16) but {name} has no loss scale ({name}.loss_scale is "
        f"None: it was made by a trainer without loss_scaling); start from the trainer's init, or warm-start "
        f"from its params with params={name}.params, model_state={name}.model_state"
    )


def _check_fields(loss_scale: Any, name: str) -> None:
    """A LossScaleState of a float32 scalar scale (positive when concrete) and int32 scalar counters."""
    dtypes = (jnp.float32, jnp.int32, jnp.int32)
    if not isinstance(loss_scale, LossScaleState) or any(
        jnp.shape(v) != () or jnp.result_type(v) != dtype for v, dtype in zip(loss_scale, dtypes)
    ):
        raise ValueError(
            f"{name}.loss_scale must be a LossScaleState of a float32 scale and int32 good_steps and skipped, "
            f"all scalars (as DynamicLossScale.init makes it); got {loss_scale!r}"
        )
    if is_concrete(loss_scale.scale) and not 0 < float(loss_scale.scale) < float("inf"):
        raise ValueError(f"{name}.loss_scale.scale must be positive and finite; got {float(loss_scale.scale)}")


# The public name is the class itself: one signature, one docstring, one check.
dynamic_loss_scale = DynamicLossScale
