"""Optimizers as hand-written pure state transitions (no optax).

Every optimizer is a frozen pytree with three methods::

    opt_state = opt.init(params)                                # NamedTuple: count + buffers
    params, opt_state = opt.update(grads, opt_state, params)    # one step of the published rule
    lr = opt.learning_rate(opt_state)                           # the lr the next update uses

``opt.lr`` is always a schedule (:mod:`fnn.schedules`) evaluated at ``opt_state.count``, the
number of updates already applied (0 at the first). Numeric hyperparameters are scalars
(:data:`~fnn.types.Hyperparameter`: a number or a 0-d array, concrete or traced) kept as
pytree leaves, so a compiled step does not recompile for new values and ``jax.vmap`` maps
over them; only flags (``nesterov``, ``centered``) are static. The state's structure never
depends on hyperparameter values, so states of one optimizer type stack, scan and
checkpoint alike. Update rules run in each parameter's dtype; ``count`` is int32.

fnn's construction convention (docs/architecture.md): each optimizer is a class that
carries its documentation (the update rule, its source, the arguments) and checks its
arguments when built (``__post_init__``; values are read only when concrete), raising
``ValueError`` naming the argument; the lowercase public names (``sgd`` for :class:`SGD`,
...) are the classes themselves. Clipping wraps any optimizer: :mod:`fnn.clipping`.
"""

from __future__ import annotations

from functools import partial
from typing import Any, ClassVar, NamedTuple, cast

import jax
import jax.numpy as jnp
import numpy as np

from fnn.checks import FRACTION, NONNEGATIVE, POSITIVE, check_fields, check_same_structure, is_concrete
from fnn.pytree import pytree_dataclass, static_field
from fnn.schedules import Schedule, as_schedule
from fnn.types import Gradients, Hyperparameter, LearningRate, OptState, Params, PyTree

# ----------------------------------------------------------------------------- states


class SGDState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # int32 scalar: updates applied so far (shadows tuple.count)
    velocity: PyTree  # params-shaped momentum buffer (zeros when momentum = 0)


class RMSPropState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in SGDState
    nu: PyTree  # running mean of squared gradients
    mu: PyTree  # running mean of gradients (used when centered)
    momentum: PyTree  # momentum buffer


class AdaGradState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in SGDState
    sum_of_squares: PyTree  # accumulated squared gradients


class AdamState(NamedTuple):
    count: jax.Array  # type: ignore[assignment]  # shadows tuple.count, as in SGDState
    mu: PyTree  # first moment estimate m
    nu: PyTree  # second raw moment estimate v


# ----------------------------------------------------------------------------- base


def _cast(like, *values):
    """``values`` as arrays of the dtype of the parameter ``like``."""
    dtype = jnp.result_type(like)
    return tuple(jnp.asarray(v, dtype) for v in values)


def _map_leaves(rule, params, *trees):
    """Apply ``rule(p, *xs) -> (new_p, *new_xs)`` leaf by leaf; return the output trees."""
    treedef = jax.tree.structure(params)
    columns = zip(*(treedef.flatten_up_to(t) for t in (params, *trees)))
    outputs = [rule(*leaves) for leaves in columns]
    return [treedef.unflatten(list(out)) for out in zip(*outputs)] or [params] * len(trees)


@pytree_dataclass
class Optimizer:
    """Base class: ``init``, ``update`` and ``learning_rate`` from a per-leaf rule.

    A subclass (a :func:`~fnn.pytree.pytree_dataclass`, its fields after ``lr``) sets
    ``State`` (a NamedTuple: ``count``, then params-shaped buffers) and ``_rule(lr, count,
    p, g, *buffers) -> (new_p, *new_buffers)``, the update of one parameter array.
    """

    lr: LearningRate  # a Schedule once built (__post_init__)
    State: ClassVar[Any] = None  # the subclass's state NamedTuple

    def __post_init__(self):
        """Check ``lr`` (a number or numeric array >= 0, or a schedule) and store it as a schedule."""
        object.__setattr__(self, "lr", as_schedule(self.lr))

    def init(self, params: Params) -> OptState:
        """The initial state: ``count = 0`` (int32) and buffers shaped like ``params``."""
        buffers = [jax.tree.map(self._initial_buffer, params) for _ in self.State._fields[1:]]
        return self.State(jnp.zeros([], jnp.int32), *buffers)

    def _initial_buffer(self, p):
        return jnp.zeros_like(p)

    def learning_rate(self, opt_state: OptState) -> jax.Array:
        """The learning rate the next ``update`` uses: ``lr(opt_state.count)``."""
        return cast(Schedule, self.lr)(opt_state.count)  # lr is a Schedule since __post_init__

    def update(self, grads: Gradients, opt_state: OptState, params: Params) -> tuple[Params, OptState]:
        """One step, ``(new_params, new_opt_state)``, by the rule in the class docstring.

        Args:
          grads: the gradients, a pytree of the structure and leaf shapes of ``params``.
          opt_state: the state from ``init(params)`` or from the last ``update``.
          params: the parameters, a pytree of arrays; each leaf is updated in its dtype.

        Returns:
          ``(new_params, new_opt_state)``: params of the same structure, shapes and
          dtypes; the state with ``count + 1`` and its buffers updated.

        Raises:
          ValueError: if ``grads``, ``params`` and the state's buffers differ in tree
            structure or leaf shapes, or ``opt_state`` is not this optimizer's state type.
        """
        self._check(grads, opt_state, params)
        rule = partial(self._leaf_rule, self.learning_rate(opt_state), opt_state.count)
        new_params, *buffers = _map_leaves(rule, params, grads, *opt_state[1:])
        return new_params, self.State(opt_state.count + 1, *buffers)

    def _leaf_rule(self, lr, count, p, g, *buffers):
        return self._rule(lr, count, p, *_cast(p, g), *buffers)

    def _check(self, grads, opt_state, params):
        check_same_structure("grads", grads, "params", params)
        if not isinstance(opt_state, self.State):
            expected, kind = self.State.__name__, type(opt_state).__name__
            raise ValueError(f"opt_state must be the {expected} made by this optimizer's init(params); got {kind}")
        for name in self.State._fields[1:]:
            check_same_structure(f"opt_state.{name}", getattr(opt_state, name), "params", params)


