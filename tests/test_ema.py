"""The exponential moving average of the params (fnn.averaging, ``Trainer(ema=fnn.ema(...))``).

One tiny batch-norm MLP (4-8-3; its running statistics are averaged too) on 40 random
examples, batches of 16 (3 updates an epoch, the last padded), 3 epochs: every ``fit``
here with the default flags shares one compiled program, whatever its decay.
"""

import chex
import jax
import numpy as np
import pytest
from _sweep_setup import count_compiles
from tolerances import assert_trees_close_f32

import fnn
from fnn.batching import epoch_batches
from fnn.train import order_key

N, BATCH, EPOCHS = 40, 16, 3
STEPS = EPOCHS * 3  # updates in a run


def config(decay=0.9, debias=True, warmup=False, evaluate=True) -> fnn.Trainer:
    """The configuration: its EMA's decay is the hyperparameter a sweep grids."""
    model = fnn.mlp([4, 8, 3], batchnorm=True)
    average = fnn.ema(decay, debias=debias, warmup=warmup, evaluate=evaluate)
    return fnn.Trainer(model, fnn.sgd(0.1, momentum=0.9), fnn.cross_entropy, ema=average)


@pytest.fixture(scope="module")
def data():
    """``x, y, x_val, y_val``: 40 training and 16 validation examples of 4 features, 3
    classes given by a linear map (learnable: the validation loss falls)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N + 16, 4)).astype(np.float32)
    y = np.argmax(x @ rng.normal(size=(4, 3)), axis=1).astype(np.int32)
    return x[:N], y[:N], x[N:], y[N:]


@pytest.fixture(scope="module")
def options(data):
    return dict(epochs=EPOCHS, batch_size=BATCH, validation=data[2:])


@pytest.fixture(scope="module")
def fitted(data, options):
    """``fit`` of the default configuration (decay 0.9, debiased, evaluating), key 0."""
    return fnn.fit(config(), *data[:2], key=0, **options)


def step_by_step(trainer, x, y):
    """The run of ``fit(trainer, x, y, key=0, epochs=EPOCHS, batch_size=BATCH)``, one
    jitted ``train_step`` at a time on fit's batches: the final state and every update's
    ``(params, model_state)``, the initial ones first."""
    state, step = trainer.init(0), jax.jit(trainer.train_step)
    seen = [(state.params, state.model_state)]
    for epoch in range(EPOCHS):
        indices, weights = epoch_batches(order_key(state.key, epoch), N, BATCH)
        for idx, w in zip(indices, weights):
            state, _ = step(state, (x[idx], y[idx], w))
            seen.append((state.params, state.model_state))
    return state, seen


def numpy_ema(seen, decay, debias, warmup):
    """The documented average in float64 of ``seen`` = [θ_0, θ_1, ..., θ_T] (pytrees):
    debiased, the closed form Σ_i d^(T-i) θ_i / Σ_i d^(T-i) over i = 1..T (Adam's bias
    correction); else a_0 = θ_0, a_t = d_t a_{t-1} + (1 - d_t) θ_t with d_t = d or
    TensorFlow's min(d, (1 + t) / (10 + t))."""
    thetas = [jax.tree.map(lambda a: np.asarray(a, np.float64), theta) for theta in seen]
    T = len(thetas) - 1
    if debias:
        weights = [decay ** (T - i) for i in range(1, T + 1)]
        total = sum(weights)
        return jax.tree.map(lambda *leaves: sum(c * v for c, v in zip(weights, leaves)) / total, *thetas[1:])
    average = thetas[0]
    for t in range(1, T + 1):
        d = min(decay, (1 + t) / (10 + t)) if warmup else decay
        average = jax.tree.map(lambda a, v, d=d: d * a + (1 - d) * v, average, thetas[t])
    return average


# ---------------------------------------------------------------------------- numbers


@pytest.mark.parametrize("debias, warmup", [(True, False), (False, True), (False, False)])
def test_average_equals_numpy_ema_of_the_updates(data, fitted, debias, warmup):
    """train_step's average of params and batch-norm statistics == the documented EMA of
    the params after each update, in float64. Its rounding: 3 roundings an update (two
    products, a sum) of values at most max|θ|, over STEPS updates, and the weight rounded
    once: k = 4 * STEPS. fit's average (another program) equals train_step's to the
    tolerance of training runs compared across programs (tests/README.md)."""
    x, y = data[:2]
    state, seen = step_by_step(config(0.9, debias, warmup), x, y)
    assert int(state.step) == STEPS
    expected = numpy_ema(seen, 0.9, debias, warmup)
    assert_trees_close_f32((state.ema_params, state.ema_model_state), expected, k=4 * STEPS)
    if debias:  # the default flags: fit's run
        chex.assert_trees_all_close(
            (fitted.ema_params, fitted.ema_model_state), (state.ema_params, state.ema_model_state), rtol=1e-5, atol=1e-6
        )
        chex.assert_trees_all_close(fitted.train_state.params, state.params, rtol=1e-5, atol=1e-6)


