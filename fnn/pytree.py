"""Configuration objects as pytrees: numbers are traced data, structure is static.

fnn's optimizers, schedules, regularizers and layers are frozen dataclasses registered
as pytrees. Their numeric hyperparameters (learning rate, momentum, dropout rate, ...)
are pytree *leaves*, so passing a new value to a compiled function re-uses the compiled
program and ``jax.vmap`` can map over them. Their structural choices (layer sizes,
``nesterov``, activation names) are static *metadata*, part of the tree definition, so
changing them compiles a new program, as it must.
"""

from __future__ import annotations

import dataclasses

import jax


def pytree_dataclass(cls=None, *, static: tuple[str, ...] = ()):
    """Make ``cls`` a frozen dataclass registered as a pytree.

    Args:
      cls: the class to decorate.
      static: names of fields that are static metadata (hashable Python values); every
        other field is a pytree child (arrays, floats, or nested pytrees).

    Returns:
      The decorated class. Instances compare and hash by value of their static fields,
      which is what the jit cache keys on. JAX rebuilds instances (after ``tree.map``,
      inside ``jit``, ``vmap`` or ``grad``) without calling ``__init__``: the checks in
      ``__post_init__`` run when a user builds an object, not on the tracers, zeros or
      cotangents JAX puts in its leaves.
    """

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        unknown = set(static) - set(names)
        if unknown:
            raise TypeError(f"{c.__name__}: static names {sorted(unknown)} are not fields")
        data = [n for n in names if n not in static]
        _register(c, data, list(static))
        return c

    return wrap if cls is None else wrap(cls)


def _register(cls, data: list[str], static: list[str]):
    """Register ``cls`` with a flatten by field name and an unflatten that skips ``__init__``."""

    def flatten_with_keys(obj):
        children = [(jax.tree_util.GetAttrKey(n), getattr(obj, n)) for n in data]
        return children, tuple(getattr(obj, n) for n in static)

    def flatten(obj):
        return [getattr(obj, n) for n in data], tuple(getattr(obj, n) for n in static)

    def unflatten(aux, children):
        obj = object.__new__(cls)
        for name, value in [*zip(static, aux), *zip(data, children)]:
            object.__setattr__(obj, name, value)
        return obj

    jax.tree_util.register_pytree_with_keys(cls, flatten_with_keys, unflatten, flatten)
