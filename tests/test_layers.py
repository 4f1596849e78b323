"""fnn.layers: Dense, Dropout, BatchNorm, LayerNorm, Serial, Function, the mlp builder;
layers as pytrees (no recompilation for equal models, hyperparameters as leaves); jit and
vmap over init keys for every model; params and state checked against the model."""

import operator
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32, assert_trees_close_f32, matmul_atol

from fnn import init as init_lib
from fnn.layers import (
    Activation,
    BatchNorm,
    Dense,
    Dropout,
    Function,
    Layer,
    LayerNorm,
    Serial,
    as_model,
    check_params,
    mlp,
)

# One set of sizes throughout ([3, 5, 2]): drawing random numbers compiles a program per
# shape (~0.6 s on CPU), and equal shapes share it.
KEY = jax.random.key(0)
rng = np.random.default_rng(0)
X = rng.normal(size=(8, 3)).astype(np.float32)  # the dtype of the models' params: strict promotion mixes none
H = rng.normal(size=(16, 5)) * np.array([1.0, 2.0, 0.5, 3.0, 1.5]) + np.array([0.0, 1.0, -2.0, 5.0, 0.3])


def as64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


# --- Dense -------------------------------------------------------------------------------


@pytest.mark.parametrize("batch", [(), (8,), (2, 4)], ids=["single", "batch", "two_batch_axes"])
def test_dense_shapes_and_values(batch):
    layer = Dense(3, 5)
    params, state = layer.init(KEY)
    chex.assert_shape([params["w"], params["b"]], [(3, 5), (5,)])
    assert state == ()
    np.testing.assert_array_equal(params["b"], np.zeros(5))  # biases start at zero
    params = {"w": params["w"], "b": jnp.arange(5.0, dtype=jnp.float32)}
    x = X[: int(np.prod(batch))].reshape(*batch, 3).astype(np.float32)
    y = layer.apply(params, x)
    chex.assert_shape(y, (*batch, 5))
    w, b = np.asarray(params["w"], np.float64), np.arange(5.0)
    assert_close_f32(y, x @ w + b, atol=matmul_atol(x, w, b))  # a float32 matmul against float64
    assert layer.apply_train(params, x, state=())[1] == ()  # no state: passed through


def test_dense_without_bias_and_with_named_initializers():
    params, _ = Dense(3, 5, use_bias=False).init(KEY)
    assert set(params) == {"w"}
    w = np.asarray(params["w"], np.float64)
    assert_close_f32(Dense(3, 5, use_bias=False).apply(params, X), X @ w, atol=matmul_atol(X, w))
    params, _ = Dense(3, 5, w_init="ones", b_init=init_lib.constant(0.5)).init(KEY)
    np.testing.assert_array_equal(params["w"], np.ones((3, 5)))
    np.testing.assert_array_equal(params["b"], np.full(5, 0.5))


@pytest.mark.parametrize("x", [np.ones((8, 4)), np.ones(4), np.float32(1.0)], ids=["features", "rank1", "rank0"])
def test_dense_rejects_wrong_input_shape(x):
    params, _ = Dense(3, 5).init(KEY)
    expected = r"Dense\(3, 5\) expects input x of shape \[\.\.\., 3\].*got shape " + re.escape(str(np.shape(x)))
    with pytest.raises(ValueError, match=expected):
        Dense(3, 5).apply(params, x)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"in_features": 3.0}, "in_features"), ({"out_features": 0}, "out_features"), ({"w_init": "glorot"}, "init")],
)
def test_dense_rejects_bad_configuration(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Dense(**{"in_features": 3, "out_features": 5, **kwargs})


# --- Dropout -----------------------------------------------------------------------------

UNITS = rng.normal(size=(100, 60))  # 6,000 units: the dropped fraction has std error < 0.7%


def dropped_and_kept(rate, dtype=jnp.float32, key=KEY):
    x = jnp.asarray(UNITS, dtype)
    y, state = Dropout(rate).apply_train((), x, key=key)
    assert y.dtype == dtype and y.shape == x.shape and state is None
    return np.asarray(x), np.asarray(y)


def test_dropout_evaluation_is_identity():
    x = jnp.asarray(UNITS)
    assert Dropout(0.5).apply((), x) is x  # no key needed
    assert Dropout(0.5).forward((), (), x, train=False) == (x, ())


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.float64])
@pytest.mark.parametrize("rate", [0.3, 0.75])
def test_dropout_training_drops_rate_and_scales_kept(rate, dtype):
    x, y = dropped_and_kept(rate, dtype)
    dropped = y == 0
    assert abs(dropped.mean() - rate) < 0.03  # ~4.5 standard errors
    rtol = 1e-6 if dtype == jnp.float32 else 1e-15
    np.testing.assert_allclose(y[~dropped], x[~dropped] / (1 - rate), rtol=rtol)  # inverted dropout
    # The expectation of every unit is preserved: mean of y / x over units is ~1.
    ratio = (y / x).mean()
    assert abs(ratio - 1) < 5 * np.sqrt(rate / (1 - rate) / x.size)


