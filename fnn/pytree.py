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
      which is what the jit cache keys on.
    """

    def wrap(c):
        c = dataclasses.dataclass(frozen=True)(c)
        names = [f.name for f in dataclasses.fields(c)]
        unknown = set(static) - set(names)
        if unknown:
            raise TypeError(f"{c.__name__}: static names {sorted(unknown)} are not fields")
        data = [n for n in names if n not in static]
        return jax.tree_util.register_dataclass(c, data_fields=data, meta_fields=list(static))

    return wrap if cls is None else wrap(cls)
