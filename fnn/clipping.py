"""Gradient wrappers: transform the gradients, then let an optimizer take the step.

A wrapper is not an optimizer: it has no update rule and no state of its own. It holds
an ``optimizer`` (any object with ``init``, ``update``, ``learning_rate`` and ``lr``: an
fnn optimizer, another wrapper, or a user's optimizer) and presents the same protocol::

    opt_state = wrapper.init(params)                              # the optimizer's state
    params, opt_state = wrapper.update(grads, opt_state, params)  # optimizer.update(transform(grads), ...)
    lr = wrapper.learning_rate(opt_state)                         # the optimizer's learning rate

so wrappers compose (``clip_by_value(clip_by_global_norm(adam(1e-3), 1.0), 0.5)``) and
``fnn.Trainer`` takes them wherever it takes an optimizer. The limits (``max_norm``,
``max_value``) are pytree leaves like any hyperparameter: traced data, vmappable.

fnn's construction convention (docs/architecture.md): each wrapper is a class that
carries its documentation and checks its arguments when built (``__post_init__``),
raising ``ValueError`` naming the argument; the lowercase public names
(``clip_by_global_norm`` for :class:`ClipByGlobalNorm`, ``clip_by_value`` for
:class:`ClipByValue`) are the classes themselves.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from fnn.checks import POSITIVE, check_fields, check_same_structure
from fnn.pytree import pytree_dataclass
from fnn.types import Gradients, Hyperparameter, LearningRate, OptState, Params, PyTree

_PROTOCOL = ("init", "update", "learning_rate", "lr")  # what an optimizer (or a wrapper) provides


def global_norm(tree: PyTree) -> jax.Array:
    """The Euclidean norm of all leaves of ``tree`` together.

    Args:
      tree: a pytree of arrays (gradients, say).

    Returns:
      ``sqrt(sum_i sum(x_i ** 2))`` over the leaves ``x_i``, a scalar.
    """
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


def _like(g, value):
    """``value`` as an array of the dtype of the gradient ``g``."""
    return jnp.asarray(value, jnp.result_type(g))


@pytree_dataclass
class _GradientWrapper:
    """Transforms the gradients (``_transform``), then hands them to ``optimizer``, a pytree
    child whose state is the wrapper's state. A subclass's own fields are limits, each > 0."""

    optimizer: Any  # an fnn optimizer, a wrapper or a user's object with the protocol

    def __post_init__(self):
        """Check ``optimizer`` (it must provide the protocol) and the limits (> 0; stored as floats)."""
        missing = [name for name in _PROTOCOL if not hasattr(self.optimizer, name)]
        if missing:
            raise ValueError(
                f"optimizer must be an fnn optimizer or gradient wrapper (with {', '.join(_PROTOCOL)}), "
                f"e.g. fnn.adam(1e-3); got {self.optimizer!r} ({type(self.optimizer).__name__}), "
                f"which lacks {', '.join(missing)}"
            )
        check_fields(self, **{field.name: POSITIVE for field in dataclasses.fields(self)[1:]})

    @property
    def lr(self) -> LearningRate:
        """The wrapped optimizer's learning-rate schedule."""
        return self.optimizer.lr

    def init(self, params: Params) -> OptState:
        """The wrapped optimizer's initial state."""
        return self.optimizer.init(params)

    def learning_rate(self, opt_state: OptState) -> jax.Array:
        """The learning rate the next ``update`` uses (the wrapped optimizer's)."""
        return self.optimizer.learning_rate(opt_state)

    def update(self, grads: Gradients, opt_state: OptState, params: Params) -> tuple[Params, OptState]:
        """One step of the wrapped optimizer on the transformed gradients.

        Returns:
          ``optimizer.update(transformed_grads, opt_state, params)``: ``(new_params, new_opt_state)``.

        Raises:
          ValueError: if ``grads`` and ``params`` differ in tree structure or leaf shapes,
            or the wrapped optimizer refuses ``opt_state``.
        """
        check_same_structure("grads", grads, "params", params)
        return self.optimizer.update(self._transform(grads), opt_state, params)

    def _transform(self, grads):
        raise NotImplementedError  # each subclass's transformation


@pytree_dataclass
class ClipByGlobalNorm(_GradientWrapper):
    """Rescale the gradients so that their global norm is at most ``max_norm``, then step ``optimizer``.

    ::

        n  = sqrt(sum over all leaves of sum(g**2))
        g' = g * max_norm / max(n, max_norm)     (= g if n <= max_norm, else g * max_norm / n)

    The direction of the whole gradient is kept; only its length is capped.

    References:
      Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
      networks", Algorithm 1.

    Args:
      optimizer: any fnn optimizer or gradient wrapper; it receives the rescaled gradients,
        and its state and learning rate are the wrapper's (``update`` returns its result).
      max_norm: a scalar > 0 (a number or a traced scalar).
    """

    max_norm: Hyperparameter

    def _transform(self, grads):
        norm = global_norm(grads)
        max_norm = jnp.asarray(self.max_norm, jnp.result_type(norm))  # a traced max_norm may be float64
        scale = max_norm / jnp.maximum(norm, max_norm)
        return jax.tree.map(lambda g: g * _like(g, scale), grads)


@pytree_dataclass
class ClipByValue(_GradientWrapper):
    """Clip every gradient coordinate to ``[-max_value, max_value]``, then step ``optimizer``.

    ::

        g' = min(max(g, -max_value), max_value)       (coordinate by coordinate)

    Unlike :class:`ClipByGlobalNorm`, this changes the gradient's direction when some
    coordinates are clipped and others are not.

    Args:
      optimizer: as for :class:`ClipByGlobalNorm`; it receives the clipped gradients.
      max_value: a scalar > 0 (a number or a traced scalar).
    """

    max_value: Hyperparameter

    def _transform(self, grads):
        return jax.tree.map(lambda g: jnp.clip(g, _like(g, -self.max_value), _like(g, self.max_value)), grads)


# The public names are the classes themselves: one signature, one docstring, one check.
clip_by_global_norm = ClipByGlobalNorm
clip_by_value = ClipByValue
