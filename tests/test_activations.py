"""fnn.activations: values against NumPy formulas, stability at |x| = 1e4 (compiled and op
by op), lookup by name."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fnn import activations as act

_erf = np.vectorize(math.erf)


def _np_log_softmax(x, axis=-1):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


# name -> NumPy reference (written the textbook way; fine at ordinary inputs)
REFERENCE = {
    "identity": lambda x: x,
    "relu": lambda x: np.maximum(x, 0),
    "leaky_relu": lambda x: np.where(x >= 0, x, 0.01 * x),
    "elu": lambda x: np.where(x > 0, x, np.exp(x) - 1),
    "gelu": lambda x: 0.5 * x * (1 + _erf(x / np.sqrt(2))),
    "sigmoid": lambda x: 1 / (1 + np.exp(-x)),
    "tanh": np.tanh,
    "softplus": lambda x: np.log(1 + np.exp(x)),
    "softmax": lambda x: np.exp(x) / np.exp(x).sum(axis=-1, keepdims=True),
    "log_softmax": _np_log_softmax,
}
ELEMENTWISE = [n for n in REFERENCE if n not in ("softmax", "log_softmax")]
# name -> (f(-1e4), f(1e4), f'(-1e4), f'(1e4))
LIMITS = {
    "identity": (-1e4, 1e4, 1, 1),
    "relu": (0, 1e4, 0, 1),
    "leaky_relu": (-100, 1e4, 0.01, 1),
    "elu": (-1, 1e4, 0, 1),
    "gelu": (0, 1e4, 0, 1),
    "sigmoid": (0, 1, 0, 0),
    "tanh": (-1, 1, 0, 0),
    "softplus": (0, 1e4, 0, 1),
}
FLOATS = [jnp.float32, jnp.float64]
DTYPES = pytest.mark.parametrize("dtype", FLOATS)
ORDINARY = np.linspace(-4.5, 4.5, 24).reshape(4, 6)  # rows are examples for softmax
TOL = {jnp.float32: 1e-6, jnp.float64: 1e-13}


def value_and_derivative(name):
    """f(x) and, elementwise, f'(x) (grad of the sum), for one activation."""
    f = act.get(name)
    return lambda x: (f(x), jax.grad(lambda v: jnp.sum(f(v)))(x))


class TestStabilityAt1e4(chex.TestCase):
    """Values, exact limits and finite derivatives at |x| = 1e4, compiled (``with_jit``)
    and op by op (``without_jit``): the stable forms must survive XLA's rewrites under
    jit, and hold where a user calls an activation eagerly."""

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((f"{name}_{d.__name__}", name, d) for name in ELEMENTWISE for d in FLOATS)
    def test_elementwise_values_and_stability_at_1e4(self, name, dtype):
        x = jnp.asarray(np.append(ORDINARY.ravel(), [-1e4, 1e4]), dtype)
        y, g = self.variant(value_and_derivative(name))(x)
        assert y.dtype == g.dtype == dtype
        chex.assert_shape([y, g], x.shape)
        np.testing.assert_allclose(y[:-2], REFERENCE[name](ORDINARY.ravel()), rtol=TOL[dtype], atol=TOL[dtype])
        chex.assert_tree_all_finite((y, g))
        lo, hi, glo, ghi = LIMITS[name]
        np.testing.assert_array_equal(y[-2:], np.asarray([lo, hi], dtype))  # exact limits: softplus(1e4) == 1e4, ...
        np.testing.assert_array_equal(g[-2:], np.asarray([glo, ghi], dtype))

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.named_parameters((d.__name__, d) for d in FLOATS)
    def test_softmax_and_log_softmax_stability_at_1e4(self, dtype):
        x = jnp.asarray([1e4, 0.0, -1e4], dtype)
        r = jnp.asarray([0.3, -1.2, 2.0], dtype)  # a random direction: sum(softmax) itself is constant

        @self.variant
        def values_and_grads(x):
            return [(f(x), jax.grad(lambda v, f=f: jnp.sum(r * f(v)))(x)) for f in (act.softmax, act.log_softmax)]

        (sm, g_sm), (lsm, g_lsm) = values_and_grads(x)
        np.testing.assert_array_equal(sm, [1, 0, 0])
        np.testing.assert_allclose(lsm, [0, -1e4, -2e4], rtol=1e-6)
        assert g_sm.dtype == g_lsm.dtype == dtype
        chex.assert_tree_all_finite((g_sm, g_lsm))
        # d/dx_j sum_i r_i log_softmax(x)_i = r_j - softmax(x)_j sum_i r_i
        np.testing.assert_allclose(g_lsm, [0.3 - 1.1, -1.2, 2.0], rtol=1e-6)
        # d/dx_j sum_i r_i softmax(x)_i = softmax_j (r_j - sum_i r_i softmax_i) = 0 at a one-hot softmax
        np.testing.assert_allclose(g_sm, [0, 0, 0], atol=1e-6)


