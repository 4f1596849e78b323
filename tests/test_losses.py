"""fnn.losses: values against NumPy, per-example weights and zero-weight padding,
stability at logits of +-1e4 (compiled and op by op), errors at the door, what a loss
declares (its targets, checked by check_targets, and its default metrics)."""

import functools
import inspect
import pickle

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from fnn import losses
from fnn.losses import accuracy, binary_accuracy, binary_cross_entropy, cross_entropy, mse

B, C = 6, 4  # examples, classes: one shape throughout, so compiled programs are shared
rng = np.random.default_rng(0)
LOGITS = rng.normal(size=(B, C)) * 2
LABELS = np.array([0, 3, 1, 1, 2, 3])
ONE_HOT = np.eye(C)[LABELS]
SOFT = rng.dirichlet(np.ones(C), size=B)
REGRESSION = rng.normal(size=(B, 3)), rng.normal(size=(B, 3))
BINARY = rng.normal(size=(B, 3)) * 2, rng.uniform(size=(B, 3))  # logits, soft targets in [0, 1]
WEIGHTS = np.array([0.5, 2.0, 0.0, 1.0, 3.0, 0.25])


def np_log_softmax(z):
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def np_cross_entropy(logits, targets):  # per example
    return -(targets * np_log_softmax(logits)).sum(axis=-1)


def np_bce(z, t):  # per example, the textbook form
    s = 1 / (1 + np.exp(-z))
    return (-(t * np.log(s)) - (1 - t) * np.log(1 - s)).reshape(len(z), -1).mean(axis=1)


def np_smooth(one_hot, s):
    return (1 - s) * one_hot + s / one_hot.shape[-1]


# case -> (loss, predictions, targets, kwargs, per-example NumPy reference)
CASES = {
    "mse": (mse, *REGRESSION, {}, ((REGRESSION[0] - REGRESSION[1]) ** 2).mean(axis=1)),
    "mse_1d": (mse, REGRESSION[0][:, 0], REGRESSION[1][:, 0], {}, (REGRESSION[0][:, 0] - REGRESSION[1][:, 0]) ** 2),
    "ce_int": (cross_entropy, LOGITS, LABELS, {}, np_cross_entropy(LOGITS, ONE_HOT)),
    "ce_one_hot": (cross_entropy, LOGITS, ONE_HOT, {}, np_cross_entropy(LOGITS, ONE_HOT)),
    "ce_soft": (cross_entropy, LOGITS, SOFT, {}, np_cross_entropy(LOGITS, SOFT)),
    "ce_smooth_int": (
        cross_entropy,
        LOGITS,
        LABELS,
        {"label_smoothing": 0.1},
        np_cross_entropy(LOGITS, np_smooth(ONE_HOT, 0.1)),
    ),
    "ce_smooth_soft": (
        cross_entropy,
        LOGITS,
        SOFT,
        {"label_smoothing": 0.3},
        np_cross_entropy(LOGITS, np_smooth(SOFT, 0.3)),
    ),
    "bce": (binary_cross_entropy, *BINARY, {}, np_bce(*BINARY)),
    "bce_1d": (binary_cross_entropy, BINARY[0][:, 0], BINARY[1][:, 0], {}, np_bce(BINARY[0][:, :1], BINARY[1][:, :1])),
    "accuracy_int": (accuracy, LOGITS, LABELS, {}, (LOGITS.argmax(1) == LABELS).astype(float)),
    "accuracy_one_hot": (accuracy, LOGITS, ONE_HOT, {}, (LOGITS.argmax(1) == LABELS).astype(float)),
    "binary_accuracy": (binary_accuracy, *BINARY, {}, ((BINARY[0] > 0) == (BINARY[1] > 0.5)).mean(axis=1)),
}


@functools.cache
def compiled(loss, **kwargs):
    return jax.jit(functools.partial(loss, **kwargs))


