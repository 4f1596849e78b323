"""L1 and L2 penalties over a params pytree, added to the loss.

A regularizer is a frozen pytree called as ``reg(params) -> scalar``. Its strengths
are leaves (traced data: ``jax.vmap`` over a grid of strengths just works); ``select``,
a predicate ``select(path, leaf) -> bool`` over jax key paths, is static and picks
the leaves that are penalised. The default, :func:`is_weight`, picks arrays with two
or more dimensions (dense and conv kernels) and leaves out biases and batch-norm /
layer-norm scales and offsets, which are 1-D.

To choose by name, e.g. only leaves called ``"w"``::

    l2(1e-4, select=lambda path, leaf: jax.tree_util.keystr(path).endswith("['w']"))

``select`` is part of the compiled program's identity: re-use one function object
rather than a fresh ``lambda`` per call.

fnn's construction convention (docs/architecture.md): each regularizer is a class that
carries its documentation and checks its arguments when built (``__post_init__``),
raising ``ValueError`` naming the argument; strengths are only read when concrete, so
they may be traced. The lowercase public names (``l2`` for :class:`L2`, ``l1`` for
:class:`L1`, ``l1_l2`` for :class:`L1L2`) are the classes themselves.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.tree_util import KeyPath
from jax.typing import ArrayLike

from fnn.checks import NONNEGATIVE, check_fields
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Hyperparameter, Params

#: Which leaves are penalised: ``select(key_path, leaf) -> bool``, a static choice.
Selector = Callable[[KeyPath, Any], bool]


def is_weight(path: KeyPath, leaf: ArrayLike) -> bool:
    """The default selection: ``True`` for leaves with ``ndim >= 2`` (kernels), ``False`` for 1-D/scalars.

    Args:
      path: the leaf's jax key path (unused).
      leaf: the array.

    Returns:
      Whether the leaf is penalised.
    """
    return jnp.ndim(leaf) >= 2


def _selected_sum(fn, params, select):
    """``sum over selected leaves w of sum(fn(w))``; 0.0 when nothing is selected."""
    leaves = [w for path, w in jax.tree_util.tree_flatten_with_path(params)[0] if select(path, w)]
    return sum((jnp.sum(fn(w)) for w in leaves), jnp.zeros([], jnp.result_type(*leaves) if leaves else float))


def _scaled(strength, total):
    """``strength * total`` in the dtype of ``total`` (float32 params give a float32 penalty)."""
    return jnp.asarray(strength, total.dtype) * total


def _l1_penalty(strength, params, select):
    return _scaled(strength, _selected_sum(jnp.abs, params, select))


def _l2_penalty(strength, params, select):
    return _scaled(strength, _selected_sum(jnp.square, params, select)) / 2


def _check_select(select):
    """Raise ``ValueError`` unless ``select`` is callable."""
    if not callable(select):
        raise ValueError(f"select must be a callable (path, leaf) -> bool; got {select!r} ({type(select).__name__})")


@pytree_dataclass
class _Penalty:
    """A penalty with one strength: ``_penalty(strength, params, select)``."""

    strength: Hyperparameter
    select: Selector = static_field(default=is_weight)
    _penalty: ClassVar[Callable[..., jax.Array]]  # set by each subclass

    def __post_init__(self):
        check_fields(self, strength=NONNEGATIVE)
        _check_select(self.select)

    def __call__(self, params: Params) -> jax.Array:
        return self._penalty(self.strength, params, self.select)


@pytree_dataclass
class L2(_Penalty):
    """L2 penalty over the selected leaves ``w``::

        reg(params) = strength / 2 * sum_w sum(w ** 2)

    Its gradient is ``strength * w``: added to the loss of plain SGD it is classic
    (coupled) weight decay, ``w <- w - lr * (g + strength * w)``. With Adam it is not
    the same as decoupled decay (see :class:`fnn.optimizers.AdamW`).

    Args:
      strength: a scalar >= 0 (a number or a traced scalar).
      select: a predicate ``(key path, leaf) -> bool`` choosing the penalised leaves
        (static); default :func:`is_weight` (``ndim >= 2``: no biases or norm scales).

    Returns:
      Called on a params pytree, the penalty: a scalar in the params' dtype.
    """

    _penalty = staticmethod(_l2_penalty)


@pytree_dataclass
class L1(_Penalty):
    """L1 penalty over the selected leaves ``w`` (gradient ``strength * sign(w)``)::

        reg(params) = strength * sum_w sum(|w|)

    Args:
      strength: a scalar >= 0 (a number or a traced scalar).
      select: a predicate ``(key path, leaf) -> bool``, as for :class:`L2`.

    Returns:
      Called on a params pytree, the penalty: a scalar in the params' dtype.
    """

    _penalty = staticmethod(_l1_penalty)


@pytree_dataclass
class L1L2:
    """Elastic net, both penalties over the selected leaves ``w``::

        reg(params) = l1_strength * sum_w sum(|w|) + l2_strength / 2 * sum_w sum(w ** 2)

    References:
      Zou & Hastie (2005), "Regularization and variable selection via the elastic net",
      JRSS B 67 (their ``lambda_2 * sum w ** 2`` is ``l2_strength / 2 * sum w ** 2`` here, as in :class:`L2`).

    Args:
      l1_strength: a scalar >= 0.
      l2_strength: a scalar >= 0.
      select: a predicate ``(key path, leaf) -> bool``, as for :class:`L2`.

    Returns:
      Called on a params pytree, the penalty: a scalar in the params' dtype.
    """

    l1_strength: Hyperparameter
    l2_strength: Hyperparameter
    select: Selector = static_field(default=is_weight)

    def __post_init__(self):
        check_fields(self, l1_strength=NONNEGATIVE, l2_strength=NONNEGATIVE)
        _check_select(self.select)

    def __call__(self, params: Params) -> jax.Array:
        return _l1_penalty(self.l1_strength, params, self.select) + _l2_penalty(self.l2_strength, params, self.select)


# The public names are the classes themselves: one signature, one docstring, one check.
l2 = L2
l1 = L1
l1_l2 = L1L2