def test_dropout_of_integer_input_scales_in_float32():
    """A kept uint8 200 at rate 0.5 is 400, which uint8 would wrap to 144: float32 in both modes."""
    x = jnp.full((4, 64), 200, jnp.uint8)
    y, _ = Dropout(0.5).apply_train((), x, key=KEY)
    assert y.dtype == jnp.float32 and set(np.unique(np.asarray(y)).tolist()) == {0.0, 400.0}
    evaluated = Dropout(0.5).apply((), x)
    assert evaluated.dtype == jnp.float32 and np.all(np.asarray(evaluated) == 200.0)


def test_dropout_mask_depends_only_on_the_key():
    _, a = dropped_and_kept(0.5)
    _, b = dropped_and_kept(0.5)
    _, c = dropped_and_kept(0.5, key=jax.random.key(1))
    np.testing.assert_array_equal(a, b)
    assert np.mean((a == 0) != (c == 0)) > 0.3  # independent masks disagree on about half the units


def test_dropout_rate_zero_is_identity_in_training():
    x, y = dropped_and_kept(0.0)
    np.testing.assert_array_equal(y, x)


@pytest.mark.parametrize("rate", [1.0, -0.1, 1.5, float("nan")])
def test_dropout_rejects_rate_outside_0_1(rate):
    with pytest.raises(ValueError, match=r"rate must lie in \[0.0, 1.0\)"):
        Dropout(rate)


def test_dropout_training_needs_a_key():
    with pytest.raises(ValueError, match="key="):
        Dropout(0.5).apply_train((), jnp.ones(3))


def test_dropout_rate_may_be_traced_under_vmap():
    rates = jnp.asarray([0.0, 0.25, 0.5, 0.75])
    ys = jax.vmap(lambda r: Dropout(r).apply_train((), jnp.asarray(UNITS, jnp.float32), key=KEY)[0])(rates)
    np.testing.assert_array_equal(ys[0], UNITS.astype(np.float32))
    for rate, y in zip(np.asarray(rates), np.asarray(ys)):
        assert abs(np.mean(y == 0) - rate) < 0.03
        kept = y != 0
        np.testing.assert_allclose(y[kept], UNITS[kept] / (1 - rate), rtol=1e-6)


# --- BatchNorm ---------------------------------------------------------------------------


def test_batchnorm_initial_params_and_running_statistics():
    params, state = BatchNorm(5).init(KEY)
    np.testing.assert_array_equal(params["scale"], np.ones(5))
    np.testing.assert_array_equal(params["offset"], np.zeros(5))
    np.testing.assert_array_equal(state["mean"], np.zeros(5))
    np.testing.assert_array_equal(state["var"], np.ones(5))  # variance starts at 1, not 0


def test_batchnorm_training_normalizes_with_batch_statistics():
    layer = BatchNorm(5)
    params, state = as64(layer.init(KEY))
    y, _ = layer.apply_train(params, jnp.asarray(H), state=state)
    var = H.var(axis=0)
    np.testing.assert_allclose(np.mean(y, axis=0), np.zeros(5), atol=1e-12)
    np.testing.assert_allclose(np.var(y, axis=0), var / (var + 1e-5), rtol=1e-12)  # ~1, exactly this


