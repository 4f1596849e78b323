"""Initialization of weights and biases.

Random initial weights break the symmetry between the units of a layer: with equal
weights every unit of a layer would compute, and learn, the same function. The
variance-scaling schemes choose the spread so that activations (forward) and gradients
(backward) keep roughly the same variance from layer to layer.

Every initializer is a pure function ``init(key, shape, dtype=jnp.float32) -> array``
(:data:`~fnn.types.Initializer`). Those with a hyperparameter are classes whose instances
are such functions: :class:`Constant`, :class:`Normal`, :class:`Uniform`,
:class:`Orthogonal` and :class:`VarianceScaling`, frozen dataclasses that compare and
hash by value, so two identical models hash alike and share a compiled program (a layer
holds its initializers as static metadata, so their numbers are Python floats, not
traced leaves). ``get(name)`` looks an initializer up by name.

fnn's construction convention (docs/architecture.md): each class carries its
documentation and checks its arguments when built (``__post_init__``), raising
``ValueError`` naming the argument; the lowercase public names (``constant(value)``,
``normal(stddev)``, ``uniform(scale)``, ``orthogonal(gain)``) are the classes themselves.

Fans: for a weight of shape ``[fan_in, fan_out]`` (fnn's Dense kernels), and for higher
rank shapes ``[..receptive field.., fan_in, fan_out]`` the receptive-field size multiplies
both fans.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike, DTypeLike

from fnn.checks import check_number, lookup
from fnn.types import Initializer


def fans(shape: Sequence[int]) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` of a weight shape (see the module docstring)."""
    if len(shape) < 1:
        raise ValueError(f"shape must have rank >= 1 to have fans; got {shape}")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[:-2])
    return shape[-2] * receptive, shape[-1] * receptive


