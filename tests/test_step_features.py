"""Options of the training step: gradient accumulation (fnn.accumulation), DP-SGD's
per-example clipping and noise (fnn.privacy) and mixed precision (fnn.precision).

Tiny models on a few dozen random examples: every program here compiles in well under a
second. The DP-SGD step is checked in float64 against a Python loop over examples; the
accumulated step against one step on the whole mini-batch (float32, two programs)."""

import operator

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import assert_trees_close_f32

import fnn
from fnn.train import noise_key

FEATURES, HIDDEN, CLASSES = 5, 7, 3  # the sizes of conftest's padded_batch


def trainer(optimizer=None, **options):
    return fnn.Trainer(
        fnn.mlp([FEATURES, HIDDEN, CLASSES]),
        optimizer or fnn.sgd(0.1),
        fnn.cross_entropy,
        regularizer=fnn.l2(1e-2),
        **options,
    )


# ------------------------------------------------------------------ gradient accumulation


@pytest.mark.parametrize("optimizer", [fnn.sgd(0.1, momentum=0.9), fnn.adam(1e-2)], ids=["sgd", "adam"])
def test_k_micro_batches_give_the_update_of_one_batch_of_k_b(padded_batch, optimizer):
    """accumulate=3 on 12 rows (3 micro-batches of 4, padded rows included) == one step on
    the 12: the same gradient to float32 rounding, one update (the optimizer's count and
    the step count 1), the whole batch's loss and accuracy. Gradient bound: each
    gradient element sums 12 examples' terms through 7 hidden and 3 output units, plus
    the micro-batches' scaling by W_i / W: k = 64 covers both sides' roundings."""
    x, y, w = padded_batch
    plain, accumulated = trainer(optimizer), trainer(optimizer, accumulate=3)
    state = plain.init(0)

    @jax.jit
    def step(t, state):  # the gradient and the update in one program
        return t.gradients(state.params, (), x, y, w, jax.random.key(1))[0], t.train_step(state, (x, y, w))

    (g1, (one, m1)), (gk, (acc, mk)) = step(plain, state), step(accumulated, state)
    assert_trees_close_f32(gk, g1, k=64)
    # an update across two programs (tests/README.md): Adam's first step divides by |g|
    chex.assert_trees_all_close(acc.params, one.params, rtol=1e-5, atol=1e-6)
    assert int(acc.step) == int(acc.opt_state.count) == 1
    np.testing.assert_allclose(mk["loss"], m1["loss"], rtol=1e-6)
    assert float(mk["accuracy"]) == float(m1["accuracy"])


def test_accumulation_in_fit_counts_updates_and_a_resume_with_another_accumulate_is_refused(padded_batch, tmp_path):
    """fit with accumulate=2 and batch_size=8 on 12 examples: 2 updates an epoch (the
    second padded), counted by the step and the optimizer, and the schedule's learning
    rate follows them. Its checkpoint refuses a call with another accumulate, or with
    privacy added."""
    x, y, _ = padded_batch
    schedule = fnn.schedules.exponential_decay(0.1, 0.5, 1)  # halves every update
    path = tmp_path / "run.ckpt"
    options = dict(key=0, epochs=2, batch_size=8, checkpoint=path)
    run = fnn.fit(trainer(fnn.sgd(schedule), accumulate=2), x, y, **options)
    assert int(run.train_state.step) == int(run.train_state.opt_state.count) == 4
    np.testing.assert_allclose(run.history["lr"], [0.05, 0.0125])  # the last update's: 0.1 * 0.5**(1, 3)
    with pytest.raises(ValueError, match=r"written for trainer\.accumulate='2'; this call has trainer\.accumulate='1'"):
        fnn.fit(trainer(fnn.sgd(schedule)), x, y, **options, resume=True)
    private = trainer(fnn.sgd(schedule), accumulate=2, privacy=fnn.dp_sgd(1.0, 0.0))
    with pytest.raises(ValueError, match=r"written for trainer\.privacy\.clip_norm=None; this call has"):
        fnn.fit(private, x, y, **options, resume=True)


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "2", None])
def test_a_bad_accumulate_is_refused(value):
    with pytest.raises(ValueError, match="accumulate"):
        trainer(accumulate=value)


