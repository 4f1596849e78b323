"""Optimizers as hand-written pure state transitions (no optax).

Every optimizer is a frozen pytree with three methods::

    state = opt.init(params)                                # NamedTuple: count + buffers
    params, state = opt.update(grads, state, params)        # one step of the published rule
    lr = opt.learning_rate(state)                           # the lr the next update uses

``opt.lr`` is always a schedule (:mod:`fnn.schedules`), evaluated at ``state.count``,
the number of updates already applied (0 at the first update). Every numeric
hyperparameter is a pytree leaf: a Python float, a traced scalar or (lr) a schedule.
A compiled step taking the optimizer as an argument therefore does not recompile for
new values, and ``jax.vmap`` maps over a grid of them. Only structural flags
(``nesterov``, ``centered``) are static.

The state's structure never depends on hyperparameter values (SGD always keeps a
velocity, RMSprop always keeps its mean and momentum buffers), so states of one
optimizer type can be stacked, scanned over and checkpointed alike. Update rules run in
each parameter's dtype (gradients and hyperparameters are cast to it); ``count`` is int32.

The factories (``sgd``, ``adam``, ...) are the public entry points: they check concrete
hyperparameters eagerly and raise ``ValueError`` naming the argument.
"""

from __future__ import annotations

from functools import partial
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.pytree import pytree_dataclass, static_field
from fnn.schedules import Schedule, as_schedule
from fnn.checks import hyperparameter
from fnn.checks import check_same_structure, is_concrete

# ----------------------------------------------------------------------------- states


class SGDState(NamedTuple):
    count: jax.Array  # int32 scalar: updates applied so far
    velocity: Any  # params-shaped momentum buffer (zeros when momentum = 0)


class RMSPropState(NamedTuple):
    count: jax.Array
    nu: Any  # running mean of squared gradients
    mu: Any  # running mean of gradients (used when centered)
    momentum: Any  # momentum buffer


class AdaGradState(NamedTuple):
    count: jax.Array
    sum_of_squares: Any  # accumulated squared gradients


class AdamState(NamedTuple):
    count: jax.Array
    mu: Any  # first moment estimate m
    nu: Any  # second raw moment estimate v


# ----------------------------------------------------------------------------- helpers


def _cast(like, *values):
    """``values`` as arrays of the dtype of the parameter ``like``."""
    dtype = jnp.result_type(like)
    return tuple(jnp.asarray(v, dtype) for v in values)


def _ema(decay, average, x):
    """Exponential moving average: ``decay * average + (1 - decay) * x``."""
    return decay * average + (1 - decay) * x


def _map_leaves(rule, params, *trees):
    """Apply ``rule(p, *xs) -> (new_p, *new_xs)`` leaf by leaf; return the output trees."""
    treedef = jax.tree.structure(params)
    columns = zip(*(treedef.flatten_up_to(t) for t in (params, *trees)))
    outputs = [rule(*leaves) for leaves in columns]
    return [treedef.unflatten(list(out)) for out in zip(*outputs)] or [params] * len(trees)


def _lr(lr):
    """Validate a learning-rate argument (>= 0 unless a schedule) and make it a schedule."""
    return as_schedule(hyperparameter("lr", lr, 0))


def _fraction(name, value):
    """A decay or momentum coefficient, in [0, 1)."""
    return hyperparameter(name, value, 0, 1, high_open=True)


def _positive(name, value):
    return hyperparameter(name, value, 0, low_open=True)


def global_norm(tree):
    """The Euclidean norm of all leaves of ``tree`` together: ``sqrt(sum_i sum(x_i ** 2))``."""
    return jnp.sqrt(sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree)))


# ----------------------------------------------------------------------------- base


