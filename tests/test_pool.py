"""fnn.layers.pool and fnn.layers.reshape: max and average pools against a NumPy loop over
output positions (from the definition) and PyTorch (where installed), GlobalAvgPool,
Flatten and Reshape; gradients against finite differences in float64; argument and shape
errors."""

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32

from fnn import check_grads
from fnn.layers import (
    AvgPool1D,
    AvgPool2D,
    Conv2D,
    Flatten,
    GlobalAvgPool,
    MaxPool1D,
    MaxPool2D,
    Reshape,
    Serial,
)

rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Each test draws its data from a generator seeded afresh, so its numbers do not
    depend on which tests ran before it (or were skipped, as the torch ones are in CI)."""
    global rng
    rng = np.random.default_rng(0)


def same_pads(sizes, window, strides):
    pads = []
    for n, k, s in zip(sizes, window, strides):
        total = max((math.ceil(n / s) - 1) * s + k - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def numpy_pool(x, kind, window, strides, pads, count_include_pad=True):
    """Max or mean of each window, looping over output positions; padded positions are
    left out of a max and of an average without count_include_pad, and count as zeros in
    one with it."""
    x = np.asarray(x, np.float64)
    n = len(window)
    out = [(x.shape[1 + a] + sum(pads[a]) - window[a]) // strides[a] + 1 for a in range(n)]
    y = np.zeros((x.shape[0], *out, x.shape[-1]))
    for pos in np.ndindex(*out):
        starts = [p * s - lo for p, s, (lo, _) in zip(pos, strides, pads)]
        inside = tuple(slice(max(a, 0), min(a + k, x.shape[1 + i])) for i, (a, k) in enumerate(zip(starts, window)))
        block = x[(slice(None), *inside)].reshape(x.shape[0], -1, x.shape[-1])
        if kind == "max":
            y[(slice(None), *pos)] = block.max(axis=1)
        else:
            y[(slice(None), *pos)] = block.sum(axis=1) / (math.prod(window) if count_include_pad else block.shape[1])
    return y


# name -> (layer, input shape, (low, high) pads written out or "same")
CASES = {
    "max1d_default": (MaxPool1D(2), (2, 9, 3), [(0, 0)]),
    "max1d_stride1_pad1": (MaxPool1D(3, strides=1, padding=1), (2, 9, 3), [(1, 1)]),
    "max1d_same_stride2": (MaxPool1D(3, strides=2, padding="SAME"), (2, 8, 3), "same"),
    "max2d_default": (MaxPool2D(2), (2, 6, 5, 3), [(0, 0), (0, 0)]),
    "max2d_rect_torch_pairs": (MaxPool2D((3, 2), strides=(2, 1), padding=(1, 0)), (2, 6, 5, 3), [(1, 1), (0, 0)]),
    "max2d_explicit_pairs": (MaxPool2D(2, padding=((0, 1), (1, 0))), (2, 6, 5, 3), [(0, 1), (1, 0)]),
    "avg1d_default": (AvgPool1D(3), (2, 9, 3), [(0, 0)]),
    "avg1d_pad1_counting_pad": (AvgPool1D(3, strides=2, padding=1), (2, 9, 3), [(1, 1)]),
    "avg1d_pad1_without_pad": (AvgPool1D(3, strides=2, padding=1, count_include_pad=False), (2, 9, 3), [(1, 1)]),
    "avg2d_default": (AvgPool2D(2), (2, 6, 5, 3), [(0, 0), (0, 0)]),
    "avg2d_rect_pad_without_pad": (
        AvgPool2D((2, 3), strides=1, padding=(1, 1), count_include_pad=False),
        (2, 6, 5, 3),
        [(1, 1), (1, 1)],
    ),
    "avg2d_same_without_pad": (AvgPool2D(3, strides=2, padding="SAME", count_include_pad=False), (2, 6, 5, 3), "same"),
}


def case(name, dtype=np.float32):
    layer, shape, pads = CASES[name]
    if pads == "same":
        pads = same_pads(shape[1:-1], layer.window, layer.strides)
    return layer, jnp.asarray(rng.normal(size=shape), dtype), pads


def kind(layer):
    return "max" if isinstance(layer, (MaxPool1D, MaxPool2D)) else "avg"


def pool_atol(layer, x, pads):
    """The float32 tolerance of each output (tests/README.md): an average of at most
    n = window terms rounds n times (sum and divide) in each implementation, so (n + 1) eps
    times the average of the absolute values; a max is exact, and the same slack is harmless."""
    scale = numpy_pool(np.abs(x), "avg", layer.window, layer.strides, pads, count_include_pad=False)
    return (math.prod(layer.window) + 1) * EPS32 * scale


@pytest.mark.parametrize("name", CASES)
def test_pool_equals_the_definition(name):
    layer, x, pads = case(name)
    y = layer.apply((), x)
    expected = numpy_pool(x, kind(layer), layer.window, layer.strides, pads, getattr(layer, "count_include_pad", True))
    assert y.dtype == jnp.float32 and y.shape == expected.shape
    assert_close_f32(y, expected, atol=pool_atol(layer, x, pads))
    y_train, state = layer.apply_train((), x, state=())
    np.testing.assert_array_equal(y_train, y)
    assert state == ()


@pytest.mark.parametrize("name", [n for n in CASES if "explicit" not in n and "same" not in n])
def test_pool_equals_pytorch(name):
    """PyTorch pads symmetrically (its padding=p), with -inf for max and zeros for average."""
    torch = pytest.importorskip("torch")
    layer, x, pads = case(name)
    rank = len(layer.window)
    to_first = (0, rank + 1, *range(1, rank + 1))
    xt = torch.tensor(np.asarray(x).transpose(to_first))
    options = dict(kernel_size=layer.window, stride=layer.strides, padding=[lo for lo, _ in pads])
    if kind(layer) == "max":
        yt = {1: torch.nn.functional.max_pool1d, 2: torch.nn.functional.max_pool2d}[rank](xt, **options)
    else:
        pool = {1: torch.nn.functional.avg_pool1d, 2: torch.nn.functional.avg_pool2d}[rank]
        yt = pool(xt, count_include_pad=layer.count_include_pad, **options)
    atol = pool_atol(layer, x, pads).transpose(to_first)
    assert_close_f32(np.asarray(layer.apply((), x)).transpose(to_first), yt.numpy(), atol=atol)


def test_global_avg_pool_flatten_and_reshape():
    x1, x2 = rng.normal(size=(2, 7, 3)), rng.normal(size=(2, 4, 5, 3))
    np.testing.assert_allclose(GlobalAvgPool().apply((), x1), x1.mean(axis=1), rtol=1e-12)
    np.testing.assert_allclose(GlobalAvgPool().apply((), x2), x2.mean(axis=(1, 2)), rtol=1e-12)
    np.testing.assert_array_equal(Flatten().apply((), x2), x2.reshape(2, 60))  # row-major, batch kept
    np.testing.assert_array_equal(Flatten().apply((), x1[:, :, 0]), x1[:, :, 0])
    np.testing.assert_array_equal(Reshape((4, 15)).apply((), x2), x2.reshape(2, 4, 15))
    np.testing.assert_array_equal(Reshape((-1, 3)).apply((), Flatten().apply((), x2)), x2.reshape(2, 20, 3))
    assert Reshape([4, 15]) == Reshape((4, 15))  # normalized to a tuple: hashable, static


def test_pool_gradients_match_finite_differences():
    """jax.grad wrt x of every pool, GlobalAvgPool, Flatten and Reshape, in float64, in one check.
    Random inputs: no ties in a max."""
    trees, models = {}, {}
    for name in CASES:
        models[name], trees[name], _ = case(name, np.float64)
    models["global_avg_pool"], trees["global_avg_pool"] = GlobalAvgPool(), jnp.asarray(rng.normal(size=(2, 4, 5, 3)))
    models["flatten_reshape"] = Serial((Flatten(), Reshape((3, -1))))
    trees["flatten_reshape"] = jnp.asarray(rng.normal(size=(2, 4, 3, 2)))
    none = {k: m.init(jax.random.key(0))[0] for k, m in models.items()}  # no params: () or ((), ())
    readouts = {
        k: jnp.asarray(rng.normal(size=jax.eval_shape(m.apply, none[k], trees[k]).shape)) for k, m in models.items()
    }
    total = jax.jit(lambda t: sum(jnp.sum(readouts[k] * m.apply(none[k], t[k])) for k, m in models.items()))
    # atol 1e-8: the central difference of this sum of ~10 pools carries rounding of about
    # |total| * 1e-16 / eps ~ 1e-9 (eps 1e-6); a wrong gradient is off by 1e-3 or more
    check_grads(total, trees, atol=1e-8)


def test_pools_after_a_convolution_under_vmap():
    model = Serial((Conv2D(3, 4, 3), MaxPool2D(2), AvgPool2D(2, strides=1), GlobalAvgPool()))
    params = jax.vmap(lambda k: model.init(k)[0])(jax.random.split(jax.random.key(0), 3))
    x = jnp.asarray(rng.normal(size=(2, 6, 6, 3)), jnp.float32)
    ys = jax.vmap(lambda p: model.apply(p, x))(params)
    assert ys.shape == (3, 2, 4)
    for i in range(3):
        member = jax.tree.map(operator.itemgetter(i), params)
        # The model on absolute values (float64) bounds the terms of every sum on the way (max
        # and average are monotone): k = 3 * 3 * 3 + 1 for the convolution, 4 + 1 for each
        # average (a 2x2 window, then the 2x2 global one).
        scale = model.apply(*jax.tree.map(lambda a: jnp.abs(jnp.asarray(a, jnp.float64)), (member, x)))
        assert_close_f32(ys[i], model.apply(member, x), atol=(28 + 5 + 5) * EPS32 * np.asarray(scale))


# --- dtypes: bool and integer input -------------------------------------------------------------

MASK = np.array([[True, True, False, True], [False, False, False, False]])[None, :, :, None]  # [1, 2, 4, 1]


def test_max_pool_of_a_bool_mask_is_an_or_and_keeps_integer_dtypes():
    """A bool max is an OR over the window (padding with False never wins), an integer
    max pads with the dtype's minimum: exact, in the input's dtype."""
    y = MaxPool2D(2).apply((), MASK)
    assert y.dtype == jnp.bool_ and y[0, :, :, 0].tolist() == [[True, True]]
    padded = MaxPool2D(2, padding=1).apply((), ~MASK)  # windows at the border hold padding
    np.testing.assert_array_equal(padded[0, :, :, 0], [[False, True, False], [True, True, True]])
    assert MaxPool1D(2).apply((), MASK[:, 0]).tolist() == [[[True], [True]]]
    pixels = np.array([[0, 3, 255, 7]], np.uint8)[:, :, None]
    y = MaxPool1D(2, padding=1).apply((), pixels)
    assert y.dtype == jnp.uint8 and y[0, :, 0].tolist() == [0, 255, 7]


def test_average_pools_average_bools_and_integers_in_float32():
    """A window of uint8 200s averages to 200 (a uint8 sum wraps: 800 mod 256 = 32, / 4 = 8);
    a bool mask to the fraction of True (bool addition is OR: 1.0)."""
    pixels = np.full((1, 2, 2, 1), 200, np.uint8)
    for layer in (AvgPool2D(2), AvgPool2D(2, padding=1, count_include_pad=False), GlobalAvgPool()):
        y = layer.apply((), pixels)
        assert y.dtype == jnp.float32 and np.all(np.asarray(y) == 200.0), layer
    np.testing.assert_array_equal(AvgPool2D(2).apply((), MASK)[0, :, :, 0], [[0.5, 0.25]])
    np.testing.assert_array_equal(AvgPool1D(4).apply((), MASK[:, 0]), [[[0.75]]])
    np.testing.assert_array_equal(GlobalAvgPool().apply((), MASK), [[3 / 8]])
    wide = np.array([[[2**31 - 1], [2**31 - 1]]], np.int32)  # an int32 sum would overflow
    assert AvgPool1D(2).apply((), wide)[0, 0, 0] == np.float32(2**31 - 1)


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, message",
    [
        (lambda: MaxPool1D(0), "window must hold ints >= 1"),
        (lambda: MaxPool1D((2, 2)), "window must be an int"),
        (lambda: MaxPool2D((2, 2, 2)), "window must be an int or a sequence of 2 ints"),
        (lambda: AvgPool2D(2, strides=(1, 0)), "strides must hold ints >= 1"),
        (lambda: AvgPool1D(2, padding="full"), "padding must be"),
        (lambda: MaxPool2D(2, padding=(1, 2, 3)), "padding must be .* 2 entries"),
        (lambda: MaxPool1D(2, padding=2), r"padding must be smaller than the window \(2,\)"),
        (lambda: AvgPool2D((3, 2), padding=((0, 0), (0, 2))), "padding must be smaller than the window"),
        (lambda: AvgPool1D(2, count_include_pad=1), "count_include_pad must be a bool"),
        (lambda: Reshape((3, 0)), "shape must be a tuple of ints >= 1"),
        (lambda: Reshape((-1, -1)), "at most one -1"),
        (lambda: Reshape(12), "shape must be a tuple"),
    ],
)
def test_bad_arguments_name_the_argument(build, message):
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "layer, shape, message",
    [
        (
            MaxPool1D(2),
            (4, 9),
            r"MaxPool1D\(2\) expects input x of shape \[batch, length, channels\]; got shape \(4, 9\)",
        ),
        (AvgPool2D(2), (4, 9, 3), r"AvgPool2D\(\(2, 2\)\) expects input x of shape \[batch, height, width, channels\]"),
        (MaxPool2D(3), (4, 2, 9, 3), r"MaxPool2D\(\(3, 3\)\) expects spatial sizes of at least \(3, 3\)"),
        (GlobalAvgPool(), (4, 3), r"GlobalAvgPool expects input x of shape \[batch, \*spatial, channels\]"),
        (GlobalAvgPool(), (4, 0, 3), r"every spatial size >= 1\); got shape \(4, 0, 3\)"),  # not a NaN mean
        (GlobalAvgPool(), (4, 5, 0, 3), r"GlobalAvgPool expects .* got shape \(4, 5, 0, 3\)"),
        (Flatten(), (4,), r"Flatten expects input x of shape \[batch, \.\.\.\] \(rank >= 2\); got shape \(4,\)"),
        (Reshape((4, 4)), (2, 15), r"Reshape\(\(4, 4\)\) expects .* 16 elements per example; got shape \(2, 15\)"),
        (Reshape((-1, 4)), (2, 3, 5), r"a multiple of 4 elements"),
    ],
)
def test_bad_input_shapes_name_the_layer_and_the_expected_shape(layer, shape, message):
    x = jnp.zeros(shape, jnp.float32)
    with pytest.raises(ValueError, match=message):
        layer.apply((), x)
    with pytest.raises(ValueError, match=message):  # under jit: at trace time
        jax.jit(layer.apply)((), x)