def evaluate(case, weights=None, pad=0, eager=False):
    """The case's loss, compiled (and eagerly: they must agree); ``pad`` appends rows of weight 0."""
    loss, predictions, targets, kwargs, _ = CASES[case]
    if pad:
        junk = np.random.default_rng(1)
        predictions = np.concatenate([predictions, junk.normal(size=(pad, *predictions.shape[1:])) * 5])
        targets = np.concatenate([targets, targets[:pad]])  # valid labels, otherwise arbitrary
        weights = np.concatenate([np.ones(B) if weights is None else weights, np.zeros(pad)])
    args = jnp.asarray(predictions), jnp.asarray(targets), None if weights is None else jnp.asarray(weights)
    value = compiled(loss, **kwargs)(*args)
    assert value.shape == ()
    if eager:  # the eager path also runs the checks on concrete labels
        np.testing.assert_allclose(loss(*args, **kwargs), value, rtol=1e-14)
    return float(value)


@pytest.mark.parametrize("case", CASES)
def test_against_numpy(case):
    np.testing.assert_allclose(evaluate(case, eager=True), CASES[case][-1].mean(), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_weighted_mean_formula(case):
    per_example = CASES[case][-1]
    np.testing.assert_allclose(evaluate(case, WEIGHTS), np.sum(WEIGHTS * per_example) / WEIGHTS.sum(), rtol=1e-12)


@pytest.mark.parametrize("case", CASES)
def test_zero_weight_rows_are_excluded(case):
    # A last mini-batch padded with rows of weight 0 gives the loss of the unpadded batch.
    np.testing.assert_allclose(evaluate(case, pad=3), evaluate(case), rtol=1e-14)
    np.testing.assert_allclose(evaluate(case, WEIGHTS, pad=3), evaluate(case, WEIGHTS), rtol=1e-14)


@pytest.mark.parametrize("dtype", [np.uint8, np.int32, np.int64])
def test_accuracy_takes_labels_of_any_integer_dtype(dtype):
    # uint8 as the MNIST files hold them, int32 as fnn.datasets gives them; the arg-max is int64 under x64
    value = jax.jit(accuracy)(jnp.asarray(LOGITS), jnp.asarray(LABELS.astype(dtype)))
    assert float(value) == np.mean(LOGITS.argmax(1) == LABELS)


def test_weighted_mean_with_all_weights_zero_is_zero():
    assert losses.weighted_mean(jnp.arange(3.0), jnp.zeros(3)) == 0.0
    assert losses.weighted_mean(jnp.arange(3.0)) == 1.0


def test_label_smoothing_may_be_traced():
    smoothing = jnp.asarray([0.0, 0.1, 0.3])
    sweep = jax.jit(jax.vmap(lambda s, z, y: cross_entropy(z, y, label_smoothing=s), in_axes=(0, None, None)))
    swept = sweep(smoothing, jnp.asarray(LOGITS), jnp.asarray(LABELS))
    for s, value in zip([0.0, 0.1, 0.3], swept):
        np.testing.assert_allclose(value, np_cross_entropy(LOGITS, np_smooth(ONE_HOT, s)).mean(), rtol=1e-12)


@pytest.mark.parametrize(
    "smoothing, error",
    [
        (1.5, r"^label_smoothing must lie in \[0, 1\); got 1.5"),
        (1.0, r"^label_smoothing must lie in \[0, 1\); got 1.0"),
        (-0.1, r"^label_smoothing must lie in \[0, 1\)"),
        (np.nan, r"^label_smoothing must lie in \[0, 1\)"),
        ("0.1", r"^label_smoothing must be a number or a numeric array; got '0.1' \(str\)"),
        (None, r"^label_smoothing must be a number or a numeric array; got None"),
    ],
)
def test_label_smoothing_outside_0_1_is_refused(smoothing, error):
    with pytest.raises(ValueError, match=error):
        cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS), label_smoothing=smoothing)
    with pytest.raises(ValueError, match=error):  # a partial's value stays concrete under jit
        jax.jit(functools.partial(cross_entropy, label_smoothing=smoothing))(jnp.asarray(LOGITS), jnp.asarray(LABELS))


# --- stability at +-1e4 in float32 -------------------------------------------------------


