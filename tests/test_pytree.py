"""fnn.pytree: static-ness is declared on the field, and subclasses inherit it."""

from typing import Any

import jax
import jax.numpy as jnp

from fnn.pytree import pytree_dataclass, static_field


@pytree_dataclass
class _Base:
    rate: Any
    flag: bool = static_field(False)


@pytree_dataclass
class _Child(_Base):
    extra: Any = 0.0


def test_static_fields_are_metadata_and_subclasses_inherit_them():
    child = _Child(0.5, True, 2.0)
    assert jax.tree.leaves(child) == [0.5, 2.0]  # the flag is not a leaf, in the subclass too
    doubled = jax.tree.map(lambda v: v * 2, child)
    assert (doubled.rate, doubled.flag, doubled.extra) == (1.0, True, 4.0)
    assert jax.tree.structure(_Child(0.1, True)) != jax.tree.structure(_Child(0.1, False))


def test_a_new_leaf_value_reuses_the_compiled_program():
    @jax.jit
    def scaled(obj, x):
        return obj.rate * x

    scaled(_Child(0.5), jnp.ones(3))
    scaled(_Child(0.25), jnp.ones(3))
    assert scaled._cache_size() == 1
    scaled(_Child(0.25, True), jnp.ones(3))
    assert scaled._cache_size() == 2
