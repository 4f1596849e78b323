"""Loss functions and metrics: what training minimizes and what it reports.

Every loss has the signature ``loss(predictions, targets, weights=None) -> scalar``:
``predictions`` and ``targets`` are batches (leading axis = examples), and the result is
the *weighted mean over examples* of a per-example loss,
``sum_i w_i * l_i / sum_i w_i`` (plain mean when ``weights`` is None). Per-example
weights let the training engine use a last, partial mini-batch padded with examples of
weight 0. The training engine calls losses with exactly this signature, so a user-written
loss must accept ``weights`` too.

All are stable for extreme logits (|logit| = 1e4): no NaN or inf, correct limits.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn.activations import log_softmax
from fnn.checks import is_concrete


def weighted_mean(per_example, weights=None):
    """``sum_i w_i l_i / sum_i w_i`` over the leading axis (0 when all weights are 0).

    Args:
      per_example: [batch] values.
      weights: optional [batch] non-negative weights.
    """
    if weights is None:
        return jnp.mean(per_example)
    weights = jnp.asarray(weights, per_example.dtype)
    if weights.shape != per_example.shape:
        raise ValueError(f"weights must have shape {per_example.shape} (one per example); got {weights.shape}")
    total = jnp.sum(weights)
    weighted = jnp.where(weights > 0, weights * per_example, 0)  # a weight-0 row never counts, even if inf/NaN
    return jnp.sum(weighted) / jnp.where(total > 0, total, 1)


def _check_same_shape(predictions, targets):
    if jnp.shape(predictions) != jnp.shape(targets):
        raise ValueError(
            f"predictions and targets must have the same shape; got predictions {jnp.shape(predictions)} "
            f"and targets {jnp.shape(targets)}"
        )


def _per_example_mean(values):
    """Mean over every axis but the leading (example) one: [batch, ...] -> [batch]."""
    return jnp.mean(values.reshape(values.shape[0], -1), axis=1) if values.ndim > 1 else values


def mse(predictions, targets, weights=None):
    """Mean squared error: per example, the mean of (prediction - target)^2 over outputs.

    Args:
      predictions, targets: [batch, ...] of the same shape.
      weights: optional [batch].
    Returns:
      scalar weighted mean over the batch.
    """
    _check_same_shape(predictions, targets)
    return weighted_mean(_per_example_mean(jnp.square(predictions - targets)), weights)


def check_labels(name: str, labels, num_classes: int):
    """Raise ``ValueError`` unless concrete integer ``labels`` lie in [0, num_classes)."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(f"{name} must be integer class indices (or one-hot/soft targets); got dtype {jnp.result_type(labels)}")
    if is_concrete(labels) and np.size(labels):
        host = np.asarray(labels)
        lo, hi = int(host.min()), int(host.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} must lie in [0, {num_classes}) for {num_classes} classes; got values in [{lo}, {hi}]")


def _soft_targets(logits, labels, label_smoothing):
    """Targets as probabilities [batch, classes] from int labels [batch] or soft targets."""
    num_classes = logits.shape[-1]
    if jnp.ndim(labels) == jnp.ndim(logits) - 1:
        if jnp.shape(labels) != logits.shape[:-1]:
            raise ValueError(f"labels must have shape {logits.shape[:-1]} for logits {logits.shape}; got {jnp.shape(labels)}")
        check_labels("labels", labels, num_classes)
        targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    else:
        _check_same_shape(logits, labels)
        targets = jnp.asarray(labels, logits.dtype)
    return (1 - label_smoothing) * targets + label_smoothing / num_classes


def cross_entropy(logits, labels, weights=None, *, label_smoothing=0.0):
    """Softmax cross-entropy from logits: ``l = -sum_c t_c log softmax(z)_c``.

    Args:
      logits: [batch, classes] unnormalized scores z.
      labels: [batch] integer classes in [0, classes), or [batch, classes] one-hot / soft
        targets t (rows summing to 1).
      weights: optional [batch] per-example weights.
      label_smoothing: s in [0, 1): targets become (1 - s) t + s / classes
        (Szegedy et al. 2016). May be traced.
    Returns:
      scalar weighted mean over the batch.
    """
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must have shape [batch, classes]; got {jnp.shape(logits)}")
    targets = _soft_targets(logits, labels, label_smoothing)
    return weighted_mean(-jnp.sum(targets * log_softmax(logits), axis=-1), weights)


def binary_cross_entropy(logits, targets, weights=None):
    """Sigmoid cross-entropy from logits, in the stable form
    ``l = max(z, 0) - z t + log(1 + exp(-|z|))`` (= -t log s(z) - (1-t) log(1-s(z))).

    Args:
      logits: [batch, ...] scores z; targets: same shape, in [0, 1].
      weights: optional [batch].
    Returns:
      scalar weighted mean over the batch (mean over any trailing axes per example).
    """
    _check_same_shape(logits, targets)
    targets = jnp.asarray(targets, logits.dtype)
    per_element = jnp.maximum(logits, 0) - logits * targets + jnp.log1p(jnp.exp(-jnp.abs(logits)))
    return weighted_mean(_per_example_mean(per_element), weights)


def accuracy(logits, labels, weights=None):
    """Fraction of examples whose arg-max class equals the label.

    Args:
      logits: [batch, classes]; labels: [batch] ints, or [batch, classes] one-hot.
      weights: optional [batch].
    """
    if jnp.ndim(labels) == jnp.ndim(logits):
        labels = jnp.argmax(labels, axis=-1)
    predicted = jnp.argmax(logits, axis=-1)
    if predicted.shape != jnp.shape(labels):
        raise ValueError(f"labels must have shape {predicted.shape} for logits {jnp.shape(logits)}; got {jnp.shape(labels)}")
    return weighted_mean((predicted == labels).astype(jnp.result_type(float)), weights)


def binary_accuracy(logits, targets, weights=None):
    """Fraction of examples (of elements, averaged per example) with (logit > 0) == (target > 0.5)."""
    _check_same_shape(logits, targets)
    correct = ((logits > 0) == (jnp.asarray(targets) > 0.5)).astype(jnp.result_type(float))
    return weighted_mean(_per_example_mean(correct), weights)


def default_metrics(loss) -> dict:
    """The metrics the training engine reports for ``loss``: accuracy for the two
    classification losses (also wrapped in ``functools.partial``), none otherwise."""
    base = getattr(loss, "func", loss)
    if base is cross_entropy:
        return {"accuracy": accuracy}
    if base is binary_cross_entropy:
        return {"accuracy": binary_accuracy}
    return {}