SMOOTHED_CE = functools.partial(cross_entropy, label_smoothing=0.3)


class TestStability(chex.TestCase):
    """Limits and gradients at logits of +-1e4 in float32, compiled (``with_jit``) and op
    by op (``without_jit``, where the label checks run too): the stable forms must survive
    XLA's rewrites under jit, and hold where a user calls a loss eagerly."""

    def value_and_grad_f32(self, loss, logits, targets):
        value_and_grad = self.variant(jax.value_and_grad(loss))
        value, grad = value_and_grad(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
        assert value.dtype == grad.dtype == jnp.float32
        chex.assert_tree_all_finite((value, grad))
        return float(value), np.asarray(grad)

    @chex.variants(with_jit=True, without_jit=True)
    def test_cross_entropy_stability(self):
        z = [[1e4, 0.0, -1e4]]
        assert self.value_and_grad_f32(cross_entropy, z, [0])[0] == 0.0  # confident and right
        np.testing.assert_allclose(
            self.value_and_grad_f32(cross_entropy, z, [1])[0], 1e4, rtol=1e-6
        )  # confident, wrong
        value, grad = self.value_and_grad_f32(cross_entropy, z, [2])
        np.testing.assert_allclose(value, 2e4, rtol=1e-6)
        np.testing.assert_allclose(grad, [[1, 0, -1]], atol=1e-6)  # softmax - one_hot
        value, _ = self.value_and_grad_f32(SMOOTHED_CE, z, [0])
        np.testing.assert_allclose(value, 0.1 * 1e4 + 0.1 * 2e4, rtol=1e-6)  # s/C on each wrong class

    @chex.variants(with_jit=True, without_jit=True)
    @parameterized.parameters((1e4, 1.0, 0.0, 0.0), (1e4, 0.0, 1e4, 1.0), (-1e4, 1.0, 1e4, -1.0), (-1e4, 0.0, 0.0, 0.0))
    def test_binary_cross_entropy_stability(self, z, t, expected, grad):
        value, g = self.value_and_grad_f32(binary_cross_entropy, [z], [t])
        assert value == expected  # exact limits
        np.testing.assert_allclose(g, [grad], atol=1e-7)  # sigmoid(z) - t


# --- errors at the door ------------------------------------------------------------------


@pytest.mark.parametrize("bad", [-1, C])
@pytest.mark.parametrize("loss", [cross_entropy, functools.partial(cross_entropy, label_smoothing=0.1)])
def test_labels_outside_the_classes(loss, bad):
    labels = LABELS.copy()
    labels[2] = bad
    with pytest.raises(ValueError, match=rf"labels must lie in \[0, {C}\).*\[{min(bad, 0)}, {max(bad, C - 1)}\]"):
        loss(jnp.asarray(LOGITS), jnp.asarray(labels))


def test_labels_of_wrong_shape_or_dtype():
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS[:5]))
    with pytest.raises(ValueError, match="labels must be integer class indices"):
        cross_entropy(jnp.asarray(LOGITS), jnp.asarray(LABELS, float))
    with pytest.raises(ValueError, match="logits must have shape"):
        cross_entropy(jnp.asarray(LOGITS[0]), jnp.asarray(LABELS[0]))
    with pytest.raises(ValueError, match=r"labels must have shape \(6,\)"):
        accuracy(jnp.asarray(LOGITS), jnp.asarray(LABELS[:5]))


@pytest.mark.parametrize("loss", [mse, cross_entropy, binary_cross_entropy, binary_accuracy])
def test_shape_mismatch_names_both(loss):
    with pytest.raises(ValueError, match=r"predictions .*\(6, 4\).* and targets \(6, 3\)"):
        loss(jnp.asarray(LOGITS), jnp.asarray(SOFT[:, :3]))


