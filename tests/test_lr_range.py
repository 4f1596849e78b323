"""The learning-rate range test (``fnn.lr_range``): one vmapped member per rate.

Each member is the run of ``steps`` train steps at its rate, from the shared initial
params, on fit's mini-batches; the suggestion agrees with the classic sequential
exponential-ramp test on digits; bad input is refused before anything is compiled; and
the smoothing and the suggestion rule do what their docstrings say on known curves.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sweep_setup import forbid

import fnn
from fnn.batching import epoch_batches
from fnn.datasets import load_digits
from fnn.sweeps import range_test as lr_range_module
from fnn.sweeps.range_test import LRRangeResult, lr_range, smooth, suggest


def config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=0.1), fnn.adam(lr), fnn.cross_entropy)


@pytest.fixture(scope="module")
def digits():
    """All 1,797 digits scaled to [0, 1] (float32), as JAX arrays."""
    x, y = load_digits()
    return jnp.asarray(x / np.float32(16.0)), jnp.asarray(y)


# The trainer is an argument (a pytree): one compiled program serves every learning rate.
train_step = jax.jit(lambda trainer, state, batch: trainer.train_step(state, batch)[0])
evaluate = jax.jit(lambda trainer, state, x, y: trainer.evaluate(state.params, state.model_state, x, y))


def sequential_loss(trainer, x, y, x_eval, y_eval, *, key, steps, batch_size):
    """``steps`` train steps one by one on fit's mini-batches (epoch e ordered by
    ``fold_in(fold_in(key, 0), e)``), then the loss on (x_eval, y_eval)."""
    state = trainer.init(key)
    run_key, done, epoch = jax.random.key(key), 0, 0
    while done < steps:
        indices, weights = epoch_batches(jax.random.fold_in(jax.random.fold_in(run_key, 0), epoch), len(y), batch_size)
        for idx, w in list(zip(indices, weights))[: steps - done]:
            state = train_step(trainer, state, (x[idx], y[idx], w))
            done += 1
        epoch += 1
    return float(evaluate(trainer, state, x_eval, y_eval)["loss"])


def test_each_member_is_its_rate_run_alone(digits):
    """7 updates of 50 (4 an epoch: the second epoch's order matters) from the same init,
    with dropout (the same keys for every member), scored on a validation set: each
    member's loss equals the sequential run's at its rate."""
    x, y = digits[0][:200], digits[1][:200]
    validation = (digits[0][200:300], digits[1][200:300])
    lrs = np.array([1e-3, 1e-2, 1e-1])
    result = lr_range(config, x, y, lrs=lrs, steps=7, batch_size=50, key=3, validation=validation)
    expected = [sequential_loss(config(lr), x, y, *validation, key=3, steps=7, batch_size=50) for lr in lrs]
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)
    np.testing.assert_array_equal(result.lrs, lrs)
    assert result.steps == 7 and result.smoothed.shape == (3,)
    assert "suggested lr" in result.summary() or "no suggestion" in result.summary()


def test_float16_members_train_every_step_their_loss_scale_skips(digits):
    """A float16 trainer starting at loss scale 2**40 skips its first steps (the float16
    backward pass overflows): each member still trains 7 updates, as fit with
    max_steps=7 and epochs to spare does (fnn.sweeps.range_test.skip_allowance)."""
    x, y = digits[0][:200], digits[1][:200]

    def half(lr=1e-2):
        scaling = fnn.dynamic_loss_scale(initial_scale=2.0**40)
        return fnn.Trainer(
            fnn.mlp([64, 16, 10]), fnn.adam(lr), fnn.cross_entropy, compute_dtype=jnp.float16, loss_scaling=scaling
        )

    lrs = np.array([1e-3, 1e-2, 1e-1])
    result = lr_range(half, x, y, lrs=lrs, steps=7, batch_size=50, key=3)
    alone = [fnn.fit(half(lr), x, y, key=3, epochs=20, batch_size=50, max_steps=7, validation=(x, y)) for lr in lrs]
    assert all(int(r.train_state.step) == 7 and int(r.train_state.loss_scale.skipped) > 0 for r in alone)
    losses = [float(r.history["val_loss"][int(r.train_state.epoch) - 1]) for r in alone]
    np.testing.assert_allclose(result.losses, losses, rtol=1e-5)


# --- against the sequential exponential-ramp test -----------------------------------------


def adam_mlp(lr=1e-3):
    return fnn.Trainer(fnn.mlp([64, 32, 10]), fnn.adam(lr), fnn.cross_entropy)


def ramp_suggestion(config, x, y, *, lr_min, lr_max, updates, batch_size, beta=0.98, skip_begin=10):
    """The classic range test (Smith 2017; fastai ``lr_find``; Lightning's LR finder),
    written here independently of fnn.lr_range: one run whose rate grows every update,
    lr_t = lr_min (lr_max / lr_min)^(t / (T - 1)); the mini-batch losses are smoothed by
    a debiased exponential moving average (beta 0.98), the run stops when the smoothed
    loss exceeds 4x its minimum, and the suggestion is the rate of steepest descent of
    the smoothed loss against log10(lr), skipping the first 10 points and the last one
    (Lightning's skip_begin, skip_end). Batches: NumPy permutations, one per epoch."""
    exponent = lambda t: jnp.asarray(t, jnp.float64) / (updates - 1)  # noqa: E731
    trainer = config(lr=lambda t: lr_min * (lr_max / lr_min) ** exponent(t))
    rng = np.random.default_rng(0)
    epochs = -(-updates * batch_size // len(y))
    order = np.concatenate([rng.permutation(len(y)) for _ in range(epochs)])[: updates * batch_size]

    def update(state, idx):
        state, metrics = trainer.train_step(state, (x[idx], y[idx]))
        return state, (metrics["loss"], metrics["lr"])

    run = jax.jit(lambda state: jax.lax.scan(update, state, jnp.asarray(order.reshape(updates, batch_size)))[1])
    losses, lrs = (np.asarray(a, dtype=float) for a in run(trainer.init(0)))
    average, lowest, smoothed = 0.0, np.inf, []
    for t, loss in enumerate(losses):  # the whole run, then cut where it would have stopped
        average = beta * average + (1 - beta) * loss
        smoothed.append(average / (1 - beta ** (t + 1)))
        if not np.isfinite(smoothed[-1]) or smoothed[-1] > 4 * lowest:
            break
        lowest = min(lowest, smoothed[-1])
    kept = slice(skip_begin, len(smoothed) - 1)
    slopes = np.gradient(np.array(smoothed)[kept], np.log10(lrs[kept]))
    return float(lrs[kept][np.argmin(slopes)])


def test_suggestion_agrees_with_the_exponential_ramp(digits):
    """Digits, MLP 64-32-10, Adam, batch 32, rates 1e-5..10. The ramp runs 300 updates
    (50 a decade, about the EMA's memory of 1 / (1 - beta) = 50 updates); the range test
    trains each of 32 rates for 50 updates. Measured here: ramp 0.0098, range test 0.0033
    (a factor 3; ramps read late because the EMA lags). With a 100-update ramp the lag
    grows to 3 decades and the ramp reads 0.066; with 100-update members the range test
    reads 0.0013. Asserted: within one decade of each other, both in (1e-4, 0.1)."""
    x, y = digits
    ramp = ramp_suggestion(adam_mlp, x, y, lr_min=1e-5, lr_max=10.0, updates=300, batch_size=32)
    fixed = lr_range(adam_mlp, x, y, lrs=np.logspace(-5, 1, 32), steps=50, batch_size=32).suggestion
    assert 1e-4 < fixed < 0.1 and 1e-4 < ramp < 0.1, (fixed, ramp)
    assert 0.1 < fixed / ramp < 10, (fixed, ramp)


# --- bad input ---------------------------------------------------------------------------


def no_lr(rate=1e-2):
    return config(rate)


def python_lr(lr=1e-2):
    return config(1e-2 if lr < 0.05 else 1e-3)  # reads the rate as a Python value


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(lrs=[1e-3, 1e-2]), "lrs must be a 1-D array of at least 3"),
        (dict(lrs=[[1e-3, 1e-2, 1e-1]]), "lrs must be a 1-D array"),
        (dict(lrs=[1e-3, 1e-1, 1e-2]), "strictly increasing"),
        (dict(lrs=[-1e-3, 1e-2, 1e-1]), "positive"),
        (dict(lrs=[1e-3, 1e-2, np.inf]), "finite"),
        (dict(lrs="fast"), "lrs must be"),
        (dict(steps=0), "steps must be >= 1"),
        (dict(steps=2.5), "steps must be a Python int"),
        (dict(batch_size=1000), "batch_size must be <= the number of examples"),
        (dict(key="seed"), "key must be an int seed"),
        (dict(config=no_lr), "keyword lr="),
        (dict(config=python_lr), r"hyperparameter\(s\) \['lr'\]"),
        (dict(y=np.full(200, 12, np.int32)), r"y must lie in \[0, 10\)"),
        (dict(validation=(np.zeros((5, 3), np.float32), np.zeros(5, np.int32))), "validation"),
        (dict(devices=len(jax.devices()) + 1), "devices"),
    ],
)
def test_bad_input_raises_before_compiling(digits, change, match, monkeypatch):
    forbid(monkeypatch, lr_range_module, "_range_test", "the range test's program")
    arguments = dict(config=config, x=digits[0][:200], y=digits[1][:200], steps=5, batch_size=50) | change
    with pytest.raises(ValueError, match=match):
        lr_range(arguments.pop("config"), arguments.pop("x"), arguments.pop("y"), **arguments)


# --- smoothing and the suggestion on known curves ------------------------------------------


def test_suggestion_is_the_steepest_point_of_the_descent():
    """loss(u) = 1 - tanh(2 (u + 2)) over u = log10(lr) in [-4, 0] falls fastest at u = -2;
    past u = -1 it rises. A steeper fall after the minimum (u > -0.5) is not a descent to
    the minimum and is ignored; a curve that only rises has no suggestion."""
    u = np.linspace(-4, 0, 41)
    lrs = 10.0**u
    curve = np.where(u <= -1, 1 - np.tanh(2 * (u + 2)), 1 - np.tanh(2.0) + (u + 1) ** 2)
    assert suggest(lrs, curve) == pytest.approx(1e-2)
    cliff = np.where(u > -0.5, 10.0 - 5 * (u + 0.5), curve)  # slope -5, steeper, but above the minimum
    assert suggest(lrs, cliff) == pytest.approx(1e-2)
    assert np.isnan(suggest(lrs, np.linspace(1.0, 2.0, 41)))
    assert np.isnan(suggest(lrs, np.full(41, np.inf)))


def test_smoothing_is_a_centered_moving_average_and_keeps_divergence():
    losses = np.array([5.0, 4.0, 3.0, 2.0, 1.0, np.inf])
    np.testing.assert_allclose(smooth(losses, window=3)[:4], [4.5, 4.0, 3.0, 2.0])  # an end: the neighbours it has
    assert np.isinf(smooth(losses, window=3)[4:]).all()
    np.testing.assert_allclose(smooth(losses[:5]), [4.0, 3.5, 3.0, 2.5, 2.0])  # window 5


def test_no_suggestion_says_why():
    """On a coarse grid a diverged rate's +inf reaches every window above the smallest
    rate: no suggestion, and the summary says so (use a finer grid), not "try smaller
    rates", which is the advice only when the smoothed loss rises from the smallest rate."""
    lrs = np.array([1e-3, 1e-2, 1e-1, 1.0])
    coarse = np.array([2.0, 1.0, 0.5, np.inf])  # descending, then diverged
    smoothed = smooth(coarse)
    assert np.isfinite(smoothed[0]) and np.isinf(smoothed[1:]).all() and np.isnan(suggest(lrs, smoothed))
    summary = LRRangeResult(lrs, coarse, smoothed, suggest(lrs, smoothed), 10).summary()
    assert "the rate 1 diverged" in summary and "use more rates below 1 (a finer grid)" in summary
    assert "try smaller rates" not in summary
    rising = np.array([0.5, 1.0, 2.0, 4.0, 8.0])
    summary = LRRangeResult(np.logspace(-4, 0, 5), rising, smooth(rising), np.nan, 10).summary()
    assert summary.endswith("no suggestion: the smoothed loss is lowest at the smallest rate; try smaller rates")
