"""The layer convention and composition: ``Layer``, ``check_params``, ``Function``,
``Serial``, ``Residual``, ``as_model`` (see :mod:`fnn.layers` for the convention)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn.pytree import pytree_dataclass, static_field
from fnn.types import ModelState, Params


class NoInitializer(ValueError):
    """Raised by ``init`` of a layer whose params the user builds (``Function``): its
    params and state are not checked against an initializer."""


class Layer:
    """Base class: ``init``, ``forward`` (to implement) and ``apply`` / ``apply_train``."""

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        """Return ``(params, state)`` for this layer, drawn from ``key``."""
        raise NotImplementedError

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        """Return ``(y, new_state)``; ``train`` is static, ``key`` may be ``None`` in evaluation."""
        raise NotImplementedError

    def apply(self, params: Params, x: ArrayLike, *, state: ModelState = None) -> jax.Array:
        """Evaluation-mode forward pass: returns ``y`` only (pure in params, x and state);
        ``ValueError`` if params or state do not match the model (:func:`check_params`)."""
        check_params(self, params, state)
        y, _ = self.forward(params, state, x, key=None, train=False)
        return y

    def apply_train(
        self, params: Params, x: ArrayLike, *, state: ModelState = None, key: ArrayLike | None = None
    ) -> tuple[jax.Array, ModelState]:
        """Training-mode forward pass: returns ``(y, new_state)``; ``ValueError`` if params or
        state do not match the model (:func:`check_params`)."""
        check_params(self, params, state)
        return self.forward(params, state, x, key=key, train=True)

    def _check(self, params, state, names):
        """Compare params and state with the shapes ``init`` gives; skipped without ``init``."""
        if self._init_shapes is not None:
            _match(names[0], params, self._init_shapes[0])
            _match(names[1], state, self._init_shapes[1])

    def _state_shapes(self):
        """The state ``init`` gives, as ShapeDtypeStructs; ``()`` without ``init``."""
        return () if self._init_shapes is None else self._init_shapes[1]

    @functools.cached_property
    def _init_shapes(self):
        """``init``'s (params, state) as ShapeDtypeStructs (nothing computed), or ``None`` when
        ``init`` raises (no initializer); kept on the instance: computed once per model."""
        try:
            return jax.eval_shape(lambda: self.init(jax.random.key(0)))
        except (NoInitializer, NotImplementedError):
            return None


def check_params(
    model: Layer | Callable[..., Any],
    params: Params,
    state: ModelState = None,
    *,
    names: tuple[str, str] = ("params", "state"),
) -> ModelState:
    """Check that params and state have the structure and leaf shapes ``model.init`` gives.

    Dtypes may differ. Under ``jit``/``vmap`` (per-member shapes) it runs at trace time.
    Layers without an initializer (``Function``) are skipped: their params are the user's.

    Args:
      model: an fnn Layer (a plain function ``f(params, x)`` is a ``Function``).
      params: the params pytree, e.g. a tuple with one entry per ``Serial`` layer.
      state: the state pytree; ``None`` or ``()`` only when the model has no state.
      names: the names of params and state in messages, e.g. ``("params", "model_state")``.

    Returns:
      ``state``, unchanged (so a caller may write ``state = check_params(...)``).

    Raises:
      ValueError: naming the first leaf path missing, extra or of another shape, e.g.
        ``params[2]['w'] has shape (8, 10); the model expects (16, 10)``.
    """
    as_model(model)._check(params, state, names)
    return state


def _shapes(tree) -> str:
    """A pytree with each leaf written as its shape, e.g. ``{'mean': [8], 'var': [8]}``."""
    return repr(jax.tree.map(lambda leaf: list(np.shape(leaf)), tree))


def _match(name: str, tree, expected):
    """Raise ``ValueError`` at the first leaf path where ``tree`` differs from ``expected``
    (ShapeDtypeStructs): a leaf missing, one too many, or of another shape."""
    got, want = (dict(jax.tree_util.tree_leaves_with_path(t)) for t in (tree, expected))
    bad = [p for p in want if p not in got or np.shape(got[p]) != want[p].shape] + [p for p in got if p not in want]
    if bad:
        path, where = bad[0], name + jax.tree_util.keystr(bad[0])
        if path in got and path in want:
            raise ValueError(f"{where} has shape {np.shape(got[path])}; the model expects {want[path].shape}")
        problem = "is missing" if path in want else "is not in the model"
        raise ValueError(f"{where} {problem}: {name} must be shaped {_shapes(expected)}")


def is_empty(state: ModelState) -> bool:
    """True for ``None`` and ``()``: no state given."""
    return state is None or (isinstance(state, tuple) and not state)


def check_features(name: str, x: ArrayLike, features: int) -> None:
    """Raise ``ValueError`` unless ``x`` has shape [..., features] (``name`` is the layer)."""
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != features:
        raise ValueError(
            f"{name} expects input x of shape [..., {features}] (rank >= 1, last axis = {features} "
            f"features); got shape {jnp.shape(x)}"
        )


def as_floating(x: ArrayLike) -> jax.Array:
    """``x`` as an array of a floating dtype, for layers that sum or scale their input.

    Floating input keeps its dtype; bool and integer input (a mask, uint8 pixels) becomes
    float32, the dtype of the params fnn's initializers draw, so that a sum neither wraps
    around (200 + 200 in uint8 is 144) nor saturates (bool addition is OR).

    Args:
      x: an array of any real dtype.
    Returns:
      ``x`` as a floating array, unchanged if it was one.
    """
    x = jnp.asarray(x)
    return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.float32)


def per_feature(v: ArrayLike, x: ArrayLike) -> jax.Array:
    """A [features] vector reshaped to broadcast against x [..., features] (explicit ranks)."""
    return jnp.reshape(v, (1,) * (jnp.ndim(x) - jnp.ndim(v)) + jnp.shape(v))


@pytree_dataclass
class Function(Layer):
    """Wrap a user-written pure function ``fn(params, x) -> y`` as a layer.

    It has no ``init`` of its own (build the params yourself and hand them to ``fit``),
    no state, and behaves the same in training and evaluation.
    """

    fn: Callable = static_field()

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        raise NoInitializer("Function(fn) has no initializer: build its params yourself and pass params=")

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        return self.fn(params, x), state


@pytree_dataclass
class Serial(Layer):
    """Composition ``layers[-1](... layers[0](x))``.

    params and state are tuples with exactly one entry per layer (``()`` for layers without
    any); ``state`` may be ``None`` or ``()`` when no layer has state, and comes back as
    given. Layer ``i`` gets the key ``fold_in(key, i)``.
    """

    layers: tuple

    def __post_init__(self):
        for i, layer in enumerate(self.layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"layers[{i}] must be an fnn Layer; got {type(layer).__name__}")

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        pairs = [layer.init(jax.random.fold_in(key, i)) for i, layer in enumerate(self.layers)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        params, states = self._entries("params", params), self._states("state", state)
        new_states = []
        for i, (layer, p, s) in enumerate(zip(self.layers, params, states)):
            k = None if key is None else jax.random.fold_in(key, i)
            x, s = layer.forward(p, s, x, key=k, train=train)
            new_states.append(s)
        return x, (state if is_empty(state) else tuple(new_states))  # type: ignore[return-value]  # x itself without layers

    def _entries(self, name: str, tree, show_state: bool = False):
        """``tree`` if it has one entry per layer (``zip`` would drop layers), else a ValueError."""
        if not (isinstance(tree, (tuple, list)) and len(tree) == len(self.layers)):
            got = f"has {len(tree)} entries" if isinstance(tree, (tuple, list)) else f"is {_shapes(tree)}"
            needs = f"; it needs the state from model.init, shaped {_shapes(self._state_shapes())}"
            raise ValueError(f"{name} {got}; Serial has {len(self.layers)} layers{needs if show_state else ''}")
        return tree

    def _states(self, name: str, state):
        """One state per layer: ``state``'s entries, or ``None`` each for ``None``/``()`` if stateless."""
        if is_empty(state) and not jax.tree.leaves(self._state_shapes()):
            return (None,) * len(self.layers)
        return self._entries(name, state, show_state=True)

    def _check(self, params, state, names):
        """Check the number of entries, then each layer's under its paths ``params[i]``, ``state[i]``."""
        params, states = self._entries(names[0], params), self._states(names[1], state)
        for i, (layer, p, s) in enumerate(zip(self.layers, params, states)):
            layer._check(p, s, (f"{names[0]}[{i}]", f"{names[1]}[{i}]"))

    def _state_shapes(self):
        return tuple(layer._state_shapes() for layer in self.layers)


