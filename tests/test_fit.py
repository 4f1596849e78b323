"""The training engine: train_step, fit, convergence, divergence, jit/vmap, bad input."""

import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_trees_close_f32

import fnn
from fnn.batching import epoch_batches
from fnn.datasets import load_digits, load_fashion_mnist
from fnn.loop import run_epochs
from fnn.optimizers import adam, sgd
from fnn.programs import compiler_options
from fnn.schedules import piecewise_constant
from fnn.train import order_key

BATCH = 50


@pytest.fixture(scope="module")
def digits():
    """scikit-learn's digits scaled to [0, 1]: 1,500 training and 297 validation examples."""
    x, y = load_digits()
    x = (x / 16.0).astype(np.float32)
    return x[:1500], y[:1500], x[1500:], y[1500:]


def trainer(lr=1e-2, model=None, optimizer=None, **kwargs):
    return fnn.Trainer(model or fnn.mlp([64, 16, 10]), optimizer or adam(lr), fnn.cross_entropy, **kwargs)


# ---------------------------------------------------------------------------- train_step


def test_train_step_is_gradient_descent_on_loss_plus_penalty(digits):
    """One SGD step equals w - lr * grad(loss + L2 penalty), computed independently."""
    x, y = jnp.asarray(digits[0][:32]), jnp.asarray(digits[1][:32])
    model, lr, reg = fnn.mlp([64, 16, 10]), 0.1, fnn.l2(1e-2)
    tr = fnn.Trainer(model, sgd(lr), fnn.cross_entropy, regularizer=reg)
    state = tr.init(0)
    new_state, metrics = jax.jit(tr.train_step)(state, (x, y))

    def objective(p):
        return fnn.cross_entropy(model.apply(p, x), y) + 0.5 * 1e-2 * sum(jnp.sum(w["w"] ** 2) for w in p[::2])

    grads = jax.grad(objective)(state.params)
    expected = jax.tree.map(lambda p, g: p - lr * g, state.params, grads)
    chex.assert_trees_all_close(new_state.params, expected, rtol=1e-5, atol=1e-7)
    assert int(new_state.step) == 1 and float(metrics["lr"]) == pytest.approx(lr)
    np.testing.assert_allclose(metrics["loss"], fnn.cross_entropy(model.apply(state.params, x), y), rtol=1e-6)


def test_train_step_trains_a_user_function():
    """A plain f(params, x) trains: linear regression recovers the true weights."""
    key = jax.random.key(0)
    x = jax.random.normal(key, (200, 3))
    w_true = jnp.array([[1.0], [-2.0], [0.5]])
    y = x @ w_true
    tr = fnn.Trainer(lambda p, x: x @ p["w"], sgd(0.1), fnn.mse)
    result = fnn.fit(tr, x, y, key=1, epochs=30, batch_size=20, params={"w": jnp.zeros((3, 1))})
    np.testing.assert_allclose(result.train_state.params["w"], w_true, atol=1e-3)


# ---------------------------------------------------------------------------- learning


def test_mlp_learns_fashion_mnist_subset(shared_data):
    """A 784-64-10 MLP reaches >= 80% test accuracy on 6,000 Fashion-MNIST images in 4 epochs."""
    data = load_fashion_mnist(shared_data / "fashion-mnist")
    x, xt = fnn.prepare_images(data.x_train[:6000]), fnn.prepare_images(data.x_test[:2000])
    y, yt = data.y_train[:6000].astype(np.int32), data.y_test[:2000].astype(np.int32)
    tr = trainer(model=fnn.mlp([784, 64, 10], init="he_normal"), lr=2e-3)
    result = fnn.fit(tr, x, y, key=0, epochs=4, batch_size=64, validation=(xt, yt))
    assert float(result.history["val_accuracy"][-1]) >= 0.80
    assert float(result.history["loss"][-1]) < float(result.history["loss"][0])
    same = fnn.fit(tr, x, y, key=0, epochs=4, batch_size=64, validation=(xt, yt))
    other = fnn.fit(tr, x, y, key=1, epochs=4, batch_size=64, validation=(xt, yt))
    chex.assert_trees_all_equal(result.train_state.params, same.train_state.params)
    assert not np.allclose(result.train_state.params[0]["w"], other.train_state.params[0]["w"])


