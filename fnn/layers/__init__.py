"""Layers and models: forward propagation as pure functions over a params pytree.

One layer family per module: :mod:`~fnn.layers.base` (the convention, ``Serial``,
``Function``, ``Residual``, ``check_params``), :mod:`~fnn.layers.dense` (``Dense``,
``Activation``), :mod:`~fnn.layers.conv` (``Conv1D``, ``Conv2D``), :mod:`~fnn.layers.pool`
(``MaxPool1D/2D``, ``AvgPool1D/2D``, ``GlobalAvgPool``), :mod:`~fnn.layers.reshape`
(``Flatten``, ``Reshape``), :mod:`~fnn.layers.dropout`, :mod:`~fnn.layers.norm`
(``BatchNorm``, ``LayerNorm``) and :mod:`~fnn.layers.mlp`; :mod:`~fnn.layers.window` holds
the sliding-window geometry (sizes, padding) that convolutions and pools share.

The convention, used by every layer, by ``Serial`` and by the training engine:

* ``params, state = layer.init(key)`` — trainable parameters and non-trainable state
  (batch-norm running statistics; ``()`` for layers without any), both pytrees.
* ``y = layer.apply(params, x, state=state)`` — **evaluation mode**, a pure function of
  its inputs: no dropout, batch norm uses the running statistics. For a model without
  state (no batch norm) ``state`` may be ``None`` or ``()``: the plain ``apply(params, x)``;
  a model with state needs the one from ``init``.
* ``y, state = layer.apply_train(params, x, state=state, key=key)`` — **training mode**:
  dropout draws its mask from ``key``, batch norm normalizes with the batch statistics
  and returns updated running statistics in the new ``state``.

Both are thin wrappers of one method a layer implements,
``forward(params, state, x, *, key, train) -> (y, new_state)``; ``train`` is a static
Python flag (under ``vmap`` a ``lax.cond`` would run both branches anyway). Both first
check ``params`` and ``state`` against the structure and leaf shapes ``init`` gives
(:func:`check_params`, at trace time under ``jit``): a mismatch is a ``ValueError`` naming
the leaf path, never a different computation. Layers are pytrees (see ``fnn.pytree``):
numeric hyperparameters such as the dropout rate or the batch-norm momentum are leaves,
so a sweep can ``vmap`` over them; sizes and names are static. A user-written pure
function ``f(params, x)`` becomes a layer with ``Function(f)`` and trains like any other.

Shapes: ``Dense``, ``LayerNorm`` and activations take ``[..., features]``; convolutions and
pools are channels-last, ``[batch, length, channels]`` (1-D) and ``[batch, height, width,
channels]`` (2-D), kernels ``[*kernel_size, in_channels, out_channels]`` (WIO / HWIO);
``Flatten`` gives ``[batch, features]``; batch norm needs a batch axis, ``[batch, features]``
or ``[batch, *spatial, channels]`` (statistics per channel, over the other axes).
"""

from fnn.layers.base import Function, Layer, Residual, Serial, as_model, check_params
from fnn.layers.conv import Conv1D, Conv2D
from fnn.layers.dense import Activation, Dense
from fnn.layers.dropout import Dropout
from fnn.layers.mlp import mlp
from fnn.layers.norm import BatchNorm, LayerNorm
from fnn.layers.pool import AvgPool1D, AvgPool2D, GlobalAvgPool, MaxPool1D, MaxPool2D
from fnn.layers.reshape import Flatten, Reshape

__all__ = [
    "Activation",
    "as_model",
    "AvgPool1D",
    "AvgPool2D",
    "BatchNorm",
    "check_params",
    "Conv1D",
    "Conv2D",
    "Dense",
    "Dropout",
    "Flatten",
    "Function",
    "GlobalAvgPool",
    "Layer",
    "LayerNorm",
    "MaxPool1D",
    "MaxPool2D",
    "mlp",
    "Reshape",
    "Residual",
    "Serial",
]