def test_batchnorm_running_statistics_update_exactly():
    layer = BatchNorm(5, momentum=0.9, eps=1e-3)
    params = {"scale": jnp.asarray(rng.uniform(0.5, 2, 5)), "offset": jnp.asarray(rng.normal(size=5))}
    old = {"mean": jnp.asarray(rng.normal(size=5)), "var": jnp.asarray(rng.uniform(0.5, 2, 5))}
    y, new = layer.apply_train(params, jnp.asarray(H), state=old)
    mean, var = H.mean(axis=0), H.var(axis=0)  # biased batch variance
    np.testing.assert_allclose(new["mean"], 0.9 * np.asarray(old["mean"]) + 0.1 * mean, rtol=1e-13)
    np.testing.assert_allclose(new["var"], 0.9 * np.asarray(old["var"]) + 0.1 * var, rtol=1e-13)
    expected = (H - mean) / np.sqrt(var + 1e-3) * np.asarray(params["scale"]) + np.asarray(params["offset"])
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    # Evaluation uses the running statistics and leaves them alone.
    y_eval, same = layer.forward(params, new, jnp.asarray(H), train=False)
    assert same is new
    new_np, params_np = jax.tree.map(np.asarray, (new, params))
    expected = (H - new_np["mean"]) / np.sqrt(new_np["var"] + 1e-3) * params_np["scale"] + params_np["offset"]
    np.testing.assert_allclose(y_eval, expected, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(layer.apply(params, jnp.asarray(H), state=new), y_eval)


def test_batchnorm_momentum_and_eps_may_be_traced_and_the_statistics_keep_their_dtype():
    """A sweep vmaps momentum and eps as float64 arrays (x64): a float32 layer still computes
    in float32 and its running statistics stay float32 (no implicit promotion: strict here)."""
    params, state = BatchNorm(5).init(KEY)
    x = jnp.asarray(H, jnp.float32)

    def train_and_evaluate(momentum, eps):
        layer = BatchNorm(5, momentum=momentum, eps=eps)
        y, new = layer.apply_train(params, x, state=state)
        return y, new, layer.apply(params, x, state=new)

    values = [(0.9, 1e-3), (0.99, 1e-5)]
    swept = jax.vmap(train_and_evaluate)(*(jnp.asarray(v) for v in zip(*values)))
    chex.assert_type(jax.tree.leaves(swept), jnp.float32)
    # Two float32 programs: each value rounds a batch mean over n = 16 rows (n + 1 roundings
    # of terms up to mean|x|) and a few elementwise steps, so per feature |error| <= k * scale
    # with k = (n + 8) eps and scale: mean|x| for a mean, the variance itself for a variance
    # (its terms (x - mean)^2 are positive; their first-order change with the mean sums to
    # 0), and (mean|x| + 2 |x - mean|) / sd for a normalized value (its numerator and sd).
    h = np.asarray(x, np.float64)
    mean, var, terms, k = h.mean(0), h.var(0), np.abs(h).mean(0), (len(h) + 8) * EPS32
    for i, (momentum, eps) in enumerate(values):  # the numbers of Python-number hyperparameters
        member, alone = jax.tree.map(operator.itemgetter(i), swept), train_and_evaluate(momentum, eps)
        (y, new, y_eval), (y_alone, new_alone, y_eval_alone) = member, alone
        running_mean, running_var = (1 - momentum) * mean, momentum + (1 - momentum) * var  # from 0 and 1
        assert_close_f32(y, y_alone, atol=k * (terms + 2 * np.abs(h - mean)) / np.sqrt(var + eps))
        assert_close_f32(new["mean"], new_alone["mean"], atol=k * terms)
        assert_close_f32(new["var"], new_alone["var"], atol=k * running_var)
        normalized = (terms + 2 * np.abs(h - running_mean)) / np.sqrt(running_var + eps)
        assert_close_f32(y_eval, y_eval_alone, atol=k * normalized)


@pytest.mark.parametrize("train", [False, True])
@pytest.mark.parametrize("state", [None, ()])
def test_batchnorm_needs_its_state(state, train):
    params, _ = BatchNorm(5).init(KEY)
    with pytest.raises(ValueError, match="BatchNorm needs its running statistics: pass state="):
        BatchNorm(5).forward(params, state, jnp.asarray(H), train=train)


def test_batchnorm_rejects_bad_shapes_and_configuration():
    params, state = BatchNorm(5).init(KEY)
    with pytest.raises(ValueError, match=r"\[\.\.\., 5\]"):
        BatchNorm(5).apply(params, jnp.ones((4, 3)), state=state)
    with pytest.raises(ValueError, match=r"\[batch, features\]"):  # [batch, *spatial, 5] is fine: tests/test_conv.py
        BatchNorm(5).apply_train(params, jnp.ones(5), state=state)
    with pytest.raises(ValueError, match="momentum"):
        BatchNorm(5, momentum=1.5)
    with pytest.raises(ValueError, match="eps"):
        BatchNorm(5, eps=0.0)


# --- LayerNorm ---------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [LayerNorm(2), BatchNorm(2)], ids=["LayerNorm", "BatchNorm"])
@pytest.mark.parametrize("train", [False, True])
def test_norms_of_integer_and_bool_input_are_those_of_its_float32_values(layer, train):
    """uint8 pixels and a bool mask are normalized as their float32 values (not in their
    own dtype, and without mixing dtypes: strict promotion would refuse uint8 - float32)."""
    params, state = layer.init(KEY)
    for x in (np.array([[200, 100], [50, 250]], np.uint8), np.array([[True, False], [True, True]])):
        as_float = x.astype(np.float32)
        if train:
            got, expected = (
                layer.apply_train(params, x, state=state)[0],
                layer.apply_train(params, as_float, state=state)[0],
            )
        else:
            got, expected = layer.apply(params, x, state=state), layer.apply(params, as_float, state=state)
        assert got.dtype == jnp.float32
        np.testing.assert_array_equal(got, expected)


def test_layernorm_normalizes_each_example():
    layer = LayerNorm(5, eps=1e-3)
    params = {"scale": jnp.asarray(rng.uniform(0.5, 2, 5)), "offset": jnp.asarray(rng.normal(size=5))}
    x = H.reshape(4, 4, 5)  # any leading axes
    mean, var = x.mean(axis=-1, keepdims=True), x.var(axis=-1, keepdims=True)
    expected = (x - mean) / np.sqrt(var + 1e-3) * np.asarray(params["scale"]) + np.asarray(params["offset"])
    y = layer.apply(params, jnp.asarray(x))
    np.testing.assert_allclose(y, expected, rtol=1e-12, atol=1e-12)
    y_train, state = layer.apply_train(params, jnp.asarray(x), state=())
    np.testing.assert_array_equal(y_train, y)  # no batch statistics: the same in both modes
    assert state == ()
    plain = layer.apply(as64(layer.init(KEY)[0]), jnp.asarray(H))
    np.testing.assert_allclose(np.mean(plain, axis=-1), np.zeros(16), atol=1e-12)
    np.testing.assert_allclose(np.var(plain, axis=-1), H.var(-1) / (H.var(-1) + 1e-3), rtol=1e-12)


# --- Serial and Function -----------------------------------------------------------------


class TestSerialWithAndWithoutJit(chex.TestCase):
    """``apply`` and ``apply_train`` are pure functions of (params, x, state, key): compiled
    (``with_jit``, the model a pytree argument) and op by op (``without_jit``, where the
    params are checked eagerly) they compute the same composition of the layers."""

    @chex.variants(with_jit=True, without_jit=True)
    def test_serial_is_the_composition_of_its_layers(self):
        layers = (Dense(3, 5), Activation("tanh"), Dropout(0.4), Dense(5, 2))
        model = Serial(layers)
        params, state = model.init(KEY)
        assert isinstance(params, tuple) and len(params) == 4 and state == ((), (), (), ())
        for i, layer in enumerate(layers):  # layer i initialized from fold_in(key, i)
            chex.assert_trees_all_equal(params[i], layer.init(jax.random.fold_in(KEY, i))[0])
        params, x = as64(params), as64(X)  # in float64: the composition is tested, not float32 rounding
        params_np = jax.tree.map(np.asarray, params)
        h = np.tanh(np.asarray(x) @ params_np[0]["w"] + params_np[0]["b"])
        apply = self.variant(lambda m, p, x: m.apply(p, x))
        np.testing.assert_allclose(apply(model, params, x), h @ params_np[3]["w"] + params_np[3]["b"], rtol=1e-6)
        # Training: layer i draws from fold_in(key, i).
        dropped, _ = layers[2].apply_train((), h, key=jax.random.fold_in(KEY, 2))
        apply_train = self.variant(lambda m, p, x, s, k: m.apply_train(p, x, state=s, key=k))
        y, new_state = apply_train(model, params, x, state, KEY)
        np.testing.assert_allclose(y, np.asarray(dropped) @ params_np[3]["w"] + params_np[3]["b"], rtol=1e-6)
        assert new_state == state


def test_serial_rejects_non_layers():
    with pytest.raises(ValueError, match=r"layers\[1\] must be an fnn Layer; got function"):
        Serial((Dense(3, 5), user_model))


def user_model(params, x):
    return jnp.tanh(x @ params["w"]) * params["s"]


def test_function_wraps_a_user_function():
    params = {"w": jnp.asarray(rng.normal(size=(5, 2))), "s": jnp.asarray(2.0)}
    layer = Function(user_model)
    np.testing.assert_array_equal(layer.apply(params, H), user_model(params, H))
    y, state = layer.apply_train(params, H, state=(), key=KEY)
    np.testing.assert_array_equal(y, user_model(params, H))
    assert state == ()
    with pytest.raises(ValueError, match="build its params yourself"):
        layer.init(KEY)
    # as_model: layers pass through, functions are wrapped, anything else is an error.
    assert as_model(user_model) == layer and isinstance(as_model(user_model), Layer)
    assert as_model(layer) is layer
    with pytest.raises(ValueError, match="model must be an fnn Layer or a function"):
        as_model(3)
    dense_params, x = as64(Dense(3, 5).init(KEY)[0]), as64(X)  # float64, as the user's params
    composed = Serial((Dense(3, 5), Function(user_model))).apply((dense_params, params), x)
    np.testing.assert_allclose(composed, user_model(params, Dense(3, 5).apply(dense_params, x)), rtol=1e-6)


# --- the mlp builder ---------------------------------------------------------------------


def describe(model):
    """Each layer as a short tuple: its kind and its configuration."""
    kinds = {
        Dense: lambda layer: ("Dense", layer.in_features, layer.out_features, layer.w_init),
        BatchNorm: lambda layer: ("BatchNorm", layer.features),
        Activation: lambda layer: ("Activation", layer.fn),
        Dropout: lambda layer: ("Dropout", layer.rate),
    }
    return [kinds[type(layer)](layer) for layer in model.layers]


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        ({}, [("Dense", 3, 5, "glorot_uniform"), ("Activation", "relu"), ("Dense", 5, 2, "glorot_uniform")]),
        (
            {"dropout": 0.1, "activation": "tanh", "init": "he_normal"},
            [("Dense", 3, 5, "he_normal"), ("Activation", "tanh"), ("Dropout", 0.1), ("Dense", 5, 2, "he_normal")],
        ),
        (  # dropout=0.0 still builds the layers (a sweep may vmap its rate); None builds none
            {"dropout": 0.0, "batchnorm": True, "output_activation": "softmax"},
            [("Dense", 3, 5, "glorot_uniform"), ("BatchNorm", 5), ("Activation", "relu"), ("Dropout", 0.0)]
            + [("Dense", 5, 2, "glorot_uniform"), ("Activation", "softmax")],
        ),
    ],
    ids=["plain", "dropout", "batchnorm"],
)
def test_mlp_layer_structure(kwargs, expected):
    assert describe(mlp([3, 5, 2], **kwargs)) == expected


