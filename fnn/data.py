"""Turning arrays into training inputs: splits, standardization, one-hot labels, pixels.

Pure functions of their arguments; randomness comes from an explicit ``jax.random`` key.
Statistics are computed from the training split only and applied to every split, so no
information leaks from held-out data into training.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike, DTypeLike

from fnn.checks import as_key, check_finite, check_in_range, check_int, is_concrete

__all__ = ["Dataset", "train_test_split", "standardize", "one_hot", "prepare_images"]


class Dataset(NamedTuple):
    """A train/test split of inputs and targets: host NumPy arrays from the loaders in
    :mod:`fnn.datasets` (which re-exports this class); :func:`train_test_split` keeps the
    array type it is given."""

    x_train: np.ndarray | jax.Array
    y_train: np.ndarray | jax.Array
    x_test: np.ndarray | jax.Array
    y_test: np.ndarray | jax.Array


def train_test_split(
    key: ArrayLike,
    x: np.ndarray | jax.Array,
    y: np.ndarray | jax.Array,
    test_fraction: float,
    *,
    stratify: ArrayLike | None = None,
) -> Dataset:
    """Split ``(x, y)`` at random into a training and a held-out part.

    Carve a validation split for model selection from the training data this way (a
    stratified one for classification: ``stratify=y_train``), so that the test set is
    read only once, after selection.

    Args:
      key: an int seed or a ``jax.random`` key (typed or raw, as ``fnn.fit`` takes it);
        the same key gives the same split.
      x, y: arrays (NumPy or JAX) with the same number of examples on axis 0.
      test_fraction: a Python number in (0, 1); the held-out part has
        ``round(test_fraction * n)`` examples, which must leave both parts non-empty.
      stratify: optional class labels ``[n]`` (integers, booleans or strings; usually
        ``y``): the held-out part then has of each class its share of the held-out
        size, ``round(test_fraction * n) * n_c / n`` rounded down or up (largest
        remainders get the extra examples, ties broken at random by ``key``), so every
        class's held-out count is within one example of ``test_fraction * n_c``. Which
        examples of a class are held out is random (``key``). ``None``: a plain random
        split.

    Returns:
      ``Dataset(x_train, y_train, x_test, y_test)``; every example lands in exactly one
      part, each part keeps the original order, and arrays keep their type (NumPy in,
      NumPy out).

    Raises:
      ValueError: for a ``key`` that is neither an int seed nor a key, a ``test_fraction``
        outside (0, 1) or leaving a part empty, ``x``
        and ``y`` of different lengths, or ``stratify`` that is not a 1-D array of
        ``n`` class labels.
    """
    key = as_key(key)
    if not is_concrete(test_fraction):
        raise ValueError("test_fraction must be a concrete Python number: it sets the split sizes")
    check_in_range("test_fraction", test_fraction, 0, 1, low_open=True, high_open=True)
    for name, a in (("x", x), ("y", y)):
        if np.ndim(a) < 1:
            raise ValueError(f"{name} must have a leading example axis; got shape {np.shape(a)}")
    n = np.shape(x)[0]
    if np.shape(y)[0] != n:
        raise ValueError(f"x and y must have the same number of examples (axis 0); got x: {n}, y: {np.shape(y)[0]}")
    n_test = int(round(float(test_fraction) * n))
    if not 0 < n_test < n:
        raise ValueError(
            f"test_fraction={test_fraction} of {n} examples gives {n_test} held-out examples; "
            "both parts must be non-empty"
        )
    perm = np.asarray(jax.random.permutation(key, n))
    if stratify is None:
        held_out = np.arange(n) < n_test  # the first n_test of the permutation
    else:
        held_out = _stratified_held_out(key, perm, _class_labels(stratify, n), n_test)
    test_idx, train_idx = np.sort(perm[held_out]), np.sort(perm[~held_out])
    return Dataset(x[train_idx], y[train_idx], x[test_idx], y[test_idx])


def _class_labels(stratify: ArrayLike, n: int) -> np.ndarray:
    """``stratify`` as a host array of ``n`` class labels, checked."""
    labels = np.asarray(stratify)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"stratify must be a 1-D array of n={n} class labels (like y); got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype.kind in "bUS"):
        raise ValueError(
            f"stratify must hold class labels (integers, booleans or strings); got dtype {labels.dtype} "
            "(bin a continuous target first)"
        )
    return labels


def _stratified_held_out(key: ArrayLike, perm: np.ndarray, labels: np.ndarray, n_test: int) -> np.ndarray:
    """``[n]`` bool: whether position ``i`` of ``perm`` is held out, taking of each class
    its quota of examples in the order of ``perm`` (random within the class)."""
    n = perm.size
    _, cls, counts = np.unique(labels, return_inverse=True, return_counts=True)
    quota = n_test * counts / n  # sums to n_test
    take = np.floor(quota).astype(np.int64)
    missing = n_test - int(take.sum())  # < number of classes
    if missing:
        tie = np.asarray(jax.random.permutation(jax.random.fold_in(key, 1), counts.size))
        order = np.lexsort((tie, -(quota - take)))  # largest remainder first, ties at random
        take[order[:missing]] += 1
    cls_of = cls.reshape(-1)[perm]  # class of each position of perm
    grouped = np.argsort(cls_of, kind="stable")  # positions by class, perm order within a class
    rank = np.empty(n, np.int64)
    rank[grouped] = np.arange(n) - np.repeat(np.cumsum(counts) - counts, counts)
    return rank < take[cls_of]


def standardize(
    train: ArrayLike, *others: ArrayLike, axis: int | tuple[int, ...] = 0, eps: float = 1e-8
) -> tuple[tuple[jax.Array, ...], tuple[jax.Array, jax.Array]]:
    """Standardize with the mean and standard deviation of ``train`` only.

    ``(a - mean) / std`` for ``train`` and each array in ``others``, where ``mean`` and
    ``std`` are taken over ``axis`` of ``train`` (kept as size-1 axes, so they broadcast
    without rank promotion). Features whose training std is below ``eps`` (constant
    pixels, say) are only centred: their std is replaced by 1, as scikit-learn's
    ``StandardScaler`` does, instead of blowing up held-out values. Integer inputs are
    converted to float32.

    Returns:
      ``(standardized, (mean, std))``: a tuple with the standardized ``train`` followed by
      the standardized ``others``, and the statistics used (apply them to new data as
      ``(a - mean) / std``).
    """
    train = jnp.asarray(train)
    dtype = train.dtype if jnp.issubdtype(train.dtype, jnp.floating) else jnp.float32
    axes = tuple(a % train.ndim for a in np.atleast_1d(axis))
    feature_shape = [d for i, d in enumerate(train.shape) if i not in axes]
    check_finite("train", train)
    for i, other in enumerate(others):
        other_features = [d for j, d in enumerate(np.shape(other)) if j not in axes]
        if np.ndim(other) != train.ndim or other_features != feature_shape:
            raise ValueError(
                f"others[{i}] must have the feature shape of train outside axis={axis}; "
                f"got {np.shape(other)} against train {train.shape}"
            )
    train = train.astype(dtype)
    mean = jnp.mean(train, axis=axes, keepdims=True)
    std = jnp.std(train, axis=axes, keepdims=True)
    std = jnp.where(std < eps, jnp.ones_like(std), std)
    standardized = tuple((jnp.asarray(a).astype(dtype) - mean) / std for a in (train, *others))
    return standardized, (mean, std)


def one_hot(labels: ArrayLike, num_classes: int, dtype: DTypeLike = jnp.float32) -> jax.Array:
    """One-hot encode integer ``labels`` into ``[..., num_classes]`` arrays of ``dtype``.

    Raises ``ValueError`` for non-integer labels and, when the labels are concrete (not
    traced), for any label outside ``[0, num_classes)``; ``jax.nn.one_hot`` would silently
    give an all-zero row.
    """
    num_classes = check_int("num_classes", num_classes, minimum=1)
    labels = jnp.asarray(labels)
    if not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"labels must be integers; got dtype {labels.dtype}")
    if is_concrete(labels):
        host = np.asarray(labels)
        bad = (host < 0) | (host >= num_classes)
        if bad.any():
            raise ValueError(
                f"labels must lie in [0, num_classes={num_classes}); {int(bad.sum())} do not "
                f"(min {host.min()}, max {host.max()})"
            )
    return jax.nn.one_hot(labels, num_classes, dtype=dtype)


def prepare_images(x: ArrayLike) -> jax.Array:
    """uint8 images ``[N, ...]`` (pixels 0-255) -> float32 ``[N, features]`` in [0, 1].

    For MNIST-family images ``[N, 28, 28]`` this gives ``[N, 784]``.
    """
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"x must be images with a leading example axis, [N, ...]; got shape {x.shape}")
    if x.dtype != jnp.uint8:
        raise ValueError(f"x must hold uint8 pixel values 0-255; got dtype {x.dtype} (already scaled?)")
    return x.reshape(x.shape[0], -1).astype(jnp.float32) / 255