# ----------------------------------------------------------------------------- optimizers


@pytree_dataclass
class SGD(Optimizer):
    """Stochastic gradient descent with optional heavy-ball or Nesterov momentum.

    With gradient ``g_t``, learning rate ``lr_t = lr(t)`` and momentum ``mu``
    (PyTorch's formulation, velocity ``v_0 = 0``)::

        v_{t+1} = mu * v_t + g_t
        p_{t+1} = p_t - lr_t * v_{t+1}                      (heavy ball)
        p_{t+1} = p_t - lr_t * (g_t + mu * v_{t+1})         (nesterov=True)

    References:
      Polyak (1964), "Some methods of speeding up the convergence of iteration methods"
      (heavy ball). Sutskever, Martens, Dahl & Hinton (2013), "On the importance of
      initialization and momentum in deep learning" (Nesterov momentum).

    Warning: this is the PyTorch form, with ``lr`` outside the velocity. Sutskever's
    form ``v <- mu v - lr g; p <- p + v`` is the same for a constant ``lr`` but differs
    when the learning rate changes over time.

    Args:
      lr: learning rate >= 0: a number, a numeric array (traced or not) or a schedule.
      momentum: ``mu`` in [0, 1); 0 (the default) gives plain SGD, ``p_{t+1} = p_t - lr_t * g_t``.
      nesterov: use Nesterov momentum (static; needs ``momentum > 0``).

    Returns:
      ``update`` returns ``(new_params, SGDState(count + 1, velocity))``.
    """

    momentum: Hyperparameter = 0.0
    nesterov: bool = static_field(default=False)
    State = SGDState

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, ("nesterov",), momentum=FRACTION)
        if self.nesterov and is_concrete(self.momentum) and np.any(np.asarray(self.momentum) == 0):
            raise ValueError("nesterov=True needs momentum > 0; got momentum=0 (use nesterov=False for plain SGD)")

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
      lr: learning rate >= 0, or a schedule (as for :class:`SGD`).
      decay: ``rho`` in [0, 1); 0.9 as in Hinton's lecture and Keras (PyTorch: alpha=0.99).
      eps: > 0, added to the root mean square.
      momentum: ``m`` in [0, 1).
      centered: divide by the running standard deviation instead of the RMS (static).

    Returns:
      ``update`` returns ``(new_params, RMSPropState(count + 1, nu, mu, momentum))``.
    """

    decay: Hyperparameter = 0.9
    eps: Hyperparameter = 1e-8
    momentum: Hyperparameter = 0.0
    centered: bool = static_field(default=False)
    State = RMSPropState

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, ("centered",), decay=FRACTION, eps=POSITIVE, momentum=FRACTION)

    def _rule(self, lr, count, p, g, nu, mu, b):
        lr, rho, eps, m = _cast(p, lr, self.decay, self.eps, self.momentum)
        nu = rho * nu + (1 - rho) * g * g
        if self.centered:
            mu = rho * mu + (1 - rho) * g
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
      lr: learning rate >= 0, or a schedule (as for :class:`SGD`).
      initial_accumulator: ``a_0``, the starting sum of squares, >= 0.
      eps: > 0, added to the square root.

    Returns:
      ``update`` returns ``(new_params, AdaGradState(count + 1, sum_of_squares))``.
    """

    initial_accumulator: Hyperparameter = 0.0
    eps: Hyperparameter = 1e-10
    State = AdaGradState

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, initial_accumulator=NONNEGATIVE, eps=POSITIVE)

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
      lr: learning rate >= 0, or a schedule (as for :class:`SGD`).
      b1, b2: moment decay rates in [0, 1).
      eps: > 0.

    Returns:
      ``update`` returns ``(new_params, AdamState(count + 1, mu=m, nu=v))``.
    """

    b1: Hyperparameter = 0.9
    b2: Hyperparameter = 0.999
    eps: Hyperparameter = 1e-8
    State = AdamState

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, b1=FRACTION, b2=FRACTION, eps=POSITIVE)

    def _rule(self, lr, count, p, g, m, v):
        lr, b1, b2, eps, t = _cast(p, lr, self.b1, self.b2, self.eps, count + 1)
        m = b1 * m + (1 - b1) * g
        v = b2 * v + (1 - b2) * g * g
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
      lr, b1, b2, eps: as for :class:`Adam`.
      weight_decay: >= 0.

    Returns:
      ``update`` returns ``(new_params, AdamState(count + 1, mu=m, nu=v))``.
    """

    weight_decay: Hyperparameter = 1e-2

    def __post_init__(self):
        super().__post_init__()
        check_fields(self, weight_decay=NONNEGATIVE)

    def _rule(self, lr, count, p, g, m, v):
        lr_p, wd = _cast(p, lr, self.weight_decay)
        return super()._rule(lr, count, p * (1 - lr_p * wd), g, m, v)


# ----------------------------------------------------------------------------- public names


# The public names are the classes themselves: one signature, one docstring, one check.
sgd = SGD
rmsprop = RMSProp
adagrad = AdaGrad
adam = Adam
adamw = AdamW