def test_mlp_depth_and_initializer():
    assert describe(mlp([3, 2])) == [("Dense", 3, 2, "glorot_uniform")]
    deep = mlp([3, 5, 4, 2], batchnorm=True, dropout=0.2)
    assert [type(layer).__name__ for layer in deep.layers] == ["Dense", "BatchNorm", "Activation", "Dropout"] * 2 + [
        "Dense"
    ]
    assert [(d.in_features, d.out_features) for d in deep.layers if isinstance(d, Dense)] == [(3, 5), (5, 4), (4, 2)]
    params, state = jax.eval_shape(deep.init, KEY)  # shapes only: nothing compiled
    assert [p["w"].shape for p in params if "w" in p] == [(3, 5), (5, 4), (4, 2)]
    chex.assert_shape(
        [
            jax.eval_shape(lambda p, s: deep.apply(p, X, state=s), params, state),
            jax.eval_shape(lambda p, s: deep.apply_train(p, X, state=s, key=KEY)[0], params, state),
        ],
        (8, 2),
    )
    params, _ = mlp([3, 5, 2], init="ones").init(KEY)  # init= reaches every Dense
    assert [np.asarray(p["w"]).tolist() for p in params if p] == [np.ones((3, 5)).tolist(), np.ones((5, 2)).tolist()]


