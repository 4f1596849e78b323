"""Learning-rate schedules: pure functions of the step count.

A schedule is a small frozen pytree called as ``schedule(step) -> lr``. Its numbers
(initial value, decay rate, boundaries, ...) are pytree leaves, so a compiled training
step re-uses its program for new values and ``jax.vmap`` maps over them; only
structural choices (``staircase``, a wrapped Python function) are static.

``step`` is the number of updates already applied (0 at the first update), an int or
float scalar or array; every schedule is elementwise in ``step``. The result is a
float array in JAX's default float dtype (float64 with ``jax_enable_x64``); optimizers
cast it to the dtype of each parameter.

fnn's construction convention (docs/architecture.md): each schedule is a class that
carries its documentation (its law, its source, the arguments) and checks its arguments
when built (``__post_init__``), raising ``ValueError`` naming the argument; values are
only read when concrete, so a schedule built under ``jax.vmap`` keeps traced ones. The
lowercase public names (``constant`` for :class:`Constant`, ``cosine_decay`` for
:class:`CosineDecay`, ...) are the classes themselves.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import cast

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn.checks import NONNEGATIVE, POSITIVE, UNIT, check_fields, check_in_range, hyperparameter, is_concrete
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Hyperparameter, LearningRate

# ----------------------------------------------------------------------------- helpers


def _float(x):
    """``x`` as an array of JAX's default float dtype.

    Schedules compute in that dtype, their leaves and the step cast explicitly: a
    float32 or integer array leaf (a swept value) mixes with nothing under
    ``jax_numpy_dtype_promotion="strict"``."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _progress(step, decay_steps, staircase: bool):
    """``step / decay_steps``, floored when ``staircase``."""
    p = _float(step) / _float(decay_steps)
    return jnp.floor(p) if staircase else p


def _array(name, value):
    """``value``, a sequence or array of numbers, as a JAX array; ``ValueError`` naming ``name`` otherwise."""
    try:
        return jnp.asarray(value)
    except (TypeError, ValueError):
        kind = type(value).__name__
        raise ValueError(f"{name} must be a sequence or array of numbers; got {value!r} ({kind})") from None


# ----------------------------------------------------------------------------- schedules


class Schedule:
    """Base class of fnn's schedules: ``schedule(step) -> lr``."""

    def __call__(self, step: ArrayLike) -> jax.Array:
        raise NotImplementedError


@pytree_dataclass
class Constant(Schedule):
    """A constant learning rate: ``lr(step) = value``.

    Args:
      value: the learning rate, a scalar >= 0 (a number or a traced scalar).
    """

    value: Hyperparameter

    def __post_init__(self):
        check_fields(self, value=NONNEGATIVE)

    def __call__(self, step: ArrayLike) -> jax.Array:
        return _float(self.value)


@pytree_dataclass
class PiecewiseConstant(Schedule):
    """A step-wise constant learning rate.

    ``lr(step) = values[i]`` for ``boundaries[i-1] <= step < boundaries[i]``, with
    ``boundaries[-1] = -inf`` and ``boundaries[n] = +inf``: ``values[0]`` before
    ``boundaries[0]`` and ``values[n]`` from ``boundaries[n-1]`` on.

    Args:
      boundaries: [n] strictly increasing steps, each >= 0 (a sequence or an array).
      values: [n + 1] learning rates, each >= 0.
    """

    boundaries: ArrayLike | Sequence[float]
    values: ArrayLike | Sequence[float]

    def __post_init__(self):
        b, v = _array("boundaries", self.boundaries), _array("values", self.values)
        if b.ndim != 1:
            raise ValueError(f"boundaries must be a 1-D sequence of steps; got shape {b.shape}")
        if v.shape != (b.shape[0] + 1,):
            raise ValueError(f"values must hold len(boundaries) + 1 = {b.shape[0] + 1} entries; got shape {v.shape}")
        check_in_range("boundaries", b, 0)
        check_in_range("values", v, 0)
        if is_concrete(b) and np.any(np.diff(np.asarray(b)) <= 0):
            raise ValueError(f"boundaries must be strictly increasing; got {np.asarray(b).tolist()}")
        object.__setattr__(self, "boundaries", b)
        object.__setattr__(self, "values", v)

    def __call__(self, step: ArrayLike) -> jax.Array:
        index = jnp.searchsorted(_float(self.boundaries), _float(step), side="right")
        return jnp.take(_float(self.values), index)