@pytest.mark.parametrize("case", ["mse", "ce_int", "bce", "accuracy_int"])
@pytest.mark.parametrize("weights", [np.ones(B - 1), np.ones((B, 1))], ids=["short", "rank2"])
def test_weights_of_wrong_shape(case, weights):
    loss, predictions, targets, kwargs, _ = CASES[case]
    with pytest.raises(ValueError, match=r"weights must have shape \(6,\)"):
        loss(jnp.asarray(predictions), jnp.asarray(targets), jnp.asarray(weights), **kwargs)


# --- what a loss declares: its targets and its default metrics ----------------------------


@losses.declare(targets="labels", metrics={"accuracy": accuracy, "loss_again": cross_entropy})
def declared_hinge(logits, labels, weights=None, *, margin=1.0):
    """A user's multiclass hinge loss, declared like the built-in classification loss."""
    true = jnp.take_along_axis(logits, labels[:, None], axis=-1)
    return losses.weighted_mean(jnp.sum(jnp.maximum(0, margin + logits - true), axis=-1) - margin, weights)


UNDECLARED = lambda p, t, w=None: cross_entropy(p, t, w)  # noqa: E731 - wrapping drops the declaration


def test_default_metrics():
    assert losses.default_metrics(cross_entropy) == {"accuracy": accuracy}
    assert losses.default_metrics(functools.partial(cross_entropy, label_smoothing=0.1)) == {"accuracy": accuracy}
    assert losses.default_metrics(binary_cross_entropy) == {"accuracy": binary_accuracy}
    assert losses.default_metrics(mse) == {}
    assert losses.default_metrics(lambda p, t, w=None: mse(p, t, w)) == {}
    assert losses.default_metrics(UNDECLARED) == {}
    hinge_metrics = {"accuracy": accuracy, "loss_again": cross_entropy}
    assert losses.default_metrics(declared_hinge) == hinge_metrics
    assert losses.default_metrics(functools.partial(functools.partial(declared_hinge), margin=2.0)) == hinge_metrics