def test_a_batch_size_accumulate_does_not_divide_is_refused(padded_batch):
    x, y, _ = padded_batch
    message = r"batch_size must be divisible by the trainer's accumulate.*batch_size=9 and accumulate=2"
    with pytest.raises(ValueError, match=message):
        params = trainer().init(0).params
        fnn.data_checks.check_run_data(trainer().model, fnn.cross_entropy, params, (), x, y, None, 9, accumulate=2)
    with pytest.raises(ValueError, match=message):
        fnn.fit(trainer(accumulate=2), x, y, key=0, epochs=1, batch_size=9)
    with pytest.raises(ValueError, match=message):
        fnn.sweep(lambda lr: trainer(fnn.sgd(lr), accumulate=2), x, y, grid={"lr": [0.1]}, epochs=1, batch_size=9)


def test_a_sweep_description_records_the_trainer():
    """fnn.sweeps.resume.describe with the trainer: another accumulate or a privacy added
    or removed is a difference (fnn.resume.compare, in both directions)."""
    from fnn import resume
    from fnn.sweeps.resume import describe

    carry = fnn.loop.Loop(fnn.loop.FitResult(*[np.zeros(1)] * 10), np.zeros(1), np.zeros(1))
    carry = carry._replace(result=carry.result._replace(history={}))

    def described(t):
        return describe({"seed": [0]}, carry, np.zeros(2), np.zeros(2), {"entry": "fnn.sweep"}, {}, trainer=t)

    plain = described(trainer())
    others = [
        (trainer(accumulate=2), "accumulate"),
        (trainer(privacy=fnn.dp_sgd(1.0, 0.5)), "privacy"),
        (trainer(compute_dtype=jnp.bfloat16), "compute_dtype"),
    ]
    for other, name in others:
        for saved, call in [(plain, described(other)), (described(other), plain)]:
            with pytest.raises(ValueError, match=rf"trainer\.{name}"):
                resume.compare("sweep.ckpt", saved, call, extendable=())


# ------------------------------------------------------------------------------- DP-SGD


CLIP = 1.0


@pytest.fixture(scope="module")
def loop_over_examples(padded_batch):
    """DP-SGD's clipped sum by a Python loop over the examples (Abadi et al. 2016,
    Algorithm 1), in float64: the data (the padded rows far from the rest: they must count
    for nothing), float64 params, and each real example's gradient clipped to ``CLIP``,
    summed; also the examples' norms and mean loss."""
    x, y, w = padded_batch
    x = x.astype(np.float64)
    x[-3:] *= 1e3
    model = trainer().model
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init(jax.random.key(0))[0])
    example = jax.jit(jax.value_and_grad(lambda p, xj, yj: fnn.cross_entropy(model.apply(p, xj[None]), yj[None])))
    total, norms, losses = jax.tree.map(np.zeros_like, params), [], []
    for j in np.flatnonzero(w > 0):
        loss, g = example(params, x[j], y[j])
        norm = np.sqrt(sum(np.sum(np.square(leaf)) for leaf in jax.tree.leaves(g)))
        scale = 1 / max(1.0, norm / CLIP)
        total = jax.tree.map(lambda s, gj, c=scale: s + np.asarray(gj) * c, total, g)
        norms.append(norm)
        losses.append(float(loss))
    return (x, y, w), params, total, np.asarray(norms), np.mean(losses)


