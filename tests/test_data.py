"""fnn.data: random splits, train-only standardization, one-hot labels, image preparation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32

from fnn.data import one_hot, prepare_images, standardize, train_test_split
from fnn.datasets import Dataset


def toy(n=50, features=3):
    x = np.arange(n * features, dtype=np.float32).reshape(n, features)
    return x, np.arange(n, dtype=np.int32)  # y[i] identifies row i of x


# --- train_test_split --------------------------------------------------------------------


@pytest.mark.parametrize("as_jax", [False, True], ids=["numpy", "jax"])
def test_split_is_a_partition(as_jax):
    x, y = toy()
    if as_jax:
        x, y = jnp.asarray(x), jnp.asarray(y)
    split = train_test_split(jax.random.key(0), x, y, 0.2)
    assert isinstance(split, Dataset)
    chex.assert_shape([split.x_train, split.x_test], [(40, 3), (10, 3)])
    assert isinstance(split.x_train, type(x))  # NumPy in, NumPy out
    ids = np.concatenate([np.asarray(split.y_train), np.asarray(split.y_test)])
    assert sorted(ids.tolist()) == list(range(50))  # nothing lost, nothing duplicated
    for xs, ys in ((split.x_train, split.y_train), (split.x_test, split.y_test)):
        np.testing.assert_array_equal(np.asarray(xs), np.asarray(x)[np.asarray(ys)])  # rows stay paired
        assert np.all(np.diff(np.asarray(ys)) > 0)  # original order kept


def test_split_depends_only_on_the_key():
    x, y = toy()
    a = train_test_split(jax.random.key(1), x, y, 0.3)
    b = train_test_split(jax.random.key(1), x, y, 0.3)
    c = train_test_split(jax.random.key(2), x, y, 0.3)
    raw = train_test_split(jax.random.PRNGKey(1), x, y, 0.3)  # raw uint32 keys work too
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert raw.y_test.shape == (15,)


def test_split_takes_an_int_seed_as_fit_does():
    """key=1 is jax.random.key(1) (and its raw form), also stratified; other kinds are
    refused by name (JAX's own TypeError is not an answer)."""
    x, y = toy()
    seeded, typed = train_test_split(1, x, y, 0.3), train_test_split(jax.random.key(1), x, y, 0.3)
    np.testing.assert_array_equal(seeded.y_test, typed.y_test)
    np.testing.assert_array_equal(seeded.y_test, train_test_split(jax.random.PRNGKey(1), x, y, 0.3).y_test)
    stratified = train_test_split(np.int64(1), x, y, 0.3, stratify=y)
    np.testing.assert_array_equal(stratified.y_test, train_test_split(jax.random.key(1), x, y, 0.3, stratify=y).y_test)
    for key in ("1", 1.0, None):
        with pytest.raises(ValueError, match="key must be an int seed or a jax.random key"):
            train_test_split(key, x, y, 0.3)


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5, float("nan")])
def test_split_rejects_fraction_outside_open_interval(fraction):
    with pytest.raises(ValueError, match="test_fraction"):
        train_test_split(jax.random.key(0), *toy(), fraction)


def test_split_rejects_empty_parts_and_mismatched_lengths():
    x, y = toy(n=10)
    with pytest.raises(ValueError, match="test_fraction=0.01 of 10 examples gives 0"):
        train_test_split(jax.random.key(0), x, y, 0.01)
    with pytest.raises(ValueError, match="x and y must have the same number of examples.*x: 10, y: 9"):
        train_test_split(jax.random.key(0), x, y[:9], 0.5)


def imbalanced(n_per_class=(50, 31, 7, 1, 12)):
    """Inputs whose row i holds i, and labels with very unequal class sizes (one class of 1)."""
    y = np.repeat(np.arange(len(n_per_class)), n_per_class).astype(np.int32)
    y = np.random.default_rng(0).permutation(y)  # classes interleaved, not in blocks
    return np.arange(y.size, dtype=np.float32)[:, None] * np.ones((1, 2), np.float32), y


