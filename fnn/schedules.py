"""Learning-rate schedules: pure functions of the step count.

A schedule is a small frozen pytree called as ``schedule(step) -> lr``. Its numbers
(initial value, decay rate, boundaries, ...) are pytree leaves, so a compiled training
step re-uses its program for new values and ``jax.vmap`` maps over them; only
structural choices (``staircase``, a wrapped Python function) are static.

``step`` is the number of updates already applied (0 at the first update), an int or
float scalar or array; every schedule is elementwise in ``step``. The result is a
float array in JAX's default float dtype (float64 with ``jax_enable_x64``); optimizers
cast it to the dtype of each parameter.

The factories (``constant``, ``exponential_decay``, ...) are the public entry points:
they validate concrete arguments eagerly and raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp
import numpy as np

from fnn.pytree import pytree_dataclass, static_field
from fnn.checks import check_in_range, hyperparameter, is_concrete

# ----------------------------------------------------------------------------- helpers


def _float(x):
    """``x`` as an array of JAX's default float dtype."""
    return jnp.asarray(x, dtype=jnp.result_type(float))


def _progress(step, decay_steps, staircase: bool):
    """``step / decay_steps``, floored when ``staircase``."""
    p = _float(step) / decay_steps
    return jnp.floor(p) if staircase else p


# ----------------------------------------------------------------------------- schedules


class Schedule:
    """Base class of fnn's schedules: ``schedule(step) -> lr``."""

    def __call__(self, step):
        raise NotImplementedError


@pytree_dataclass
class Constant(Schedule):
    """``lr(step) = value``."""

    value: Any

    def __call__(self, step):
        return _float(self.value)


@pytree_dataclass
class PiecewiseConstant(Schedule):
    """``lr(step) = values[i]`` for ``boundaries[i-1] <= step < boundaries[i]``.

    (``boundaries[-1] = -inf`` and ``boundaries[n] = +inf``, so ``values[0]`` applies
    before the first boundary and ``values[n]`` from the last one on.)
    """

    boundaries: Any
    values: Any

    def __call__(self, step):
        index = jnp.searchsorted(self.boundaries, _float(step), side="right")
        return _float(jnp.take(self.values, index))


@pytree_dataclass
class _TimeDecay(Schedule):
    """``lr(step) = init_value * factor(step / decay_steps)``, the ratio floored if ``staircase``."""

    init_value: Any
    decay_rate: Any
    decay_steps: Any
    staircase: bool = static_field(False)

    def __call__(self, step):
        return self.init_value * self._factor(_progress(step, self.decay_steps, self.staircase))


@pytree_dataclass
class ExponentialDecay(_TimeDecay):
    """``lr(step) = init_value * decay_rate ** (step / decay_steps)`` (exponent floored if ``staircase``)."""

    def _factor(self, progress):
        return self.decay_rate**progress


@pytree_dataclass
class InverseTimeDecay(_TimeDecay):
    """``lr(step) = init_value / (1 + decay_rate * step / decay_steps)`` (ratio floored if ``staircase``)."""

    def _factor(self, progress):
        return 1 / (1 + self.decay_rate * progress)


@pytree_dataclass
class CosineDecay(Schedule):
    """``lr(step) = init_value * ((1 - alpha) * (1 + cos(pi * min(step, decay_steps) / decay_steps)) / 2 + alpha)``."""

    init_value: Any
    decay_steps: Any
    alpha: Any

    def __call__(self, step):
        t = jnp.minimum(_float(step), self.decay_steps) / self.decay_steps
        cosine = 0.5 * (1 + jnp.cos(jnp.pi * t))
        return self.init_value * ((1 - self.alpha) * cosine + self.alpha)


@pytree_dataclass
class Warmup(Schedule):
    """Linear ramp from ``init_value`` to ``schedule(0)`` over ``warmup_steps``, then ``schedule(step - warmup_steps)``."""

    schedule: Schedule
    warmup_steps: Any
    init_value: Any

    def __call__(self, step):
        t = _float(step)
        ramp = self.init_value + (self.schedule(0) - self.init_value) * (t / self.warmup_steps)
        after = self.schedule(jnp.maximum(t - self.warmup_steps, 0))
        return jnp.where(t < self.warmup_steps, ramp, after)


@pytree_dataclass
class FunctionSchedule(Schedule):
    """A plain Python function ``step -> lr``, kept as static metadata.

    The function is part of the compiled program's identity: pass the same function
    object to re-use a compiled step (a fresh ``lambda`` per call recompiles).
    """

    fn: Callable = static_field()

    def __call__(self, step):
        return _float(self.fn(step))


# ----------------------------------------------------------------------------- factories


def constant(value) -> Constant:
    """A constant learning rate.

    Args:
      value: the learning rate, >= 0 (a float or a traced scalar).

    Returns:
      A :class:`Constant` schedule, ``lr(step) = value``.
    """
    return Constant(hyperparameter("value", value, 0))