@pytest.mark.parametrize("sigma, accumulate", [(0.0, 1), (0.7, 3)])
def test_dp_sgd_equals_a_loop_over_examples_in_float64(loop_over_examples, sigma, accumulate):
    """The DP-SGD update in float64 == the loop over examples: the clipped sum, noise
    N(0, sigma² C²) drawn as documented (fnn.privacy.DPSGD.noise: leaf i from
    split(noise_key(key), leaves)[i]; the same key draws the same noise), divided by the 9
    real examples, plus the regularizer's gradient, then SGD's step. Without noise alone,
    with noise over 3 micro-batches (the noise added once); padded rows count nothing."""
    batch, params, clipped, norms, loss = loop_over_examples
    assert np.any(norms > CLIP) and np.any(norms < CLIP)  # some examples are clipped, some not
    t = trainer(privacy=fnn.dp_sgd(CLIP, sigma), accumulate=accumulate)
    key = jax.random.key(5)
    leaves, treedef = jax.tree.flatten(clipped)
    keys = jax.random.split(noise_key(key), len(leaves))
    noise = [sigma * CLIP * np.asarray(jax.random.normal(k, s.shape, s.dtype)) for k, s in zip(keys, leaves)]
    noised = jax.tree.unflatten(treedef, [s + n for s, n in zip(leaves, noise)])
    penalty = jax.tree.map(
        lambda p: 1e-2 * np.asarray(p) if p.ndim == 2 else np.zeros(p.shape), params
    )  # l2(1e-2): strength * w, weights only
    state = fnn.TrainState(params, (), t.optimizer.init(params), *[jnp.zeros((), jnp.int32)] * 2, key)
    new, metrics = jax.jit(t.train_step)(state, batch, key)  # SGD(0.1): params - 0.1 * grads
    expected = jax.tree.map(lambda p, s, r: p - 0.1 * (s / 9 + r), params, noised, penalty)
    chex.assert_trees_all_close(new.params, expected, rtol=1e-12, atol=1e-14)
    assert int(new.step) == int(new.opt_state.count) == 1
    np.testing.assert_allclose(metrics["loss"], loss, rtol=1e-12)


def test_dp_sgd_noise_follows_the_key(padded_batch):
    x, y, w = padded_batch
    t = trainer(privacy=fnn.dp_sgd(1.0, 1.0))
    params = t.init(0).params
    grads = jax.jit(lambda key: t.gradients(params, (), x, y, w, key)[0])
    a, b, c = (grads(jax.random.key(k)) for k in (1, 1, 2))
    chex.assert_trees_all_equal(a, b)
    assert not np.allclose(a[0]["w"], c[0]["w"])


def test_dp_sgd_dropout_masks_follow_the_examples(padded_batch):
    """With dropout, the pass that measures an example's norm and the pass that sums it
    draw the same mask (one real example, clipped: the gradient's norm is exactly C), and
    example j's key follows its row, also over 3 micro-batches (the same gradient)."""
    x, y, _ = padded_batch
    w = np.zeros(len(y), np.float32)
    w[4] = 1
    clip = 1e-3  # every example's gradient is longer

    def grads(accumulate):
        t = fnn.Trainer(
            fnn.mlp([FEATURES, HIDDEN, CLASSES], dropout=0.5),
            fnn.sgd(0.1),
            fnn.cross_entropy,
            privacy=fnn.dp_sgd(clip, 0.0),
            accumulate=accumulate,
        )
        return jax.jit(t.gradients)(t.init(0).params, (), x, y, w, jax.random.key(3))[0]

    alone, accumulated = grads(1), grads(3)
    norm = np.sqrt(sum(np.sum(np.square(np.asarray(g, np.float64))) for g in jax.tree.leaves(alone)))
    np.testing.assert_allclose(norm, clip, rtol=1e-5)
    chex.assert_trees_all_close(accumulated, alone, rtol=1e-5, atol=1e-10)