class Optimizer:
    """Base class: ``init``, ``update`` and ``learning_rate`` from a per-leaf rule.

    A subclass sets ``State`` (a NamedTuple whose first field is ``count`` and whose
    other fields are params-shaped buffers) and ``_rule(lr, count, p, g, *buffers) ->
    (new_p, *new_buffers)``, the published update for one parameter array.
    """

    State: Any = None

    def init(self, params):
        """The initial state: ``count = 0`` (int32) and buffers shaped like ``params``."""
        buffers = [jax.tree.map(self._initial_buffer, params) for _ in self.State._fields[1:]]
        return self.State(jnp.zeros([], jnp.int32), *buffers)

    def _initial_buffer(self, p):
        return jnp.zeros_like(p)

    def learning_rate(self, state):
        """The learning rate the next ``update`` uses: ``lr(state.count)``."""
        return self.lr(state.count)

    def update(self, grads, state, params):
        """One step: returns ``(new_params, new_state)``; see the class docstring for the rule.

        Raises:
          ValueError: if ``grads``, ``params`` and the state's buffers differ in tree
            structure or leaf shapes, or ``state`` is not this optimizer's state type.
        """
        self._check(grads, state, params)
        rule = partial(self._leaf_rule, self.lr(state.count), state.count)
        new_params, *buffers = _map_leaves(rule, params, grads, *state[1:])
        return new_params, self.State(state.count + 1, *buffers)

    def _leaf_rule(self, lr, count, p, g, *buffers):
        return self._rule(lr, count, p, *_cast(p, g), *buffers)

    def _check(self, grads, state, params):
        check_same_structure("grads", grads, "params", params)
        if not isinstance(state, self.State):
            raise ValueError(
                f"state must be the {self.State.__name__} made by this optimizer's init(params); "
                f"got {type(state).__name__}"
            )
        for name in self.State._fields[1:]:
            check_same_structure(f"state.{name}", getattr(state, name), "params", params)


# ----------------------------------------------------------------------------- optimizers


@pytree_dataclass
class SGD(Optimizer):
    """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    With gradient ``g_t``, learning rate ``lr_t = lr(t)`` and momentum ``mu``
    (PyTorch's formulation, velocity ``v_0 = 0``)::

        v_{t+1} = mu * v_t + g_t
        p_{t+1} = p_t - lr_t * v_{t+1}                      (heavy ball)
        p_{t+1} = p_t - lr_t * (g_t + mu * v_{t+1})         (nesterov=True)

    ``mu = 0`` is plain SGD, ``p_{t+1} = p_t - lr_t * g_t``.

    References:
      Polyak (1964), "Some methods of speeding up the convergence of iteration methods"
      (heavy ball). Sutskever, Martens, Dahl & Hinton (2013), "On the importance of
      initialization and momentum in deep learning" (Nesterov momentum).

    Warning: this is the PyTorch form, with ``lr`` outside the velocity. Sutskever's
    form ``v <- mu v - lr g; p <- p + v`` is the same for a constant ``lr`` but differs
    when the learning rate changes over time.

    Args:
      lr: a schedule (see :func:`fnn.schedules.as_schedule`), >= 0.
      momentum: ``mu`` in [0, 1).
      nesterov: use Nesterov momentum (static; needs ``momentum > 0``).

    Returns:
      ``update`` returns ``(new_params, SGDState(count + 1, velocity))``.
    """

    lr: Schedule
    momentum: Any
    nesterov: bool = static_field()
    State = SGDState

    def _rule(self, lr, count, p, g, v):
        lr, mu = _cast(p, lr, self.momentum)
        v = mu * v + g
        step = g + mu * v if self.nesterov else v
        return p - lr * step, v


