"""Configuration objects as pytrees: numbers are traced data, structure is static.

fnn's optimizers, schedules, regularizers and layers are frozen dataclasses registered
as pytrees. Their numeric hyperparameters (learning rate, momentum, dropout rate, ...)
are pytree *leaves*, so passing a new value to a compiled function re-uses the compiled
program and ``jax.vmap`` can map over them. Their structural choices (layer sizes,
``nesterov``, activation names) are static *metadata*, part of the tree definition, so
changing them compiles a new program, as it must.

Static-ness is a property of the field, declared where the field is::

    @pytree_dataclass
    class SGD:
        lr: LearningRate                              # a leaf: traced, vmappable
        nesterov: bool = static_field(default=False)  # metadata: part of the compiled program

and a subclass inherits it with the field, so it cannot be forgotten.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar, cast, dataclass_transform

import jax

_STATIC = "fnn_static"
_T = TypeVar("_T")


def static_field(default: Any = dataclasses.MISSING) -> Any:
    """A dataclass field holding static metadata (a hashable Python value), not a leaf.

    Args:
      default: the field's default value; none when omitted (a required field).

    Returns:
      a ``dataclasses.field`` marked static, for use in a :func:`pytree_dataclass`.
    """
    return dataclasses.field(default=default, metadata={_STATIC: True})


def is_static(field: dataclasses.Field) -> bool:
    """Whether a dataclass field was declared with :func:`static_field` (metadata, not a leaf)."""
    return bool(field.metadata.get(_STATIC))


@dataclass_transform(frozen_default=True, field_specifiers=(dataclasses.field, static_field))
def pytree_dataclass(cls: type[_T]) -> type[_T]:
    """Make ``cls`` a frozen dataclass registered as a pytree.

    Fields declared with :func:`static_field` are static metadata (hashable Python
    values); every other field is a pytree child (arrays, floats, or nested pytrees).

    Args:
      cls: the class to decorate.

    Returns:
      The decorated class. Instances compare and hash by value of their static fields,
      which is what the jit cache keys on. JAX rebuilds instances (after ``tree.map``,
      inside ``jit``, ``vmap`` or ``grad``) without calling ``__init__``: the checks in
      ``__post_init__`` run when a user builds an object, not on the tracers, zeros or
      cotangents JAX puts in its leaves.
    """
    cls = dataclasses.dataclass(frozen=True)(cls)
    fields = dataclasses.fields(cast(Any, cls))
    static = [f.name for f in fields if is_static(f)]
    data = [f.name for f in fields if not is_static(f)]
    _register(cls, data, static)
    return cls


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