OUT, BIN_OUT = (C,), (3,)  # the model's output shape for one example
FLOAT_LABELS, WIDE = LABELS.astype(float), np.eye(C + 1)[LABELS]
NAN_SOFT, BIG_PROBS = SOFT.copy(), BINARY[1].copy()
NAN_SOFT[1, 2], BIG_PROBS[3, 1], BIG_PROBS[0, 0] = np.nan, 1.5, -0.25
OUT_OF_RANGE = np.where(LABELS == 3, C, LABELS)
SIGNED_SOFT = ONE_HOT.copy()  # rows sum to 1, but one holds a negative "probability"
SIGNED_SOFT[2] = [1.25, -0.25, 0.0, 0.0]
PROBABILITIES = r"^y must hold probabilities: each row in \[0, 1\] summing to 1 \(to within 0.001\) along the last"
LABELS_EXPECTED = (
    r"y must be integer class labels of shape \[n\] in \[0, 4\), or one-hot/soft targets of shape \[n, 4\]"
)
HINT = r"if your loss takes integer class labels, declare it with fnn.losses.Loss\(loss, targets='labels'\)"
SMOOTHED = functools.partial(cross_entropy, label_smoothing=0.1)
# id -> (loss, targets, output shape, regex of the ValueError or None when accepted)
TARGETS = {
    "ce_int": (cross_entropy, LABELS, OUT, None),
    "ce_one_hot": (cross_entropy, ONE_HOT, OUT, None),
    "ce_int_one_hot": (cross_entropy, ONE_HOT.astype(int), OUT, None),
    "ce_soft": (cross_entropy, SOFT, OUT, None),
    "ce_out_of_range": (
        cross_entropy,
        OUT_OF_RANGE,
        OUT,
        r"^y must lie in \[0, 4\) for 4 classes; got values in \[0, 4\]$",
    ),
    "ce_negative": (cross_entropy, LABELS - 1, OUT, r"^y must lie in \[0, 4\).*\[-1, 2\]$"),
    "ce_float_labels": (cross_entropy, FLOAT_LABELS, OUT, rf"^{LABELS_EXPECTED}; got float64 of shape \(6,\)$"),
    "ce_soft_too_wide": (cross_entropy, WIDE, OUT, rf"^{LABELS_EXPECTED}; got float64 of shape \(6, 5\)$"),
    "ce_soft_not_finite": (cross_entropy, NAN_SOFT, OUT, r"^y holds 1 non-finite values"),
    "ce_soft_float32": (cross_entropy, SOFT.astype(np.float32), OUT, None),
    "ce_soft_within_tolerance": (cross_entropy, SOFT + 1e-4 / C, OUT, None),
    "ce_soft_all_negative": (  # fit(trainer, x, np.full((n, 3), -1.0)) trained to a loss of -3.71
        cross_entropy,
        np.full((B, C), -1.0),
        OUT,
        rf"{PROBABILITIES} \(class\) axis; got values in \[-1, -1\] and row sums in \[-4, -4\]$",
    ),
    "ce_soft_negative": (cross_entropy, SIGNED_SOFT, OUT, rf"{PROBABILITIES}.*values in \[-0.25, 1.25\]"),
    "ce_soft_rows_not_summing_to_1": (cross_entropy, 0.9 * SOFT, OUT, rf"{PROBABILITIES}.*row sums in \[0.9, 0.9\]$"),
    "ce_int_one_hot_doubled": (cross_entropy, 2 * ONE_HOT.astype(int), OUT, rf"{PROBABILITIES}.*row sums in \[2, 2\]$"),
    "ce_smoothed_soft_not_summing_to_1": (SMOOTHED, SOFT + 0.1, OUT, PROBABILITIES),
    "ce_no_class_axis": (cross_entropy, LABELS, (), r"^y cannot be class labels: .* no class axis"),
    "ce_smoothed_int": (SMOOTHED, LABELS, OUT, None),
    "ce_smoothed_out_of_range": (SMOOTHED, OUT_OF_RANGE, OUT, r"^y must lie in \[0, 4\)"),
    "ce_smoothed_soft_not_finite": (SMOOTHED, NAN_SOFT, OUT, r"^y holds 1 non-finite values"),
    "user_labels_int": (declared_hinge, LABELS, OUT, None),
    "user_labels_out_of_range": (declared_hinge, OUT_OF_RANGE, OUT, r"^y must lie in \[0, 4\)"),
    "user_labels_soft_negative": (declared_hinge, SIGNED_SOFT, OUT, PROBABILITIES),
    "bce": (binary_cross_entropy, BINARY[1], BIN_OUT, None),
    "bce_hard": (binary_cross_entropy, (BINARY[1] > 0.5).astype(np.int32), BIN_OUT, None),
    "bce_outside_0_1": (
        binary_cross_entropy,
        BIG_PROBS,
        BIN_OUT,
        r"^y must lie in \[0, 1\] \(probabilities\); got values in \[-0.25, 1.5\]$",
    ),
    "bce_not_finite": (binary_cross_entropy, np.where(BIG_PROBS > 1, np.inf, 0.5), BIN_OUT, r"^y holds 1 non-finite"),
    "bce_labels": (
        binary_cross_entropy,
        LABELS,
        BIN_OUT,
        r"^y must have shape \[n, 3\] to match the model's output; got",
    ),
    "mse": (mse, REGRESSION[1], BIN_OUT, None),
    "mse_1d": (mse, REGRESSION[1][:, 0], (), None),
    "mse_not_finite": (mse, np.where(BIG_PROBS > 1, np.nan, 0.5), BIN_OUT, r"^y holds 1 non-finite"),
    "mse_labels": (mse, LABELS, OUT, r"^y must have shape \[n, 4\] to match the model's output; got \(6,\)$"),
    "undeclared_same_shape": (UNDECLARED, SOFT, OUT, None),
    "undeclared_not_finite": (UNDECLARED, NAN_SOFT, OUT, r"^y holds 1 non-finite"),
    "undeclared_labels": (UNDECLARED, LABELS, OUT, rf"^y must have shape \[n, 4\] .*got \(6,\); {HINT}$"),
    "undeclared_float_labels": (UNDECLARED, FLOAT_LABELS, OUT, r"got \(6,\)$"),  # no hint: these are not int
}