@pytree_dataclass
class RMSProp(Optimizer):
    """RMSprop: divide the gradient by a running root mean square of recent gradients.

    With decay ``rho``, momentum ``m`` and ``nu_0 = mu_0 = b_0 = 0``::

        nu_{t+1} = rho * nu_t + (1 - rho) * g_t**2
        mu_{t+1} = rho * mu_t + (1 - rho) * g_t                     (centered only)
        d_t      = sqrt(nu_{t+1}) + eps                             (plain)
        d_t      = sqrt(nu_{t+1} - mu_{t+1}**2) + eps               (centered)
        b_{t+1}  = m * b_t + g_t / d_t
        p_{t+1}  = p_t - lr_t * b_{t+1}

    ``eps`` sits *outside* the square root (PyTorch's convention; optax and Keras put it
    inside, ``sqrt(nu + eps)``, which matters when ``nu`` is tiny). The centered
    variance is clamped at 0 against rounding.

    References:
      Tieleman & Hinton (2012), Coursera "Neural Networks for Machine Learning",
      lecture 6e. Graves (2013), "Generating sequences with recurrent neural networks",
      eqs. 38-41 (centered variant; there eps sits inside the root).

    Args:
      lr: a schedule, >= 0.
      decay: ``rho`` in [0, 1).
      eps: > 0.
      momentum: ``m`` in [0, 1).
      centered: subtract the squared running mean of gradients (static).

    Returns:
      ``update`` returns ``(new_params, RMSPropState(count + 1, nu, mu, momentum))``.
    """

    lr: Schedule
    decay: Any
    eps: Any
    momentum: Any
    centered: bool = static_field()
    State = RMSPropState

    def _rule(self, lr, count, p, g, nu, mu, b):
        lr, rho, eps, m = _cast(p, lr, self.decay, self.eps, self.momentum)
        nu = _ema(rho, nu, g * g)
        if self.centered:
            mu = _ema(rho, mu, g)
            mean_square = jnp.maximum(nu - mu * mu, 0)
        else:
            mean_square = nu
        b = m * b + g / (jnp.sqrt(mean_square) + eps)
        return p - lr * b, nu, mu, b


@pytree_dataclass
class AdaGrad(Optimizer):
    """AdaGrad: per-coordinate steps scaled by the accumulated squared gradients.

    With ``a_0 = initial_accumulator``::

        a_{t+1} = a_t + g_t**2
        p_{t+1} = p_t - lr_t * g_t / (sqrt(a_{t+1}) + eps)

    The effective step ``lr_t / (sqrt(a_{t+1}) + eps)`` only shrinks as squared
    gradients accumulate.

    Warning: frameworks differ on the initial accumulator: 0 in PyTorch (the default
    here), 0.1 in optax and TensorFlow; pass ``initial_accumulator=0.1`` for theirs.
    ``eps`` sits outside the square root (PyTorch; optax puts it inside).

    References:
      Duchi, Hazan & Singer (2011), "Adaptive subgradient methods for online learning
      and stochastic optimization", JMLR 12 (diagonal version).

    Args:
      lr: a schedule, >= 0.
      initial_accumulator: ``a_0``, >= 0.
      eps: > 0.

    Returns:
      ``update`` returns ``(new_params, AdaGradState(count + 1, sum_of_squares))``.
    """

    lr: Schedule
    initial_accumulator: Any
    eps: Any
    State = AdaGradState

    def _initial_buffer(self, p):
        return jnp.full_like(p, self.initial_accumulator)

    def _rule(self, lr, count, p, g, a):
        lr, eps = _cast(p, lr, self.eps)
        a = a + g * g
        return p - lr * g / (jnp.sqrt(a) + eps), a


@pytree_dataclass
class Adam(Optimizer):
    """Adam: bias-corrected first and second moment estimates (Algorithm 1).

    With ``m_0 = v_0 = 0`` and ``t`` counting from 1::

        m_t = b1 * m_{t-1} + (1 - b1) * g_t
        v_t = b2 * v_{t-1} + (1 - b2) * g_t**2
        m_hat = m_t / (1 - b1**t)
        v_hat = v_t / (1 - b2**t)
        p_t = p_{t-1} - lr_t * m_hat / (sqrt(v_hat) + eps)

    ``eps`` is added outside the square root of the *bias-corrected* ``v_hat``, as in
    the paper and PyTorch. The first step is ``lr * g / (|g| + eps)``: magnitude
    ``lr`` per coordinate for any gradient well above ``eps``.

    References:
      Kingma & Ba (2015), "Adam: A method for stochastic optimization", ICLR, Algorithm 1.

    Args:
      lr: a schedule, >= 0.
      b1, b2: moment decay rates in [0, 1).
      eps: > 0.

    Returns:
      ``update`` returns ``(new_params, AdamState(count + 1, mu=m, nu=v))``.
    """

    lr: Schedule
    b1: Any
    b2: Any
    eps: Any
    State = AdamState

    def _rule(self, lr, count, p, g, m, v):
        lr, b1, b2, eps, t = _cast(p, lr, self.b1, self.b2, self.eps, count + 1)
        m = _ema(b1, m, g)
        v = _ema(b2, v, g * g)
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        return p - lr * m_hat / (jnp.sqrt(v_hat) + eps), m, v