def test_history_and_best_params(digits):
    x, y, xv, yv = digits
    result = fnn.fit(trainer(), x, y, key=0, epochs=5, batch_size=BATCH, validation=(xv, yv))
    h = result.history
    assert set(h) == {"loss", "accuracy", "lr", "val_loss", "val_accuracy"}
    chex.assert_shape(list(h.values()), (5,))
    assert int(result.stop_epoch) == 5 and not bool(result.stopped_early)
    best = int(np.argmin(h["val_loss"]))
    assert int(result.best_epoch) == best
    # evaluating the best params reproduces the best validation loss
    scores = trainer().evaluate(result.best_params, result.best_model_state, jnp.asarray(xv), jnp.asarray(yv), 100)
    np.testing.assert_allclose(scores["loss"], h["val_loss"][best], rtol=1e-5)
    np.testing.assert_allclose(h["lr"], 1e-2, rtol=1e-6)
    assert int(result.train_state.step) == 5 * 30


def test_partial_batch_counts_every_example(digits):
    """1,500 examples in batches of 64: 24 steps an epoch with padding, 23 with drop_last."""
    x, y, _, _ = digits
    kept = fnn.fit(trainer(), x, y, key=0, epochs=1, batch_size=64)
    dropped = fnn.fit(trainer(), x, y, key=0, epochs=1, batch_size=64, drop_last=True)
    assert int(kept.train_state.step) == 24 and int(dropped.train_state.step) == 23


def test_epoch_loss_is_mean_of_example_losses_with_zero_lr(digits):
    """With lr = 0 the epoch's training loss is the loss over all examples (padding excluded)."""
    x, y, _, _ = digits
    tr = trainer(optimizer=sgd(0.0))
    result = fnn.fit(tr, x, y, key=0, epochs=1, batch_size=64)
    full = fnn.cross_entropy(tr.model.apply(result.train_state.params, jnp.asarray(x)), jnp.asarray(y))
    np.testing.assert_allclose(result.history["loss"][0], full, rtol=1e-5)


def test_warm_start_from_init_params_trains_the_model(digits):
    """The documented warm start: params from model.init, no model_state (an MLP has none).
    It once ran zero layers (Serial zipped its layers with an empty state) and trained nothing."""
    x, y, _, _ = digits
    model = fnn.mlp([64, 8, 10])
    params, _ = model.init(jax.random.key(3))
    result = fnn.fit(trainer(model=model), x, y, key=0, epochs=3, batch_size=64, params=params)
    assert float(result.history["loss"][-1]) < 0.8 * float(result.history["loss"][0])
    assert not np.allclose(result.train_state.params[0]["w"], params[0]["w"])
    chex.assert_shape(result.train_state.params[0]["w"], (64, 8))


def test_continuing_from_a_train_state_runs_the_remaining_epochs(digits):
    """epochs counts the total: a state after 2 epochs, continued with epochs=4, runs 2 more
    and ends where an uninterrupted 4-epoch run ends (the same program, the same keys)."""
    x, y, _, _ = digits
    first = fnn.fit(trainer(), x, y, key=0, epochs=4, batch_size=BATCH)
    two = fnn.fit(trainer(), x, y, key=0, epochs=2, batch_size=BATCH)
    rest = fnn.fit(trainer(), x, y, train_state=two.train_state, epochs=4, batch_size=BATCH)
    chex.assert_trees_all_equal(rest.train_state, first.train_state)
    assert np.all(np.isnan(rest.history["loss"][:2])) and np.all(np.isfinite(rest.history["loss"][2:]))
    np.testing.assert_array_equal(rest.history["loss"][2:], first.history["loss"][2:])


def test_warm_start_of_a_model_with_state_needs_its_state(digits):
    x, y, _, _ = digits
    model = fnn.mlp([64, 8, 10], batchnorm=True)
    params, state = model.init(jax.random.key(3))
    with pytest.raises(ValueError, match="model_state"):
        fnn.fit(trainer(model=model), x, y, key=0, epochs=1, batch_size=64, params=params)
    result = fnn.fit(trainer(model=model), x, y, key=0, epochs=1, batch_size=64, params=params, model_state=state)
    assert not np.allclose(result.train_state.model_state[1]["mean"], 0)


# ---------------------------------------------------------------------------- convergence


