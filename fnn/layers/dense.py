"""Dense layers and elementwise activations: ``y = x @ w + b``, then ``f(y)``."""

from __future__ import annotations

from collections.abc import Callable

import jax
from jax.typing import ArrayLike

from fnn import activations as activations_lib
from fnn import init as init_lib
from fnn.checks import check_int
from fnn.layers.base import Layer, check_features, per_feature
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Initializer, ModelState, Params


@pytree_dataclass
class Dense(Layer):
    """Fully connected layer: ``y = x @ w + b``.

    Args:
      in_features, out_features: sizes; ``w`` has shape [in_features, out_features],
        ``b`` shape [out_features].
      use_bias: whether to add ``b``.
      w_init, b_init: initializer names or functions (``fnn.init``); biases start at zero.
    Shapes: x [..., in_features] -> y [..., out_features].
    """

    in_features: int = static_field()
    out_features: int = static_field()
    use_bias: bool = static_field(default=True)
    w_init: str | Initializer = static_field(default="glorot_uniform")
    b_init: str | Initializer = static_field(default="zeros")

    def __post_init__(self):
        check_int("in_features", self.in_features)
        check_int("out_features", self.out_features)
        init_lib.get(self.w_init), init_lib.get(self.b_init)

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        w = init_lib.get(self.w_init)(key, (self.in_features, self.out_features))
        params = {"w": w}
        if self.use_bias:
            params["b"] = init_lib.get(self.b_init)(jax.random.fold_in(key, 1), (self.out_features,))
        return params, ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        check_features(f"Dense({self.in_features}, {self.out_features})", x, self.in_features)
        y = x @ params["w"]
        if self.use_bias:
            y = y + per_feature(params["b"], y)
        return y, state


@pytree_dataclass
class Activation(Layer):
    """Elementwise nonlinearity, by name (``"relu"``) or function; no parameters."""

    fn: str | Callable[..., jax.Array] = static_field(default="relu")

    def __post_init__(self):
        activations_lib.get(self.fn)

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        return activations_lib.get(self.fn)(x), state