@pytree_dataclass
class AdamW(Adam):
    """AdamW: Adam with decoupled weight decay.

    The weights shrink first, then take the Adam step of :class:`Adam`::

        p' = p_{t-1} * (1 - lr_t * weight_decay)
        p_t = p' - lr_t * m_hat / (sqrt(v_hat) + eps)

    so with a zero gradient the weights shrink by exactly ``(1 - lr_t * weight_decay)``
    per step. Every parameter leaf is decayed (biases included): to exclude some, use
    :mod:`fnn.regularizers` with plain :class:`Adam` instead, or split the params.

    Warning: this is PyTorch's convention, decay multiplied by the full current
    learning rate ``lr_t`` (optax does the same). The paper multiplies the decay by the
    schedule multiplier ``eta_t`` only, not by the base rate ``alpha``
    (``p <- p - eta_t * (alpha * adam_step + lambda * p)``): its ``lambda`` equals this
    ``weight_decay * alpha``.

    References:
      Loshchilov & Hutter (2019), "Decoupled weight decay regularization", ICLR, Algorithm 2.

    Args:
      lr: a schedule, >= 0.
      b1, b2: moment decay rates in [0, 1).
      eps: > 0.
      weight_decay: >= 0.

    Returns:
      ``update`` returns ``(new_params, AdamState(count + 1, mu=m, nu=v))``.
    """

    weight_decay: Any

    def _rule(self, lr, count, p, g, m, v):
        lr_p, wd = _cast(p, lr, self.weight_decay)
        return super()._rule(lr, count, p * (1 - lr_p * wd), g, m, v)


# ----------------------------------------------------------------------------- wrappers


@pytree_dataclass
class _GradientWrapper(Optimizer):
    """Transforms the gradients, then hands them to ``inner``, a pytree child whose state is the state."""

    inner: Optimizer

    @property
    def lr(self):
        return self.inner.lr

    def init(self, params):
        return self.inner.init(params)

    def learning_rate(self, state):
        return self.inner.learning_rate(state)

    def update(self, grads, state, params):
        check_same_structure("grads", grads, "params", params)
        return self.inner.update(self._transform(grads), state, params)


@pytree_dataclass
class ClipByGlobalNorm(_GradientWrapper):
    """Rescale the gradients so that their global norm is at most ``max_norm``, then step ``inner``.

    ::

        n  = sqrt(sum over all leaves of sum(g**2))
        g' = g * max_norm / max(n, max_norm)     (= g if n <= max_norm, else g * max_norm / n)

    References:
      Pascanu, Mikolov & Bengio (2013), "On the difficulty of training recurrent neural
      networks", Algorithm 1.

    Args:
      inner: any fnn optimizer; it receives the rescaled gradients.
      max_norm: > 0.

    Returns:
      ``update`` returns ``inner.update(rescaled_grads, state, params)``.
    """

    max_norm: Any

    def _transform(self, grads):
        scale = self.max_norm / jnp.maximum(global_norm(grads), self.max_norm)
        return jax.tree.map(lambda g: g * _cast(g, scale)[0], grads)


@pytree_dataclass
class ClipByValue(_GradientWrapper):
    """Clip every gradient coordinate to ``[-max_value, max_value]``, then step ``inner``.

    ``g' = min(max(g, -max_value), max_value)``, coordinate by coordinate.

    Args:
      inner: any fnn optimizer; it receives the clipped gradients, and its state is the state.
      max_value: > 0.

    Returns:
      ``update`` returns ``inner.update(clipped_grads, state, params)``.
    """

    max_value: Any

    def _transform(self, grads):
        return jax.tree.map(lambda g: jnp.clip(g, *_cast(g, -self.max_value, self.max_value)), grads)


# ----------------------------------------------------------------------------- factories


