"""fnn.layers.Residual: y = x + layer(x), carrying the inner layer's params, state and key;
shape mismatches and bad params named; gradients in float64; a residual CNN with batch norm
and dropout inside trains with fit."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import check_grads
from fnn.layers import Activation, BatchNorm, Conv1D, Conv2D, Dense, Dropout, Flatten, Residual, Serial

KEY = jax.random.key(0)
rng = np.random.default_rng(0)
X = jnp.asarray(rng.normal(size=(4, 9, 3)), jnp.float32)


def as64(tree):
    return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def test_residual_adds_the_input_and_carries_the_inner_params():
    inner = Conv1D(3, 3, 3)
    layer = Residual(inner)
    params, state = layer.init(KEY)
    chex.assert_trees_all_equal((params, state), inner.init(KEY))  # unwrapped: the inner layer's own
    np.testing.assert_allclose(layer.apply(params, X), X + inner.apply(params, X), rtol=1e-6)
    y, new_state = layer.apply_train(params, X, state=())
    np.testing.assert_allclose(y, X + inner.apply(params, X), rtol=1e-6)
    assert new_state == ()


def test_residual_carries_batchnorm_state_and_dropout_keys():
    inner = Serial((Conv1D(3, 3, 3), BatchNorm(3, momentum=0.5), Activation("relu"), Dropout(0.5)))
    layer = Residual(inner)
    params, state = layer.init(KEY)
    chex.assert_trees_all_equal(state, inner.init(KEY)[1])
    assert state[1]["var"].shape == (3,)
    y, new_state = layer.apply_train(params, X, state=state, key=KEY)
    inner_y, inner_state = inner.apply_train(params, X, state=state, key=KEY)  # the same key: the same mask
    np.testing.assert_allclose(y, X + inner_y, rtol=1e-6)
    chex.assert_trees_all_close(new_state, inner_state, rtol=0, atol=0)
    assert not np.allclose(new_state[1]["mean"], state[1]["mean"])  # the running statistics moved
    np.testing.assert_allclose(  # evaluation: no dropout, running statistics
        layer.apply(params, X, state=new_state), X + inner.apply(params, X, state=new_state), rtol=1e-6
    )
    # In a Serial, layer i gets fold_in(key, i), as any layer does.
    outer = Serial((Conv1D(3, 3, 1), layer))
    outer_params, outer_state = outer.init(KEY)
    y, _ = outer.apply_train(outer_params, X, state=outer_state, key=KEY)
    h = Conv1D(3, 3, 1).apply(outer_params[0], X)
    expected, _ = layer.apply_train(outer_params[1], h, state=outer_state[1], key=jax.random.fold_in(KEY, 1))
    np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize(
    "inner, shape",
    [(Conv1D(3, 4, 3), r"\(4, 9, 4\)"), (Conv1D(3, 3, 3, strides=2), r"\(4, 5, 3\)")],
    ids=["channels", "stride"],
)
def test_residual_refuses_a_layer_that_changes_the_shape(inner, shape):
    params, _ = Residual(inner).init(KEY)
    message = rf"Residual needs its layer \(Conv1D\) to keep the input's shape .*x has shape \(4, 9, 3\), the layer's output {shape}"
    with pytest.raises(ValueError, match=message):
        Residual(inner).apply(params, X)
    with pytest.raises(ValueError, match=message):  # under jit: at trace time
        jax.jit(Residual(inner).apply)(params, X)


def test_residual_checks_its_argument_and_the_params():
    with pytest.raises(ValueError, match="layer must be an fnn Layer; got function"):
        Residual(lambda p, x: x)
    model = Serial((Conv1D(3, 3, 1), Residual(Serial((Conv1D(3, 3, 3), BatchNorm(3))))))
    params, state = model.init(KEY)
    bad = (params[0], ({"w": jnp.zeros((3, 3, 4)), "b": params[1][0]["b"]}, params[1][1]))
    with pytest.raises(
        ValueError, match=r"^params\[1\]\[0\]\['w'\] has shape \(3, 3, 4\); the model expects \(3, 3, 3\)$"
    ):
        model.apply(bad, X, state=state)
    with pytest.raises(ValueError, match=r"^state\[1\] has 0 entries; Serial has 2 layers"):
        model.apply(params, X, state=(state[0], ()))


def test_residual_gradients_match_finite_differences():
    block = Residual(Serial((Conv1D(2, 2, 3), BatchNorm(2), Activation("tanh"), Conv1D(2, 2, 3, dilation=2))))
    params, state = as64(block.init(KEY))
    x = jnp.asarray(rng.normal(size=(3, 7, 2)))
    r = jnp.asarray(rng.normal(size=(3, 7, 2)))
    for train in (True, False):
        if train:
            f = lambda t: jnp.sum(r * block.apply_train(t[0], t[1], state=state)[0])  # noqa: E731
        else:
            f = lambda t: jnp.sum(r * block.apply(t[0], t[1], state=state))  # noqa: E731
        check_grads(jax.jit(f), (params, x))


def test_residual_cnn_with_batchnorm_and_dropout_trains_with_fit():
    x, y = fnn.datasets.load_digits()
    x = (x[:200] / 16.0).reshape(-1, 8, 8, 1).astype(np.float32)
    block = Residual(Serial((Conv2D(4, 4, 3), BatchNorm(4), Activation("relu"), Dropout(0.1))))
    model = Serial((Conv2D(1, 4, 3), Activation("relu"), block, Flatten(), Dense(8 * 8 * 4, 10)))
    trainer = fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy)
    result = fnn.fit(trainer, x, y[:200], key=0, epochs=3, batch_size=50)
    loss = np.asarray(result.history["loss"])
    assert loss[-1] < 0.6 * loss[0], loss
    running = result.train_state.model_state[2][1]  # the block's BatchNorm, inside the Residual
    assert running["mean"].shape == (4,) and not np.allclose(running["var"], 1.0)
