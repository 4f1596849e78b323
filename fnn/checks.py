"""Clear errors at the door: eager checks of user input, made before any tracing.

Every check names the argument it looks at and says what was expected. Checks on
*values* (a learning rate must be positive, say) run only when the value is concrete;
under ``jax.jit`` or ``jax.vmap`` the value is a tracer and the check is skipped, so that
hyperparameters can stay traced data (a sweep checks its grid eagerly instead). Checks on
*kinds* always run: a numeric hyperparameter is a Python int or float, or a NumPy or JAX
array (or scalar) of a real numeric dtype, traced or not; strings, ``None``, bools and
other objects are refused.

Optimizers, gradient wrappers, schedules, regularizers, initializers and layers check
their arguments in ``__post_init__`` (fnn's construction convention, docs/architecture.md:
the lowercase public names such as ``fnn.adam`` are the classes themselves);
:func:`check_fields` does it for a frozen dataclass's hyperparameter fields.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn.types import PRNGKeyLike


def is_concrete(value) -> bool:
    """True when ``value`` holds no tracer, so its numbers can be read on the host."""
    return not any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(value))


def _host_value(value):
    """The value as a NumPy array when it is a concrete number or array, else ``None``.

    Tracers, callables (schedules) and the placeholders JAX puts in a pytree while it
    rebuilds one (``None``, ``object()``) are not checked.
    """
    if isinstance(value, (bool, int, float, np.number, np.ndarray)) or (
        isinstance(value, jax.Array) and is_concrete(value)
    ):
        return np.asarray(value)
    return None


def _is_numeric(value) -> bool:
    """True for a Python int or float (not a bool) and for a NumPy or JAX array or scalar,
    tracers included, of an integer or floating dtype."""
    if isinstance(value, (int, float)):
        return not isinstance(value, bool)
    return isinstance(value, (np.ndarray, np.generic, jax.Array)) and (
        jnp.issubdtype(value.dtype, jnp.integer) or jnp.issubdtype(value.dtype, jnp.floating)
    )


def _describe(value) -> str:
    """``value`` and its type for an error message: ``'0.1' (str)``, ``array([ True]) (ndarray of bool)``."""
    kind = type(value).__name__
    if isinstance(value, (np.ndarray, np.generic, jax.Array)):
        kind += f" of {value.dtype}"
    return f"{value!r} ({kind})"


def check_in_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False, schedule=False):
    """Raise ``ValueError`` unless ``value`` is numeric and every element lies in the interval.

    Args:
      name: the argument's name, used in the message.
      value: a Python int or float, or a NumPy / JAX array or scalar of a real numeric
        dtype; the interval is not checked when it is traced.
      low, high: bounds, ``None`` for unbounded.
      low_open, high_open: whether the bound itself is excluded.
      schedule: also accept a schedule (any callable ``step -> value``), returned
        unchecked, as a learning rate is.

    Raises:
      ValueError: naming ``name``, for a value of another kind (a string, ``None``, a
        bool, a bool array, a callable unless ``schedule``) or, when concrete, outside
        the interval or not finite.
    """
    if schedule and callable(value):
        return
    if not _is_numeric(value):
        kinds = "a number, a numeric array or a schedule" if schedule else "a number or a numeric array"
        raise ValueError(f"{name} must be {kinds}; got {_describe(value)}")
    v = _host_value(value)
    if v is None:
        return
    lo_ok = True if low is None else np.all(v > low) if low_open else np.all(v >= low)
    hi_ok = True if high is None else np.all(v < high) if high_open else np.all(v <= high)
    if not (np.all(np.isfinite(v)) and lo_ok and hi_ok):
        left = "(-inf" if low is None else ("(" if low_open else "[") + f"{low}"
        right = "inf)" if high is None else f"{high}" + (")" if high_open else "]")
        raise ValueError(f"{name} must lie in {left}, {right}; got {value!r}")


def check_positive(name: str, value):
    """Raise ``ValueError`` unless ``value`` is numeric and > 0 (the value is not read when traced)."""
    check_in_range(name, value, 0, None, low_open=True)


def check_nonnegative(name: str, value):
    """Raise ``ValueError`` unless ``value`` is numeric and >= 0 (the value is not read when traced)."""
    check_in_range(name, value, 0, None)


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is a Python integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (a static, structural value); got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_whole(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is a whole number >= ``minimum``, else raise.

    For counts that are not structural, where ``2e9`` reads naturally (a byte budget):
    a Python or NumPy int, or a Python or NumPy float with no fractional part.

    Raises:
      ValueError: naming ``name``, for a bool, a non-number, a fraction, inf or NaN, or a
        value below ``minimum``.
    """
    whole = isinstance(value, (int, np.integer)) or (
        isinstance(value, (float, np.floating)) and bool(np.isfinite(value)) and float(value).is_integer()
    )
    if isinstance(value, (bool, np.bool_)) or not whole:
        raise ValueError(f"{name} must be a whole number (an int, or a float such as 2e9); got {_describe(value)}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value!r}")
    return int(value)


