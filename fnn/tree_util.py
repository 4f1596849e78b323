"""Element-wise tests and selections over whole pytrees, for the loop's guards.

The training loop keeps or discards an update as a whole (a diverging update, an update
past ``max_steps``, a float16 step whose gradient overflowed): a masked select of every
leaf rather than a ``lax.cond``, because under ``vmap`` a cond becomes a select of both
branches anyway.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from fnn.types import PyTree


def tree_where(condition: jax.Array, new: PyTree, old: PyTree) -> PyTree:
    """``new`` where ``condition`` holds, else ``old``, leaf by leaf.

    Args:
      condition: a bool scalar (traced or not).
      new, old: pytrees of the same structure and leaf shapes.
    Returns:
      a pytree of that structure: each leaf ``jnp.where(condition, new_leaf, old_leaf)``.
    """
    return jax.tree.map(lambda a, b: jnp.where(condition, a, b), new, old)


def all_finite(tree: PyTree) -> jax.Array:
    """Whether every floating element of ``tree`` is finite: a bool scalar.

    One fused reduction: a sum is finite iff its terms are (an overflow of the sum itself
    would need values near the dtype's maximum, which count as a failure anyway).
    Integer leaves are not read.
    """
    sums = [jnp.sum(leaf) for leaf in jax.tree.leaves(tree) if jnp.issubdtype(leaf.dtype, jnp.inexact)]
    return jnp.isfinite(sum(sums)) if sums else jnp.asarray(True)