def test_evaluation_and_best_params_use_the_average(data, options, fitted):
    """evaluate=True: val_loss is the average's loss and best_params the average at the
    best epoch; evaluate=False: the raw params', the same average carried along."""
    x, y, xv, yv = data
    trainer = config()
    assert int(fitted.best_epoch) == EPOCHS - 1  # the last epoch is the best here: its average is kept
    averaged = trainer.evaluate(fitted.ema_params, fitted.ema_model_state, xv, yv)["loss"]
    raw = trainer.evaluate(fitted.train_state.params, fitted.train_state.model_state, xv, yv)["loss"]
    assert not np.isclose(averaged, raw, rtol=1e-3)  # the two differ: the check below tells them apart
    np.testing.assert_allclose(fitted.history["val_loss"][-1], averaged, rtol=1e-5)
    chex.assert_trees_all_equal(
        (fitted.best_params, fitted.best_model_state), (fitted.ema_params, fitted.ema_model_state)
    )

    plain = fnn.fit(config(evaluate=False), x, y, key=0, **options)
    np.testing.assert_allclose(plain.history["val_loss"][-1], raw, rtol=1e-5)
    chex.assert_trees_all_equal(plain.best_params, plain.train_state.params)
    chex.assert_trees_all_close(plain.ema_params, fitted.ema_params, rtol=1e-5, atol=1e-6)


def test_one_program_for_every_decay_and_a_sweep_over_decays(data, options, fitted):
    """decay is a leaf: fit at another decay compiles nothing; a sweep over decays (one
    vmapped program) equals its members run alone."""
    x, y = data[:2]
    with count_compiles() as compiles:
        other = fnn.fit(config(0.99), x, y, key=0, **options)
    assert compiles == []
    swept = fnn.sweep(config, x, y, grid={"decay": [0.9, 0.99]}, devices=1, **options)
    assert list(swept.hyperparameters["decay"]) == [0.9, 0.99]
    for i, alone in enumerate([fitted, other]):
        member = jax.tree.map(lambda a, i=i: a[i], swept.results)
        chex.assert_trees_all_close(
            (member.train_state._replace(key=None), member.best_params, member.history),
            (alone.train_state._replace(key=None), alone.best_params, alone.history),
            rtol=1e-5,
            atol=1e-6,
        )


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize("decay", [1.0, 1.5, -0.1, np.nan, "0.9", None, True])
def test_bad_decay_is_refused(decay):
    with pytest.raises(ValueError, match="decay"):
        fnn.ema(decay)


def test_bad_flags_and_trainer_argument_are_refused():
    with pytest.raises(ValueError, match="debias=True or warmup=True"):
        fnn.EMA(0.9, warmup=True)
    with pytest.raises(ValueError, match="evaluate must be a bool"):
        fnn.ema(0.9, evaluate="yes")
    with pytest.raises(ValueError, match=r"ema must be fnn.ema\(decay"):
        fnn.Trainer(fnn.mlp([4, 3]), fnn.sgd(0.1), ema=0.9)


def test_a_sweep_refuses_a_bad_decay_before_tracing(data, options):
    with count_compiles() as compiles, pytest.raises(ValueError, match=r"grid point \{'decay': 1.5\}.*decay"):
        fnn.sweep(config, *data[:2], grid={"decay": [0.9, 1.5]}, devices=1, **options)
    assert compiles == []


def test_train_state_must_match_the_trainers_ema(data, options):
    x, y = data[:2]
    without = fnn.Trainer(fnn.mlp([4, 8, 3], batchnorm=True), fnn.sgd(0.1, momentum=0.9), fnn.cross_entropy)
    assert without.init(0).ema_params is None and without.init(0).ema_model_state is None
    with pytest.raises(ValueError, match="has no moving average"):
        fnn.fit(config(), x, y, train_state=without.init(0), **options)
    with pytest.raises(ValueError, match="carries a moving average"):
        fnn.fit(without, x, y, train_state=config().init(0), **options)


def test_resume_refuses_another_decay_or_flag(data, options, fitted, tmp_path):
    """The checkpoint's description holds the decay (a leaf of the trainer) and the
    static flags (fnn.resume.static_fields); the same run resumes to the same numbers."""
    x, y = data[:2]
    path = tmp_path / "run.ckpt"
    saved = fnn.fit(config(), x, y, key=0, checkpoint=path, **options)
    chex.assert_trees_all_equal(saved.ema_params, fitted.ema_params)
    for trainer, match in [
        (config(0.99), r"trainer.ema.decay=0.9; this call has trainer.ema.decay=0.99"),
        (config(debias=False), "trainer.ema.debias='True'; this call has trainer.ema.debias='False'"),
        (config(evaluate=False), "trainer.ema.evaluate='True'"),
    ]:
        with pytest.raises(ValueError, match=match):
            fnn.fit(trainer, x, y, key=0, checkpoint=path, resume=True, **options)
    no_ema = fnn.Trainer(fnn.mlp([4, 8, 3], batchnorm=True), fnn.sgd(0.1, momentum=0.9), fnn.cross_entropy)
    with pytest.raises(ValueError, match=r"the moving average of the params differs \(trainer.ema added or removed"):
        fnn.fit(no_ema, x, y, key=0, checkpoint=path, resume=True, **options)
