"""fnn.layers.conv: Conv1D and Conv2D against a NumPy loop over output positions (from the
definition), against lax.conv_general_dilated and PyTorch (where installed), gradients
against finite differences in float64, the default initializer, argument and shape
errors; BatchNorm after a convolution; a CNN trained by fit, and a sweep of it equal to
its members run alone."""

import math
import operator
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32

import fnn
from fnn import check_grads
from fnn.datasets import load_digits
from fnn.layers import Activation, BatchNorm, Conv1D, Conv2D, Dense, Flatten, MaxPool2D, Serial

KEY = jax.random.key(0)
rng = np.random.default_rng(0)


@pytest.fixture(autouse=True)
def _fresh_rng():
    """Each test draws its data from a generator seeded afresh, so its numbers do not
    depend on which tests ran before it (or were skipped, as the torch ones are in CI)."""
    global rng
    rng = np.random.default_rng(0)


def as64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def same_pads(sizes, kernel, strides, dilation):
    """TensorFlow's "SAME": ceil(n / s) outputs, the odd padding element after."""
    pads = []
    for n, k, s, d in zip(sizes, kernel, strides, dilation):
        total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def numpy_conv(x, w, b, strides, pads, dilation):
    """y[b, i, o] = b[o] + sum_{j, c} x_padded[b, i * s + j * d, c] w[j, c, o], looping over
    output positions i and kernel taps j (any number of spatial axes), in float64."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n = w.ndim - 2
    kernel = w.shape[:n]
    xp = np.pad(x, [(0, 0), *pads, (0, 0)])
    out = [(xp.shape[1 + a] - dilation[a] * (kernel[a] - 1) - 1) // strides[a] + 1 for a in range(n)]
    y = np.zeros((x.shape[0], *out, w.shape[-1]))
    for pos in np.ndindex(*out):
        for tap in np.ndindex(*kernel):
            at = tuple(p * s + t * d for p, s, t, d in zip(pos, strides, tap, dilation))
            y[(slice(None), *pos)] += xp[(slice(None), *at)] @ w[tap]
    return y if b is None else y + np.asarray(b, np.float64)


# name -> (layer, input shape, the (low, high) padding of each spatial axis, written out)
CASES = {
    "1d_same": (Conv1D(2, 3, 3), (2, 9, 2), "same"),
    "1d_valid": (Conv1D(2, 3, 3, padding="VALID"), (2, 9, 2), [(0, 0)]),
    "1d_stride2_pad1": (Conv1D(2, 3, 5, strides=2, padding=1), (2, 10, 2), [(1, 1)]),  # as MNIST-1D's CNN
    "1d_dilation2": (Conv1D(2, 3, 3, dilation=2, padding=2), (2, 9, 2), [(2, 2)]),
    "1d_asymmetric_stride3": (Conv1D(2, 3, 3, strides=3, padding=[(0, 2)]), (2, 9, 2), [(0, 2)]),
    "1d_same_even_kernel_stride2": (Conv1D(2, 3, 4, strides=2), (2, 9, 2), "same"),
    "1d_no_bias": (Conv1D(2, 3, 3, use_bias=False, padding="VALID"), (2, 9, 2), [(0, 0)]),
    "2d_same": (Conv2D(2, 3, 3), (2, 6, 5, 2), "same"),
    "2d_rect_kernel_torch_pairs": (
        Conv2D(2, 3, (3, 2), strides=(2, 1), padding=(1, 2)),
        (2, 6, 5, 2),
        [(1, 1), (2, 2)],
    ),
    "2d_dilation_valid": (Conv2D(2, 3, 3, dilation=(2, 1), padding="VALID"), (2, 6, 5, 2), [(0, 0), (0, 0)]),
    "2d_explicit_pairs_stride2": (Conv2D(2, 3, 2, strides=2, padding=((0, 1), (2, 0))), (2, 6, 5, 2), [(0, 1), (2, 0)]),
    "2d_same_stride2_dilation2": (Conv2D(2, 3, 3, strides=2, dilation=2), (2, 6, 5, 2), "same"),
}


def case(name, dtype=np.float32):
    layer, shape, pads = CASES[name]
    if pads == "same":
        pads = same_pads(shape[1:-1], layer.kernel_size, layer.strides, layer.dilation)
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), layer.init(jax.random.fold_in(KEY, len(name)))[0])
    x = jnp.asarray(rng.normal(size=shape), dtype)
    return layer, params, x, pads


def conv_atol(layer, params, x, pads):
    """The float32 tolerance of each output (tests/README.md): a sum of n = taps * in_channels
    products and the bias, so (n + 1) eps times the same convolution of absolute values: the
    worst case of two float32 sums in any order (the float64 reference rounds once more)."""
    b = np.abs(params["b"]) if "b" in params else None
    scale = numpy_conv(np.abs(x), np.abs(params["w"]), b, layer.strides, pads, layer.dilation)
    return (math.prod(layer.kernel_size) * layer.in_channels + 1) * EPS32 * scale


@pytest.mark.parametrize("name", CASES)
def test_conv_equals_the_definition_and_lax(name):
    layer, params, x, pads = case(name)
    y = layer.apply(params, x)
    expected = numpy_conv(x, params["w"], params.get("b"), layer.strides, pads, layer.dilation)
    assert y.dtype == jnp.float32 and y.shape == expected.shape
    atol = conv_atol(layer, params, x, pads)
    assert_close_f32(y, expected, atol=atol)
    specs = {1: ("NWC", "WIO", "NWC"), 2: ("NHWC", "HWIO", "NHWC")}[layer.rank]
    padding = "SAME" if CASES[name][2] == "same" else pads  # lax's own "SAME"
    lax = jax.lax.conv_general_dilated(
        x, params["w"], layer.strides, padding, rhs_dilation=layer.dilation, dimension_numbers=specs
    )
    bias = np.asarray(params["b"]) if layer.use_bias else 0.0
    assert_close_f32(y, np.asarray(lax) + bias, atol=atol)


@pytest.mark.parametrize("name", CASES)
def test_conv_equals_pytorch(name):
    torch = pytest.importorskip("torch")
    layer, params, x, pads = case(name)
    # PyTorch is channels-first: x [B, C, *S], weight [O, I, *K]; pad explicitly (it pads symmetrically only).
    to_first = (0, layer.rank + 1, *range(1, layer.rank + 1))
    xt = torch.tensor(np.asarray(x).transpose(to_first))
    wt = torch.tensor(np.asarray(params["w"]).transpose(layer.rank + 1, layer.rank, *range(layer.rank)))
    bt = torch.tensor(np.asarray(params["b"])) if layer.use_bias else None
    conv = {1: torch.nn.functional.conv1d, 2: torch.nn.functional.conv2d}[layer.rank]
    padded = torch.nn.functional.pad(xt, [p for pair in reversed(pads) for p in pair])
    yt = conv(padded, wt, bt, stride=layer.strides, dilation=layer.dilation).numpy()
    y = np.asarray(layer.apply(params, x)).transpose(to_first)  # to channels-first
    atol = conv_atol(layer, params, x, pads).transpose(to_first)
    assert_close_f32(y, yt, atol=atol)
    if all(lo == hi for lo, hi in pads):  # PyTorch's own padding=p: what fnn's int padding means
        yt = conv(xt, wt, bt, stride=layer.strides, dilation=layer.dilation, padding=[lo for lo, _ in pads]).numpy()
        assert_close_f32(y, yt, atol=atol)


def test_conv_gradients_match_finite_differences():
    """jax.grad wrt the params and x of every case, in float64, in one check (each case a leaf)."""
    trees, readouts = {}, {}
    for name in CASES:
        layer, params, x, _ = case(name, np.float64)
        trees[name] = (params, x)
        readouts[name] = jnp.asarray(rng.normal(size=jax.eval_shape(layer.apply, params, x).shape))

    def total(trees):
        return sum(jnp.sum(readouts[name] * CASES[name][0].apply(*trees[name])) for name in CASES)

    check_grads(jax.jit(total), trees)


# --- the default initializer, and the kernel layout -------------------------------------------


@pytest.mark.parametrize("layer", [Conv1D(3, 64, 5), Conv2D(4, 64, (3, 2))], ids=["1d", "2d"])
def test_default_init_is_pytorchs(layer):
    """PyTorch's Conv default: w and b ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = taps * in_channels."""
    params, state = layer.init(KEY)
    assert state == ()
    fan_in = math.prod(layer.kernel_size) * layer.in_channels
    assert params["w"].shape == (*layer.kernel_size, layer.in_channels, 64) and params["b"].shape == (64,)
    assert fnn.init.fans(params["w"].shape)[0] == fan_in == layer.fan_in
    bound = 1 / math.sqrt(fan_in)
    w, b = np.asarray(params["w"]), np.asarray(params["b"])
    assert np.all(np.abs(w) <= bound) and np.max(np.abs(w)) > 0.97 * bound
    assert abs(w.var() / (bound**2 / 3) - 1) < 0.15  # U(-a, a) has variance a^2 / 3 (~1000 draws)
    assert np.all(np.abs(b) <= bound) and np.max(np.abs(b)) > 0.5 * bound and len(set(b.tolist())) == 64


