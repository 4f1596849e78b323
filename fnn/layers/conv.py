"""Convolutions, channels-last: ``Conv1D`` on [batch, length, channels] and ``Conv2D`` on
[batch, height, width, channels].

Each output position is an affine map of the input window it sees (a cross-correlation,
as in every deep-learning library):

    y[b, i, o] = bias[o] + sum_{j, c} x_padded[b, i * s + j * d, c] * w[j, c, o]

(2-D: ``j`` and ``i`` run over both spatial axes). The kernel is stored ``[*kernel_size,
in_channels, out_channels]`` — WIO in 1-D, HWIO in 2-D, the layout of
``jax.lax.conv_general_dilated`` with ``("NWC", "WIO", "NWC")`` / ``("NHWC", "HWIO",
"NHWC")`` and of Flax and Keras — whatever the computation inside, so weights move between
libraries: PyTorch's ``conv.weight`` [out, in, *kernel] is ``w.transpose(2, 1, 0)`` in 1-D
and ``w.transpose(3, 2, 0, 1)`` in 2-D.

How it is computed, and why: ``vmap`` over members (a sweep) turns
``lax.conv_general_dilated`` with per-member kernels into a grouped convolution, which
XLA:CPU runs badly. Here the input's strided views are gathered
(:func:`fnn.layers.window.windows`: a pad and one strided slice per kernel tap, no
convolution), stacked into patches [batch, *out, taps * in_channels] and multiplied by the
kernel reshaped to [taps * in_channels, out_channels]: one matmul, which ``vmap`` turns
into a batched matmul, and whose gradient is a matmul and a pad/add per tap. The patches
array is ``taps`` times the input (a 3x3 kernel: 9 times); a memory cost for large inputs.
Of the formulations timed, this was the fastest on XLA:CPU, alone and vmapped over members
(``lax.conv_general_dilated`` and its patches + matmul included; docs/performance.md).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import init as init_lib
from fnn.checks import check_bool, check_int
from fnn.layers import window
from fnn.layers.base import Layer, per_feature
from fnn.pytree import pytree_dataclass, static_field
from fnn.types import Initializer, ModelState, Params

# PyTorch's default for Conv and Linear weights: kaiming_uniform(a=sqrt(5)), i.e. gain^2 =
# 2 / (1 + 5) = 1/3 and U(-a, a) with a = sqrt(3 * (1/3) / fan_in) = 1 / sqrt(fan_in).
TORCH_DEFAULT = init_lib.VarianceScaling(1.0 / 3.0, "fan_in", "uniform")


def conv(x: jax.Array, w: jax.Array, strides, dilation, pads, out) -> jax.Array:
    """The convolution of x [batch, *spatial, in] with w [*kernel, in, out_channels] as
    gathered strided views and one matmul (see the module docstring); ``pads`` and ``out``
    from :mod:`fnn.layers.window`. Returns [batch, *out, out_channels]."""
    *kernel, c_in, c_out = jnp.shape(w)
    views = window.windows(x, kernel, strides, dilation, pads, out)
    patches = jnp.stack(views, axis=-2).reshape(*jnp.shape(views[0])[:-1], len(views) * c_in)
    return jnp.einsum("...p,po->...o", patches, jnp.reshape(w, (len(views) * c_in, c_out)))


@pytree_dataclass
class _Conv(Layer):
    """What ``Conv1D`` and ``Conv2D`` share, their fields included; ``rank`` is the number
    of spatial axes."""

    rank: ClassVar[int]
    axes: ClassVar[str]  # the spatial axes' names in messages
    in_channels: int = static_field()
    out_channels: int = static_field()
    kernel_size: Any = static_field()
    strides: Any = static_field(default=1)
    padding: Any = static_field(default="SAME")
    dilation: Any = static_field(default=1)
    use_bias: bool = static_field(default=True)
    w_init: str | Initializer = static_field(default=TORCH_DEFAULT)
    b_init: str | Initializer | None = static_field(default=None)

    def __post_init__(self):
        for name in ("in_channels", "out_channels"):  # NumPy ints as Python ints, as the sizes below
            object.__setattr__(self, name, check_int(name, getattr(self, name)))
        n = self.rank
        for name in ("kernel_size", "strides", "dilation"):
            object.__setattr__(self, name, window.as_sizes(name, getattr(self, name), n))
        object.__setattr__(self, "padding", window.as_padding(self.padding, n))
        object.__setattr__(self, "use_bias", check_bool("use_bias", self.use_bias))
        init_lib.get(self.w_init)
        if self.b_init is not None:
            init_lib.get(self.b_init)

    @property
    def fan_in(self) -> int:
        """Inputs per output: ``prod(kernel_size) * in_channels``."""
        return math.prod(self.kernel_size) * self.in_channels

    def _name(self) -> str:
        size = self.kernel_size[0] if self.rank == 1 else self.kernel_size
        return f"{type(self).__name__}({self.in_channels}, {self.out_channels}, kernel_size={size})"

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        w = init_lib.get(self.w_init)(key, (*self.kernel_size, self.in_channels, self.out_channels))
        params = {"w": w}
        if self.use_bias:
            b_init = init_lib.uniform(1.0 / math.sqrt(self.fan_in)) if self.b_init is None else self.b_init
            params["b"] = init_lib.get(b_init)(jax.random.fold_in(key, 1), (self.out_channels,))
        return params, ()

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        window.check_input(self._name(), x, self.rank, self.in_channels, f"[batch, {self.axes}, {self.in_channels}]")
        x = jnp.asarray(x)
        sizes = x.shape[1:-1]
        pads = window.pads(self.padding, sizes, self.kernel_size, self.strides, self.dilation)
        out = window.out_sizes(sizes, self.kernel_size, self.strides, self.dilation, pads)
        reach = [d * (k - 1) + 1 for k, d in zip(self.kernel_size, self.dilation)]
        window.check_fits(self._name(), x.shape, out, pads, reach)
        y = conv(x, params["w"], self.strides, self.dilation, pads, out)
        if self.use_bias:
            y = y + per_feature(params["b"], y)
        return y, state


@pytree_dataclass
class Conv1D(_Conv):
    """1-D convolution over [batch, length, channels], kernel [kernel_size, in, out] (WIO).

    Args:
      in_channels, out_channels: channel counts (the input's last axis, the output's).
      kernel_size: the window, an int; ``w`` has shape [kernel_size, in_channels,
        out_channels], ``b`` shape [out_channels].
      strides: the step between window positions, an int (1 by default).
      padding: ``"SAME"`` (the default: ``ceil(length / strides)`` output positions),
        ``"VALID"`` (none), an int ``p`` (``p`` zeros before and after: PyTorch's
        ``padding=p``), or ``[(low, high)]`` (:mod:`fnn.layers.window`).
      dilation: the spacing between kernel taps, an int (1 by default).
      use_bias: whether to add ``b``.
      w_init, b_init: initializers (names or functions, ``fnn.init``). The default is
        PyTorch's: ``w`` ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (its
        ``kaiming_uniform(a=sqrt(5))``, :data:`TORCH_DEFAULT`) and, with ``b_init=None``,
        ``b`` from the same interval, where ``fan_in = kernel_size * in_channels``.

    Shapes:
      x [batch, length, in_channels] -> y [batch, out_length, out_channels] with
      ``out_length = floor((length + low + high - dilation * (kernel_size - 1) - 1) / strides) + 1``.

    Raises:
      ValueError: naming the argument, for a size that is not a positive int or an unknown
        padding; naming the layer and the expected shape, for an input of another rank or
        channel count, or too short for one window position.
    """

    rank: ClassVar[int] = 1
    axes: ClassVar[str] = "length"


@pytree_dataclass
class Conv2D(_Conv):
    """2-D convolution over [batch, height, width, channels], kernel [kh, kw, in, out] (HWIO).

    Args:
      in_channels, out_channels: channel counts (the input's last axis, the output's).
      kernel_size: the window, an int (square) or a (height, width) pair; ``w`` has shape
        [kh, kw, in_channels, out_channels], ``b`` shape [out_channels].
      strides: the step between window positions, an int or a pair (1 by default).
      padding: ``"SAME"`` (the default: ``ceil(size / stride)`` output positions per axis),
        ``"VALID"`` (none), an int ``p`` (``p`` zeros on every side: PyTorch's
        ``padding=p``), or one entry per spatial axis, each an int (both sides: ``(1, 2)``
        is PyTorch's ``padding=(1, 2)``) or a ``(low, high)`` pair, e.g.
        ``((0, 1), (0, 1))`` (:mod:`fnn.layers.window`).
      dilation: the spacing between kernel taps, an int or a pair (1 by default).
      use_bias: whether to add ``b``.
      w_init, b_init: initializers (names or functions, ``fnn.init``). The default is
        PyTorch's: ``w`` ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (its
        ``kaiming_uniform(a=sqrt(5))``, :data:`TORCH_DEFAULT`) and, with ``b_init=None``,
        ``b`` from the same interval, where ``fan_in = kh * kw * in_channels``.

    Shapes:
      x [batch, height, width, in_channels] -> y [batch, out_height, out_width,
      out_channels], along each spatial axis
      ``out = floor((size + low + high - dilation * (kernel - 1) - 1) / stride) + 1``.

    Raises:
      ValueError: naming the argument, for a size that is not a positive int or pair, or
        an unknown padding; naming the layer and the expected shape, for an input of
        another rank or channel count, or too small for one window position.
    """

    rank: ClassVar[int] = 2
    axes: ClassVar[str] = "height, width"