@pytest.mark.parametrize("case", TARGETS)
def test_check_targets(case):
    loss, targets, output_shape, error = TARGETS[case]
    if error is None:
        assert losses.check_targets(loss, "y", jnp.asarray(targets), output_shape) is None
    else:
        with pytest.raises(ValueError, match=error):
            losses.check_targets(loss, "y", jnp.asarray(targets), output_shape)


def test_check_targets_names_the_argument():
    with pytest.raises(ValueError, match=r"^validation y must lie in \[0, 4\)"):
        losses.check_targets(cross_entropy, "validation y", OUT_OF_RANGE, [C])


@pytest.mark.parametrize(
    "case",
    ["ce_out_of_range", "ce_soft_not_finite", "ce_soft_negative", "ce_soft_rows_not_summing_to_1"]
    + ["bce_outside_0_1", "mse_not_finite"],
)
def test_check_targets_checks_shapes_but_not_values_of_traced_targets(case):
    loss, targets, output_shape, _ = TARGETS[case]

    def check(y):
        losses.check_targets(loss, "y", y, output_shape)
        return y

    jax.eval_shape(check, targets)  # the values are unknown under a trace
    with pytest.raises(ValueError, match="must have shape|must be integer class labels"):
        jax.eval_shape(check, targets[:, None])  # the shape is known


def test_a_declared_loss_is_its_function():
    assert isinstance(cross_entropy, losses.Loss) and cross_entropy.targets == "labels"
    assert (cross_entropy.__name__, cross_entropy.__module__) == ("cross_entropy", "fnn.losses")
    assert cross_entropy.__doc__.startswith("Softmax cross-entropy from logits")
    assert list(inspect.signature(cross_entropy).parameters) == ["logits", "labels", "weights", "label_smoothing"]
    assert repr(binary_cross_entropy) == "Loss(binary_cross_entropy, targets='probabilities', metrics=['accuracy'])"
    z, y = jnp.asarray(LOGITS), jnp.asarray(LABELS)
    np.testing.assert_allclose(declared_hinge(z, y, margin=2.0), declared_hinge.fn(z, y, None, margin=2.0), rtol=1e-15)


def test_a_loss_hashes_and_compares_by_value():
    # A Loss is a static field of the jit-cached Trainer: equal declarations share a program.
    twin = losses.Loss(cross_entropy.fn, targets="labels", metrics=[("accuracy", accuracy)])
    assert twin == cross_entropy and hash(twin) == hash(cross_entropy) and twin is not cross_entropy
    assert losses.Loss(cross_entropy.fn, targets="labels") != cross_entropy  # other metrics
    assert losses.Loss(cross_entropy.fn, metrics={"accuracy": accuracy}) != cross_entropy  # other targets
    assert len({mse, binary_cross_entropy, cross_entropy, twin, SMOOTHED}) == 4


def test_a_loss_pickles():
    for loss in (mse, cross_entropy, binary_cross_entropy, declared_hinge):  # declared on their def: by name
        assert pickle.loads(pickle.dumps(loss)) is loss
    redeclared = losses.Loss(cross_entropy, metrics={"hinge": declared_hinge})  # by its fields
    assert pickle.loads(pickle.dumps(redeclared)) == redeclared


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fn=3), "fn must be a function"),
        (
            dict(fn=mse.fn, targets="classes"),
            r"targets must be one of \['labels', 'probabilities', 'same_shape'\]; got 'cl",
        ),
        (dict(fn=mse.fn, metrics={"r2": 0.5}), "metrics must map names to functions"),
    ],
)
def test_a_bad_declaration_is_a_value_error(kwargs, match):
    with pytest.raises(ValueError, match=match):
        losses.Loss(**kwargs)


def test_zero_weight_rows_never_count_even_when_not_finite():
    per_example = jnp.array([1.0, 3.0, jnp.inf, jnp.nan])
    assert float(losses.weighted_mean(per_example, jnp.array([1.0, 1.0, 0.0, 0.0]))) == 2.0