def test_named_initializers_and_no_bias():
    params, _ = Conv2D(2, 4, 3, w_init="he_normal", b_init="zeros").init(KEY)
    np.testing.assert_array_equal(params["b"], np.zeros(4))
    assert abs(float(jnp.std(params["w"])) / math.sqrt(2 / 18) - 1) < 0.35  # He: N(0, 2 / fan_in), 72 draws
    params, _ = Conv1D(2, 4, 3, use_bias=False, w_init="ones").init(KEY)
    assert set(params) == {"w"}
    np.testing.assert_array_equal(params["w"], np.ones((3, 2, 4)))


def test_sizes_are_normalized_and_equal_layers_hash_alike():
    assert Conv1D(2, 3, 5) == Conv1D(2, 3, (5,), strides=[1], padding="same", dilation=1)
    assert hash(Conv2D(2, 3, 3)) == hash(Conv2D(2, 3, (3, 3), strides=(1, 1), padding="SAME"))
    layer = Conv2D(2, 3, 3, padding=1)
    assert layer.padding == ((1, 1), (1, 1)) and layer.kernel_size == (3, 3) and layer.strides == (1, 1)
    assert Conv2D(2, 3, 3, padding=(1, 2)).padding == ((1, 1), (2, 2))
    assert jax.tree.leaves(Conv2D(2, 3, 3)) == []  # every field is structural: static