def test_a_sweep_over_noise_multipliers_equals_its_members_alone(padded_batch):
    """Two noise multipliers in one vmapped program (traced leaves of the DPSGD) == each
    run alone: the same key, the same noise, scaled by each member's multiplier."""
    x, y, _ = padded_batch

    def config(noise=1.0):
        return trainer(fnn.sgd(0.1), privacy=fnn.dp_sgd(1.0, noise))

    options = dict(epochs=1, batch_size=4)
    noises = [0.0, 2.0]
    swept = fnn.sweep(config, x, y, grid={"noise": noises}, devices=1, **options)
    assert list(swept.hyperparameters["noise"]) == noises
    for i, noise in enumerate(noises):
        alone = fnn.fit(config(noise), x, y, key=0, **options)
        member = jax.tree.map(operator.itemgetter(i), (swept.results.train_state.params, swept.results.history))
        chex.assert_trees_all_close(member, (alone.train_state.params, alone.history), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: fnn.dp_sgd(0.0, 1.0), r"clip_norm must lie in \(0"),
        (lambda: fnn.dp_sgd(1.0, -0.5), r"noise_multiplier must lie in \[0"),
        (lambda: fnn.dp_sgd("1", 1.0), "clip_norm must be a number"),
        (lambda: fnn.dp_sgd(1.0, None), "noise_multiplier must be a number"),
        (lambda: trainer(privacy=fnn.clip_by_global_norm(fnn.sgd(0.1), 1.0)), "privacy must be fnn.dp_sgd"),
        (
            lambda: fnn.Trainer(fnn.mlp([5, 4, 3], batchnorm=True), fnn.sgd(0.1), privacy=fnn.dp_sgd(1.0, 1.0)),
            "privacy .DP-SGD. needs per-example gradients, and this model has state",
        ),
    ],
)
def test_bad_privacy_is_refused(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_a_sweep_refuses_a_bad_noise_multiplier_before_compiling(padded_batch):
    x, y, _ = padded_batch
    config = lambda noise: trainer(privacy=fnn.dp_sgd(1.0, noise))  # noqa: E731
    with pytest.raises(ValueError, match=r"grid point \{'noise': -1.0\} .*noise_multiplier must lie in \[0"):
        fnn.sweep(config, x, y, grid={"noise": [1.0, -1.0]}, epochs=1, batch_size=4)


# ------------------------------------------------------------------------ mixed precision


def test_bfloat16_computes_in_bfloat16_and_keeps_float32(padded_batch):
    """compute_dtype=bfloat16 on a batch-norm and dropout MLP (strict dtype promotion: every
    cast explicit): the matmuls run in bfloat16, the gradient, loss, params, optimizer
    state and running statistics stay float32, and the gradient is the float32 one to
    bfloat16 rounding: normwise within k = 8 bfloat16 epsilons (2**-8 each) of its
    largest element (bfloat16 keeps 8 significant bits; each element sums 12 examples'
    terms through two layers, whose errors mostly cancel: measured below 2 epsilons)."""
    x, y, w = padded_batch
    model = fnn.mlp([FEATURES, HIDDEN, CLASSES], batchnorm=True, dropout=0.1)
    full = fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy)
    mixed = fnn.Trainer(model, fnn.adam(1e-2), fnn.cross_entropy, compute_dtype=jnp.bfloat16)
    state = full.init(0)
    key = jax.random.key(1)

    @jax.jit
    def step(t, state):
        return t.gradients(state.params, state.model_state, x, y, w, key), t.train_step(state, (x, y, w))

    (g32, (l32, _, _)), _ = step(full, state)
    (g16, (l16, model_state, predictions)), (new, metrics) = step(mixed, state)
    jaxpr = str(jax.make_jaxpr(mixed.gradients)(state.params, state.model_state, x, y, w, key))
    assert "bf16[12,7] = dot_general" in jaxpr
    assert {leaf.dtype for leaf in jax.tree.leaves((g16, new.params, new.opt_state.mu, model_state))} == {
        np.dtype(np.float32)
    }
    assert l16.dtype == predictions.dtype == metrics["loss"].dtype == np.float32
    for a, e in zip(jax.tree.leaves(g16), jax.tree.leaves(g32)):
        np.testing.assert_allclose(a, e, rtol=0, atol=8 * 2**-8 * float(np.max(np.abs(e))))
    np.testing.assert_allclose(l16, l32, rtol=8 * 2**-8)


@pytest.mark.parametrize(
    "value, match", [("int32", "floating dtype"), ("half-ish", "floating"), (object(), "floating")]
)
def test_a_bad_compute_dtype_is_refused(value, match):
    with pytest.raises(ValueError, match=f"compute_dtype.*{match}"):
        trainer(compute_dtype=value)
