"""fnn.init: moments and bounds of every scheme against its formula, orthogonality,
keys, dtypes, lookup by name, fans, and vmap over keys."""

import dataclasses
import math
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import init

# name -> (initializer, variance(fan_in, fan_out, rows, cols), uniform limit or None, gaussian?)
# rows/cols: the matrix view [prod(shape[:-1]), shape[-1]] that orthogonal uses.
GLOROT, HE, LECUN = (lambda fi, fo, r, c: 2 / (fi + fo)), (lambda fi, fo, r, c: 2 / fi), (lambda fi, fo, r, c: 1 / fi)
SCHEMES = {
    "normal(0.05)": (init.normal(0.05), lambda fi, fo, r, c: 0.05**2, None, True),
    "uniform(0.2)": (init.uniform(0.2), lambda fi, fo, r, c: 0.2**2 / 3, lambda fi, fo: 0.2, False),
    "glorot_uniform": (init.glorot_uniform, GLOROT, lambda fi, fo: math.sqrt(6 / (fi + fo)), False),
    "glorot_normal": (init.glorot_normal, GLOROT, None, True),
    "he_uniform": (init.he_uniform, HE, lambda fi, fo: math.sqrt(6 / fi), False),
    "he_normal": (init.he_normal, HE, None, True),
    "lecun_uniform": (init.lecun_uniform, LECUN, lambda fi, fo: math.sqrt(3 / fi), False),
    "lecun_normal": (init.lecun_normal, LECUN, None, True),
    # Orthonormal columns (tall) or rows (wide): each element has variance gain^2 / max(r, c).
    "orthogonal(1.5)": (init.orthogonal(1.5), lambda fi, fo, r, c: 1.5**2 / max(r, c), None, False),
}
CONSTANTS = {"zeros": (init.zeros, 0.0), "ones": (init.ones, 1.0), "constant(0.7)": (init.constant(0.7), 0.7)}
ALL = {**{k: v[0] for k, v in SCHEMES.items()}, **{k: v[0] for k, v in CONSTANTS.items()}}
# A dense kernel with fan_in > fan_out, and a conv kernel with fan_in < fan_out whose 2x2 receptive
# field multiplies both fans (400, 1200). Drawing a sample compiles a program per shape and dtype
# (~0.6 s on CPU), so the tests share few shapes and dtypes: BIG in float64 wherever values are
# compared (orthogonal draws a [400, 300] matrix for all three), SMALL for float32.
SHAPES = [(400, 300), (2, 2, 100, 300)]
BIG, SMALL = SHAPES[0], (8, 6)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", SCHEMES)
def test_moments_and_bounds_match_the_formula(name, shape):
    fn, variance, limit, gaussian = SCHEMES[name]
    w = np.asarray(fn(jax.random.key(0), shape, jnp.float64))
    fan_in, fan_out = init.fans(shape)
    rows, cols = math.prod(shape[:-1]), shape[-1]
    expected = variance(fan_in, fan_out, rows, cols)
    n = w.size
    assert w.shape == shape and w.dtype == np.float64  # the dtype argument (float32: below)
    # The mean is within 5 standard errors of 0; the variance within 5% (the standard error of
    # the variance estimate is about var * sqrt(2 / n) < 1% here, while the fan_in / fan_out /
    # fan_avg formulas differ by >= 14% on these shapes).
    assert abs(w.mean()) < 5 * math.sqrt(expected / n)
    assert abs(w.var() / expected - 1) < 0.05, (w.var(), expected)
    if limit is not None:
        a = limit(fan_in, fan_out)
        assert np.all(np.abs(w) <= a) and np.max(np.abs(w)) > 0.99 * a  # U(-a, a) fills the interval
    if gaussian:  # not truncated: some draws beyond 3.5 sigma among 120,000
        assert np.max(np.abs(w)) > 3.5 * math.sqrt(expected)


@pytest.mark.parametrize("name", CONSTANTS)
def test_constant_schemes(name):
    fn, value = CONSTANTS[name]
    for dtype in (jnp.float32, jnp.float64):
        w = fn(jax.random.key(0), SMALL, dtype)
        assert w.dtype == dtype and w.shape == SMALL
        np.testing.assert_array_equal(w, np.full(SMALL, value, dtype))


@pytest.mark.parametrize(
    "shape, dtype, atol",
    [(SMALL, jnp.float32, 1e-5), (SMALL[::-1], jnp.float32, 1e-5), ((2, 4, 6), jnp.float32, 1e-5)]
    + [(shape, jnp.float64, 1e-12) for shape in (SHAPES[0], SHAPES[0][::-1], SHAPES[1])],
    ids=["tall32", "wide32", "rank3_32", "tall64", "wide64", "rank4_64"],
)
def test_orthogonal_is_semi_orthogonal_times_gain(shape, dtype, atol):
    gain = 1.5
    q = init.orthogonal(gain)(jax.random.key(3), shape, dtype)
    assert q.dtype == dtype and q.shape == shape
    m = np.asarray(q, np.float64).reshape(-1, shape[-1])
    small = m.T @ m if m.shape[0] >= m.shape[1] else m @ m.T  # Q^T Q (tall) or Q Q^T (wide)
    np.testing.assert_allclose(small, gain**2 * np.eye(min(m.shape)), atol=atol * gain**2)


def test_orthogonal_needs_rank_2():
    with pytest.raises(ValueError, match="rank >= 2"):
        init.orthogonal()(jax.random.key(0), (5,))