def test_numpy_ints_are_sizes_as_python_ints():
    """NumPy ints (from a shape or a config file) pass as channel counts and as sizes alike,
    stored as Python ints: the same layer, hash and compiled program as with Python ints."""
    i = np.int64
    layer = Conv1D(i(2), i(3), kernel_size=i(3), strides=i(2), padding=i(1), dilation=np.int32(1))
    assert layer == Conv1D(2, 3, 3, strides=2, padding=1) and hash(layer) == hash(Conv1D(2, 3, 3, strides=2, padding=1))
    assert all(type(v) is int for v in (layer.in_channels, *layer.kernel_size, *layer.strides, *layer.padding[0]))
    assert Conv2D(2, 3, (i(3), i(1)), padding=[i(1), (i(0), i(2))]).padding == ((1, 1), (0, 2))
    assert MaxPool2D(i(2)).window == (2, 2) and type(MaxPool2D(i(2)).window[0]) is int
    assert fnn.Reshape((i(4), i(-1))).shape == (4, -1)
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        Conv1D(2, 3, np.float64(3.0))
    with pytest.raises(ValueError, match="kernel_size must be an int"):
        Conv1D(2, 3, np.bool_(True))


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "build, name",
    [
        (lambda: Conv1D(2, 3, 0), "kernel_size must hold ints >= 1"),
        (lambda: Conv1D(2, 3, (3, 3)), "kernel_size must be an int"),
        (lambda: Conv2D(2, 3, (3, 3, 3)), r"kernel_size must be an int or a sequence of 2 ints"),
        (lambda: Conv1D(2, 3, 3.0), "kernel_size must be an int"),
        (lambda: Conv1D(2, 3, 3, strides=0), "strides must hold ints >= 1"),
        (lambda: Conv2D(2, 3, 3, dilation=(1, -1)), "dilation must hold ints >= 1"),
        (lambda: Conv1D(2, 3, 3, padding="full"), 'padding must be "SAME", "VALID"'),
        (lambda: Conv1D(2, 3, 3, padding=-1), "padding must be"),
        (
            lambda: Conv1D(2, 3, 3, padding=(1, 2)),
            r"padding must be .* or \[\(low, high\)\] \(one entry per spatial axis\)",
        ),  # 1-D pairs: [(1, 2)]
        (lambda: Conv2D(2, 3, 3, padding=((1, 2, 3), (0, 0))), "padding must be"),
        (lambda: Conv2D(2, 3, 3, padding=(1,)), "padding must be .* 2 entries"),
        (lambda: Conv1D(0, 3, 3), "in_channels must be >= 1"),
        (lambda: Conv1D(2, 3.0, 3), "out_channels must be a Python int"),
        (lambda: Conv1D(2, 3, 3, use_bias="yes"), "use_bias must be a bool"),
        (lambda: Conv1D(2, 3, 3, w_init="glorot"), "init must be"),
    ],
)
def test_bad_arguments_name_the_argument(build, name):
    with pytest.raises(ValueError, match=name):
        build()