@pytree_dataclass
class _TimeDecay(Schedule):
    """``lr(step) = init_value * factor(step / decay_steps)``, the ratio floored if ``staircase``."""

    init_value: Hyperparameter
    decay_rate: Hyperparameter
    decay_steps: Hyperparameter
    staircase: bool = static_field(default=False)

    def __post_init__(self):
        check_fields(self, ("staircase",), init_value=NONNEGATIVE, decay_rate=NONNEGATIVE, decay_steps=POSITIVE)

    def __call__(self, step: ArrayLike) -> jax.Array:
        return _float(self.init_value) * self._factor(_progress(step, self.decay_steps, self.staircase))

    def _factor(self, progress):
        raise NotImplementedError  # each subclass's decay law


@pytree_dataclass
class ExponentialDecay(_TimeDecay):
    """Exponential decay: ``lr(step) = init_value * decay_rate ** (step / decay_steps)``.

    With ``staircase=True`` the exponent is floored, ``floor(step / decay_steps)``: a step
    decay (:class:`StepDecay`).

    Args:
      init_value: the learning rate at step 0, a scalar >= 0.
      decay_rate: the factor applied every ``decay_steps`` steps, a scalar >= 0.
      decay_steps: the step scale, a scalar > 0.
      staircase: floor ``step / decay_steps`` (static).
    """

    def _factor(self, progress):
        return _float(self.decay_rate) ** progress


@pytree_dataclass
class InverseTimeDecay(_TimeDecay):
    """Inverse-time decay: ``lr(step) = init_value / (1 + decay_rate * step / decay_steps)``.

    With ``staircase=True`` the ratio ``step / decay_steps`` is floored.

    Args:
      init_value: the learning rate at step 0, a scalar >= 0.
      decay_rate: a scalar >= 0.
      decay_steps: the step scale, a scalar > 0.
      staircase: floor ``step / decay_steps`` (static).
    """

    def _factor(self, progress):
        return 1 / (1 + _float(self.decay_rate) * progress)


@pytree_dataclass
class StepDecay(Schedule):
    """Step decay: multiply by ``factor`` every ``every`` steps.

    ``lr(step) = init_value * factor ** floor(step / every)``, the values of
    ``ExponentialDecay(init_value, factor, every, staircase=True)``.

    Args:
      init_value: the learning rate at step 0, a scalar >= 0.
      factor: the multiplier applied at each drop, a scalar >= 0 (e.g. 0.1).
      every: steps between drops, a scalar > 0.
    """

    init_value: Hyperparameter
    factor: Hyperparameter
    every: Hyperparameter

    def __post_init__(self):
        check_fields(self, init_value=NONNEGATIVE, factor=NONNEGATIVE, every=POSITIVE)

    def __call__(self, step: ArrayLike) -> jax.Array:
        return _float(self.init_value) * _float(self.factor) ** _progress(step, self.every, staircase=True)


@pytree_dataclass
class CosineDecay(Schedule):
    """Cosine decay: from ``init_value`` at step 0 down to ``alpha * init_value`` at
    ``decay_steps``, constant afterwards::

        lr(step) = init_value * ((1 - alpha) * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2 + alpha)

    References:
      Loshchilov & Hutter (2017), "SGDR: Stochastic gradient descent with warm restarts",
      ICLR, eq. 5 (one period, without restarts).

    Args:
      init_value: the learning rate at step 0, a scalar >= 0.
      decay_steps: the length of the decay, a scalar > 0.
      alpha: the final learning rate as a fraction of ``init_value``, a scalar in [0, 1].
    """

    init_value: Hyperparameter
    decay_steps: Hyperparameter
    alpha: Hyperparameter = 0.0

    def __post_init__(self):
        check_fields(self, init_value=NONNEGATIVE, decay_steps=POSITIVE, alpha=UNIT)

    def __call__(self, step: ArrayLike) -> jax.Array:
        decay_steps, alpha = _float(self.decay_steps), _float(self.alpha)
        t = jnp.minimum(_float(step), decay_steps) / decay_steps
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t))
        return _float(self.init_value) * ((1 - alpha) * cosine + alpha)