def piecewise_constant(boundaries, values) -> PiecewiseConstant:
    """A step-wise constant learning rate.

    ``lr(step) = values[i]`` for ``boundaries[i-1] <= step < boundaries[i]``, i.e.
    ``values[0]`` before ``boundaries[0]`` and ``values[-1]`` from ``boundaries[-1]`` on.

    Args:
      boundaries: strictly increasing steps, a 1-D sequence of length n (>= 0).
      values: n + 1 learning rates, each >= 0.

    Returns:
      A :class:`PiecewiseConstant` schedule.
    """
    b, v = jnp.asarray(boundaries), jnp.asarray(values)
    if b.ndim != 1:
        raise ValueError(f"boundaries must be a 1-D sequence of steps; got shape {b.shape}")
    if v.shape != (b.shape[0] + 1,):
        raise ValueError(f"values must hold len(boundaries) + 1 = {b.shape[0] + 1} entries; got shape {v.shape}")
    check_in_range("boundaries", b, 0)
    check_in_range("values", v, 0)
    if is_concrete(b) and np.any(np.diff(np.asarray(b)) <= 0):
        raise ValueError(f"boundaries must be strictly increasing; got {np.asarray(b).tolist()}")
    return PiecewiseConstant(b, v)


def _time_decay(cls, init_value, decay_rate, decay_steps, staircase, names=("decay_rate", "decay_steps")):
    """Validate the arguments of a :class:`_TimeDecay` schedule and build it."""
    return cls(
        hyperparameter("init_value", init_value, 0),
        hyperparameter(names[0], decay_rate, 0),
        hyperparameter(names[1], decay_steps, 0, low_open=True),
        bool(staircase),
    )


def exponential_decay(init_value, decay_rate, decay_steps, staircase: bool = False) -> ExponentialDecay:
    """Exponential decay: ``lr(step) = init_value * decay_rate ** (step / decay_steps)``.

    Args:
      init_value: the learning rate at step 0, >= 0.
      decay_rate: the factor applied every ``decay_steps`` steps, >= 0.
      decay_steps: the step scale, > 0.
      staircase: floor ``step / decay_steps`` (a static choice), giving a step decay.

    Returns:
      An :class:`ExponentialDecay` schedule.
    """
    return _time_decay(ExponentialDecay, init_value, decay_rate, decay_steps, staircase)


def step_decay(init_value, factor, every) -> ExponentialDecay:
    """Step decay: multiply by ``factor`` every ``every`` steps.

    ``lr(step) = init_value * factor ** floor(step / every)``.

    Args:
      init_value: the learning rate at step 0, >= 0.
      factor: the multiplier applied at each drop, >= 0 (e.g. 0.1).
      every: steps between drops, > 0.

    Returns:
      An :class:`ExponentialDecay` schedule with ``staircase=True``.
    """
    return _time_decay(ExponentialDecay, init_value, factor, every, True, names=("factor", "every"))


def inverse_time_decay(init_value, decay_rate, decay_steps, staircase: bool = False) -> InverseTimeDecay:
    """Inverse-time decay: ``lr(step) = init_value / (1 + decay_rate * step / decay_steps)``.

    Args:
      init_value: the learning rate at step 0, >= 0.
      decay_rate: >= 0.
      decay_steps: the step scale, > 0.
      staircase: floor ``step / decay_steps`` (a static choice).

    Returns:
      An :class:`InverseTimeDecay` schedule.
    """
    return _time_decay(InverseTimeDecay, init_value, decay_rate, decay_steps, staircase)


def cosine_decay(init_value, decay_steps, alpha=0.0) -> CosineDecay:
    """Cosine decay (SGDR, Loshchilov & Hutter 2017, without restarts).

    ``lr(step) = init_value * ((1 - alpha) * 0.5 * (1 + cos(pi * min(step, decay_steps) / decay_steps)) + alpha)``:
    from ``init_value`` at step 0 down to ``alpha * init_value`` at ``decay_steps``,
    constant afterwards.

    Args:
      init_value: the learning rate at step 0, >= 0.
      decay_steps: length of the decay, > 0.
      alpha: the final learning rate as a fraction of ``init_value``, in [0, 1].

    Returns:
      A :class:`CosineDecay` schedule.
    """
    return CosineDecay(
        hyperparameter("init_value", init_value, 0),
        hyperparameter("decay_steps", decay_steps, 0, low_open=True),
        hyperparameter("alpha", alpha, 0, 1),
    )


def warmup(schedule, warmup_steps, init_value=0.0) -> Warmup:
    """Linear warm-up in front of a schedule.

    ``lr(step) = init_value + (schedule(0) - init_value) * step / warmup_steps`` for
    ``step < warmup_steps``, then ``schedule(step - warmup_steps)``.

    Args:
      schedule: the schedule that follows the warm-up (anything :func:`as_schedule` takes).
      warmup_steps: length of the ramp, > 0.
      init_value: the learning rate at step 0, >= 0.

    Returns:
      A :class:`Warmup` schedule.
    """
    return Warmup(
        as_schedule(schedule),
        hyperparameter("warmup_steps", warmup_steps, 0, low_open=True),
        hyperparameter("init_value", init_value, 0),
    )


def as_schedule(value) -> Schedule:
    """Turn a learning-rate argument into a schedule.

    Args:
      value: an fnn :class:`Schedule` (returned as is); any other callable
        ``step -> lr`` (wrapped in a :class:`FunctionSchedule`, static); or a number or
        scalar array, traced or not (a :class:`Constant`, checked >= 0).

    Returns:
      A :class:`Schedule`.
    """
    if isinstance(value, Schedule):
        return value
    if callable(value):
        return FunctionSchedule(value)
    return constant(value)