@pytest.mark.parametrize("sizes", [[], [3]])
def test_mlp_needs_two_sizes(sizes):
    with pytest.raises(ValueError, match="sizes must list at least"):
        mlp(sizes)


def test_mlp_rejects_unknown_names():
    with pytest.raises(ValueError, match="^init must be"):
        mlp([3, 2], init="glorot")
    with pytest.raises(ValueError, match="^activation must be"):
        mlp([3, 5, 2], activation="swish")
    with pytest.raises(ValueError, match="rate"):
        mlp([3, 5, 2], dropout=1.0)


# --- layers are pytrees; jit and vmap over every model -----------------------------------


def test_hyperparameters_are_leaves_and_equal_models_hash_alike():
    model = mlp([3, 5, 2], dropout=0.1, batchnorm=True)
    leaves = jax.tree.leaves(model)
    assert 0.1 in leaves and 0.99 in leaves  # dropout rate and batch-norm momentum
    twin = mlp([3, 5, 2], dropout=0.1, batchnorm=True)
    assert twin is not model and twin == model and hash(twin) == hash(model)
    assert mlp([3, 5, 2], dropout=0.2, batchnorm=True) != model
    other_rate = jax.tree.structure(mlp([3, 5, 2], dropout=0.2, batchnorm=True))
    assert other_rate == jax.tree.structure(model)  # a new rate is new data, not a new program


