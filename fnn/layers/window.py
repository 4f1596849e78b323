"""Sliding-window geometry shared by convolutions and pools: sizes, strides, dilation and
padding checked and normalized, the padding each spatial axis gets, the output sizes, and
the strided views of the input that a window visits.

Conventions (those of ``jax.lax.conv_general_dilated`` and PyTorch): along a spatial axis
of size ``L``, a window of ``k`` taps spaced ``d`` apart (dilation), moved by ``s``
(stride), over the input padded with ``lo`` before and ``hi`` after, has
``floor((L + lo + hi - d * (k - 1) - 1) / s) + 1`` positions; position ``i`` reads the
padded input at ``i * s + j * d`` for tap ``j``.

``padding`` is ``"SAME"`` (the output has ``ceil(L / s)`` positions; the total padding
``max((out - 1) * s + d * (k - 1) + 1 - L, 0)`` is split with the extra one after, as in
TensorFlow, ``lax`` and PyTorch's ``padding="same"``), ``"VALID"`` (none), an int ``p``
(``p`` before and after on every spatial axis: PyTorch's ``padding=p``), or one entry per
spatial axis, each an int (symmetric) or a ``(low, high)`` pair: ``(1, 2)`` in 2-D is
PyTorch's ``padding=(1, 2)``, ``[(0, 1)]`` in 1-D pads 0 before and 1 after.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

Pads = tuple[tuple[int, int], ...]


def _is_int(value: Any) -> bool:
    """True for a Python or NumPy int (``np.int64(3)``, as ``check_int`` takes channel
    counts), not for a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def as_sizes(name: str, value: Any, rank: int, minimum: int = 1) -> tuple[int, ...]:
    """``value`` as a tuple of ``rank`` ints >= ``minimum``: an int (the same on every
    spatial axis) or a sequence of ``rank`` ints.

    Raises:
      ValueError: naming ``name``, for anything else (a float, a sequence of another length,
        a value below ``minimum``).
    """
    if _is_int(value):
        sizes: tuple = (value,) * rank
    elif isinstance(value, Sequence) and not isinstance(value, str) and len(value) == rank:
        sizes = tuple(value)
    else:
        axes = "an int" if rank == 1 else f"an int or a sequence of {rank} ints"
        raise ValueError(f"{name} must be {axes}; got {value!r}")
    if not all(_is_int(v) and v >= minimum for v in sizes):
        raise ValueError(f"{name} must hold ints >= {minimum}; got {value!r}")
    return tuple(int(v) for v in sizes)


def as_padding(value: Any, rank: int) -> str | Pads:
    """``padding`` normalized: ``"SAME"``, ``"VALID"`` or ``rank`` ``(low, high)`` pairs
    (see the module docstring for the accepted forms).

    Raises:
      ValueError: naming ``padding``, for an unknown string, a negative size, a sequence of
        another length than ``rank`` or an entry that is neither an int nor a pair.
    """
    if rank == 1:
        expected = '"SAME", "VALID", an int >= 0, or [(low, high)] (one entry per spatial axis) of ints >= 0'
    else:
        expected = f'"SAME", "VALID", an int >= 0, or {rank} entries (one per spatial axis), each an int >= 0 or a (low, high) pair'
    if isinstance(value, str):
        if value.upper() in ("SAME", "VALID"):
            return value.upper()
        raise ValueError(f"padding must be {expected}; got {value!r}")
    if _is_int(value) and value >= 0:
        return ((int(value), int(value)),) * rank
    if isinstance(value, Sequence) and len(value) == rank:
        pairs = []
        for entry in value:
            if _is_int(entry) and entry >= 0:
                pairs.append((int(entry), int(entry)))
            elif (
                isinstance(entry, Sequence)
                and len(entry) == 2
                and all(_is_int(v) and v >= 0 for v in entry)
                and not isinstance(entry, str)
            ):
                pairs.append((int(entry[0]), int(entry[1])))
            else:
                raise ValueError(f"padding must be {expected}; got {value!r}")
        return tuple(pairs)
    raise ValueError(f"padding must be {expected}; got {value!r}")


def pads(
    padding: str | Pads, sizes: Sequence[int], window: Sequence[int], strides: Sequence[int], dilation: Sequence[int]
) -> Pads:
    """The ``(low, high)`` padding of each spatial axis of sizes ``sizes``."""
    if padding == "VALID":
        return tuple((0, 0) for _ in sizes)
    if padding == "SAME":
        result = []
        for n, k, s, d in zip(sizes, window, strides, dilation):
            total = max((-(-n // s) - 1) * s + d * (k - 1) + 1 - n, 0)
            result.append((total // 2, total - total // 2))
        return tuple(result)
    return tuple(padding)  # type: ignore[arg-type]  # already (low, high) pairs


def out_sizes(
    sizes: Sequence[int], window: Sequence[int], strides: Sequence[int], dilation: Sequence[int], pads: Pads
) -> tuple[int, ...]:
    """The number of window positions along each spatial axis (may be <= 0: too small)."""
    return tuple(
        (n + lo + hi - d * (k - 1) - 1) // s + 1 for n, k, s, d, (lo, hi) in zip(sizes, window, strides, dilation, pads)
    )


def check_input(name: str, x: Any, rank: int, channels: int | None, layout: str) -> None:
    """Raise ``ValueError`` unless ``x`` has rank ``rank + 2`` (and ``channels`` on its
    last axis, when given); ``layout`` is the expected shape, e.g. ``"[batch, length, 3]"``."""
    shape = jnp.shape(x)
    if len(shape) != rank + 2 or (channels is not None and shape[-1] != channels):
        raise ValueError(f"{name} expects input x of shape {layout}; got shape {shape}")


def check_fits(name: str, x_shape: Sequence[int], out: Sequence[int], pads: Pads, reach: Sequence[int]) -> None:
    """Raise ``ValueError`` when a spatial axis of ``x_shape`` is too small for one window
    position (``reach``: the extent ``d * (k - 1) + 1`` of the window along each axis)."""
    if any(n < 1 for n in out):
        need = [max(r - lo - hi, 1) for r, (lo, hi) in zip(reach, pads)]
        raise ValueError(
            f"{name} expects spatial sizes of at least {tuple(need)} (a window spans {tuple(reach)}, padding "
            f"{pads}); got input x of shape {tuple(x_shape)}"
        )


def windows(
    x: jax.Array,
    window: Sequence[int],
    strides: Sequence[int],
    dilation: Sequence[int],
    pads: Pads,
    out: Sequence[int],
    pad_value: Any = 0,
) -> list[jax.Array]:
    """The strided views of ``x`` [batch, *spatial, channels] that a window visits.

    Returns ``prod(window)`` arrays [batch, *out, channels], one per tap in row-major
    order over the window (the order of an HWIO kernel's leading axes): view ``j`` holds,
    at output position ``i``, the padded input at ``i * strides + j * dilation``. Made of a
    pad and strided slices only, so ``vmap`` over members batches them for free.
    """
    padded = lax.pad(x, jnp.asarray(pad_value, x.dtype), [(0, 0, 0), *((lo, hi, 0) for lo, hi in pads), (0, 0, 0)])
    views = []
    for taps in itertools.product(*(range(k) for k in window)):  # row-major: the last axis fastest
        start = [0] + [t * d for t, d in zip(taps, dilation)] + [0]
        limit = (
            [padded.shape[0]]
            + [t * d + (o - 1) * s + 1 for t, d, o, s in zip(taps, dilation, out, strides)]
            + [padded.shape[-1]]
        )
        views.append(lax.slice(padded, start, limit, [1, *strides, 1]))
    return views
