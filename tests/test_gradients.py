"""Backpropagation is jax.grad: checked against central finite differences in float64
(fnn.check_grads, rtol 1e-6) for every activation, layer, an MLP and every loss; and
check_grads itself catches a wrong gradient.

Cases are checked together: each case owns a leaf of the pytree that is differentiated, and
the function is the sum of the cases' scalars, so one check (two compiled programs) covers a
table of cases while a mismatch still names its case (check_grads names the leaf's path).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import activations as act
from fnn import check_grads, numerical_grad
from fnn.layers import Activation, BatchNorm, Dense, Dropout, LayerNorm, Serial, mlp
from fnn.losses import binary_cross_entropy, cross_entropy, mse

KEY = jax.random.key(0)
rng = np.random.default_rng(0)
B = 5  # examples


def check_cases(cases):
    """``cases``: name -> (scalar function of a pytree, the pytree). Checks all in one go."""
    trees = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), {name: tree for name, (_, tree) in cases.items()})
    total = jax.jit(lambda t: sum(fn(t[name]) for name, (fn, _) in cases.items()))
    check_grads(total, trees)  # raises AssertionError naming the case on a mismatch


def model_case(build, x, *, train, hyper=None, params=None, state=None, loss=None):
    """A case: a scalar of the output of ``build(**hyper)``, as a function of (params, x, hyper).

    The scalar is ``loss(y)`` or, by default, ``sum(r * y)`` with fixed random r (a plain sum
    would hide errors: the rows of a softmax, say, always sum to 1). ``hyper`` holds traced
    hyperparameters (dropout rate, eps) from which the layer is built inside the function,
    as a sweep does.
    """
    hyper = {} if hyper is None else hyper
    model = build(**hyper)
    draw = np.random.default_rng(1)
    if params is None:  # random params of the model's shapes, without compiling its initializers
        params, state = jax.tree.map(lambda a: draw.normal(size=a.shape), jax.eval_shape(model.init, KEY))
        state = jax.tree.map(lambda v: np.abs(v) + 0.5, state)  # running variances must be positive
    r = jnp.asarray(draw.normal(size=jax.eval_shape(model.apply_train, params, x, state=state, key=KEY)[0].shape))
    readout = loss or (lambda y: jnp.sum(r * y))

    def f(tree):
        p, xx, h = tree
        m = build(**h)
        y = m.apply_train(p, xx, state=state, key=KEY)[0] if train else m.apply(p, xx, state=state)
        return readout(y)

    return f, (params, x, hyper)


# --- Dense followed by each activation ---------------------------------------------------

X = rng.normal(size=(B, 3))
DENSE_PARAMS = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}
ACTIVATIONS = ["relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "softmax", "log_softmax", "identity"]


def test_dense_then_each_activation():
    z = np.asarray(Dense(3, 4).apply(DENSE_PARAMS, X))
    assert np.min(np.abs(z)) > 1e-2  # away from the kinks of relu, leaky_relu and elu at 0
    params = (DENSE_PARAMS, ())
    check_cases(
        {
            name: model_case(lambda name=name: Serial((Dense(3, 4), Activation(name))), X, train=False, params=params)
            for name in ACTIVATIONS
        }
    )


# --- Dropout, BatchNorm, LayerNorm -------------------------------------------------------

H = rng.normal(size=(B, 4)) * 2 + 1  # features with non-zero mean and spread
NORM_PARAMS = {"scale": jnp.asarray(rng.uniform(0.5, 2, 4)), "offset": jnp.asarray(rng.normal(size=4))}
RUNNING = {"mean": jnp.asarray(rng.normal(size=4)), "var": jnp.asarray(rng.uniform(0.5, 2, 4))}


def test_normalization_layers():  # wrt params, x and eps; in training, x also acts through the batch statistics
    batchnorm = functools.partial(model_case, lambda eps: BatchNorm(4, eps=eps), H, state=RUNNING)
    kwargs = {"hyper": {"eps": 1e-3}, "params": NORM_PARAMS}
    check_cases(
        {
            "batchnorm_training": batchnorm(train=True, **kwargs),
            "batchnorm_evaluation": batchnorm(train=False, **kwargs),
            "layernorm": model_case(lambda eps: LayerNorm(4, eps=eps), H, train=False, **kwargs),
        }
    )


# --- Dropout with a fixed key, and a 3-layer MLP under a loss ----------------------------


def test_dropout_and_mlps_in_training():  # one check: every program with random draws compiles slowly
    labels = jnp.asarray([0, 1, 1, 0, 1])
    variants = {"plain": {}, "batchnorm": {"batchnorm": True}, "batchnorm_dropout": {"batchnorm": True, "dropout": 0.2}}
    cases = {
        f"mlp_{name}": model_case(
            functools.partial(mlp, [3, 4, 4, 2], activation="tanh", **kwargs),
            X,
            train=True,
            loss=lambda logits: cross_entropy(logits, labels),
        )
        for name, kwargs in variants.items()
    }
    # Dropout alone: gradient wrt params, x and the (traced) rate, the mask fixed by the key.
    build = lambda rate: Serial((Dense(3, 4), Dropout(rate)))  # noqa: E731
    cases["dropout"] = model_case(build, X, train=True, hyper={"rate": 0.3}, params=(DENSE_PARAMS, ()))
    check_cases(cases)


# --- every loss wrt its predictions ------------------------------------------------------

C = 4
LOGITS = rng.normal(size=(B, C))
LABELS = jnp.asarray([0, 3, 1, 2, 3])
SOFT = jnp.asarray(rng.dirichlet(np.ones(C), size=B))
WEIGHTS = jnp.asarray([0.5, 2.0, 0.0, 1.0, 3.0])
BINARY = rng.normal(size=(B, 3)) * 2
TARGETS = jnp.asarray(rng.uniform(size=(B, 3)))
# name -> (loss of predictions and weights, predictions)
LOSSES = {
    "mse": (lambda p, w: mse(p, TARGETS, w), rng.normal(size=(B, 3))),
    "cross_entropy_int": (lambda p, w: cross_entropy(p, LABELS, w), LOGITS),
    "cross_entropy_soft": (lambda p, w: cross_entropy(p, SOFT, w), LOGITS),
    "cross_entropy_smooth_int": (lambda p, w: cross_entropy(p, LABELS, w, label_smoothing=0.1), LOGITS),
    "cross_entropy_smooth_soft": (lambda p, w: cross_entropy(p, SOFT, w, label_smoothing=0.2), LOGITS),
    "binary_cross_entropy": (lambda p, w: binary_cross_entropy(p, TARGETS, w), BINARY),
}


def test_every_loss_wrt_predictions():
    check_cases(
        {
            f"{name}_{kind}": (functools.partial(lambda p, loss, w: loss(p, w), loss=loss, w=w), predictions)
            for name, (loss, predictions) in LOSSES.items()
            for kind, w in (("unweighted", None), ("weighted", WEIGHTS))
        }
    )


# --- at the ties and kinks: where a formulation's derivative can go wrong -----------------

TIED = np.array([[2.0, 2.0, -1.0, 0.0], [0.5, 3.0, 3.0, -2.0]])  # two tied maxima per row
EQUAL = np.zeros((2, C))
R = jnp.asarray(rng.normal(size=(2, C)))  # readout weights: the rows of a softmax sum to 1
R3 = jnp.asarray(rng.normal(size=3))


def readout(f):
    return lambda x: jnp.sum((R if x.ndim == 2 else R3) * f(x))


def cross_entropies(name, logits):
    """Cross-entropy cases at ``logits``: labels at and off the maxima, soft, smoothed."""
    labels = jnp.asarray([0, 3])
    return {
        f"cross_entropy_{name}_int": (lambda z: cross_entropy(z, labels), logits),
        f"cross_entropy_{name}_soft": (lambda z: cross_entropy(z, SOFT[:2]), logits),
        f"cross_entropy_{name}_smooth": (lambda z: cross_entropy(z, labels, label_smoothing=0.1), logits),
    }


def test_losses_and_activations_at_ties_and_kinks():
    # Smooth functions, evaluated exactly where a max, a |.| or a branch of their
    # formulation sits: jax.grad must match finite differences there too.
    cases = {
        "binary_cross_entropy_at_0": (lambda z: binary_cross_entropy(z, jnp.asarray([0.0, 0.5, 1.0])), np.zeros(3)),
        **cross_entropies("equal", EQUAL),
        **cross_entropies("tied", TIED),
        "mse_at_the_target": (lambda p: mse(p, TARGETS), TARGETS),
        **{f"{f.__name__}_equal": (readout(f), EQUAL) for f in (act.softmax, act.log_softmax)},
        **{f"{f.__name__}_tied": (readout(f), TIED) for f in (act.softmax, act.log_softmax)},
        **{f"{f.__name__}_at_0": (readout(f), np.zeros(3)) for f in (act.softplus, act.sigmoid, act.tanh, act.gelu)},
        "elu_at_0": (readout(act.elu), np.zeros(3)),  # alpha = 1: both one-sided slopes are 1
    }
    check_cases(cases)


# --- check_grads itself ------------------------------------------------------------------


@jax.custom_jvp
def sin_with_wrong_derivative(x):
    return jnp.sin(x)


@sin_with_wrong_derivative.defjvp
def _(primals, tangents):
    (x,), (t,) = primals, tangents
    return jnp.sin(x), 1.001 * jnp.cos(x) * t  # off by 0.1%


POINT = {"a": jnp.asarray(rng.normal(size=3)), "b": jnp.asarray(rng.normal(size=(2, 2)))}


@pytest.mark.parametrize(
    "f, where",
    [
        (lambda p: jnp.sum(jnp.sin(p["a"])) + jnp.sum(sin_with_wrong_derivative(p["b"])), r"\['b'\]"),
        (lambda p: jnp.sum(p["a"] * jax.lax.stop_gradient(p["a"])) + jnp.sum(p["b"]), r"\['a'\]"),
    ],
    ids=["wrong_custom_jvp", "stop_gradient"],
)
def test_check_grads_catches_a_wrong_gradient(f, where):
    with pytest.raises(AssertionError, match=rf"gradient mismatch at {where}"):
        check_grads(jax.jit(f), POINT)


def test_check_grads_passes_a_right_gradient_and_numerical_grad_is_accurate():
    f = lambda p: jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 3)  # noqa: E731
    assert 0 <= check_grads(f, POINT) < 1e-6
    numeric = numerical_grad(f, POINT)
    np.testing.assert_allclose(numeric["a"], np.cos(POINT["a"]), rtol=1e-6)
    np.testing.assert_allclose(numeric["b"], 3 * np.asarray(POINT["b"]) ** 2, rtol=1e-6)


def test_check_grads_needs_float64():
    with pytest.raises(ValueError, match="check_grads needs float64 params.*float32"):
        check_grads(lambda p: jnp.sum(p["a"] ** 2), {"a": jnp.ones(3, jnp.float32)})