def test_equal_models_share_one_compiled_program():
    traces = []

    @jax.jit
    def forward(model, params, state, x, key):
        traces.append(1)  # runs only when jit traces
        return model.apply_train(params, x, state=state, key=key)[0]

    model = mlp([3, 5, 2], dropout=0.1, batchnorm=True)
    params, state = model.init(KEY)
    forward(model, params, state, X, KEY)
    forward(mlp([3, 5, 2], dropout=0.1, batchnorm=True), params, state, X, KEY)  # built again: equal
    other_rate = mlp([3, 5, 2], dropout=0.6, batchnorm=True)
    y_other_rate = forward(other_rate, params, state, X, KEY)
    assert len(traces) == 1  # one trace for equal models and for another dropout rate ...
    eager = other_rate.apply_train(params, X, state=state, key=KEY)[0]
    # ... whose value the program did use (another rate changes y by O(1)); compiled and op by
    # op add up differently: k = 32 for the last Dense's 6 terms and the batch statistics
    # over 8 rows before it (see test_vmap_over_init_keys_and_jit_of_apply)
    assert_trees_close_f32(y_other_rate, eager, k=32)
    forward(mlp([3, 5, 2], batchnorm=True), params[:3] + params[4:], state[:3] + state[4:], X, KEY)
    assert len(traces) == 2  # a structural change traces again


MODELS = {
    "mlp": mlp([3, 5, 2]),
    "mlp_dropout": mlp([3, 5, 2], dropout=0.1),
    "mlp_batchnorm": mlp([3, 5, 2], batchnorm=True),
    "layernorm_serial": Serial((Dense(3, 5), LayerNorm(5), Activation("gelu"), Dense(5, 2))),
}


@pytest.mark.parametrize("name", MODELS)
def test_vmap_over_init_keys_and_jit_of_apply(name):
    model = MODELS[name]
    keys = jax.random.split(KEY, 3)
    params, state = jax.vmap(model.init)(keys)
    for i in range(3):  # each member is the model initialized from its own key
        p_i, s_i = model.init(keys[i])
        # elementwise transforms of the same random bits (lo + (hi - lo) u, ...): a few
        # roundings of terms no larger than the leaf's largest value
        assert_trees_close_f32(jax.tree.map(operator.itemgetter(i), (params, state)), (p_i, s_i), k=4)
    assert not np.allclose(params[0]["w"][0], params[0]["w"][1])
    p0, s0 = jax.tree.map(lambda a: a[0], (params, state))
    y = jax.jit(model.apply)(p0, X, state=s0)
    chex.assert_shape(y, (8, 2))
    # Compiled and op by op add up in other orders. Normwise per leaf, k = 32: the last Dense's
    # 6 terms, plus up to ~24 eps in its input (sums of 3 terms, batch or layer statistics
    # over 8 rows or 5 features, elementwise steps); a wrong layer or key is off by O(1).
    assert_trees_close_f32(y, model.apply(p0, X, state=s0), k=32)
    y, new_state = jax.jit(model.apply_train)(p0, X, state=s0, key=KEY)
    chex.assert_shape(y, (8, 2))
    assert_trees_close_f32((y, new_state), model.apply_train(p0, X, state=s0, key=KEY), k=32)


def test_jax_rebuilds_layers_without_rerunning_their_checks():
    """tree.map / grad put zeros and cotangents in the leaves; that must not raise."""
    assert float(jax.tree.map(jnp.zeros_like, BatchNorm(4)).eps) == 0.0
    grad = jax.grad(lambda d: d.apply_train((), jnp.ones(10), key=jax.random.key(0))[0].sum())(Dropout(0.3))
    assert isinstance(grad, Dropout) and np.isfinite(float(grad.rate))
    with pytest.raises(ValueError, match="rate"):
        Dropout(1.5)  # a user's construction is still checked


