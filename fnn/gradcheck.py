"""Gradient checking: ``jax.grad`` against central finite differences.

fnn never writes a backward pass by hand; backpropagation is ``jax.grad``. This module
checks that what it differentiates is what you meant (no stop_gradient in the wrong
place, no non-differentiable trick) by comparing with

    df/dθ_i ≈ (f(θ + h e_i) - f(θ - h e_i)) / (2h)

whose error is O(h^2) (truncation) + O(ε_machine / h) (round-off). In float64 with
h = 1e-6 both are far below 1e-6 relative, which is the tolerance this check uses.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np


def numerical_grad(f: Callable[[Any], Any], params: Any, eps: float = 1e-6) -> Any:
    """Central finite-difference gradient of scalar ``f`` at the pytree ``params``.

    Args:
      f: function of one pytree returning a scalar.
      params: pytree of float64 arrays.
      eps: step h.
    Returns:
      a pytree like ``params`` of NumPy float64 arrays. All 2n perturbed evaluations run
      as one vmapped call, so ``f`` must be vmappable (any pure JAX function is).
    """
    flat, unravel = _ravel(params)
    steps = eps * np.eye(flat.size)
    f_many = jax.jit(jax.vmap(lambda v: f(unravel(v))))
    grad = (np.asarray(f_many(flat + steps)) - np.asarray(f_many(flat - steps))) / (2 * eps)
    return jax.tree.map(np.asarray, unravel(grad))


def _ravel(params):
    leaves, treedef = jax.tree.flatten(params)
    for leaf in leaves:
        if jnp.result_type(leaf) != jnp.float64:
            raise ValueError(
                "check_grads needs float64 params (enable jax_enable_x64 and cast with "
                f"jax.tree.map(lambda a: a.astype('float64'), params)); got a leaf of dtype {jnp.result_type(leaf)}"
            )
    shapes = [np.shape(leaf) for leaf in leaves]
    sizes = [int(np.prod(s)) for s in shapes]
    flat = np.concatenate([np.ravel(leaf) for leaf in leaves]) if leaves else np.zeros(0)

    def unravel(vector):
        parts = jnp.split(jnp.asarray(vector), np.cumsum(sizes)[:-1]) if sizes else []
        return treedef.unflatten([p.reshape(s) for p, s in zip(parts, shapes)])

    return np.asarray(flat, np.float64), unravel


def check_grads(
    f: Callable[[Any], Any], params: Any, *, eps: float = 1e-6, rtol: float = 1e-6, atol: float = 1e-9
) -> float:
    """Assert that ``jax.grad(f)(params)`` matches central finite differences.

    Each element must satisfy ``|g - g_fd| <= atol + rtol * |g_fd|``.

    Args:
      f: scalar function of a pytree of float64 arrays.
      params: where to check.
      eps, rtol, atol: finite-difference step and tolerances.
    Returns:
      the largest relative error found (over elements with |g_fd| > atol).
    Raises:
      AssertionError naming the leaf (its key path) and element with the worst mismatch.
    """
    analytic = jax.grad(f)(params)
    numeric = numerical_grad(f, params, eps)
    worst = 0.0
    for (path, g), g_fd in zip(jax.tree_util.tree_leaves_with_path(analytic), jax.tree.leaves(numeric)):
        g = np.asarray(g)
        err = np.abs(g - g_fd)
        if np.any(err > atol + rtol * np.abs(g_fd)):
            i = np.unravel_index(np.argmax(err - rtol * np.abs(g_fd)), np.shape(g))
            raise AssertionError(
                f"gradient mismatch at {jax.tree_util.keystr(path)}{list(i)}: jax.grad {g[i]!r}, "
                f"finite differences {g_fd[i]!r} (rtol={rtol}, atol={atol})"
            )
        big = np.abs(g_fd) > atol
        if np.any(big):
            worst = max(worst, float(np.max(err[big] / np.abs(g_fd[big]))))
    return worst
