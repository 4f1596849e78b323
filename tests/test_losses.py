"""fnn.losses: values against NumPy, per-example weights and zero-weight padding,
stability at logits of +-1e4, errors at the door, default metrics."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

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
        cross_entropy, LOGITS, LABELS, {"label_smoothing": 0.1}, np_cross_entropy(LOGITS, np_smooth(ONE_HOT, 0.1))
    ),
    "ce_smooth_soft": (
        cross_entropy, LOGITS, SOFT, {"label_smoothing": 0.3}, np_cross_entropy(LOGITS, np_smooth(SOFT, 0.3))
    ),
    "bce": (binary_cross_entropy, *BINARY, {}, np_bce(*BINARY)),
    "bce_1d": (binary_cross_entropy, BINARY[0][:, 0], BINARY[1][:, 0], {}, np_bce(BINARY[0][:, :1], BINARY[1][:, :1])),
    "accuracy_int": (accuracy, LOGITS, LABELS, {}, (LOGITS.argmax(1) == LABELS).astype(float)),
    "accuracy_one_hot": (accuracy, LOGITS, ONE_HOT, {}, (LOGITS.argmax(1) == LABELS).astype(float)),
    "binary_accuracy": (
        binary_accuracy, *BINARY, {}, ((BINARY[0] > 0) == (BINARY[1] > 0.5)).mean(axis=1)
    ),
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


def test_weighted_mean_with_all_weights_zero_is_zero():
    assert losses.weighted_mean(jnp.arange(3.0), jnp.zeros(3)) == 0.0
    assert losses.weighted_mean(jnp.arange(3.0)) == 1.0


def test_label_smoothing_may_be_traced():
    smoothing = jnp.asarray([0.0, 0.1, 0.3])
    sweep = jax.jit(jax.vmap(lambda s, z, y: cross_entropy(z, y, label_smoothing=s), in_axes=(0, None, None)))
    swept = sweep(smoothing, jnp.asarray(LOGITS), jnp.asarray(LABELS))
    for s, value in zip([0.0, 0.1, 0.3], swept):
        np.testing.assert_allclose(value, np_cross_entropy(LOGITS, np_smooth(ONE_HOT, s)).mean(), rtol=1e-12)


# --- stability at +-1e4 in float32 -------------------------------------------------------


SMOOTHED_CE = functools.partial(cross_entropy, label_smoothing=0.3)


@functools.cache
def compiled_value_and_grad(loss):
    return jax.jit(jax.value_and_grad(loss))


def value_and_grad_f32(loss, logits, targets):
    value, grad = compiled_value_and_grad(loss)(jnp.asarray(logits, jnp.float32), jnp.asarray(targets))
    assert value.dtype == grad.dtype == jnp.float32
    assert np.isfinite(value) and np.all(np.isfinite(grad))
    return float(value), np.asarray(grad)


def test_cross_entropy_stability():
    z = [[1e4, 0.0, -1e4]]
    assert value_and_grad_f32(cross_entropy, z, [0])[0] == 0.0  # confident and right
    np.testing.assert_allclose(value_and_grad_f32(cross_entropy, z, [1])[0], 1e4, rtol=1e-6)  # confident, wrong
    value, grad = value_and_grad_f32(cross_entropy, z, [2])
    np.testing.assert_allclose(value, 2e4, rtol=1e-6)
    np.testing.assert_allclose(grad, [[1, 0, -1]], atol=1e-6)  # softmax - one_hot
    value, _ = value_and_grad_f32(SMOOTHED_CE, z, [0])
    np.testing.assert_allclose(value, 0.1 * 1e4 + 0.1 * 2e4, rtol=1e-6)  # s/C on each wrong class


@pytest.mark.parametrize(
    "z, t, expected, grad",
    [(1e4, 1.0, 0.0, 0.0), (1e4, 0.0, 1e4, 1.0), (-1e4, 1.0, 1e4, -1.0), (-1e4, 0.0, 0.0, 0.0)],
)
def test_binary_cross_entropy_stability(z, t, expected, grad):
    value, g = value_and_grad_f32(binary_cross_entropy, [z], [t])
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


def test_default_metrics():
    assert losses.default_metrics(cross_entropy) == {"accuracy": accuracy}
    assert losses.default_metrics(functools.partial(cross_entropy, label_smoothing=0.1)) == {"accuracy": accuracy}
    assert losses.default_metrics(binary_cross_entropy) == {"accuracy": binary_accuracy}
    assert losses.default_metrics(mse) == {}
    assert losses.default_metrics(lambda p, t, w=None: mse(p, t, w)) == {}


def test_zero_weight_rows_never_count_even_when_not_finite():
    per_example = jnp.array([1.0, 3.0, jnp.inf, jnp.nan])
    assert float(losses.weighted_mean(per_example, jnp.array([1.0, 1.0, 0.0, 0.0]))) == 2.0