# --- params and state are checked against the model (issue 10) ---------------------------

BN_STATE = r"it needs the state from model\.init, shaped \(\(\), \{'mean': \[5\], 'var': \[5\]\}, \(\), \(\)\)"


def test_stateless_model_takes_none_or_empty_state_as_its_whole_state():
    """state=() made Serial zip its layers with nothing and hand back x unchanged."""
    model = mlp([3, 5, 2])
    params, state = model.init(KEY)
    assert state == ((), (), ())
    y = model.apply(params, X, state=state)
    for empty in (None, ()):
        np.testing.assert_array_equal(model.apply(params, X, state=empty), y)  # [8, 2], not x
        y_train, new_state = model.apply_train(params, X, state=empty, key=KEY)
        np.testing.assert_array_equal(y_train, y)
        assert new_state == empty  # comes back as given: a scan carry keeps its structure
    nested = Serial((Serial(model.layers[:2]), model.layers[2]))  # an inner Serial gets None, not ()
    np.testing.assert_array_equal(nested.apply((params[:2], params[2]), X, state=()), y)


@pytest.mark.parametrize("method", ["apply", "apply_train"])
def test_model_with_state_rejects_a_missing_or_miscounted_state(method):
    model = mlp([3, 5, 2], batchnorm=True)
    params, state = model.init(KEY)
    wrong = [(None, "is None"), ((), "has 0 entries"), (state[:2], "has 2 entries"), (state + ((),), "has 5 entries")]
    for bad, got in wrong:
        with pytest.raises(ValueError, match=rf"^state {got}; Serial has 4 layers; {BN_STATE}$"):
            getattr(model, method)(params, X, state=bad)


def test_state_leaves_are_checked_by_path_and_shape():
    model = mlp([3, 5, 2], batchnorm=True)
    params, state = model.init(KEY)
    narrow = state[:1] + ({"mean": jnp.zeros(4), "var": jnp.ones(4)},) + state[2:]
    with pytest.raises(ValueError, match=r"^state\[1\]\['mean'\] has shape \(4,\); the model expects \(5,\)$"):
        model.apply(params, X, state=narrow)
    no_var = state[:1] + ({"mean": state[1]["mean"]},) + state[2:]
    expected = r"^state\[1\]\['var'\] is missing: state\[1\] must be shaped \{'mean': \[5\], 'var': \[5\]\}$"
    with pytest.raises(ValueError, match=expected):
        model.apply_train(params, X, state=no_var)
    assert model.apply(as64(params), as64(X), state=as64(state)).dtype == jnp.float64  # dtypes may differ


def with_entry(params, i, entry):
    return params[:i] + (entry,) + params[i + 1 :]


PARAMS_MISMATCHES = {  # mlp([3, 5, 2]): Dense(3, 5), Activation, Dense(5, 2)
    "too_few_layers": (lambda p: p[:2], r"^params has 2 entries; Serial has 3 layers$"),
    "too_many_layers": (lambda p: p + ((),), r"^params has 4 entries; Serial has 3 layers$"),
    "not_a_tuple": (lambda p: {"layers": p}, r"^params is \{'layers': .*\}; Serial has 3 layers$"),
    "missing_key": (
        lambda p: with_entry(p, 0, {"w": p[0]["w"]}),
        r"^params\[0\]\['b'\] is missing: params\[0\] must be shaped \{'b': \[5\], 'w': \[3, 5\]\}$",
    ),
    "extra_key": (lambda p: with_entry(p, 2, {**p[2], "c": jnp.zeros(2)}), r"^params\[2\]\['c'\] is not in the model"),
    "wrong_shape": (
        lambda p: with_entry(p, 2, {"w": jnp.zeros((4, 2)), "b": p[2]["b"]}),
        r"^params\[2\]\['w'\] has shape \(4, 2\); the model expects \(5, 2\)$",
    ),
    "params_for_a_parameterless_layer": (
        lambda p: with_entry(p, 1, {"w": jnp.zeros(3)}),
        r"^params\[1\]\['w'\] is not in the model: params\[1\] must be shaped \(\)$",
    ),
}