@pytest.mark.parametrize(
    "layer, shape, expected",
    [
        (Conv1D(2, 3, 3), (4, 9), r"Conv1D\(2, 3, kernel_size=3\) expects input x of shape \[batch, length, 2\]"),
        (Conv1D(2, 3, 3), (4, 9, 5), r"Conv1D\(2, 3, kernel_size=3\) expects input x of shape \[batch, length, 2\]"),
        (Conv2D(2, 3, 3), (4, 9, 2), r"expects input x of shape \[batch, height, width, 2\]; got shape \(4, 9, 2\)"),
        (Conv2D(2, 3, 3), (1, 4, 9, 9, 2), r"\[batch, height, width, 2\]"),
        (
            Conv1D(2, 3, 5, padding="VALID"),
            (4, 3, 2),
            r"Conv1D.* expects spatial sizes of at least \(5,\).*\(4, 3, 2\)",
        ),
        (Conv2D(2, 3, 3, dilation=2, padding=1), (4, 2, 9, 2), r"expects spatial sizes of at least \(3, 3\)"),
    ],
)
def test_bad_input_shapes_name_the_layer_and_the_expected_shape(layer, shape, expected):
    params, _ = jax.eval_shape(layer.init, KEY)
    params = jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), params)
    x = jnp.zeros(shape, jnp.float32)
    with pytest.raises(ValueError, match=expected):
        layer.apply(params, x)
    with pytest.raises(ValueError, match=expected):  # under jit: at trace time
        jax.jit(layer.apply)(params, x)


def test_params_of_another_layout_are_refused():
    params, _ = Conv1D(2, 3, 5).init(KEY)
    torch_layout = {"w": params["w"].transpose(2, 1, 0), "b": params["b"]}  # [out, in, kernel]
    with pytest.raises(ValueError, match=r"params\['w'\] has shape \(3, 2, 5\); the model expects \(5, 2, 3\)"):
        Conv1D(2, 3, 5).apply(torch_layout, jnp.zeros((1, 8, 2), jnp.float32))


# --- BatchNorm after a convolution: statistics per channel, over batch and space --------------


def test_batchnorm_after_conv2d_normalizes_per_channel_over_batch_and_space():
    model = Serial((Conv2D(2, 4, 3), BatchNorm(4, momentum=0.9, eps=1e-3)))
    params, state = as64(model.init(KEY))
    params = (params[0], {"scale": jnp.asarray(rng.uniform(0.5, 2, 4)), "offset": jnp.asarray(rng.normal(size=4))})
    x = jnp.asarray(rng.normal(size=(3, 5, 4, 2)) * 2 + 1)
    y, new_state = model.apply_train(params, x, state=state)
    h = np.asarray(Conv2D(2, 4, 3).apply(params[0], x))  # [3, 5, 4, 4]
    mean, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))  # per channel, biased
    scale, offset = np.asarray(params[1]["scale"]), np.asarray(params[1]["offset"])
    np.testing.assert_allclose(y, (h - mean) / np.sqrt(var + 1e-3) * scale + offset, rtol=1e-10, atol=1e-10)
    chex.assert_shape([new_state[1]["mean"], new_state[1]["var"]], (4,))
    np.testing.assert_allclose(new_state[1]["mean"], 0.1 * mean, rtol=1e-12)  # from zeros
    np.testing.assert_allclose(new_state[1]["var"], 0.9 + 0.1 * var, rtol=1e-12)  # from ones
    y_eval = model.apply(params, x, state=new_state)
    m, v = np.asarray(new_state[1]["mean"]), np.asarray(new_state[1]["var"])
    np.testing.assert_allclose(y_eval, (h - m) / np.sqrt(v + 1e-3) * scale + offset, rtol=1e-10, atol=1e-10)


