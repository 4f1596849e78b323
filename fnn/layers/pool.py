"""Pooling, channels-last: ``MaxPool1D/2D`` and ``AvgPool1D/2D`` over sliding windows, each
channel on its own, and ``GlobalAvgPool`` over every spatial axis.

Window geometry as in :mod:`fnn.layers.window` (and PyTorch): ``strides`` default to the
window (non-overlapping windows), ``padding`` defaults to ``"VALID"`` (PyTorch's
``padding=0``); an int ``p`` pads ``p`` on both sides of every spatial axis. Max pooling pads
with ``-inf`` (a padded position never wins); average pooling pads with zeros and, with
``count_include_pad=True`` (PyTorch's default), divides by the window size, else by the
number of real (unpadded) positions in each window. Explicit padding must be smaller than
the window (so no window is padding only; PyTorch asks for at most half). Output sizes
round down (PyTorch's ``ceil_mode=False``).

Computed like the convolutions (:mod:`fnn.layers.conv`): the input's strided views, one per
window tap (a pad and strided slices), reduced elementwise with ``maximum`` or a sum: on
XLA:CPU this max pool trains faster, alone and vmapped, than ``lax.reduce_window`` (whose
gradient is a select-and-scatter; docs/performance.md). At a tie, ``jnp.maximum`` shares
the gradient among the tied entries (PyTorch gives it all to the first); either is a valid
subgradient, and ties of real numbers are rare (after a ReLU, tied zeros get no gradient
through the ReLU anyway).

Dtypes: max pooling keeps the input's dtype (an integer or bool input pads with its
lowest value: the dtype's minimum, ``False``; a bool max is an OR over the window).
Average pooling averages bool and integer input in float32 (:func:`fnn.layers.base.as_floating`),
so that a window of uint8 200s averages to 200, not to a sum wrapped around in uint8,
and a bool mask to the fraction of ``True`` in the window, not to their OR.
"""

from __future__ import annotations

from typing import Any, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn.checks import check_bool
from fnn.layers import window
from fnn.layers.base import Layer, as_floating
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import ModelState, Params


def _valid_counts(sizes, kernel, strides, pads, out) -> np.ndarray:
    """How many unpadded positions each window covers: [1, *out, 1] (numbers known at trace time)."""
    counts = np.ones((1,), np.int64)
    for n, k, s, (lo, _), o in zip(sizes, kernel, strides, pads, out):
        starts = np.arange(o) * s - lo
        per_axis = np.minimum(starts + k, n) - np.maximum(starts, 0)
        counts = np.multiply.outer(counts, per_axis)
    return counts.reshape(1, *out, 1)


@pytree_dataclass
class _Pool(Layer):
    """What the max and average pools share, their fields included; ``rank`` is the number
    of spatial axes."""

    rank: ClassVar[int]
    axes: ClassVar[str]
    window: Any = static_field()
    strides: Any = static_field(default=None)
    padding: Any = static_field(default="VALID")

    def __post_init__(self):
        n = self.rank
        object.__setattr__(self, "window", window.as_sizes("window", self.window, n))
        strides = self.window if self.strides is None else self.strides
        object.__setattr__(self, "strides", window.as_sizes("strides", strides, n))
        object.__setattr__(self, "padding", window.as_padding(self.padding, n))
        if not isinstance(self.padding, str) and any(
            p >= k for pair, k in zip(self.padding, self.window) for p in pair
        ):  # a window of padding only would give -inf (max) or 0 / 0 (mean without the padding)
            raise ValueError(f"padding must be smaller than the window {self.window} on every side; got {self.padding}")

    def _name(self) -> str:
        size = self.window[0] if self.rank == 1 else self.window
        return f"{type(self).__name__}({size})"

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def _views(self, x: ArrayLike, pad_value) -> tuple[list[jax.Array], Any, Any]:
        """The input's strided views (one per window tap), the pads and the output sizes."""
        window.check_input(self._name(), x, self.rank, None, f"[batch, {self.axes}, channels]")
        x = jnp.asarray(x)
        sizes, dilation = x.shape[1:-1], (1,) * self.rank
        pads = window.pads(self.padding, sizes, self.window, self.strides, dilation)
        out = window.out_sizes(sizes, self.window, self.strides, dilation, pads)
        window.check_fits(self._name(), x.shape, out, pads, self.window)
        return window.windows(x, self.window, self.strides, dilation, pads, out, pad_value), pads, out


def _lowest(dtype) -> Any:
    """The value no element of ``dtype`` is below: max pooling's padding."""
    if jnp.issubdtype(dtype, jnp.floating):
        return -jnp.inf
    if jnp.issubdtype(dtype, jnp.bool_):
        return False
    return jnp.iinfo(dtype).min


class _MaxPool(_Pool):
    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        views, _, _ = self._views(x, _lowest(jnp.result_type(x)))
        y = views[0]
        for view in views[1:]:
            y = jnp.maximum(y, view)
        return y, state