@pytree_dataclass
class Residual(Layer):
    """A skip connection around ``layer`` (He et al. 2016): ``y = x + layer(x)``.

    Its params and state are the inner layer's, unwrapped (``Residual(Serial(...))`` has the
    Serial's tuples); the key goes to the inner layer as given, so dropout and batch norm
    inside behave as they do outside, and the new state comes back from the inner layer.

    Args:
      layer: an fnn Layer whose output has the shape of its input (e.g. a ``Serial`` of
        ``"SAME"``-padded, stride-1 convolutions keeping the channel count).

    Shapes:
      x [...] -> y of the same shape.

    Raises:
      ValueError: for a ``layer`` that is not an fnn Layer; naming the shapes when the
        inner layer's output shape differs from its input's (at trace time under ``jit``).
    """

    layer: Layer

    def __post_init__(self):
        if not isinstance(self.layer, Layer):
            raise ValueError(f"layer must be an fnn Layer; got {type(self.layer).__name__}")

    def init(self, key: ArrayLike) -> tuple[Params, ModelState]:
        return self.layer.init(key)

    def forward(
        self, params: Params, state: ModelState, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, ModelState]:
        y, new_state = self.layer.forward(params, state, x, key=key, train=train)
        if jnp.shape(y) != jnp.shape(x):
            raise ValueError(
                f"Residual needs its layer ({type(self.layer).__name__}) to keep the input's shape for x + layer(x): "
                f"x has shape {jnp.shape(x)}, the layer's output {jnp.shape(y)}"
            )
        return jnp.asarray(x) + y, new_state

    def _check(self, params, state, names):
        self.layer._check(params, state, names)

    def _state_shapes(self):
        return self.layer._state_shapes()


def as_model(model: Layer | Callable[..., Any]) -> Layer:
    """Return ``model`` if it is a Layer; wrap a plain function ``f(params, x)`` in ``Function``."""
    if isinstance(model, Layer):
        return model
    if callable(model):
        return Function(model)
    raise ValueError(f"model must be an fnn Layer or a function f(params, x); got {type(model).__name__}")
