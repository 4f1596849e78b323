"""Backpropagation is jax.grad: checked against central finite differences in float64
(fnn.check_grads, rtol 1e-6) for every activation, layer, an MLP and every loss; and
check_grads itself catches a wrong gradient."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import check_grads, numerical_grad
from fnn.layers import Activation, BatchNorm, Dense, Dropout, LayerNorm, Serial, mlp
from fnn.losses import binary_cross_entropy, cross_entropy, mse

KEY = jax.random.key(0)
rng = np.random.default_rng(0)
B = 5  # examples


def as64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def check_model(model, x, *, train, params=None, state=None, loss=None):
    """check_grads of a scalar of the model's output wrt (model leaves, params, x) together.

    The scalar is ``loss(y)`` or, by default, ``sum(r * y)`` with fixed random r (a plain sum
    would hide errors: the rows of a softmax, say, always sum to 1). Model leaves (dropout
    rate, batch-norm eps) are traced hyperparameters, so their gradients are checked too.
    """
    init_params, init_state = model.init(KEY) if params is None else (params, ())
    state = init_state if state is None else state
    y0 = model.apply_train(init_params, x, state=state, key=KEY)[0]
    r = jnp.asarray(rng.normal(size=y0.shape))
    readout = loss or (lambda y: jnp.sum(r * y))

    def f(tree):
        m, p, xx = tree
        y = m.apply_train(p, xx, state=state, key=KEY)[0] if train else m.apply(p, xx, state=state)
        return readout(y)

    assert check_grads(f, as64((model, init_params, x))) < 1e-6


# --- Dense followed by each activation ---------------------------------------------------

X = rng.normal(size=(B, 3))
ACTIVATIONS = ["relu", "leaky_relu", "elu", "gelu", "sigmoid", "tanh", "softplus", "softmax", "log_softmax", "identity"]


@pytest.mark.parametrize("name", ACTIVATIONS)
def test_dense_then_activation(name):
    dense = Dense(3, 4)
    params = {"w": jnp.asarray(rng.normal(size=(3, 4))), "b": jnp.asarray(rng.normal(size=4))}
    z = np.asarray(dense.apply(params, X))
    assert np.min(np.abs(z)) > 1e-2  # away from the kinks of relu, leaky_relu and elu at 0
    check_model(Serial((dense, Activation(name))), X, train=False, params=(params, ()))


# --- Dropout, BatchNorm, LayerNorm -------------------------------------------------------

H = rng.normal(size=(B, 4)) * 2 + 1  # features with non-zero mean and spread
NORM_PARAMS = {"scale": jnp.asarray(rng.uniform(0.5, 2, 4)), "offset": jnp.asarray(rng.normal(size=4))}
RUNNING = {"mean": jnp.asarray(rng.normal(size=4)), "var": jnp.asarray(rng.uniform(0.5, 2, 4))}


def test_dropout_with_a_fixed_key():  # gradient wrt params, x and the (traced) rate
    dense = Dense(3, 4)
    params = (dense.init(KEY)[0], ())
    check_model(Serial((dense, Dropout(0.3))), X, train=True, params=params)


@pytest.mark.parametrize("train", [True, False], ids=["training", "evaluation"])
def test_batchnorm(train):  # in training, x reaches y through the batch mean and variance too
    check_model(BatchNorm(4, eps=1e-3), H, train=train, params=NORM_PARAMS, state=RUNNING)


def test_layernorm():
    check_model(LayerNorm(4, eps=1e-3), H, train=False, params=NORM_PARAMS)


# --- a 3-layer MLP under a loss ----------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [{}, {"batchnorm": True}, {"dropout": 0.2}, {"batchnorm": True, "dropout": 0.2}],
    ids=["plain", "batchnorm", "dropout", "batchnorm_dropout"],
)
def test_mlp_under_cross_entropy(kwargs):
    labels = jnp.asarray([0, 1, 1, 0, 1])
    model = mlp([3, 4, 4, 2], activation="tanh", **kwargs)
    check_model(model, X, train=True, loss=lambda logits: cross_entropy(logits, labels))


# --- every loss wrt its predictions ------------------------------------------------------

C = 4
LOGITS = rng.normal(size=(B, C))
LABELS = jnp.asarray([0, 3, 1, 2, 3])
SOFT = jnp.asarray(rng.dirichlet(np.ones(C), size=B))
WEIGHTS = jnp.asarray([0.5, 2.0, 0.0, 1.0, 3.0])
BINARY = rng.normal(size=(B, 3)) * 2
# name -> (loss of predictions and weights, predictions)
LOSSES = {
    "mse": (lambda p, w: mse(p, jnp.asarray(BINARY), w), rng.normal(size=(B, 3))),
    "cross_entropy_int": (lambda p, w: cross_entropy(p, LABELS, w), LOGITS),
    "cross_entropy_soft": (lambda p, w: cross_entropy(p, SOFT, w), LOGITS),
    "cross_entropy_smooth_int": (lambda p, w: cross_entropy(p, LABELS, w, label_smoothing=0.1), LOGITS),
    "cross_entropy_smooth_soft": (lambda p, w: cross_entropy(p, SOFT, w, label_smoothing=0.2), LOGITS),
    "binary_cross_entropy": (lambda p, w: binary_cross_entropy(p, jnp.asarray(rng.uniform(size=(B, 3))), w), BINARY),
}


@pytest.mark.parametrize("weights", [None, WEIGHTS], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("name", LOSSES)
def test_loss_gradient_wrt_predictions(name, weights):
    loss, predictions = LOSSES[name]
    assert check_grads(lambda p: loss(p, weights), jnp.asarray(predictions, jnp.float64)) < 1e-6


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
        check_grads(f, POINT)


def test_check_grads_passes_a_right_gradient_and_numerical_grad_is_accurate():
    f = lambda p: jnp.sum(jnp.sin(p["a"])) + jnp.sum(p["b"] ** 3)  # noqa: E731
    assert 0 <= check_grads(f, POINT) < 1e-8
    numeric = numerical_grad(f, POINT)
    np.testing.assert_allclose(numeric["a"], np.cos(POINT["a"]), rtol=1e-8)
    np.testing.assert_allclose(numeric["b"], 3 * np.asarray(POINT["b"]) ** 2, rtol=1e-8)


def test_check_grads_needs_float64():
    with pytest.raises(ValueError, match="check_grads needs float64 params.*float32"):
        check_grads(lambda p: jnp.sum(p["a"] ** 2), {"a": jnp.ones(3, jnp.float32)})
