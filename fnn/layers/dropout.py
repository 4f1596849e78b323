"""Dropout: random units zeroed in training, the identity in evaluation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn.checks import check_in_range
from fnn.layers.base import Layer, as_floating
from fnn.pytree import pytree_dataclass
from fnn.types import Hyperparameter, ModelState, Params


@pytree_dataclass
class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): in training, each unit is dropped with
    probability ``rate`` and the kept ones are scaled by 1 / (1 - rate), so evaluation
    is the identity.

    ``rate`` is the probability of *dropping* (not keeping), in [0, 1); it is a leaf, so
    it may be traced (swept with ``vmap``). Training mode needs ``key``. Bool and integer
    input comes back as float32 in both modes (:func:`fnn.layers.base.as_floating`): a
    kept uint8 200 scaled by 1 / (1 - 0.5) is 400, which uint8 cannot hold.
    """

    rate: Hyperparameter = 0.5

    def __post_init__(self):
        check_in_range("rate", self.rate, 0.0, 1.0, high_open=True)

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        x = as_floating(x)
        if not train:
            return x, state  # the identity
        if key is None:
            raise ValueError("Dropout in training mode needs key= (a jax.random key)")
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        scale = jnp.asarray(keep, jnp.result_type(x))  # a traced rate may be float64, x float32
        return jnp.where(mask, x / scale, 0).astype(jnp.result_type(x)), state