def test_batchnorm_after_conv1d_gradients_in_training():
    """No bias before batch norm: its gradient is zero up to rounding, which finite
    differences cannot resolve (as fnn.mlp does for Dense). Data from a local generator:
    the module's generator is consumed differently when the torch tests are skipped."""
    model = Serial((Conv1D(2, 3, 3, strides=2, use_bias=False), BatchNorm(3), Activation("tanh")))
    params, state = as64(model.init(KEY))
    local = np.random.default_rng(7)
    x = jnp.asarray(local.normal(size=(3, 7, 2)))
    r = jnp.asarray(local.normal(size=(3, 4, 3)))
    check_grads(jax.jit(lambda t: jnp.sum(r * model.apply_train(t[0], t[1], state=state)[0])), (params, x))


# --- a CNN trains with fit; a sweep of it equals its members run alone -------------------------

EPOCHS, BATCH = 5, 50


def cnn_config(lr=3e-2):
    model = Serial((Conv2D(1, 6, 3), Activation("relu"), MaxPool2D(2), Flatten(), Dense(4 * 4 * 6, 10)))
    return fnn.Trainer(model, fnn.adam(lr), fnn.cross_entropy)


@pytest.fixture(scope="module")
def digits():
    """300 training and 100 validation 8x8x1 digits in [0, 1]."""
    x, y = load_digits()
    x = (x / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    return x[:300], y[:300], x[300:400], y[300:400]


def test_cnn_trains_with_fit_and_a_sweep_equals_its_members(digits):
    x, y, x_val, y_val = digits
    options = dict(epochs=EPOCHS, batch_size=BATCH, validation=(x_val, y_val))
    single = [fnn.fit(cnn_config(), x, y, key=seed, **options) for seed in (0, 1)]
    for result in single:
        loss = np.asarray(result.history["loss"])
        assert loss[-1] < 0.3 * loss[0], loss  # 2.2 -> 0.24 here
        assert float(result.history["val_accuracy"][-1]) > 0.75  # 0.86, 0.87 here
    swept = fnn.sweep(cnn_config, x, y, seeds=2, devices=1, **options).results
    for i, result in enumerate(single):
        member = jax.tree.map(operator.itemgetter(i), (swept.train_state.params, swept.best_params, swept.history))
        chex.assert_trees_all_close(
            member, (result.train_state.params, result.best_params, result.history), rtol=1e-5, atol=1e-6
        )
        for name in ("stop_epoch", "best_epoch", "stopped_early", "diverged"):
            assert getattr(swept, name)[i] == getattr(result, name), name


def test_conv_under_vmap_over_members_equals_each_member():
    layer = Conv1D(2, 3, 3, strides=2, padding=1)
    params = jax.vmap(lambda k: layer.init(k)[0])(jax.random.split(KEY, 3))
    xs = jnp.asarray(rng.normal(size=(3, 4, 9, 2)), jnp.float32)  # per-member inputs too
    ys = jax.vmap(layer.apply)(params, xs)
    for i in range(3):
        member = jax.tree.map(operator.itemgetter(i), params)
        assert_close_f32(ys[i], layer.apply(member, xs[i]), atol=conv_atol(layer, member, xs[i], [(1, 1)]))
    jaxpr = str(jax.make_jaxpr(jax.vmap(layer.apply))(params, xs))
    assert re.search(r"\bconv_general_dilated\b", jaxpr) is None and "dot_general" in jaxpr  # a batched matmul