def test_early_stopping_on_a_constructed_loss_curve(digits):
    """lr > 0 for 3 epochs, then 0: the loss stops improving after epoch 3, so with
    patience 2 the run stops after epoch 5 (index), best epoch 3, and no update after."""
    x, y, _, _ = digits
    steps = 30
    lr = piecewise_constant([3 * steps], [1e-2, 0.0])
    result = fnn.fit(trainer(optimizer=adam(lr)), x, y, key=0, epochs=12, batch_size=BATCH, patience=2, tol=1e-4)
    h = np.asarray(result.history["loss"])
    assert h[3] < h[2] - 1e-4  # the precondition: epoch 3 still improved
    assert int(result.best_epoch) == 3
    assert bool(result.stopped_early) and int(result.stop_epoch) == 6
    assert np.all(np.isfinite(h[:6])) and np.all(np.isnan(h[6:]))
    assert int(result.train_state.step) == 6 * steps


def test_divergence_raises_with_epoch_and_keeps_last_finite_state():
    """lr 0 for two epochs, then huge: linear regression overflows during epoch 2."""
    x = jax.random.normal(jax.random.key(0), (100, 4), jnp.float32) * 10  # float32, the model's dtype
    y = x @ jnp.ones((4, 1), jnp.float32)
    steps = 10
    tr = fnn.Trainer(fnn.mlp([4, 1]), sgd(piecewise_constant([2 * steps], [0.0, 1e6])), fnn.mse)
    with pytest.raises(fnn.DivergenceError, match="epoch 2") as info:
        fnn.fit(tr, x, y, key=0, epochs=5, batch_size=10)
    result = info.value.result
    assert int(result.diverged_epoch) == 2 and bool(result.diverged)
    assert int(result.diverged_step) >= 2 * steps
    assert all(np.all(np.isfinite(leaf)) for leaf in jax.tree.leaves(result.train_state.params))
    assert np.isfinite(float(result.last_finite_loss))
    assert int(result.train_state.step) == int(result.diverged_step)
    # under vmap nothing raises: the flag and the step come back per member
    batched = jax.vmap(lambda k: fnn.fit(tr, x, y, key=k, epochs=5, batch_size=10))(jnp.arange(2))
    assert bool(jnp.all(batched.diverged)) and list(batched.diverged_epoch) == [2, 2]


def test_a_loss_above_divergence_threshold_stops_the_run_like_a_non_finite_one():
    """A huge but finite learning rate: the loss grows past 1e4 without overflowing for a
    while; with divergence_threshold=1e4 the run stops there and keeps the last good state."""
    x = jax.random.normal(jax.random.key(0), (100, 4), jnp.float32)  # float32, the model's dtype
    y = x @ jnp.ones((4, 1), jnp.float32)
    tr = fnn.Trainer(fnn.mlp([4, 1]), sgd(1.5), fnn.mse)
    finished = fnn.fit(tr, x, y, key=0, epochs=3, batch_size=10)  # without a threshold it "finishes"
    assert not bool(finished.diverged) and float(finished.history["loss"][-1]) > 1e4
    with pytest.raises(fnn.DivergenceError) as info:
        fnn.fit(tr, x, y, key=0, epochs=3, batch_size=10, divergence_threshold=1e4)
    result = info.value.result
    assert bool(result.diverged) and float(result.last_finite_loss) <= 1e4
    assert int(result.train_state.step) == int(result.diverged_step)
    loss = fnn.mse(tr.model.apply(result.train_state.params, x), y)
    assert np.isfinite(float(loss))


# ---------------------------------------------------------------------------- jit and vmap


