"""Type aliases for fnn's annotations: one name for each kind of value passed around.

fnn's functions pass pytrees of arrays and numbers that may be traced; these names say
which one an argument is, as optax's ``Params`` and ``OptState`` do. They are plain
aliases, not classes: a type checker sees through them, and they check or convert nothing
(:mod:`fnn.checks` does, at every entry point). A pytree has no precise static type (any
nesting of tuples, lists, dicts, NamedTuples and fnn's dataclasses, with arrays at the
leaves), so the pytree aliases are ``Any`` to a type checker; their names say what is
meant.

Hyperparameters are scalars kept as pytree leaves: a field ``momentum: Hyperparameter``
may hold a traced value, and ``jax.vmap`` maps over it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeAlias

import jax
from jax.typing import ArrayLike

#: A pytree of arrays.
PyTree: TypeAlias = Any

#: A model's trainable parameters, as ``model.init(key)[0]`` gives them: a pytree of
#: arrays (``{"w": [in, out], "b": [out]}`` for a ``Dense`` layer, a tuple with one entry
#: per layer for a ``Serial``).
Params: TypeAlias = PyTree

#: A model's non-trainable state, as ``model.init(key)[1]`` gives it: a pytree of arrays
#: (batch norm's running statistics ``{"mean": [features], "var": [features]}``), ``()``
#: for a layer without state; ``None`` or ``()`` where a stateless model's state is an
#: argument.
ModelState: TypeAlias = PyTree

#: The gradient of a scalar with respect to the params: a pytree of the params'
#: structure and leaf shapes.
Gradients: TypeAlias = Params

#: An optimizer's state, as ``optimizer.init(params)`` gives it: for fnn's optimizers a
#: NamedTuple of ``count`` (an int32 scalar, the updates applied so far) and buffers
#: shaped like the params (``fnn.optimizers``).
OptState: TypeAlias = PyTree

#: A numeric hyperparameter (a learning rate, a momentum, a dropout rate, a penalty
#: strength), a scalar: a Python or NumPy number or a 0-d NumPy or JAX array, concrete or
#: traced (under ``jax.vmap``, one value per member). fnn's configuration objects keep these as pytree leaves (``fnn.pytree``), so
#: ``jax.vmap`` maps over them and a compiled program is re-used for new values.
Hyperparameter: TypeAlias = ArrayLike

#: What a learning-rate argument may be: a :data:`Hyperparameter` (a constant rate) or a
#: schedule, a callable ``step -> lr`` such as the ones in ``fnn.schedules``; the step is
#: the number of updates already applied, an array. Optimizers turn it into a schedule
#: (``fnn.schedules.as_schedule``).
LearningRate: TypeAlias = Hyperparameter | Callable[[jax.Array], ArrayLike]

#: A run's randomness as a user gives it: an int seed, a typed key (``jax.random.key``) or
#: a raw ``uint32[2]`` key (``jax.random.PRNGKey``); ``fnn.checks.as_key`` turns it into a
#: key and refuses anything else. ``ArrayLike`` to a type checker, as JAX's own key arguments.
PRNGKeyLike: TypeAlias = ArrayLike

#: An initializer: ``init(key, shape, dtype=jnp.float32) -> array`` of ``shape`` and
#: ``dtype``, drawn from the PRNG key ``key`` (``fnn.init``).
Initializer: TypeAlias = Callable[..., jax.Array]
