"""Layers and models: forward propagation as pure functions over a params pytree.

The convention, used by every layer, by ``Serial`` and by the training engine:

* ``params, state = layer.init(key)`` — trainable parameters and non-trainable state
  (batch-norm running statistics; ``()`` for layers without any), both pytrees.
* ``y = layer.apply(params, x, state=state)`` — **evaluation mode**, a pure function of
  its inputs: no dropout, batch norm uses the running statistics. For a model without
  state (no batch norm) ``state`` may be ``None`` or ``()``: the plain ``apply(params, x)``;
  a model with state needs the one from ``init``.
* ``y, state = layer.apply_train(params, x, state=state, key=key)`` — **training mode**:
  dropout draws its mask from ``key``, batch norm normalizes with the batch statistics
  and returns updated running statistics in the new ``state``.

Both are thin wrappers of one method a layer implements,
``forward(params, state, x, *, key, train) -> (y, new_state)``; ``train`` is a static
Python flag (under ``vmap`` a ``lax.cond`` would run both branches anyway). Both first
check ``params`` and ``state`` against the structure and leaf shapes ``init`` gives
(:func:`check_params`, at trace time under ``jit``): a mismatch is a ``ValueError`` naming
the leaf path, never a different computation. Layers are pytrees (see ``fnn.pytree``):
numeric hyperparameters such as the dropout rate or the batch-norm momentum are leaves,
so a sweep can ``vmap`` over them; sizes and names are static. A user-written pure
function ``f(params, x)`` becomes a layer with ``Function(f)`` and trains like any other.

Shapes: inputs are ``[..., features]``; batch norm needs a batch axis, ``[batch, features]``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fnn import activations as activations_lib
from fnn import init as init_lib
from fnn.pytree import pytree_dataclass, static_field
from fnn.checks import check_in_range, check_int, check_positive


class Layer:
    """Base class: ``init``, ``forward`` (to implement) and ``apply`` / ``apply_train``."""

    def init(self, key) -> tuple[Any, Any]:
        """Return ``(params, state)`` for this layer, drawn from ``key``."""
        raise NotImplementedError

    def forward(self, params, state, x, *, key=None, train=False):
        """Return ``(y, new_state)``; ``train`` is static, ``key`` may be ``None`` in evaluation."""
        raise NotImplementedError

    def apply(self, params, x, *, state=None):
        """Evaluation-mode forward pass: returns ``y`` only (pure in params, x and state);
        ``ValueError`` if params or state do not match the model (:func:`check_params`)."""
        check_params(self, params, state)
        y, _ = self.forward(params, state, x, key=None, train=False)
        return y

    def apply_train(self, params, x, *, state=None, key=None):
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
        except (ValueError, NotImplementedError):
            return None


def check_params(model, params, state=None, *, names=("params", "state")):
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


def _is_empty(state) -> bool:
    """True for ``None`` and ``()``: no state given."""
    return state is None or (isinstance(state, tuple) and not state)


def _check_features(name: str, x, features: int):
    if jnp.ndim(x) < 1 or jnp.shape(x)[-1] != features:
        raise ValueError(
            f"{name} expects input x of shape [..., {features}] (rank >= 1, last axis = {features} "
            f"features); got shape {jnp.shape(x)}"
        )


@pytree_dataclass
class Dense(Layer):
    """Fully connected layer: ``y = x @ w + b``.

    Args:
      in_features, out_features: sizes; ``w`` has shape [in_features, out_features],
        ``b`` shape [out_features].
      use_bias: whether to add ``b``.
      w_init, b_init: initializer names or functions (``fnn.init``); biases start at zero.
    Shapes: x [..., in_features] -> y [..., out_features].
    """

    in_features: int = static_field()
    out_features: int = static_field()
    use_bias: bool = static_field(True)
    w_init: Any = static_field("glorot_uniform")
    b_init: Any = static_field("zeros")

    def __post_init__(self):
        check_int("in_features", self.in_features)
        check_int("out_features", self.out_features)
        init_lib.get(self.w_init), init_lib.get(self.b_init)

    def init(self, key):
        w = init_lib.get(self.w_init)(key, (self.in_features, self.out_features))
        params = {"w": w}
        if self.use_bias:
            params["b"] = init_lib.get(self.b_init)(jax.random.fold_in(key, 1), (self.out_features,))
        return params, ()

    def forward(self, params, state, x, *, key=None, train=False):
        _check_features(f"Dense({self.in_features}, {self.out_features})", x, self.in_features)
        y = x @ params["w"]
        if self.use_bias:
            y = y + _per_feature(params["b"], y)
        return y, state


@pytree_dataclass
class Activation(Layer):
    """Elementwise nonlinearity, by name (``"relu"``) or function; no parameters."""

    fn: Any = static_field("relu")

    def __post_init__(self):
        activations_lib.get(self.fn)

    def init(self, key):
        return (), ()

    def forward(self, params, state, x, *, key=None, train=False):
        return activations_lib.get(self.fn)(x), state


@pytree_dataclass
class Dropout(Layer):
    """Inverted dropout (Srivastava et al. 2014): in training, each unit is dropped with
    probability ``rate`` and the kept ones are scaled by 1 / (1 - rate), so evaluation
    is the identity.

    ``rate`` is the probability of *dropping* (not keeping), in [0, 1); it is a leaf, so
    it may be traced (swept with ``vmap``). Training mode needs ``key``.
    """

    rate: Any = 0.5

    def __post_init__(self):
        check_in_range("rate", self.rate, 0.0, 1.0, high_open=True)

    def init(self, key):
        return (), ()

    def forward(self, params, state, x, *, key=None, train=False):
        if not train:
            return x, state
        if key is None:
            raise ValueError("Dropout in training mode needs key= (a jax.random key)")
        keep = 1.0 - self.rate
        mask = jax.random.bernoulli(key, keep, jnp.shape(x))
        return jnp.where(mask, x / keep, 0).astype(jnp.result_type(x)), state


def _per_feature(v, x):
    """A [features] vector reshaped to broadcast against x [..., features] (explicit ranks)."""
    return jnp.reshape(v, (1,) * (jnp.ndim(x) - jnp.ndim(v)) + jnp.shape(v))


def _normalize(x, mean, var, eps, params):
    scale, offset = _per_feature(params["scale"], x), _per_feature(params["offset"], x)
    return (x - _per_feature(mean, x)) * jax.lax.rsqrt(_per_feature(var, x) + eps) * scale + offset


def _norm_params(features):
    return {"scale": jnp.ones((features,), jnp.float32), "offset": jnp.zeros((features,), jnp.float32)}


@pytree_dataclass
class BatchNorm(Layer):
    """Batch normalization (Ioffe & Szegedy 2015) over the batch axis of [batch, features].

    Training: ``y = (x - mean_B) / sqrt(var_B + eps) * scale + offset`` with the batch's
    mean and (biased) variance, and the running statistics move towards them:
    ``running = momentum * running + (1 - momentum) * batch_statistic``.
    Evaluation: the same formula with the running statistics.

    The running statistics are the layer's *state*: ``{"mean": zeros, "var": ones}`` at
    init (variance starts at 1, not 0). ``momentum`` (weight on the old value, 0.99 as in
    Keras/Flax; PyTorch's momentum=0.1 is 0.9 here) and ``eps`` are leaves.
    """

    features: int = static_field()
    momentum: Any = 0.99
    eps: Any = 1e-5

    def __post_init__(self):
        check_int("features", self.features)
        check_in_range("momentum", self.momentum, 0.0, 1.0)
        check_positive("eps", self.eps)

    def init(self, key):
        stats = {"mean": jnp.zeros((self.features,), jnp.float32), "var": jnp.ones((self.features,), jnp.float32)}
        return _norm_params(self.features), stats

    def forward(self, params, state, x, *, key=None, train=False):
        _check_features(f"BatchNorm({self.features})", x, self.features)
        if _is_empty(state):
            raise ValueError("BatchNorm needs its running statistics: pass state= (from model.init)")
        if not train:
            return _normalize(x, state["mean"], state["var"], self.eps, params), state
        if jnp.ndim(x) != 2:
            raise ValueError(f"BatchNorm in training mode expects x of shape [batch, features]; got {jnp.shape(x)}")
        mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
        m = self.momentum
        new_state = {
            "mean": m * state["mean"] + (1 - m) * jax.lax.stop_gradient(mean),
            "var": m * state["var"] + (1 - m) * jax.lax.stop_gradient(var),
        }
        return _normalize(x, mean, var, self.eps, params), new_state


@pytree_dataclass
class LayerNorm(Layer):
    """Layer normalization (Ba, Kiros & Hinton 2016) over the last axis:
    ``y = (x - mean) / sqrt(var + eps) * scale + offset`` per example; same in both modes."""

    features: int = static_field()
    eps: Any = 1e-5

    def __post_init__(self):
        check_int("features", self.features)
        check_positive("eps", self.eps)

    def init(self, key):
        return _norm_params(self.features), ()

    def forward(self, params, state, x, *, key=None, train=False):
        _check_features(f"LayerNorm({self.features})", x, self.features)
        mean = jnp.mean(x, axis=-1, keepdims=True)
        var = jnp.var(x, axis=-1, keepdims=True)
        return _normalize(x, mean, var, self.eps, params), state


@pytree_dataclass
class Function(Layer):
    """Wrap a user-written pure function ``fn(params, x) -> y`` as a layer.

    It has no ``init`` of its own (build the params yourself and hand them to ``fit``),
    no state, and behaves the same in training and evaluation.
    """

    fn: Callable = static_field()

    def init(self, key):
        raise ValueError("Function(fn) has no initializer: build its params yourself and pass params=")

    def forward(self, params, state, x, *, key=None, train=False):
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

    def init(self, key):
        pairs = [layer.init(jax.random.fold_in(key, i)) for i, layer in enumerate(self.layers)]
        return tuple(p for p, _ in pairs), tuple(s for _, s in pairs)

    def forward(self, params, state, x, *, key=None, train=False):
        params, states = self._entries("params", params), self._states("state", state)
        new_states = []
        for i, (layer, p, s) in enumerate(zip(self.layers, params, states)):
            k = None if key is None else jax.random.fold_in(key, i)
            x, s = layer.forward(p, s, x, key=k, train=train)
            new_states.append(s)
        return x, (state if _is_empty(state) else tuple(new_states))

    def _entries(self, name: str, tree, show_state: bool = False):
        """``tree`` if it has one entry per layer (``zip`` would drop layers), else a ValueError."""
        if not (isinstance(tree, (tuple, list)) and len(tree) == len(self.layers)):
            got = f"has {len(tree)} entries" if isinstance(tree, (tuple, list)) else f"is {_shapes(tree)}"
            needs = f"; it needs the state from model.init, shaped {_shapes(self._state_shapes())}"
            raise ValueError(f"{name} {got}; Serial has {len(self.layers)} layers{needs if show_state else ''}")
        return tree

    def _states(self, name: str, state):
        """One state per layer: ``state``'s entries, or ``None`` each for ``None``/``()`` if stateless."""
        if _is_empty(state) and not jax.tree.leaves(self._state_shapes()):
            return (None,) * len(self.layers)
        return self._entries(name, state, show_state=True)

    def _check(self, params, state, names):
        """Check the number of entries, then each layer's under its paths ``params[i]``, ``state[i]``."""
        params, states = self._entries(names[0], params), self._states(names[1], state)
        for i, (layer, p, s) in enumerate(zip(self.layers, params, states)):
            layer._check(p, s, (f"{names[0]}[{i}]", f"{names[1]}[{i}]"))

    def _state_shapes(self):
        return tuple(layer._state_shapes() for layer in self.layers)


def as_model(model) -> Layer:
    """Return ``model`` if it is a Layer; wrap a plain function ``f(params, x)`` in ``Function``."""
    if isinstance(model, Layer):
        return model
    if callable(model):
        return Function(model)
    raise ValueError(f"model must be an fnn Layer or a function f(params, x); got {type(model).__name__}")


def mlp(
    sizes: Sequence[int],
    activation="relu",
    *,
    dropout=None,
    batchnorm: bool = False,
    init="glorot_uniform",
    output_activation=None,
) -> Serial:
    """Build a multilayer perceptron.

    Each hidden layer is ``Dense -> [BatchNorm] -> Activation -> [Dropout]``; the last
    layer is ``Dense`` followed by ``output_activation`` if given (logits otherwise, which
    is what ``fnn.cross_entropy`` expects).

    Args:
      sizes: ``[in_features, hidden_1, ..., out_features]``, at least two ints.
      activation: name or function for the hidden layers.
      dropout: ``None`` for no dropout layers; a rate in [0, 1) (a float or a traced
        scalar, so a sweep may vmap over it) adds a Dropout after every hidden activation.
      batchnorm: add a BatchNorm after every hidden Dense.
      init: weight initializer name or function for every Dense.
      output_activation: optional activation after the last Dense.

    Returns:
      A ``Serial`` model; ``params, state = model.init(key)``.
    """
    sizes = list(sizes)
    if len(sizes) < 2:
        raise ValueError(f"sizes must list at least [in_features, out_features]; got {sizes}")
    layers: list[Layer] = []
    for i, (n_in, n_out) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(Dense(n_in, n_out, w_init=init))
        if i == len(sizes) - 2:
            break
        if batchnorm:
            layers.append(BatchNorm(n_out))
        layers.append(Activation(activation))
        if dropout is not None:
            layers.append(Dropout(dropout))
    if output_activation is not None:
        layers.append(Activation(output_activation))
    return Serial(tuple(layers))