@pytest.mark.parametrize("name", SCHEMES)
def test_same_key_same_values_other_key_other_values(name):
    fn = SCHEMES[name][0]
    a, b = fn(jax.random.key(1), BIG, jnp.float64), fn(jax.random.key(1), BIG, jnp.float64)
    c = fn(jax.random.key(2), BIG, jnp.float64)
    np.testing.assert_array_equal(a, b)
    assert not np.any(np.asarray(a) == np.asarray(c))  # independent draws: no element repeats


@pytest.mark.parametrize("name", ALL)
def test_dtype_argument_is_respected(name):  # float64 values: the moment tests; here shapes only
    for args, dtype in (((), jnp.float32), ((jnp.float32,), jnp.float32), ((jnp.float64,), jnp.float64)):
        out = jax.eval_shape(lambda key: ALL[name](key, SMALL, *args), jax.random.key(0))  # noqa: B023
        assert out.dtype == dtype and out.shape == SMALL


BY_NAME = {
    "zeros": init.zeros,
    "ones": init.ones,
    "normal": init.normal(),
    "uniform": init.uniform(),
    "glorot_uniform": init.glorot_uniform,
    "glorot_normal": init.glorot_normal,
    "xavier_uniform": init.glorot_uniform,
    "xavier_normal": init.glorot_normal,
    "he_uniform": init.he_uniform,
    "he_normal": init.he_normal,
    "kaiming_uniform": init.he_uniform,
    "kaiming_normal": init.he_normal,
    "lecun_uniform": init.lecun_uniform,
    "lecun_normal": init.lecun_normal,
    "orthogonal": init.orthogonal(),
}


@pytest.mark.parametrize("name", BY_NAME)
def test_get_by_name(name):
    fn = init.get(name)
    assert fn == BY_NAME[name]  # factories are frozen dataclasses: equal by value
    key = jax.random.key(4)
    np.testing.assert_array_equal(fn(key, BIG, jnp.float64), BY_NAME[name](key, BIG, jnp.float64))


def test_get_passes_callables_through_and_rejects_unknown_names():
    custom = init.normal(0.3)
    assert init.get(custom) is custom
    assert init.get(init.he_normal) is init.he_normal
    for bad in ("glorot", "He_Normal", 3, None):
        with pytest.raises(ValueError, match=r"^init must be .*glorot_uniform"):
            init.get(bad)


def test_factories_compare_and_hash_by_value():
    assert init.normal(0.1) == init.normal(0.1) and hash(init.normal(0.1)) == hash(init.normal(0.1))
    assert init.normal(0.1) != init.normal(0.2) and init.normal(0.1) != init.uniform(0.1)


def test_lowercase_names_are_the_classes_and_store_python_floats():
    pairs = [(init.constant, init.Constant), (init.normal, init.Normal), (init.uniform, init.Uniform)]
    assert all(name is cls for name, cls in [*pairs, (init.orthogonal, init.Orthogonal)])
    made = [init.constant(np.float32(0.5)), init.normal(1), init.uniform(np.int64(2)), init.orthogonal(-1)]
    assert [type(v) for m in made for v in dataclasses.astuple(m)] == [float] * 4
    assert made[0] == init.Constant(0.5) and hash(made[1]) == hash(init.Normal(1.0))  # equal by value whatever the kind


# (initializer class, keyword arguments, the argument the error must name, a phrase of the message)
BAD = [
    (init.Constant, dict(value="0.5"), "value", "must be a real number"),
    (init.Constant, dict(value=jnp.array(0.5)), "value", "must be a real number"),  # static: no arrays, no tracers
    (init.Constant, dict(value=float("inf")), "value", "must lie in"),
    (init.Normal, dict(stddev=-0.1), "stddev", "must lie in [0, inf)"),
    (init.Normal, dict(stddev=True), "stddev", "must be a real number"),
    (init.Uniform, dict(scale=-1), "scale", "must lie in [0, inf)"),
    (init.Uniform, dict(scale=None), "scale", "must be a real number"),
    (init.Orthogonal, dict(gain=float("nan")), "gain", "must lie in"),
    (init.VarianceScaling, dict(scale=0.0, mode="fan_in", distribution="normal"), "scale", "must lie in (0, inf)"),
    (init.VarianceScaling, dict(scale=1.0, mode="fan_mean", distribution="normal"), "mode", "must be one of"),
    (init.VarianceScaling, dict(scale=1.0, mode="fan_in", distribution="gaussian"), "distribution", "must be one of"),
]


@pytest.mark.parametrize(
    "cls, kwargs, name, phrase", BAD, ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n, _) in enumerate(BAD)]
)
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, name, phrase):
    with pytest.raises(ValueError, match="^" + re.escape(f"{name} {phrase}")):
        cls(**kwargs)


@pytest.mark.parametrize(
    "shape, expected",
    [((7,), (7, 7)), ((3, 5), (3, 5)), ((3, 3, 16, 32), (144, 288)), ((2, 4, 6), (8, 12))],
    ids=["rank1", "rank2", "rank4", "rank3"],
)
def test_fans(shape, expected):
    assert init.fans(shape) == expected


def test_fans_of_a_scalar_shape_is_an_error():
    with pytest.raises(ValueError, match="rank >= 1"):
        init.fans(())


@pytest.mark.parametrize("name", SCHEMES)
def test_vmap_over_keys(name):
    fn = SCHEMES[name][0]
    keys = jax.random.split(jax.random.key(5), 3)
    batch = jax.vmap(lambda k: fn(k, BIG, jnp.float64))(keys)
    chex.assert_shape(batch, (3, *BIG))
    for i in range(3):  # each member is the draw of its own key ...
        np.testing.assert_allclose(batch[i], fn(keys[i], BIG, jnp.float64), rtol=1e-12, atol=1e-14)
    assert not np.any(np.asarray(batch[0]) == np.asarray(batch[1]))  # ... and members differ