@pytree_dataclass
class Warmup(Schedule):
    """Linear warm-up in front of a schedule::

        lr(step) = init_value + (schedule(0) - init_value) * step / warmup_steps    (step < warmup_steps)
        lr(step) = schedule(step - warmup_steps)                                     (after)

    References:
      Goyal et al. (2017), "Accurate, large minibatch SGD: Training ImageNet in 1 hour",
      section 2.2 (gradual warmup).

    Args:
      schedule: the schedule that follows the warm-up: a number or a schedule (anything
        :func:`as_schedule` takes; stored as a :class:`Schedule`).
      warmup_steps: the length of the ramp, a scalar > 0.
      init_value: the learning rate at step 0, a scalar >= 0.
    """

    schedule: LearningRate  # a Schedule once built (__post_init__)
    warmup_steps: Hyperparameter
    init_value: Hyperparameter = 0.0

    def __post_init__(self):
        object.__setattr__(self, "schedule", as_schedule(self.schedule, "schedule"))
        check_fields(self, warmup_steps=POSITIVE, init_value=NONNEGATIVE)

    def __call__(self, step: ArrayLike) -> jax.Array:
        schedule = cast(Schedule, self.schedule)  # as __post_init__ stored it
        t, warmup_steps, init_value = _float(step), _float(self.warmup_steps), _float(self.init_value)
        ramp = init_value + (schedule(0) - init_value) * (t / warmup_steps)
        after = schedule(jnp.maximum(t - warmup_steps, 0))
        return jnp.where(t < warmup_steps, ramp, after)


@pytree_dataclass
class FunctionSchedule(Schedule):
    """A plain Python function ``step -> lr``, kept as static metadata.

    The function is part of the compiled program's identity: pass the same function
    object to re-use a compiled step (a fresh ``lambda`` per call recompiles).

    ``fn`` receives the step as an array of JAX's default float dtype, as every schedule
    here computes with it (an optimizer's count is int32): ``lambda t: 0.1 / (1.0 + t)``
    then works under ``jax_numpy_dtype_promotion="strict"`` too.

    Args:
      fn: a callable ``step -> lr`` (static).
    """

    fn: Callable[[jax.Array], ArrayLike] = static_field()

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"fn must be a callable step -> lr; got {self.fn!r} ({type(self.fn).__name__})")

    def __call__(self, step: ArrayLike) -> jax.Array:
        return _float(self.fn(_float(step)))


# ----------------------------------------------------------------------------- public names


# The public names are the classes themselves: one signature, one docstring, one check.
constant = Constant
piecewise_constant = PiecewiseConstant
exponential_decay = ExponentialDecay
step_decay = StepDecay
inverse_time_decay = InverseTimeDecay
cosine_decay = CosineDecay
warmup = Warmup


def as_schedule(value: LearningRate, name: str = "lr") -> Schedule:
    """Turn a learning-rate argument into a schedule.

    Args:
      value: an fnn :class:`Schedule` (returned as is); any other callable
        ``step -> lr`` (wrapped in a :class:`FunctionSchedule`, static); or a number or
        numeric array, traced or not (a :class:`Constant`, checked >= 0 when concrete).
      name: the argument's name for the error message.

    Returns:
      A :class:`Schedule`.

    Raises:
      ValueError: naming ``name``, for anything else (a string, ``None``, a bool, ...)
        or a negative or non-finite number.
    """
    value = hyperparameter(name, value, 0, schedule=True)
    if isinstance(value, Schedule):
        return value
    if callable(value):
        return FunctionSchedule(value)
    return Constant(value)
