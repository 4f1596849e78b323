"""Activation functions: the nonlinearity applied after each dense layer.

Each is an elementwise (softmax and log_softmax: along ``axis``) pure function, written
in a numerically stable form: no NaN or inf in the value or the gradient for inputs as
large as |x| = 1e4 in float32. NaN in gives NaN out (softmax and log_softmax: for the
whole slice along ``axis``), so a diverged input is never hidden as a finite output.
``get(name)`` looks one up by name.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn.checks import lookup

_X = TypeVar("_X")


def identity(x: _X) -> _X:
    """f(x) = x (the linear output of a regression head)."""
    return x


def relu(x: jax.Array) -> jax.Array:
    """f(x) = max(x, 0) (Nair & Hinton 2010).

    At the kink x = 0 the derivative is taken as 0 (the x <= 0 side). NaN maps to NaN
    (``jnp.where(x > 0, x, 0)`` would turn it into 0 and hide a diverged input), as
    ``jax.nn.relu`` does, whose custom derivative is this one.
    """
    return jax.nn.relu(x)


def leaky_relu(x: jax.Array, negative_slope: ArrayLike = 0.01) -> jax.Array:
    """f(x) = x for x >= 0, negative_slope * x otherwise (Maas et al. 2013).

    At the kink x = 0 the derivative is taken as 1 (the x >= 0 side).

    Args:
      x: any shape.
      negative_slope: the slope for x < 0 (may be traced); cast to x's dtype.
    Returns:
      f(x), the shape and dtype of ``x``.
    """
    return jnp.where(x >= 0, x, jnp.asarray(negative_slope, jnp.result_type(x)) * x)


def elu(x: jax.Array, alpha: ArrayLike = 1.0) -> jax.Array:
    """f(x) = x for x > 0, alpha * (exp(x) - 1) otherwise (Clevert et al. 2016).

    At x = 0 the derivative is alpha (the x <= 0 side, alpha * exp(0)): for alpha = 1
    both sides agree and f' is continuous; otherwise x = 0 is a kink. ``expm1`` is
    evaluated on min(x, 0) so the unused branch never overflows.

    Args:
      x: any shape.
      alpha: the limit -alpha of f as x -> -inf (may be traced); cast to x's dtype.
    Returns:
      f(x), the shape and dtype of ``x``.
    """
    return jnp.where(x > 0, x, jnp.asarray(alpha, jnp.result_type(x)) * jnp.expm1(jnp.where(x > 0, 0, x)))


def gelu(x: jax.Array) -> jax.Array:
    """f(x) = x * Phi(x) = x/2 * (1 + erf(x / sqrt(2))), the exact form (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1 + jax.lax.erf(x / jnp.sqrt(2.0).astype(jnp.result_type(x))))


def sigmoid(x: jax.Array) -> jax.Array:
    """f(x) = 1 / (1 + exp(-x)), via ``lax.logistic`` (stable for either sign)."""
    return jax.lax.logistic(x)


def tanh(x: jax.Array) -> jax.Array:
    """f(x) = tanh(x)."""
    return jnp.tanh(x)


def softplus(x: jax.Array) -> jax.Array:
    """f(x) = log(1 + exp(x)) = logaddexp(x, 0): no overflow for large x."""
    return jnp.logaddexp(x, 0)


def log_softmax(x: jax.Array, axis: int | tuple[int, ...] = -1) -> jax.Array:
    """f(x)_i = x_i - log sum_j exp(x_j), computed after subtracting max_j x_j."""
    shifted = x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True))
    return shifted - jnp.log(jnp.sum(jnp.exp(shifted), axis=axis, keepdims=True))


def softmax(x: jax.Array, axis: int | tuple[int, ...] = -1) -> jax.Array:
    """f(x)_i = exp(x_i) / sum_j exp(x_j), computed after subtracting max_j x_j."""
    shifted = jnp.exp(x - jax.lax.stop_gradient(jnp.max(x, axis=axis, keepdims=True)))
    return shifted / jnp.sum(shifted, axis=axis, keepdims=True)


_BY_NAME = {
    f.__name__: f for f in (identity, relu, leaky_relu, elu, gelu, sigmoid, tanh, softplus, softmax, log_softmax)
}
_BY_NAME["linear"] = identity


def get(activation: str | Callable[..., jax.Array]) -> Callable[..., jax.Array]:
    """Return the activation named ``activation`` (or ``activation`` itself if callable).

    Raises:
      ValueError: for an unknown name; the message lists the known ones.
    """
    return lookup("activation", _BY_NAME, activation)
