"""``mlp``: the multilayer perceptron builder."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax

from fnn.layers.base import Layer, Serial
from fnn.layers.dense import Activation, Dense
from fnn.layers.dropout import Dropout
from fnn.layers.norm import BatchNorm
from fnn.types import Hyperparameter, Initializer


def mlp(
    sizes: Sequence[int],
    activation: str | Callable[[jax.Array], jax.Array] = "relu",
    *,
    dropout: Hyperparameter | None = None,
    batchnorm: bool = False,
    init: str | Initializer = "glorot_uniform",
    output_activation: str | Callable[[jax.Array], jax.Array] | None = None,
) -> Serial:
    """Build a multilayer perceptron.

    Each hidden layer is ``Dense -> [BatchNorm] -> Activation -> [Dropout]``; the last
    layer is ``Dense`` followed by ``output_activation`` if given (logits otherwise, which
    is what ``fnn.cross_entropy`` expects). A Dense followed by BatchNorm has no bias
    (``use_bias=False``, as in ResNet's convolutions): batch norm subtracts the batch mean,
    so a bias there has a gradient that is zero up to rounding, which an adaptive
    optimizer (Adam divides by its tiny second moment) turns into full-size random steps,
    and runs then depend on the order in which sums are added (a sweep member would not
    match ``fit`` alone). BatchNorm's ``offset`` plays the bias's part.

    Args:
      sizes: ``[in_features, hidden_1, ..., out_features]``, at least two ints.
      activation: name or function for the hidden layers.
      dropout: ``None`` for no dropout layers; a rate in [0, 1) (a float or a traced
        scalar, so a sweep may vmap over it) adds a Dropout after every hidden activation.
      batchnorm: add a BatchNorm after every hidden Dense (which then has no bias).
      init: weight initializer name or function for every Dense.
      output_activation: optional activation after the last Dense.

    Returns:
      A ``Serial`` model; ``params, state = model.init(key)``.
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least [in_features, out_features]; got {sizes}")
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        hidden = i < len(sizes) - 2
        layers.append(Dense(n_in, n_out, use_bias=not (batchnorm and hidden), w_init=init))
        if not hidden:
            break
        if batchnorm:
            layers.append(BatchNorm(n_out))
        layers.append(Activation(activation))
        if dropout is not None:
            layers.append(Dropout(dropout))
    if output_activation is not None:
        layers.append(Activation(output_activation))
    return Serial(tuple(layers))