def zeros(key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All zeros (the default for biases). ``key`` is unused."""
    del key
    return jnp.zeros(shape, dtype)


def ones(key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
    """All ones (the default for normalization scales). ``key`` is unused."""
    del key
    return jnp.ones(shape, dtype)


@dataclasses.dataclass(frozen=True)
class Constant:
    """``constant(value)(key, shape, dtype)``: every element equal to ``value``.

    Args:
      value: a real number (stored as a Python float).

    Returns:
      Called as ``init(key, shape, dtype=jnp.float32)``: an array of ``shape`` and
      ``dtype`` (``key`` is unused).
    """

    value: float

    def __post_init__(self):
        object.__setattr__(self, "value", check_number("value", self.value))

    def __call__(self, key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        del key
        return jnp.full(shape, self.value, dtype)


@dataclasses.dataclass(frozen=True)
class Normal:
    """``normal(stddev)(key, shape, dtype)``: i.i.d. N(0, stddev^2) — "small random values".

    Args:
      stddev: the standard deviation, a real number >= 0.

    Returns:
      Called as ``init(key, shape, dtype=jnp.float32)``: an array of ``shape`` and ``dtype``.
    """

    stddev: float = 1e-2

    def __post_init__(self):
        object.__setattr__(self, "stddev", check_number("stddev", self.stddev, 0))

    def __call__(self, key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return self.stddev * jax.random.normal(key, shape, dtype)


@dataclasses.dataclass(frozen=True)
class Uniform:
    """``uniform(scale)(key, shape, dtype)``: i.i.d. U(-scale, scale), variance scale^2/3.

    Args:
      scale: the half-width of the interval, a real number >= 0.

    Returns:
      Called as ``init(key, shape, dtype=jnp.float32)``: an array of ``shape`` and ``dtype``.
    """

    scale: float = 1e-2

    def __post_init__(self):
        object.__setattr__(self, "scale", check_number("scale", self.scale, 0))

    def __call__(self, key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -self.scale, self.scale)


# VarianceScaling's modes: the n of variance scale / n, from (fan_in, fan_out); its distributions
_MODES = {
    "fan_in": lambda fan_in, fan_out: fan_in,
    "fan_out": lambda fan_in, fan_out: fan_out,
    "fan_avg": lambda fan_in, fan_out: (fan_in + fan_out) / 2,
}
_DISTRIBUTIONS = ("normal", "uniform")


@dataclasses.dataclass(frozen=True)
class VarianceScaling:
    """Draw with variance ``scale / n`` where ``n`` is fan_in, fan_out or their mean.

    ``distribution="normal"``: N(0, scale/n). ``distribution="uniform"``: U(-a, a) with
    a = sqrt(3 * scale / n), which has the same variance. The Glorot, He and LeCun
    schemes below are instances.

    Args:
      scale: a real number > 0.
      mode: ``"fan_in"``, ``"fan_out"`` or ``"fan_avg"``: which ``n`` (:func:`fans`).
      distribution: ``"normal"`` or ``"uniform"``.

    Returns:
      Called as ``init(key, shape, dtype=jnp.float32)``: an array of ``shape`` (rank >= 1)
      and ``dtype``.
    """

    scale: float
    mode: str
    distribution: str

    def __post_init__(self):
        object.__setattr__(self, "scale", check_number("scale", self.scale, 0, low_open=True))
        for name, allowed in (("mode", _MODES), ("distribution", _DISTRIBUTIONS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {list(allowed)}; got {getattr(self, name)!r}")

    def __call__(self, key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        fan_in, fan_out = fans(shape)
        n = _MODES[self.mode](fan_in, fan_out)
        variance = self.scale / n
        if self.distribution == "normal":
            return math.sqrt(variance) * jax.random.normal(key, shape, dtype)
        limit = math.sqrt(3.0 * variance)
        return jax.random.uniform(key, shape, dtype, -limit, limit)


_SCHEME_DOCS = {
    "glorot_uniform": "Glorot & Bengio (2010): U(-a, a), a = sqrt(6 / (fan_in + fan_out)); for tanh/sigmoid.",
    "glorot_normal": "Glorot & Bengio (2010): N(0, 2 / (fan_in + fan_out)) (not truncated).",
    "he_uniform": "He et al. (2015): U(-a, a), a = sqrt(6 / fan_in); for ReLU networks.",
    "he_normal": "He et al. (2015): N(0, 2 / fan_in) (not truncated); for ReLU networks.",
    "lecun_uniform": "LeCun et al. (1998), Efficient BackProp: U(-a, a), a = sqrt(3 / fan_in).",
    "lecun_normal": "LeCun et al. (1998), Efficient BackProp: N(0, 1 / fan_in) (not truncated).",
}


def _scheme(name: str, scale: float, mode: str, distribution: str) -> Initializer:
    """The initializer ``name(key, shape, dtype=jnp.float32)``: a plain function that draws from
    ``VarianceScaling(scale, mode, distribution)``, named (and pickled) as ``fnn.init.<name>``."""
    scheme = VarianceScaling(scale, mode, distribution)

    def initializer(key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        return scheme(key, shape, dtype)

    initializer.__name__ = initializer.__qualname__ = name
    initializer.__doc__ = _SCHEME_DOCS[name]
    return initializer


glorot_uniform = _scheme("glorot_uniform", 1.0, "fan_avg", "uniform")
glorot_normal = _scheme("glorot_normal", 1.0, "fan_avg", "normal")
he_uniform = _scheme("he_uniform", 2.0, "fan_in", "uniform")
he_normal = _scheme("he_normal", 2.0, "fan_in", "normal")
lecun_uniform = _scheme("lecun_uniform", 1.0, "fan_in", "uniform")
lecun_normal = _scheme("lecun_normal", 1.0, "fan_in", "normal")


xavier_uniform, xavier_normal = glorot_uniform, glorot_normal
kaiming_uniform, kaiming_normal = he_uniform, he_normal


@dataclasses.dataclass(frozen=True)
class Orthogonal:
    """``orthogonal(gain)(key, shape, dtype)``: a (semi-)orthogonal matrix times ``gain``.

    Saxe, McClelland & Ganguli (2014), "Exact solutions to the nonlinear dynamics of
    learning in deep linear neural networks", ICLR. A Gaussian matrix of shape
    [prod(shape[:-1]), shape[-1]] (or its transpose, whichever is tall) is QR-factorized;
    Q with the signs of diag(R) folded in is uniformly (Haar) distributed. Rows
    (or columns, whichever are fewer) are orthonormal.

    Args:
      gain: a real number, the factor on the orthogonal matrix.

    Returns:
      Called as ``init(key, shape, dtype=jnp.float32)``: an array of ``shape`` (rank >= 2)
      and ``dtype``.
    """

    gain: float = 1.0

    def __post_init__(self):
        object.__setattr__(self, "gain", check_number("gain", self.gain))

    def __call__(self, key: ArrayLike, shape: Sequence[int], dtype: DTypeLike = jnp.float32) -> jax.Array:
        if len(shape) < 2:
            raise ValueError(f"orthogonal initialization needs a shape of rank >= 2; got {shape}")
        rows, cols = math.prod(shape[:-1]), shape[-1]
        wide = jnp.issubdtype(dtype, jnp.inexact) and jnp.finfo(dtype).bits >= 32
        compute = jnp.dtype(dtype) if wide else jnp.dtype(jnp.float32)  # QR in at least float32, float64 kept
        a = jax.random.normal(key, (max(rows, cols), min(rows, cols)), compute)
        q, r = jnp.linalg.qr(a)
        q = q * jnp.sign(jnp.diag(r))[None, :]  # explicit: rank promotion may be set to "raise"
        q = q if rows >= cols else q.T
        return (self.gain * q).reshape(shape).astype(dtype)


# The public names are the classes themselves: one signature, one docstring, one check.
constant = Constant
normal = Normal
uniform = Uniform
orthogonal = Orthogonal

_BY_NAME = {
    "zeros": zeros,
    "ones": ones,
    "normal": normal(),
    "uniform": uniform(),
    "glorot_uniform": glorot_uniform,
    "glorot_normal": glorot_normal,
    "xavier_uniform": glorot_uniform,
    "xavier_normal": glorot_normal,
    "he_uniform": he_uniform,
    "he_normal": he_normal,
    "kaiming_uniform": he_uniform,
    "kaiming_normal": he_normal,
    "lecun_uniform": lecun_uniform,
    "lecun_normal": lecun_normal,
    "orthogonal": orthogonal(),
}


def get(init: str | Initializer) -> Initializer:
    """Return the initializer named ``init`` (or ``init`` itself if it is callable).

    Raises:
      ValueError: for an unknown name; the message lists the known ones.
    """
    return lookup("init", _BY_NAME, init)
