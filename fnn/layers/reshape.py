"""Shape-only layers: ``Flatten`` and ``Reshape`` act on every axis but the batch axis."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn.layers.base import Layer
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import ModelState, Params


@pytree_dataclass
class Flatten(Layer):
    """[batch, d1, d2, ...] -> [batch, d1 * d2 * ...], row-major (C order) as NumPy's reshape.

    The batch axis is kept: this is the step from a convolution's channels-last feature
    map to a Dense layer. No params.

    Raises:
      ValueError: naming the layer, for an input of rank < 2 (no axis after the batch axis).
    """

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        shape = jnp.shape(x)
        if len(shape) < 2:
            raise ValueError(f"Flatten expects input x of shape [batch, ...] (rank >= 2); got shape {shape}")
        return jnp.reshape(x, (shape[0], math.prod(shape[1:]))), state


@pytree_dataclass
class Reshape(Layer):
    """[batch, ...] -> [batch, *shape], row-major; the batch axis is kept.

    Args:
      shape: the shape of one example, a tuple of ints >= 1 with at most one ``-1`` (the
        size that makes the element count agree), e.g. ``Reshape((8, 8, 1))`` turns
        [batch, 64] into [batch, 8, 8, 1].

    Raises:
      ValueError: naming ``shape`` for a bad shape; naming the layer for an input whose
        examples do not have the element count ``shape`` needs.
    """

    shape: tuple = static_field()

    def __post_init__(self):
        shape = self.shape
        ok = isinstance(shape, (tuple, list)) and all(
            isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in shape
        )
        if not ok or any(d < 1 and d != -1 for d in shape) or list(shape).count(-1) > 1:
            raise ValueError(f"shape must be a tuple of ints >= 1 with at most one -1; got {shape!r}")
        object.__setattr__(self, "shape", tuple(int(d) for d in shape))

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        shape = jnp.shape(x)
        size, known = math.prod(shape[1:]), math.prod(d for d in self.shape if d != -1)
        fits = len(shape) >= 1 and (size % known == 0 if -1 in self.shape else size == known)
        if not fits:
            need = f"a multiple of {known}" if -1 in self.shape else f"{known}"
            raise ValueError(
                f"Reshape({self.shape}) expects input x of shape [batch, ...] with {need} elements per example; "
                f"got shape {shape}"
            )
        return jnp.reshape(x, (shape[0], *self.shape)), state