@pytest.mark.parametrize("case", PARAMS_MISMATCHES)
def test_params_that_do_not_match_the_model_name_the_leaf_path(case):
    model = mlp([3, 5, 2])
    params, _ = model.init(KEY)
    make_bad, message = PARAMS_MISMATCHES[case]
    for run in (model.apply, lambda p, x: model.apply_train(p, x, state=((), (), ()))[0]):
        with pytest.raises(ValueError, match=message):
            run(make_bad(params), X)


def test_serial_forward_never_lets_zip_drop_layers():
    model = mlp([3, 5, 2], batchnorm=True)
    params, state = model.init(KEY)
    with pytest.raises(ValueError, match=r"^params has 3 entries; Serial has 4 layers$"):
        model.forward(params[:3], state, X)
    with pytest.raises(ValueError, match=rf"^state has 3 entries; Serial has 4 layers; {BN_STATE}$"):
        model.forward(params, state[:3], X, train=True)
    with pytest.raises(ValueError, match=rf"^state has 0 entries; Serial has 4 layers; {BN_STATE}$"):
        model.forward(params, (), X)


@pytest.mark.parametrize("case", ["too_few_layers", "missing_key", "wrong_shape"])
def test_params_checks_fire_under_jit_and_vmap(case):
    model = mlp([3, 5, 2])
    make_bad, message = PARAMS_MISMATCHES[case]
    message = message.removesuffix("$")  # under a trace JAX appends a note on its frames
    members = jax.vmap(model.init)(jax.random.split(KEY, 3))[0]  # 3 members: leaves [3, ...]
    chex.assert_shape(jax.vmap(lambda p: model.apply(p, X))(members), (3, 8, 2))  # per-member shapes match
    with pytest.raises(ValueError, match=message):
        jax.vmap(lambda p: model.apply(p, X))(jax.vmap(make_bad)(members))
    params, _ = model.init(KEY)
    with pytest.raises(ValueError, match=message):
        jax.jit(model.apply)(make_bad(params), X)
    # The check runs when tracing: the compiled program is the forward pass alone.
    traced = jax.make_jaxpr(lambda p: model.apply(p, X))(params)
    assert str(traced) == str(jax.make_jaxpr(lambda p: model.forward(p, None, X)[0])(params))


def test_state_checks_fire_under_jit_and_vmap():
    model = mlp([3, 5, 2], batchnorm=True)
    params, state = jax.vmap(model.init)(jax.random.split(KEY, 3))
    chex.assert_shape(jax.vmap(lambda p, s: model.apply(p, X, state=s))(params, state), (3, 8, 2))
    with pytest.raises(ValueError, match=rf"^state has 0 entries; Serial has 4 layers; {BN_STATE}"):
        jax.vmap(lambda p: model.apply(p, X, state=()))(params)
    with pytest.raises(ValueError, match=r"^state is None; Serial has 4 layers"):
        jax.jit(lambda p: model.apply_train(p, X, key=KEY))(jax.tree.map(lambda a: a[0], params))


def test_models_without_an_initializer_keep_the_users_params():
    user_params = {"w": jnp.asarray(rng.normal(size=(5, 2))), "s": jnp.asarray(2.0)}
    check_params(Function(user_model), {"anything": jnp.zeros(7)})  # no init: nothing to compare
    check_params(user_model, user_params)  # a plain function is a Function
    model = Serial((Dense(3, 5), Function(user_model)))
    dense_params, x = as64(Dense(3, 5).init(KEY)[0]), as64(X)  # float64, as the user's params
    expected = user_model(user_params, Dense(3, 5).apply(dense_params, x))
    np.testing.assert_allclose(jax.jit(model.apply)((dense_params, user_params), x), expected, rtol=1e-6)
    y, state = model.apply_train((dense_params, user_params), x, state=())
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    assert state == ()
    with pytest.raises(ValueError, match=r"^params\[0\]\['w'\] has shape \(5, 3\); the model expects \(3, 5\)$"):
        model.apply(({"w": jnp.zeros((5, 3)), "b": jnp.zeros(5)}, user_params), X)


def test_check_params_names_the_callers_arguments():
    model = mlp([3, 5, 2], batchnorm=True)
    params, state = model.init(KEY)
    assert check_params(model, as64(params), state) is state  # dtypes may differ
    with pytest.raises(ValueError, match=rf"^model_state has 0 entries; Serial has 4 layers; {BN_STATE}$"):
        check_params(model, params, (), names=("params", "model_state"))
    with pytest.raises(ValueError, match=r"^init_params\[3\]\['b'\] is missing"):
        check_params(model, with_entry(params, 3, {"w": params[3]["w"]}), state, names=("init_params", "model_state"))