def sgd(lr, momentum=0.0, nesterov: bool = False) -> SGD:
    """SGD, with heavy-ball or Nesterov momentum; the equations are in :class:`SGD`.

    Args:
      lr: learning rate >= 0: a float, a traced scalar, a schedule or a callable ``step -> lr``.
      momentum: in [0, 1); 0 gives plain SGD.
      nesterov: Nesterov momentum (static); needs ``momentum > 0``.

    Returns:
      An :class:`SGD` optimizer.
    """
    momentum = _fraction("momentum", momentum)
    if nesterov and is_concrete(momentum) and np.any(np.asarray(momentum) == 0):
        raise ValueError("nesterov=True needs momentum > 0; got momentum=0 (use nesterov=False for plain SGD)")
    return SGD(_lr(lr), momentum, bool(nesterov))


def rmsprop(lr, decay=0.9, eps=1e-8, momentum=0.0, centered: bool = False) -> RMSProp:
    """RMSprop (eps outside the square root); the equations are in :class:`RMSProp`.

    Args:
      lr: learning rate >= 0 or a schedule.
      decay: running-average decay in [0, 1); 0.9 as in Hinton's lecture and Keras (PyTorch's alpha: 0.99).
      eps: > 0, added to the root mean square.
      momentum: in [0, 1).
      centered: divide by the running standard deviation instead of the RMS (static).

    Returns:
      An :class:`RMSProp` optimizer.
    """
    return RMSProp(
        _lr(lr), _fraction("decay", decay), _positive("eps", eps), _fraction("momentum", momentum), bool(centered)
    )


def adagrad(lr, initial_accumulator=0.0, eps=1e-10) -> AdaGrad:
    """AdaGrad; the equations are in :class:`AdaGrad`.

    Args:
      lr: learning rate >= 0 or a schedule.
      initial_accumulator: starting value of the sum of squares, >= 0 (0 PyTorch, 0.1 optax/TF).
      eps: > 0, added to the square root.

    Returns:
      An :class:`AdaGrad` optimizer.
    """
    return AdaGrad(_lr(lr), hyperparameter("initial_accumulator", initial_accumulator, 0), _positive("eps", eps))


def adam(lr, b1=0.9, b2=0.999, eps=1e-8) -> Adam:
    """Adam, bias-corrected; the equations are in :class:`Adam`.

    Args:
      lr: learning rate >= 0 or a schedule.
      b1, b2: moment decay rates in [0, 1).
      eps: > 0.

    Returns:
      An :class:`Adam` optimizer.
    """
    return Adam(_lr(lr), _fraction("b1", b1), _fraction("b2", b2), _positive("eps", eps))


def adamw(lr, b1=0.9, b2=0.999, eps=1e-8, weight_decay=1e-2) -> AdamW:
    """AdamW, decay multiplied by the current lr (PyTorch); the equations are in :class:`AdamW`.

    Args:
      lr: learning rate >= 0 or a schedule.
      b1, b2: moment decay rates in [0, 1).
      eps: > 0.
      weight_decay: >= 0.

    Returns:
      An :class:`AdamW` optimizer.
    """
    base = adam(lr, b1, b2, eps)
    return AdamW(base.lr, base.b1, base.b2, base.eps, hyperparameter("weight_decay", weight_decay, 0))


def _wrap(cls, optimizer, name, limit):
    """Check the inner optimizer and the (positive) limit, and build the wrapper ``cls``."""
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"optimizer must be an fnn optimizer (e.g. fnn.optimizers.adam(1e-3)); got {optimizer!r}")
    return cls(optimizer, _positive(name, limit))


def clip_by_global_norm(optimizer, max_norm) -> ClipByGlobalNorm:
    """Rescale the gradients to global norm <= ``max_norm`` before ``optimizer`` steps; see :class:`ClipByGlobalNorm`.

    Args:
      optimizer: any fnn optimizer (wrappers compose); its state and learning rate are the wrapper's.
      max_norm: > 0.

    Returns:
      A :class:`ClipByGlobalNorm` optimizer.
    """
    return _wrap(ClipByGlobalNorm, optimizer, "max_norm", max_norm)


def clip_by_value(optimizer, max_value) -> ClipByValue:
    """Clip each gradient coordinate to ``[-max_value, max_value]`` before ``optimizer`` steps.

    Args:
      optimizer: any fnn optimizer; wrappers compose.
      max_value: > 0.

    Returns:
      A :class:`ClipByValue` optimizer with the inner optimizer's state and learning rate.
    """
    return _wrap(ClipByValue, optimizer, "max_value", max_value)