@DTYPES
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_softmax_values_match_numpy_reference(name, dtype):
    got = jax.jit(act.get(name))(jnp.asarray(ORDINARY, dtype))
    assert got.dtype == dtype
    np.testing.assert_allclose(got, REFERENCE[name](ORDINARY), rtol=TOL[dtype], atol=TOL[dtype])


@DTYPES
def test_hyperparameters_of_leaky_relu_and_elu(dtype):
    x = np.append(ORDINARY.ravel(), -1e4)
    leaky, elu = jax.jit(lambda v: (act.leaky_relu(v, 0.2), act.elu(v, alpha=2.5)))(jnp.asarray(x, dtype))
    np.testing.assert_allclose(leaky, np.where(x >= 0, x, 0.2 * x), rtol=TOL[dtype])
    np.testing.assert_allclose(elu[:-1], np.where(x > 0, x, 2.5 * np.expm1(x))[:-1], rtol=TOL[dtype], atol=TOL[dtype])
    assert elu[-1] == -2.5  # elu(-1e4) == -alpha


def test_hyperparameter_arrays_keep_the_input_dtype():
    # A swept hyperparameter arrives as a float64 array; a float32 network stays float32.
    x = jnp.asarray(ORDINARY, jnp.float32)
    slope, alpha = jnp.asarray(0.2, jnp.float64), jnp.asarray(2.5, jnp.float64)
    leaky, elu = jax.jit(lambda v, s, a: (act.leaky_relu(v, s), act.elu(v, a)))(x, slope, alpha)
    assert leaky.dtype == elu.dtype == jnp.float32
    np.testing.assert_allclose(leaky, np.where(ORDINARY >= 0, ORDINARY, 0.2 * ORDINARY), rtol=1e-6)


def test_softmax_rows_sum_to_one_along_axis():
    x = np.random.default_rng(0).normal(size=(4, 6)) * np.array([[1.0], [30.0], [1e3], [1e4]])
    rows, cols, log_rows, log_cols = jax.jit(
        lambda v: (act.softmax(v), act.softmax(v, axis=0), act.log_softmax(v), act.log_softmax(v, axis=0))
    )(jnp.asarray(x))
    np.testing.assert_allclose(np.sum(rows, axis=-1), np.ones(4), rtol=1e-12)
    np.testing.assert_allclose(np.sum(cols, axis=0), np.ones(6), rtol=1e-12)
    assert np.all(np.asarray(rows) >= 0)
    np.testing.assert_allclose(np.exp(log_rows), rows, atol=1e-15)
    np.testing.assert_allclose(log_cols, _np_log_softmax(x, axis=0), rtol=1e-12)


@pytest.mark.parametrize(
    "f, derivative",
    [
        (act.relu, 0.0),
        (act.leaky_relu, 1.0),
        (functools.partial(act.leaky_relu, negative_slope=0.2), 1.0),
        (functools.partial(act.elu, alpha=2.5), 2.5),
    ],
    ids=["relu", "leaky_relu", "leaky_relu_0.2", "elu_2.5"],
)
def test_derivative_at_a_kink_is_the_documented_one(f, derivative):
    # Finite differences give the mean of the one-sided slopes there (0.5 for relu); the
    # docstrings say which side's slope jax.grad takes, and this is it.
    for dtype in (jnp.float32, jnp.float64):
        assert jax.grad(f)(jnp.zeros((), dtype)) == derivative


@DTYPES
@pytest.mark.parametrize("name", ELEMENTWISE)
def test_nan_in_is_nan_out(name, dtype):
    # A diverged input must stay visible: relu as jnp.where(x > 0, x, 0) turned NaN into 0.
    x = jnp.asarray([np.nan, -1.0, 0.0, 1.0], dtype)
    f = act.get(name)
    for y in (f(x), jax.jit(f)(x)):
        assert np.isnan(y[0])
        chex.assert_tree_all_finite(y[1:])


@DTYPES
@pytest.mark.parametrize("name", ["softmax", "log_softmax"])
def test_a_row_with_a_nan_gives_a_nan_row(name, dtype):
    x = jnp.asarray([[0.5, np.nan, -1.0], [0.5, 2.0, -1.0]], dtype)
    f = act.get(name)
    for y in (f(x), jax.jit(f)(x)):
        assert np.all(np.isnan(y[0]))
        chex.assert_tree_all_finite(y[1])  # the other rows are untouched
        np.testing.assert_allclose(y[1], REFERENCE[name](np.asarray(x[1:]))[0], rtol=TOL[dtype])


@pytest.mark.parametrize("name", list(REFERENCE) + ["linear"])
def test_lookup_by_name_and_by_function(name):
    f = act.get(name)
    assert f is getattr(act, "identity" if name == "linear" else name)
    assert act.get(f) is f
    custom = lambda x: 2 * x  # noqa: E731 - any callable passes through
    assert act.get(custom) is custom


@pytest.mark.parametrize("bad", ["Relu", "swish", 3, None])
def test_unknown_activation_is_a_value_error(bad):
    with pytest.raises(ValueError, match=r"^activation must be .*'relu'"):
        act.get(bad)