@pytree_dataclass
class _AvgPool(_Pool):
    count_include_pad: bool = static_field(default=True)

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "count_include_pad", check_bool("count_include_pad", self.count_include_pad))

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        views, pads, out = self._views(as_floating(x), 0)
        total = views[0]
        for view in views[1:]:
            total = total + view
        dtype = total.dtype
        if self.count_include_pad:
            return total / jnp.asarray(len(views), dtype), state
        counts = _valid_counts(jnp.shape(x)[1:-1], self.window, self.strides, pads, out)
        return total / jnp.asarray(counts, dtype), state


@pytree_dataclass
class MaxPool1D(_MaxPool):
    """Max pooling over the length axis: ``y[b, i, c] = max_j x_padded[b, i * s + j, c]``.

    Args:
      window: the window, an int.
      strides: the step between windows, an int; ``None`` (the default): ``window``.
      padding: ``"VALID"`` (the default), ``"SAME"``, an int ``p`` (``p`` before and after)
        or ``[(low, high)]``; padded positions hold ``-inf`` and never win.

    Shapes:
      x [batch, length, channels] -> y [batch, out_length, channels],
      ``out_length = floor((length + low + high - window) / strides) + 1``.

    Raises:
      ValueError: naming the argument for a bad window, stride or padding; naming the
        layer and the expected shape for an input of another rank or too short.
    """

    rank: ClassVar[int] = 1
    axes: ClassVar[str] = "length"


@pytree_dataclass
class MaxPool2D(_MaxPool):
    """Max pooling over height and width, each channel on its own.

    Args:
      window: the window, an int (square) or a (height, width) pair.
      strides: the step between windows, an int or a pair; ``None`` (the default): ``window``.
      padding: ``"VALID"`` (the default), ``"SAME"``, an int ``p`` (on every side), or one
        entry per spatial axis, an int or a ``(low, high)`` pair; padded positions hold
        ``-inf`` and never win.

    Shapes:
      x [batch, height, width, channels] -> y [batch, out_height, out_width, channels],
      along each axis ``out = floor((size + low + high - window) / stride) + 1``.

    Raises:
      ValueError: naming the argument for a bad window, stride or padding; naming the
        layer and the expected shape for an input of another rank or too small.
    """

    rank: ClassVar[int] = 2
    axes: ClassVar[str] = "height, width"


@pytree_dataclass
class AvgPool1D(_AvgPool):
    """Average pooling over the length axis: the mean of each window, per channel.

    Args:
      window: the window, an int.
      strides: the step between windows, an int; ``None`` (the default): ``window``.
      padding: ``"VALID"`` (the default), ``"SAME"``, an int ``p`` (``p`` before and after)
        or ``[(low, high)]``; padded positions hold zeros.
      count_include_pad: divide by the window size (``True``, PyTorch's default) or by the
        number of unpadded positions in each window (``False``).

    Shapes:
      x [batch, length, channels] -> y [batch, out_length, channels],
      ``out_length = floor((length + low + high - window) / strides) + 1``.

    Raises:
      ValueError: naming the argument for a bad window, stride or padding; naming the
        layer and the expected shape for an input of another rank or too short.
    """

    rank: ClassVar[int] = 1
    axes: ClassVar[str] = "length"


@pytree_dataclass
class AvgPool2D(_AvgPool):
    """Average pooling over height and width: the mean of each window, per channel.

    Args:
      window: the window, an int (square) or a (height, width) pair.
      strides: the step between windows, an int or a pair; ``None`` (the default): ``window``.
      padding: ``"VALID"`` (the default), ``"SAME"``, an int ``p`` (on every side), or one
        entry per spatial axis, an int or a ``(low, high)`` pair; padded positions hold zeros.
      count_include_pad: divide by the window size (``True``, PyTorch's default) or by the
        number of unpadded positions in each window (``False``).

    Shapes:
      x [batch, height, width, channels] -> y [batch, out_height, out_width, channels],
      along each axis ``out = floor((size + low + high - window) / stride) + 1``.

    Raises:
      ValueError: naming the argument for a bad window, stride or padding; naming the
        layer and the expected shape for an input of another rank or too small.
    """

    rank: ClassVar[int] = 2
    axes: ClassVar[str] = "height, width"


@pytree_dataclass
class GlobalAvgPool(Layer):
    """The mean over every spatial axis: [batch, *spatial, channels] -> [batch, channels].

    Works for any number of spatial axes (>= 1): after Conv1D or Conv2D alike. No params.
    Bool and integer input is averaged in float32 (as ``AvgPool2D``).

    Raises:
      ValueError: naming the layer, for an input of rank < 3 (no spatial axis) or with a
        spatial axis of size 0 (nothing to average).
    """

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return (), ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        shape = jnp.shape(x)
        if len(shape) < 3 or 0 in shape[1:-1]:
            raise ValueError(
                "GlobalAvgPool expects input x of shape [batch, *spatial, channels] (rank >= 3, every spatial "
                f"size >= 1); got shape {shape}"
            )
        return jnp.mean(as_floating(x), axis=tuple(range(1, len(shape) - 1))), state