def check_number(name: str, value, low=None, high=None, *, low_open=False, high_open=False) -> float:
    """Return ``value`` as a ``float`` if it is a real scalar in the interval, else raise.

    For static options read on the host (a fraction of a population, say): a Python or
    NumPy int or float (``np.float32(0.25)`` as ``0.25``); arrays, tracers and bools are
    refused. The interval as for :func:`check_in_range`.

    Raises:
      ValueError: naming ``name``, for another kind or a value outside the interval.
    """
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a real number (a Python or NumPy scalar); got {_describe(value)}")
    check_in_range(name, float(value), low, high, low_open=low_open, high_open=high_open)
    return float(value)


def check_finite(name: str, value):
    """Raise ``ValueError`` if a concrete array holds NaN or inf (skipped when traced)."""
    v = _host_value(value)
    if v is not None and np.issubdtype(v.dtype, np.inexact) and not np.all(np.isfinite(v)):
        bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf); clean the data first")


def check_same_structure(name_a: str, tree_a, name_b: str, tree_b):
    """Raise ``ValueError`` unless two pytrees have the same structure and leaf shapes."""
    sa, sb = jax.tree.structure(tree_a), jax.tree.structure(tree_b)
    if sa != sb:  # type: ignore[operator]  # jaxlib has no type stub for PyTreeDef's ==
        raise ValueError(f"{name_a} and {name_b} must have the same tree structure; got {sa} and {sb}")
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"{name_a} and {name_b} must have the same leaf shapes; got {np.shape(a)} and {np.shape(b)}"
            )


def hyperparameter(name: str, value, low=None, high=None, *, low_open=False, high_open=False, schedule=False):
    """Check ``value`` as :func:`check_in_range` does and return it as a hyperparameter.

    A Python number becomes a Python float, so that ``1`` and ``0.5`` give pytree
    leaves of the same type and share one compiled program; arrays, tracers and
    (with ``schedule=True``) schedules are returned unchanged.
    """
    check_in_range(name, value, low, high, low_open=low_open, high_open=high_open, schedule=schedule)
    return float(value) if isinstance(value, (int, float)) else value


# Intervals for check_fields: keyword arguments of hyperparameter.
NONNEGATIVE = {"low": 0}  # [0, inf)
POSITIVE = {"low": 0, "low_open": True}  # (0, inf)
FRACTION = {"low": 0, "high": 1, "high_open": True}  # [0, 1): a decay or momentum coefficient
UNIT = {"low": 0, "high": 1}  # [0, 1]


def check_bool(name: str, value) -> bool:
    """Return ``value`` as a ``bool`` if it is a Python or NumPy bool (a static flag), else raise."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name} must be a bool (True or False); got {_describe(value)}")
    return bool(value)


def check_fields(obj, flags=(), **intervals):
    """Check the fields of a frozen dataclass and store them normalized; for ``__post_init__``.

    Args:
      obj: the instance being built.
      flags: names of static boolean fields; each is checked by :func:`check_bool`.
      **intervals: field name -> the interval its value must lie in (:data:`POSITIVE`,
        :data:`FRACTION`, ...); each field is checked and converted by :func:`hyperparameter`.

    Raises:
      ValueError: naming the first field that is not of the expected kind or range.
    """
    for name in flags:
        object.__setattr__(obj, name, check_bool(name, getattr(obj, name)))
    for name, interval in intervals.items():
        object.__setattr__(obj, name, hyperparameter(name, getattr(obj, name), **interval))


def lookup(name: str, table: dict, value):
    """``value`` itself if callable, else ``table[value]``; a ValueError names ``name`` and
    lists the known names otherwise (used for initializers and activations by name)."""
    if callable(value):
        return value
    if isinstance(value, str) and value in table:
        return table[value]
    raise ValueError(f"{name} must be a callable or one of {sorted(table)}; got {value!r}")


def as_key(key: PRNGKeyLike):
    """The run's PRNG key from an int seed (also a traced integer scalar), a raw uint32
    key [2] or a typed key; a ``ValueError`` names ``key`` for anything else."""
    if isinstance(key, bool) or not isinstance(key, (int, np.integer, np.ndarray, jax.Array)):
        raise ValueError(f"key must be an int seed or a jax.random key; got {type(key).__name__} {key!r}")
    dtype, shape = jnp.result_type(key), jnp.shape(key)
    if shape == () and jnp.issubdtype(dtype, jnp.integer):
        try:
            return jax.random.key(key)
        except OverflowError:
            raise ValueError(f"key must be an int seed that fits in 64 bits; got {key}") from None
    if jnp.issubdtype(dtype, jax.dtypes.prng_key):
        return key
    if shape == (2,) and dtype == jnp.uint32:
        return jax.random.wrap_key_data(jnp.asarray(key))
    raise ValueError(f"key must be an int seed or a jax.random key; got {dtype} of shape {shape}")