def test_fit_under_jit_equals_eager_and_vmap_equals_single_runs(digits):
    x, y, xv, yv = digits
    tr = trainer(model=fnn.mlp([64, 16, 10], dropout=0.1))
    kwargs = dict(epochs=3, batch_size=BATCH, validation=(xv, yv))
    keys = jax.random.split(jax.random.key(7), 4)
    singles = [fnn.fit(tr, x, y, key=k, **kwargs) for k in keys]
    jitted = jax.jit(lambda k: fnn.fit(tr, x, y, key=k, **kwargs))(keys[0])
    # an outer jit may fuse (reassociate) differently
    chex.assert_trees_all_close(singles[0].train_state.params, jitted.train_state.params, rtol=1e-5, atol=1e-7)
    batched = jax.vmap(lambda k: fnn.fit(tr, x, y, key=k, **kwargs))(keys)
    for i, single in enumerate(singles):
        member = jax.tree.map(operator.itemgetter(i), batched.train_state.params)
        chex.assert_trees_all_close(member, single.train_state.params, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(batched.history["val_loss"][i], single.history["val_loss"], rtol=1e-5)


def test_vmap_over_learning_rates_with_early_stopping(digits):
    """Members stop independently; each equals its own single run."""
    x, y, _, _ = digits
    lrs = jnp.array([1e-2, 0.0])

    def run(lr):
        return fnn.fit(trainer(optimizer=adam(lr)), x, y, key=0, epochs=6, batch_size=BATCH, patience=1, tol=1e-3)

    batched = jax.vmap(run)(lrs)
    for i, lr in enumerate([1e-2, 0.0]):
        single = run(lr)
        assert int(batched.stop_epoch[i]) == int(single.stop_epoch)
        np.testing.assert_allclose(
            batched.train_state.params[0]["w"][i], single.train_state.params[0]["w"], rtol=1e-5, atol=1e-6
        )
    assert int(batched.stop_epoch[1]) == 2  # lr 0: no improvement after epoch 0


def test_new_learning_rate_does_not_recompile(digits):
    x, y, _, _ = digits
    fnn.fit(trainer(lr=1e-2), x, y, key=0, epochs=1, batch_size=BATCH)
    before = run_epochs._cache_size()
    fnn.fit(trainer(lr=3e-3), x, y, key=1, epochs=1, batch_size=BATCH)
    assert run_epochs._cache_size() == before


def test_compiler_options_follow_xla_flags(monkeypatch):
    """fnn's programs compile at LLVM level 1 on CPU unless XLA_FLAGS sets a level (as
    tests/conftest.py does)."""
    assert compiler_options() == {}  # conftest's --xla_backend_optimization_level=0 wins
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=1")
    assert compiler_options() == {"xla_backend_optimization_level": 1}


def test_level_1_gives_the_bits_of_level_3(digits):
    """The claim behind compiler_options: the same run compiled at level 1 and at XLA's
    default level 3 trains bit-identically (dropout and Adam included); evaluation sums
    may be added up in another order (last bits of the history). fit also runs nested
    in a user's jit, where its own program takes no options."""
    x, y, _, _ = digits
    tr = trainer(model=fnn.mlp([64, 16, 10], dropout=0.2))
    run = lambda k: fnn.fit(tr, x[:300], y[:300], key=k, epochs=2, batch_size=BATCH)  # noqa: E731
    level = {n: jax.jit(run, compiler_options={"xla_backend_optimization_level": n})(0) for n in (1, 3)}
    chex.assert_trees_all_equal(level[1].train_state, level[3].train_state)
    # The history's loss is a float32 mean over a batch of 50 positive terms per step (then
    # float64 sums): in another order it moves by at most 50 eps relative; no cancellation.
    chex.assert_trees_all_close(level[1].history, level[3].history, rtol=BATCH * EPS32, atol=0)


def test_batchnorm_model_trains_and_evaluates_with_running_statistics(digits):
    x, y, xv, yv = digits
    tr = trainer(model=fnn.mlp([64, 16, 10], batchnorm=True))
    result = fnn.fit(tr, x, y, key=0, epochs=3, batch_size=BATCH, validation=(xv, yv))
    stats = result.train_state.model_state[1]
    assert not np.allclose(stats["mean"], 0) and not np.allclose(stats["var"], 1)
    assert float(result.history["val_accuracy"][-1]) > 0.8


def test_progress_prints_one_line_per_epoch(digits, capsys):
    x, y, _, _ = digits
    fnn.fit(trainer(), x[:200], y[:200], key=0, epochs=3, batch_size=BATCH, progress=True)
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert len(lines) == 3 and lines[-1].startswith("epoch 3/3") and "loss" in lines[-1] and " s]" in lines[-1]
    assert "running" not in lines[-1]


def test_progress_under_vmap_prints_one_summary_line_per_epoch(digits, capsys):
    """Two members, one with lr 0 that stops early: one line per epoch (not one per
    member), the mean and min-max of each value, and how many members still run."""
    x, y, _, _ = digits

    def run(lr):
        return fnn.fit(
            trainer(optimizer=adam(lr)),
            x[:200],
            y[:200],
            key=0,
            epochs=4,
            batch_size=BATCH,
            patience=1,
            tol=1e-3,
            progress=True,
        )

    result = jax.vmap(run)(jnp.array([1e-2, 0.0]))
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch")]
    assert int(result.stop_epoch[1]) == 2 and int(result.stop_epoch[0]) == 4
    assert [line.split()[1] for line in lines] == ["1/4", "2/4", "3/4", "4/4"]
    assert "2/2 running" in lines[0] and "2/2 running" in lines[1] and "1/2 running" in lines[2]
    low, high = sorted(float(v) for v in result.history["loss"][:, 0])
    assert f"[{low:.4f}–{high:.4f}]" in lines[0]
    assert f"loss {float(result.history['loss'][0, 3]):.4f} " in lines[3]  # one member left: its own value


def test_every_draw_of_a_run_comes_from_its_key_as_documented():
    """The PRNG contract (fnn.train): params from fold_in(key, 2), the data order of epoch
    e from fold_in(fold_in(key, 0), e), the dropout key of update t from fold_in(fold_in(key, 1), t)."""
    key = jax.random.key(3)
    trainer = fnn.Trainer(fnn.mlp([64, 8, 10]), fnn.sgd(0.1), fnn.cross_entropy)
    chex.assert_trees_all_equal(trainer.init(key).params, trainer.model.init(jax.random.fold_in(key, 2))[0])
    data = jax.random.key_data
    fold = jax.random.fold_in
    np.testing.assert_array_equal(data(fnn.train.order_key(key, 5)), data(fold(fold(key, 0), 5)))
    np.testing.assert_array_equal(data(fnn.train.dropout_key(key, 7)), data(fold(fold(key, 1), 7)))
    np.testing.assert_array_equal(data(fnn.train.params_key(key)), data(fold(key, 2)))


def test_a_metric_may_be_named_weight(digits):
    """The epoch loop keeps its sum of example weights apart from the metrics' sums."""
    x, y, *_ = digits
    weight = fnn.losses.lower_is_better(lambda p, t, w=None: fnn.losses.weighted_mean(jnp.sum(p * p, -1), w))
    trainer = fnn.Trainer(fnn.mlp([64, 8, 10]), fnn.adam(1e-2), fnn.cross_entropy, metrics={"weight": weight})
    result = fnn.fit(trainer, x[:200], y[:200], key=0, epochs=2, batch_size=64, validation=(x[200:300], y[200:300]))
    history = {k: np.asarray(v) for k, v in result.history.items()}
    assert sorted(history) == ["loss", "lr", "val_loss", "val_weight", "weight"]
    assert np.all(history["weight"] > 0) and np.all(np.isfinite(history["val_weight"]))
    expected = trainer.evaluate(result.train_state.params, result.train_state.model_state, x[200:300], y[200:300])
    np.testing.assert_allclose(history["val_weight"][-1], expected["weight"], rtol=1e-6)


def test_max_steps_stops_inside_an_epoch_after_exactly_that_many_updates(digits, tmp_path):
    """max_steps=37 at 30 updates an epoch: epoch 1 is the last, 7 of its updates applied;
    the params are those of 37 train steps one by one on fit's mini-batches; saving a
    checkpoint every epoch ends there too (not a loop that never advances), bit for bit."""
    x, y, _, _ = digits
    tr = trainer()
    result = fnn.fit(tr, x, y, key=0, epochs=5, batch_size=BATCH, max_steps=37)
    saved = fnn.fit(
        tr, x, y, key=0, epochs=5, batch_size=BATCH, max_steps=37, checkpoint=tmp_path / "r", checkpoint_every=1
    )
    assert int(result.train_state.step) == 37 and int(result.train_state.epoch) == 2
    assert not bool(result.diverged) and not bool(result.stopped_early)
    assert np.all(np.isfinite(result.history["loss"][:2])) and np.all(np.isnan(result.history["loss"][2:]))
    chex.assert_trees_all_equal(saved.train_state, result.train_state)
    step = jax.jit(lambda state, batch: tr.train_step(state, batch)[0])
    state, xs, ys = tr.init(jax.random.key(0)), jnp.asarray(x), jnp.asarray(y)
    for epoch in range(2):
        indices, weights = epoch_batches(order_key(state.key, epoch), len(y), BATCH)
        for idx, w in list(zip(indices, weights))[: 37 - 30 * epoch]:
            state = step(state, (xs[idx], ys[idx], w))
    # two programs (the loop, and a step jitted alone) may round each update's gradient
    # sums differently: k = 37 updates x 64 terms (the widest fan-in) roundings
    assert_trees_close_f32(result.train_state.params, state.params, k=37 * 64)