@pytest.mark.parametrize("fraction", [0.1, 0.25, 0.5, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stratified_split_keeps_class_proportions(fraction, seed):
    x, y = imbalanced()
    split = train_test_split(jax.random.key(seed), x, y, fraction, stratify=y)
    n = y.size
    assert split.y_test.size == round(fraction * n)  # the same size as an unstratified split
    counts, held = np.bincount(y), np.bincount(split.y_test, minlength=5)
    assert np.all(np.abs(held - fraction * counts) < 1)  # each class within one example of its share
    assert np.array_equal(held + np.bincount(split.y_train, minlength=5), counts)
    rows = np.concatenate([split.x_train[:, 0], split.x_test[:, 0]]).astype(int)
    assert sorted(rows.tolist()) == list(range(n))  # disjoint and covering
    for xs, ys in ((split.x_train, split.y_train), (split.x_test, split.y_test)):
        np.testing.assert_array_equal(ys, y[xs[:, 0].astype(int)])  # rows stay paired with their labels
        assert np.all(np.diff(xs[:, 0]) > 0)  # original order kept


def test_stratified_split_is_seeded_and_random_within_classes():
    x, y = imbalanced()
    a = train_test_split(jax.random.key(3), x, y, 0.3, stratify=y)
    b = train_test_split(jax.random.key(3), x, y, 0.3, stratify=y)
    c = train_test_split(jax.random.key(4), x, y, 0.3, stratify=y)
    np.testing.assert_array_equal(a.x_test, b.x_test)  # the same key gives the same split
    assert not np.array_equal(a.x_test, c.x_test)  # another key, other examples ...
    np.testing.assert_array_equal(np.bincount(a.y_test), np.bincount(c.y_test))  # ... the same class counts
    held = {tuple(train_test_split(jax.random.key(k), x, y, 0.3, stratify=y).x_test[:, 0]) for k in range(20)}
    assert len(held) == 20  # not a fixed choice within each class


def test_stratified_split_by_other_labels_and_types():
    x, y = toy(n=40)  # y identifies the rows; stratify by a separate group label
    groups = np.array(["a", "b"] * 20)
    split = train_test_split(jax.random.key(0), jnp.asarray(x), jnp.asarray(y), 0.25, stratify=groups)
    assert isinstance(split.x_train, jax.Array)  # JAX in, JAX out, also when stratified
    held_groups = groups[np.asarray(split.y_test)]
    assert (held_groups == "a").sum() == (held_groups == "b").sum() == 5
    flags = np.arange(40) < 10  # booleans are class labels too
    split = train_test_split(jax.random.key(0), x, y, 0.5, stratify=flags)
    assert flags[split.y_test].sum() == 5


def test_stratified_split_rejects_bad_labels():
    x, y = toy(n=10)
    with pytest.raises(ValueError, match=r"stratify must be a 1-D array of n=10 class labels.*\(9,\)"):
        train_test_split(jax.random.key(0), x, y, 0.5, stratify=y[:9])
    with pytest.raises(ValueError, match=r"stratify must be a 1-D array.*\(10, 1\)"):
        train_test_split(jax.random.key(0), x, y, 0.5, stratify=y[:, None])
    with pytest.raises(ValueError, match="stratify must hold class labels.*float32"):
        train_test_split(jax.random.key(0), x, y, 0.5, stratify=x[:, 0])


def test_unstratified_split_is_unchanged():
    """``stratify=None`` is the plain split: the first round(f n) of the key's permutation."""
    x, y = toy()
    split = train_test_split(jax.random.key(5), x, y, 0.2)
    perm = np.asarray(jax.random.permutation(jax.random.key(5), 50))
    np.testing.assert_array_equal(split.y_test, np.sort(perm[:10]))


# --- standardize -------------------------------------------------------------------------


def test_standardize_uses_training_statistics_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, (200, 4)).astype(np.float32)
    test = rng.normal(-1.0, 5.0, (50, 4)).astype(np.float32)
    (train_s, test_s), (mean, std) = standardize(train, test)
    chex.assert_shape([mean, std], (1, 4))
    # float32 means and stds over n = 200 rows, in any order: each within n eps of its terms'
    # magnitudes (mean|x| for a mean; the standardized values for a std, relative to 1)
    m, s = train.mean(0, dtype=np.float64), train.std(0, dtype=np.float64)
    terms, k = np.abs(train).mean(0, dtype=np.float64), len(train) * EPS32
    assert_close_f32(train_s.mean(0), np.zeros(4), atol=k * (terms / s + 1))
    assert_close_f32(train_s.std(0), np.ones(4), atol=k)
    assert_close_f32(mean[0], m, atol=k * terms)
    assert_close_f32(test_s, (test - m) / s, atol=k * ((terms + np.abs(test) + np.abs(m)) / s + np.abs(test - m) / s))
    assert train_s.dtype == test_s.dtype == jnp.float32
    assert abs(float(test_s.mean())) > 0.5  # not re-centred on its own statistics


def test_standardize_constant_features_and_integer_input():
    train = np.zeros((6, 3), np.uint8)
    train[:, 1] = [0, 2, 4, 6, 8, 10]
    test = np.full((2, 3), 200, np.uint8)
    (train_s, test_s), (mean, std) = standardize(train, test)
    assert train_s.dtype == jnp.float32
    assert std[0, 0] == 1.0 and std[0, 2] == 1.0  # constant pixels only centred
    np.testing.assert_allclose(test_s[:, 0], 200.0)
    assert np.isfinite(test_s).all()


def test_standardize_other_axes():
    x = np.random.default_rng(1).normal(size=(5, 4, 3))
    (only,), (mean, std) = standardize(x, axis=(0, 1))
    assert mean.shape == (1, 1, 3)
    np.testing.assert_allclose(only.mean((0, 1)), 0.0, atol=1e-12)


def test_standardize_errors():
    with pytest.raises(ValueError, match=r"others\[0\] must have the feature shape"):
        standardize(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(ValueError, match="train holds 1 non-finite"):
        standardize(np.array([[1.0], [np.nan]]))


# --- one_hot and prepare_images --------------------------------------------------------


def test_one_hot():
    out = one_hot(np.array([0, 2, 1]), 3)
    np.testing.assert_array_equal(out, [[1, 0, 0], [0, 0, 1], [0, 1, 0]])
    assert out.dtype == jnp.float32
    assert one_hot(jnp.array([[1]]), 2, dtype=jnp.int32).dtype == jnp.int32
    traced = jax.jit(lambda labels: one_hot(labels, 4))(jnp.array([3, 0]))  # no host check under jit
    np.testing.assert_array_equal(traced, [[0, 0, 0, 1], [1, 0, 0, 0]])


@pytest.mark.parametrize(
    "labels, num_classes, pattern",
    [
        (np.array([0, 3]), 3, r"labels must lie in \[0, num_classes=3\); 1 do not \(min 0, max 3\)"),
        (np.array([-1, 1]), 3, r"1 do not \(min -1, max 1\)"),
        (np.array([0.0, 1.0]), 3, "labels must be integers"),
        (np.array([0, 1]), 0, "num_classes must be >= 1"),
        (np.array([0, 1]), 2.0, "num_classes must be a Python int"),
    ],
)
def test_one_hot_errors(labels, num_classes, pattern):
    with pytest.raises(ValueError, match=pattern):
        one_hot(labels, num_classes)


def test_prepare_images():
    x = np.array([[[0, 255], [51, 102]]] * 3, np.uint8)
    out = prepare_images(x)
    assert out.shape == (3, 4) and out.dtype == jnp.float32
    np.testing.assert_allclose(out[0], [0.0, 1.0, 0.2, 0.4], rtol=1e-6)
    with pytest.raises(ValueError, match="uint8"):
        prepare_images(x.astype(np.float32) / 255)
    with pytest.raises(ValueError, match="leading example axis"):
        prepare_images(np.zeros(4, np.uint8))
