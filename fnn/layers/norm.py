"""Normalization layers: batch norm (with running statistics as explicit state) and
layer norm. Bool and integer input is normalized in float32
(:func:`fnn.layers.base.as_floating`), never in its own dtype."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn.checks import check_in_range, check_int, check_positive
from fnn.layers.base import Layer, as_floating, check_features, is_empty, per_feature
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Hyperparameter, ModelState, Params


def _normalize(x, mean, var, eps, params):
    scale, offset = per_feature(params["scale"], x), per_feature(params["offset"], x)
    eps = jnp.asarray(eps, jnp.result_type(var))  # a traced (swept) eps may be float64, var float32
    return (x - per_feature(mean, x)) * jax.lax.rsqrt(per_feature(var, x) + eps) * scale + offset


def _norm_params(features):
    return {"scale": jnp.ones((features,), jnp.float32), "offset": jnp.zeros((features,), jnp.float32)}


@pytree_dataclass
class BatchNorm(Layer):
    """Batch normalization (Ioffe & Szegedy 2015) of [batch, features] or, after a
    convolution, [batch, *spatial, channels]: per feature (channel, the last axis).

    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * scale + offset`` with the mean and
    (biased) variance over every axis but the last — the batch and, after a convolution,
    the spatial axes, as PyTorch's ``BatchNorm1d/2d`` and Flax's ``BatchNorm`` do for
    channels — and the running statistics (one per feature) move towards them:
    ``running = momentum * running + (1 - momentum) * batch_statistic``.
    Evaluation: the same formula with the running statistics.

    The running statistics are the layer's *state*: ``{"mean": zeros, "var": ones}`` at
    init (variance starts at 1, not 0). ``momentum`` (weight on the old value, 0.99 as in
    Keras/Flax; PyTorch's momentum=0.1 is 0.9 here) and ``eps`` are leaves. The running
    variance moves towards the biased batch variance, as in Flax (PyTorch uses the
    unbiased one there, n / (n - 1) times larger).

    Args:
      features: the size of the last axis (the channels after a convolution).
    """

    features: int = static_field()
    momentum: Hyperparameter = 0.99
    eps: Hyperparameter = 1e-5

    def __post_init__(self):
        check_int("features", self.features)
        check_in_range("momentum", self.momentum, 0.0, 1.0)
        check_positive("eps", self.eps)

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        stats = {"mean": jnp.zeros((self.features,), jnp.float32), "var": jnp.ones((self.features,), jnp.float32)}
        return _norm_params(self.features), stats

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        check_features(f"BatchNorm({self.features})", x, self.features)
        x = as_floating(x)
        if is_empty(state):
            raise ValueError("BatchNorm needs its running statistics: pass state= (from model.init)")
        if not train:
            return _normalize(x, state["mean"], state["var"], self.eps, params), state
        if jnp.ndim(x) < 2:
            raise ValueError(
                f"BatchNorm in training mode expects x of shape [batch, features] or [batch, *spatial, "
                f"{self.features}] (rank >= 2); got {jnp.shape(x)}"
            )
        axes = tuple(range(jnp.ndim(x) - 1))  # all but the features (channels)
        mean, var = jnp.mean(x, axis=axes), jnp.var(x, axis=axes)
        # in the running statistics' dtype, which they keep (momentum may be a traced float64)
        m = jnp.asarray(self.momentum, jnp.result_type(state["mean"]))
        new_state = {
            "mean": m * state["mean"] + (1 - m) * jax.lax.stop_gradient(mean).astype(m.dtype),
            "var": m * state["var"] + (1 - m) * jax.lax.stop_gradient(var).astype(m.dtype),
        }
        return _normalize(x, mean, var, self.eps, params), new_state


@pytree_dataclass
class LayerNorm(Layer):
    """Layer normalization (Ba, Kiros & Hinton 2016) over the last axis:
    ``y = (x - mean) / sqrt(var + eps) * scale + offset`` per example; same in both modes."""

    features: int = static_field()
    eps: Hyperparameter = 1e-5

    def __post_init__(self):
        check_int("features", self.features)
        check_positive("eps", self.eps)

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return _norm_params(self.features), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        check_features(f"LayerNorm({self.features})", x, self.features)
        x = as_floating(x)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True)
        return _normalize(x, mean, var, self.eps, params), state
