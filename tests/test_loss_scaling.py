"""float16 compute with dynamic loss scaling (fnn.loss_scaling, ``compute_dtype=jnp.float16``).

The scale's rule is checked against a Python transcription of Micikevicius et al. (2018),
Section 3.3 (as PyTorch's GradScaler and Keras' LossScaleOptimizer implement it); the
scaled float16 gradient against the float32 one, where the unscaled float16 gradient
flushes to zero; a skipped step bit for bit; and a float16 fit that learns the digits and
resumes bit-exactly. Tiny models: each program compiles in about a second.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sweep_setup import count_compiles

import fnn
from fnn.loss_scaling import LossScaleState

FEATURES, HIDDEN, CLASSES = 5, 7, 3  # the sizes of conftest's padded_batch
EPS16 = 2.0**-10  # float16 keeps 11 significant bits: the spacing at 1.0


def tiny_loss(predictions, targets, weights):
    """Cross-entropy times 1e-6: its gradients (about 1e-8) are below float16's smallest
    subnormal (6.0e-8), the case loss scaling exists for."""
    return 1e-6 * fnn.cross_entropy(predictions, targets, weights)


def reference_rule(scale, good, skipped, finite, factor, period, floor):
    """Micikevicius et al. (2018), Section 3.3, transcribed: grow after ``period`` finite
    steps in a row, back off (not below ``floor``) and restart the count after a
    non-finite one; at the floor a non-finite step is not a skip (fnn applies it: a
    divergence)."""
    if not finite:
        return max(scale / factor, floor), 0, skipped + (scale > floor)
    if good + 1 == period:
        return scale * factor, 0, skipped
    return scale, good + 1, skipped


def test_the_scale_follows_the_published_rule():
    """``adjust`` over 200 random finite / non-finite steps (period 3, factor 2, floor 4:
    each branch is taken) equals the transcription step by step; a scale whose growth
    would overflow float32 stays."""
    rule = fnn.dynamic_loss_scale(initial_scale=64.0, factor=2.0, period=3, min_scale=4.0)
    adjust = jax.jit(rule.adjust)
    flags = np.random.default_rng(1).random(200) < 0.7
    state, expected = rule.init(), (64.0, 0, 0)
    seen = set()
    for finite in flags:
        state = adjust(state, jnp.asarray(finite))
        expected = reference_rule(*expected, bool(finite), 2.0, 3, 4.0)
        assert (float(state.scale), int(state.good_steps), int(state.skipped)) == expected
        seen.add((bool(finite), expected[1] == 0, expected[0] == 4.0))
    assert {(True, True, False), (False, True, True), (True, False, False)} <= seen  # grew, hit the floor, counted
    floor = LossScaleState(jnp.float32(4.0), jnp.int32(2), jnp.int32(5))
    assert bool(rule.skips(floor, jnp.asarray(False))) is False and int(adjust(floor, jnp.asarray(False)).skipped) == 5
    top = LossScaleState(jnp.float32(2.0**127), jnp.int32(2), jnp.int32(0))
    assert float(adjust(top, jnp.asarray(True)).scale) == 2.0**127


def float16_trainer(loss=fnn.cross_entropy, **options):
    model = fnn.mlp([FEATURES, HIDDEN, CLASSES])
    return fnn.Trainer(model, fnn.adam(1e-2), loss, compute_dtype=jnp.float16, **options)


@pytest.mark.parametrize("accumulate", [1, 3])
def test_the_scaled_float16_gradient_is_the_float32_one_where_float16_alone_flushes_it(padded_batch, accumulate):
    """A loss whose gradients are about 1e-8: scaled by 2**15, the float16 backward pass
    gives the float32 gradient to float16 rounding (normwise within 8 float16 epsilons of
    the largest element, as the bfloat16 test bounds its own; each element sums 12
    examples' terms through two layers), in float32, with the matmuls in float16. Unscaled
    (``scale=None``) the same float16 pass loses most of them to zero."""
    x, y, w = padded_batch
    scaled = float16_trainer(tiny_loss, accumulate=accumulate)
    full = fnn.Trainer(scaled.model, scaled.optimizer, tiny_loss, accumulate=accumulate)
    state = full.init(0)
    key = jax.random.key(1)
    gradients = jax.jit(lambda t, scale: t.gradients(state.params, (), x, y, w, key, scale))
    g32, (l32, _, _) = gradients(full, None)
    g16, (l16, _, _) = gradients(scaled, jnp.float32(2.0**15))
    unscaled = gradients(scaled, None)[0]
    np.testing.assert_allclose(l16, l32, rtol=8 * EPS16)  # the loss reported: unscaled
    jaxpr = str(jax.make_jaxpr(scaled.gradients)(state.params, (), x, y, w, key, jnp.float32(2.0**15)))
    assert "f16[" in jaxpr and "dot_general" in jaxpr
    assert {leaf.dtype for leaf in jax.tree.leaves(g16)} == {np.dtype(np.float32)}
    for a, e, u in zip(jax.tree.leaves(g16), jax.tree.leaves(g32), jax.tree.leaves(unscaled)):
        bound = 8 * EPS16 * float(np.max(np.abs(e)))
        np.testing.assert_allclose(a, e, rtol=0, atol=bound)
        assert np.max(np.abs(np.asarray(u) - np.asarray(e))) > 10 * bound  # what the scale prevents


def test_a_step_with_a_non_finite_gradient_changes_nothing_but_the_scale(padded_batch):
    """initial_scale 2**30 overflows float16 (65504) in the backward pass: the step leaves
    params, batch-norm state, Adam's state, the step count and the EMA bit for bit as they
    were and halves the scale, until a scale fits; that step is the step of a trainer
    started at that scale (bit for bit) and close to the float32 step (Adam's first step
    is about lr * sign(g): within 1e-4 of its 1e-2 size)."""
    x, y, w = padded_batch
    model = fnn.mlp([FEATURES, HIDDEN, CLASSES], batchnorm=True)

    def trainer(initial_scale, dtype=jnp.float16):
        scaling = fnn.dynamic_loss_scale(initial_scale) if dtype == jnp.float16 else None
        options = dict(compute_dtype=dtype, loss_scaling=scaling, ema=fnn.ema(0.9))
        return fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy, **options)

    step = jax.jit(lambda t, s: t.train_step(s, (x, y, w))[0])
    start = trainer(2.0**30).init(0)
    state, skips = start, 0
    while int(state.step) == 0:
        before, state = state, step(trainer(2.0**30), state)
        if int(state.step) == 0:
            skips += 1
            chex.assert_trees_all_equal(state._replace(loss_scale=None), before._replace(loss_scale=None))
            assert float(state.loss_scale.scale) == float(before.loss_scale.scale) / 2
        assert skips < 30
    assert skips > 0 and int(state.loss_scale.skipped) == skips and int(state.loss_scale.good_steps) == 1
    fitting = 2.0**30 / 2**skips
    assert float(state.loss_scale.scale) == fitting
    direct = step(trainer(fitting), trainer(fitting).init(0))
    chex.assert_trees_all_equal(state._replace(loss_scale=None), direct._replace(loss_scale=None))
    float32 = step(trainer(fitting, None), trainer(fitting, None).init(0))
    chex.assert_trees_all_close(state.params, float32.params, rtol=0, atol=1e-4)


def test_a_float16_fit_learns_the_digits_and_resumes_bit_exactly(digits_300, tmp_path):
    """fit in float16 on 300 digits, 6 epochs: it learns (validation accuracy > 0.85 and
    within 0.03 of float32's), skips no step at the default scale, and a run stopped
    after 3 epochs and resumed equals the run done at once, loss scale included. A
    resume in float32 is refused."""
    x, y, xv, yv = digits_300
    model = fnn.mlp([64, 32, 10])
    options = dict(key=0, batch_size=50, validation=(xv, yv))
    half = fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy, compute_dtype=jnp.float16)
    full = fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy)
    run = fnn.fit(half, x, y, epochs=6, **options)
    reference = fnn.fit(full, x, y, epochs=6, **options)
    accuracy = float(run.history["val_accuracy"][-1])
    assert accuracy > 0.85 and abs(accuracy - float(reference.history["val_accuracy"][-1])) < 0.03
    assert int(run.train_state.loss_scale.skipped) == 0 and int(run.train_state.step) == 36
    path = tmp_path / "half.ckpt"
    fnn.fit(half, x, y, epochs=3, checkpoint=path, **options)
    resumed = fnn.fit(half, x, y, epochs=6, checkpoint=path, resume=True, **options)
    chex.assert_trees_all_equal(resumed.train_state, run.train_state)
    chex.assert_trees_all_equal(resumed.history, run.history)
    with pytest.raises(ValueError, match=r"the loss scale.s state differs \(compute_dtype float16"):
        fnn.fit(full, x, y, epochs=6, checkpoint=path, resume=True, **options)


def test_one_program_for_every_initial_scale_and_a_sweep_over_them(padded_batch):
    """initial_scale is a leaf: a sweep over two initial scales is one vmapped program and
    its members equal their fits alone; the overflowing one has skipped steps."""
    x, y, _ = padded_batch
    config = lambda scale: float16_trainer(loss_scaling=fnn.dynamic_loss_scale(scale))  # noqa: E731
    options = dict(epochs=2, batch_size=4)
    with count_compiles() as compiles:
        swept = fnn.sweep(config, x, y, grid={"scale": [2.0**10, 2.0**28]}, devices=1, **options)
    assert len(compiles) <= 2  # the program (and at most its initial state)
    skipped = np.asarray(swept.results.train_state.loss_scale.skipped)
    assert skipped[0] == 0 and skipped[1] > 0
    for i, scale in enumerate([2.0**10, 2.0**28]):
        alone = fnn.fit(config(scale), x, y, key=0, **options)
        member = jax.tree.map(lambda a, i=i: a[i], swept.results)
        chex.assert_trees_all_close(
            (member.train_state._replace(key=None), member.history),
            (alone.train_state._replace(key=None), alone.history),
            rtol=1e-5,
            atol=1e-6,
        )


def test_a_non_finite_gradient_at_the_floor_scale_is_a_divergence(padded_batch):
    """A loss whose gradient is NaN at every scale: the step is skipped while the scale
    backs off from 2**4 to the floor 1 (4 skips), then applied at the floor, and fit stops
    with a DivergenceError at update 0, as a float32 run does at once (not a run that
    skips every step and reports a finite loss)."""
    x, y, _ = padded_batch

    def nan_gradient_loss(predictions, targets, weights):  # sqrt at 0: value 0, gradient inf; times 0: NaN
        return fnn.cross_entropy(predictions, targets, weights) + 0.0 * jnp.sum(jnp.sqrt(predictions - predictions))

    nan_gradient = fnn.Loss(nan_gradient_loss, targets="labels")

    half = float16_trainer(nan_gradient, loss_scaling=fnn.dynamic_loss_scale(initial_scale=16.0))
    with pytest.raises(fnn.DivergenceError, match="update 0") as info:
        fnn.fit(half, x, y, key=0, epochs=3, batch_size=4)
    scale = info.value.result.train_state.loss_scale
    assert (float(scale.scale), int(scale.skipped), int(info.value.result.diverged_epoch)) == (1.0, 4, 1)
    with pytest.raises(fnn.DivergenceError, match="epoch 0 .*update 0"):
        fnn.fit(fnn.Trainer(half.model, half.optimizer, nan_gradient), x, y, key=0, epochs=3, batch_size=4)


# ---------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(initial_scale=0.0), "initial_scale"),
        (dict(initial_scale=float("inf")), "initial_scale"),
        (dict(initial_scale=2.0**200), "initial_scale"),  # float32 would hold inf
        (dict(min_scale=1e-45), "min_scale"),  # float32 would hold 0 (or a subnormal)
        (dict(factor=1.0), "factor"),
        (dict(period=0), "period"),
        (dict(period=2.5), "period"),
        (dict(min_scale=-1.0), "min_scale"),
        (dict(initial_scale=2.0, min_scale=4.0), "min_scale must be at most initial_scale"),
    ],
)
def test_bad_loss_scale_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=f"^{match}"):
        fnn.dynamic_loss_scale(**kwargs)


def test_loss_scaling_goes_with_float16_only():
    model = fnn.mlp([FEATURES, CLASSES])
    assert fnn.Trainer(model, fnn.sgd(0.1), compute_dtype="float16").loss_scaling == fnn.dynamic_loss_scale()
    for dtype in (None, jnp.bfloat16):
        with pytest.raises(ValueError, match="loss_scaling is for compute_dtype=jnp.float16"):
            fnn.Trainer(model, fnn.sgd(0.1), compute_dtype=dtype, loss_scaling=fnn.dynamic_loss_scale())
    with pytest.raises(ValueError, match=r"loss_scaling must be fnn.dynamic_loss_scale"):
        fnn.Trainer(model, fnn.sgd(0.1), compute_dtype=jnp.float16, loss_scaling=1024.0)
    with pytest.raises(ValueError, match="float16.*privacy"):
        fnn.Trainer(model, fnn.sgd(0.1), compute_dtype=jnp.float16, privacy=fnn.dp_sgd(1.0, 1.0))
    private = fnn.Trainer(model, fnn.sgd(0.1), privacy=fnn.dp_sgd(1.0, 1.0))
    params = private.init(0).params
    with pytest.raises(ValueError, match="loss scale only without privacy"):
        private.gradients(params, (), np.zeros((2, FEATURES), np.float32), np.zeros(2, np.int32), None, 0, 8.0)


def test_train_state_must_match_the_trainers_loss_scaling(padded_batch):
    x, y, _ = padded_batch
    half = float16_trainer()
    full = fnn.Trainer(half.model, half.optimizer, fnn.cross_entropy)
    options = dict(epochs=1, batch_size=4)
    with pytest.raises(ValueError, match=r"train_state has no loss scale"):
        fnn.fit(half, x, y, train_state=full.init(0), **options)
    with pytest.raises(ValueError, match=r"train_state carries a loss scale"):
        fnn.fit(full, x, y, train_state=half.init(0), **options)
    state = half.init(0)
    bad = [
        (state.loss_scale._replace(scale=jnp.float64(8.0)), "a float32 scale and int32"),
        (state.loss_scale._replace(skipped=jnp.int64(0)), "a float32 scale and int32"),
        (state.loss_scale._replace(scale=jnp.float32(0.0)), "scale must be positive and finite"),
    ]
    for loss_scale, match in bad:
        with pytest.raises(ValueError, match=match):
            fnn.fit(half, x, y, train_state=state._replace(loss_scale=loss_scale), **options)


def test_a_sweep_refuses_a_bad_factor_before_tracing(padded_batch):
    x, y, _ = padded_batch
    config = lambda factor: float16_trainer(loss_scaling=fnn.dynamic_loss_scale(factor=factor))  # noqa: E731
    with count_compiles() as compiles, pytest.raises(ValueError, match=r"grid point \{'factor': 0.5\}.*factor"):
        fnn.sweep(config, x, y, grid={"factor": [2.0, 0.5]}, epochs=1, batch_size=4, devices=1)
    assert compiles == []
