"""Clear errors at the door: eager checks of user input, made before any tracing.

Every check names the argument it looks at and says what was expected. Checks on
*values* (a learning rate must be positive, say) run only when the value is concrete;
under ``jax.jit`` or ``jax.vmap`` the value is a tracer and the check is skipped, so that
hyperparameters can stay traced data (a sweep checks its grid eagerly instead).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


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


def check_in_range(name: str, value, low=None, high=None, *, low_open=False, high_open=False):
    """Raise ``ValueError`` unless every element of ``value`` lies in the stated interval.

    Args:
      name: the argument's name, used in the message.
      value: a scalar or array; skipped when traced or callable (a schedule).
      low, high: bounds, ``None`` for unbounded.
      low_open, high_open: whether the bound itself is excluded.
    """
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
    """Raise ``ValueError`` unless ``value`` > 0 (skipped when traced)."""
    check_in_range(name, value, 0, None, low_open=True)


def check_nonnegative(name: str, value):
    """Raise ``ValueError`` unless ``value`` >= 0 (skipped when traced)."""
    check_in_range(name, value, 0, None)


def check_int(name: str, value, minimum: int = 1) -> int:
    """Return ``value`` as an ``int`` if it is a Python integer >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be a Python int (a static, structural value); got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}; got {value}")
    return int(value)


def check_finite(name: str, value):
    """Raise ``ValueError`` if a concrete array holds NaN or inf (skipped when traced)."""
    v = _host_value(value)
    if v is not None and np.issubdtype(v.dtype, np.inexact) and not np.all(np.isfinite(v)):
        bad = int(np.size(v) - np.count_nonzero(np.isfinite(v)))
        raise ValueError(f"{name} holds {bad} non-finite values (NaN or inf); clean the data first")


def check_same_structure(name_a: str, tree_a, name_b: str, tree_b):
    """Raise ``ValueError`` unless two pytrees have the same structure and leaf shapes."""
    sa, sb = jax.tree.structure(tree_a), jax.tree.structure(tree_b)
    if sa != sb:
        raise ValueError(f"{name_a} and {name_b} must have the same tree structure; got {sa} and {sb}")
    for a, b in zip(jax.tree.leaves(tree_a), jax.tree.leaves(tree_b)):
        if np.shape(a) != np.shape(b):
            raise ValueError(
                f"{name_a} and {name_b} must have the same leaf shapes; got {np.shape(a)} and {np.shape(b)}"
            )


def hyperparameter(name: str, value, low=None, high=None, *, low_open=False, high_open=False):
    """Check ``value`` lies in the interval (when concrete) and return it as a hyperparameter.

    A Python number becomes a Python float, so that ``1`` and ``0.5`` give pytree
    leaves of the same type and share one compiled program; arrays, tracers and
    callables are returned unchanged.
    """
    check_in_range(name, value, low, high, low_open=low_open, high_open=high_open)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return value


def lookup(name: str, table: dict, value):
    """``value`` itself if callable, else ``table[value]``; a ValueError names ``name`` and
    lists the known names otherwise (used for initializers and activations by name)."""
    if callable(value):
        return value
    if isinstance(value, str) and value in table:
        return table[value]
    raise ValueError(f"{name} must be a callable or one of {sorted(table)}; got {value!r}")


def as_key(key):
    """Accept an int seed (also a traced integer scalar), a raw uint32 key or a typed key;
    return a typed key."""
    if isinstance(key, int) or (jnp.shape(key) == () and jnp.issubdtype(jnp.result_type(key), jnp.integer)):
        return jax.random.key(key)
    if jnp.issubdtype(jnp.result_type(key), jax.dtypes.prng_key):
        return key
    if jnp.shape(key) == (2,) and jnp.result_type(key) == jnp.uint32:
        return jax.random.wrap_key_data(key)
    raise ValueError(f"key must be an int seed or a jax.random key; got {type(key).__name__} {jnp.shape(key)}")
