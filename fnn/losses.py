"""Loss functions and metrics: what training minimizes and what it reports.

Every loss has the signature ``loss(predictions, targets, weights=None) -> scalar``:
``predictions`` and ``targets`` are batches (leading axis = examples), and the result is
the *weighted mean over examples* of a per-example loss,
``sum_i w_i * l_i / sum_i w_i`` (plain mean when ``weights`` is None). Per-example
weights let the training engine use a last, partial mini-batch padded with examples of
weight 0. The training engine calls losses with exactly this signature, so a user-written
loss must accept ``weights`` too.

A loss describes itself: a :class:`Loss` pairs the function with the kind of targets it
takes (which the engine checks eagerly, :func:`check_targets`) and the metrics reported
with it (:func:`default_metrics`). The built-in losses are declared that way::

    cross_entropy          targets="labels"         metrics {"accuracy": accuracy}
    binary_cross_entropy   targets="probabilities"  metrics {"accuracy": binary_accuracy}
    mse                    targets="same_shape"     no metrics

and so is a user's loss, ``fnn.losses.Loss(my_loss, targets="labels", metrics=...)`` or
``@fnn.losses.declare(targets="labels")`` on its ``def``. ``functools.partial`` of a
declared loss keeps the declaration; any other function (a lambda wrapping
``cross_entropy`` included) is undeclared: targets of the output's shape, no metrics.

All are stable for extreme logits (|logit| = 1e4): no NaN or inf, correct limits.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn.activations import log_softmax, softplus
from fnn.checks import check_finite, check_in_range, is_concrete


def weighted_mean(per_example: jax.Array, weights: ArrayLike | None = None) -> jax.Array:
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


# --- metrics -----------------------------------------------------------------------------


def accuracy(logits: jax.Array, labels: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Fraction of examples whose arg-max class equals the label.

    Args:
      logits: [batch, classes]; labels: [batch] ints, or [batch, classes] one-hot.
      weights: optional [batch].
    """
    if jnp.ndim(labels) == jnp.ndim(logits):
        labels = jnp.argmax(labels, axis=-1)
    predicted = jnp.argmax(logits, axis=-1)
    if predicted.shape != jnp.shape(labels):
        raise ValueError(
            f"labels must have shape {predicted.shape} for logits {jnp.shape(logits)}; got {jnp.shape(labels)}"
        )
    labels = jnp.asarray(labels, predicted.dtype)  # e.g. uint8 or int32 labels vs int64 arg-max under x64
    return weighted_mean((predicted == labels).astype(jnp.result_type(float)), weights)


def binary_accuracy(logits: jax.Array, targets: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Fraction of examples (of elements, averaged per example) with (logit > 0) == (target > 0.5)."""
    _check_same_shape(logits, targets)
    correct = ((logits > 0) == (jnp.asarray(targets) > 0.5)).astype(jnp.result_type(float))
    return weighted_mean(_per_example_mean(correct), weights)


accuracy.higher_is_better = True  # type: ignore[attr-defined]
binary_accuracy.higher_is_better = True  # type: ignore[attr-defined]


# --- which way is better -----------------------------------------------------------------


def higher_is_better(metric: Callable[..., jax.Array]) -> Directed:
    """``metric`` declared as better when higher (an F1 score, an AUC): monitored by
    ``fit(monitor=...)``, halving and PBT, it is maximized. ``fnn.accuracy`` and
    ``fnn.binary_accuracy`` are declared so already.

    Args:
      metric: ``metric(predictions, targets, weights) -> scalar``.
    Returns:
      the same metric (a :class:`Directed` wrapper), with ``higher_is_better = True``.
    """
    return _directed(metric, True)


def lower_is_better(metric: Callable[..., jax.Array]) -> Directed:
    """``metric`` declared as better when lower (an error rate, a distance): minimized
    when monitored. Returns the same metric (a :class:`Directed` wrapper), with
    ``higher_is_better = False``."""
    return _directed(metric, False)


@dataclasses.dataclass(frozen=True)
class Directed:
    """A metric and the way it is better: called as the metric itself; equal (and hashed)
    by the two, so that a configuration built twice declares the same metrics."""

    metric: Callable[..., jax.Array]
    higher_is_better: bool

    def __call__(self, predictions, targets, weights=None):
        return self.metric(predictions, targets, weights)


def _directed(metric, higher: bool) -> Directed:
    if not callable(metric):
        raise ValueError(f"metric must be a function metric(predictions, targets, weights); got {metric!r}")
    return Directed(getattr(metric, "metric", metric), higher)


def maximizes(monitor: str, metrics: Sequence[tuple[str, Callable]]) -> bool:
    """Whether the history entry ``monitor`` is better when higher — the one place that
    decides it for fit's best epoch and early stopping, halving and PBT.

    ``loss``, ``lr`` and their ``val_`` entries are minimized; a metric (or ``val_``
    metric) goes the way it was declared (:func:`higher_is_better`, :func:`lower_is_better`).

    Args:
      monitor: a history entry's name (checked by the caller against the history).
      metrics: the trainer's ``((name, metric), ...)``.
    Raises:
      ValueError: ``monitor`` names a metric whose direction was not declared.
    """
    name = monitor.removeprefix("val_")
    metric = dict(metrics).get(name)
    if metric is None:
        return False
    higher = getattr(metric, "higher_is_better", None)
    if higher is None:
        raise ValueError(
            f"monitor={monitor!r} names a metric whose direction is not declared: pass it to metrics= as "
            f"fnn.losses.higher_is_better({name}) or fnn.losses.lower_is_better({name})"
        )
    return bool(higher)


def ranking(values, maximize: bool, usable=True):
    """Keys that rank members best first when sorted ascending (ties: keep a stable sort):
    ``values`` negated when higher is better; a value that is not finite, or not
    ``usable`` (a diverged member), ranks last (``inf``). Works on NumPy and JAX arrays,
    also inside a trace (PBT's exploit step).

    Args:
      values: [members] monitored values.
      maximize: :func:`maximizes` of the monitor.
      usable: [members] bools (or True): members that may rank.
    Returns:
      [members] floats: lower is better.
    """
    keys = -values if maximize else values
    return jnp.where(jnp.isfinite(keys) & jnp.asarray(usable), keys, jnp.inf)


# --- what a loss says about itself ---------------------------------------------------------


def _shape_text(shape) -> str:
    """``[n, 10]`` for the per-example shape (10,): the shape of a whole dataset."""
    return "[" + ", ".join(["n", *map(str, shape)]) + "]"


def _check_range(name: str, values, low, high, interval: str):
    """Raise ``ValueError`` unless concrete ``values`` lie in [low, high] (``interval`` says
    so in the message); skipped when traced or empty."""
    if is_concrete(values) and np.size(values):
        host = np.asarray(values)
        lo, hi = host.min(), host.max()
        if lo < low or hi > high:
            raise ValueError(f"{name} must lie in {interval}; got values in [{lo}, {hi}]")


def check_labels(name: str, labels: ArrayLike, num_classes: int) -> None:
    """Raise ``ValueError`` unless ``labels`` are integers and, when concrete, lie in
    [0, num_classes)."""
    if not jnp.issubdtype(jnp.result_type(labels), jnp.integer):
        raise ValueError(
            f"{name} must be integer class indices (or one-hot/soft targets); got dtype {jnp.result_type(labels)}"
        )
    _check_range(name, labels, 0, num_classes - 1, f"[0, {num_classes}) for {num_classes} classes")


_LABELS_HINT = "; if your loss takes integer class labels, declare it with fnn.losses.Loss(loss, targets='labels')"


def _same_shape_targets(name: str, targets, output_shape: tuple, hint: str = ""):
    """Targets of the output's shape, [n, *output_shape], and finite."""
    if jnp.ndim(targets) < 1 or jnp.shape(targets)[1:] != output_shape:
        raise ValueError(
            f"{name} must have shape {_shape_text(output_shape)} to match the model's output; "
            f"got {jnp.shape(targets)}{hint}"
        )
    check_finite(name, targets)


def _probability_targets(name: str, targets, output_shape: tuple):
    """Targets of the output's shape, each a probability in [0, 1]."""
    _same_shape_targets(name, targets, output_shape)
    _check_range(name, targets, 0, 1, "[0, 1] (probabilities)")


def _check_distributions(name: str, targets):
    """Raise ``ValueError`` unless concrete ``targets`` hold probability distributions
    along the last axis: every value in [0, 1] and every row summing to 1, to within
    max(1e-3, the dtype's epsilon); skipped when traced or empty."""
    if not (is_concrete(targets) and np.size(targets)):
        return
    host = np.asarray(targets)
    dtype = host.dtype
    tol = max(1e-3, float(jnp.finfo(dtype).eps)) if jnp.issubdtype(dtype, jnp.floating) else 1e-3
    host = host.astype(np.float64)
    sums = host.sum(axis=-1)
    lo, hi, low_sum, high_sum = host.min(), host.max(), sums.min(), sums.max()
    if lo < -tol or hi > 1 + tol or low_sum < 1 - tol or high_sum > 1 + tol:
        raise ValueError(
            f"{name} must hold probabilities: each row in [0, 1] summing to 1 (to within {tol:g}) along the "
            f"last (class) axis; got values in [{lo:g}, {hi:g}] and row sums in [{low_sum:g}, {high_sum:g}]"
        )


def _label_targets(name: str, targets, output_shape: tuple):
    """Integer labels [n, *output_shape[:-1]] in [0, classes), or one-hot / soft targets
    of the output's shape [n, *output_shape] (classes on the last axis): finite, each row
    a probability distribution."""
    if not output_shape:
        raise ValueError(f"{name} cannot be class labels: the model's output per example has no class axis (shape ())")
    shape, classes = jnp.shape(targets), output_shape[-1]
    if len(shape) >= 1 and shape[1:] == output_shape:
        check_finite(name, targets)
        _check_distributions(name, targets)
    elif len(shape) >= 1 and shape[1:] == output_shape[:-1] and jnp.issubdtype(jnp.result_type(targets), jnp.integer):
        check_labels(name, targets, classes)
    else:
        raise ValueError(
            f"{name} must be integer class labels of shape {_shape_text(output_shape[:-1])} in [0, {classes}), or "
            f"one-hot/soft targets of shape {_shape_text(output_shape)}; got {jnp.result_type(targets)} of shape {shape}"
        )


_TARGET_CHECKS = {"same_shape": _same_shape_targets, "probabilities": _probability_targets, "labels": _label_targets}


@dataclasses.dataclass(frozen=True, repr=False)
class Loss:
    """A loss function that describes its targets and the metrics reported with it.

    Calling a ``Loss`` calls ``fn``; its name, docstring and signature are ``fn``'s.
    It compares and hashes by (fn, targets, metrics), so it can be a static field of a
    jit-cached ``fnn.Trainer``.

    Args:
      fn: ``fn(predictions, targets, weights=None, ...) -> scalar`` (see the module docstring).
      targets: the targets ``fn`` takes, for a model whose output per example has shape S:
        ``"same_shape"`` (default): [n, *S], finite (regression).
        ``"probabilities"``: [n, *S], each in [0, 1] (sigmoid outputs).
        ``"labels"``: integer class indices [n, *S[:-1]] in [0, S[-1]), or one-hot /
        soft targets [n, *S] (softmax outputs, classes on the last axis), each row in
        [0, 1] summing to 1 (to within 1e-3).
      metrics: ``{name: metric(predictions, targets, weights)}`` reported with this loss
        by default (a dict or (name, metric) pairs; kept as a tuple of pairs).

    Example::

        hinge = fnn.losses.Loss(my_hinge, targets="labels", metrics={"accuracy": fnn.accuracy})
    """

    fn: Callable[..., jax.Array]
    targets: str = "same_shape"
    metrics: Any = ()

    def __post_init__(self):
        if not callable(self.fn):
            raise ValueError(f"fn must be a function loss(predictions, targets, weights); got {self.fn!r}")
        if self.targets not in _TARGET_CHECKS:
            raise ValueError(f"targets must be one of {sorted(_TARGET_CHECKS)}; got {self.targets!r}")
        metrics = tuple(dict(self.metrics).items())
        for name, metric in metrics:
            if not (isinstance(name, str) and callable(metric)):
                raise ValueError(
                    f"metrics must map names to functions metric(predictions, targets, weights); got {name!r}: {metric!r}"
                )
        object.__setattr__(self, "metrics", metrics)
        for attribute in ("__module__", "__name__", "__qualname__", "__doc__"):  # as functools.wraps does
            if hasattr(self.fn, attribute):
                object.__setattr__(self, attribute, getattr(self.fn, attribute))
        object.__setattr__(self, "__wrapped__", self.fn)  # inspect.signature follows it

    def __call__(self, *args: Any, **kwargs: Any) -> jax.Array:
        return self.fn(*args, **kwargs)

    def __reduce__(self):
        # A loss declared on its ``def`` (the built-ins) stands where its function's name
        # points, so pickle it by that name; any other one by its fields.
        if getattr(sys.modules.get(self.__module__), getattr(self, "__qualname__", ""), None) is self:
            return self.__qualname__
        return Loss, (self.fn, self.targets, self.metrics)

    def __repr__(self):
        metrics = [name for name, _ in self.metrics]
        return f"Loss({getattr(self.fn, '__name__', self.fn)}, targets={self.targets!r}, metrics={metrics})"


def declare(*, targets: str = "same_shape", metrics: Any = ()) -> Callable[[Callable[..., jax.Array]], Loss]:
    """Decorator form of :class:`Loss`: ``@declare(targets="labels")`` on a ``def``
    makes it ``Loss(fn, targets="labels")``. Arguments as for :class:`Loss`."""
    return functools.partial(Loss, targets=targets, metrics=metrics)


def _declaration(loss) -> Loss | None:
    """The :class:`Loss` behind ``loss`` (through ``functools.partial``), or ``None``."""
    while isinstance(loss, functools.partial):
        loss = loss.func
    return loss if isinstance(loss, Loss) else None


def check_targets(loss: Callable[..., Any], name: str, targets: ArrayLike, output_shape: tuple[int, ...]) -> None:
    """Check ``targets`` against what ``loss`` declares it takes (see :class:`Loss`),
    eagerly, before any tracing.

    Shapes and dtypes are always checked; values (label range, finiteness, [0, 1], rows
    of soft targets summing to 1) only when ``targets`` is concrete, not a tracer. An undeclared loss takes targets of the
    output's shape.

    Args:
      loss: the loss function (a :class:`Loss`, a ``functools.partial`` of one, or any
        other function).
      name: the argument's name for the message, e.g. ``"y"`` or ``"validation y"``.
      targets: [n, ...] the targets.
      output_shape: the model's output shape for one example, e.g. (10,).
    Raises:
      ValueError: naming ``name`` and saying what was expected.
    """
    declared = _declaration(loss)
    if declared is not None:
        _TARGET_CHECKS[declared.targets](name, targets, tuple(output_shape))
    else:
        integer = jnp.issubdtype(jnp.result_type(targets), jnp.integer)
        _same_shape_targets(name, targets, tuple(output_shape), _LABELS_HINT if integer else "")


def default_metrics(loss: Callable[..., Any]) -> dict[str, Callable[..., jax.Array]]:
    """The metrics the training engine reports with ``loss`` by default: those it
    declares (see :class:`Loss`), ``{}`` for an undeclared loss.

    Returns:
      ``{name: metric(predictions, targets, weights)}``.
    """
    declared = _declaration(loss)
    return {} if declared is None else dict(declared.metrics)


# --- losses ------------------------------------------------------------------------------


@declare(targets="same_shape")
def mse(predictions: jax.Array, targets: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Mean squared error: per example, the mean of (prediction - target)^2 over outputs,
    ``l = mean_k (y_k - t_k)^2``.

    Args:
      predictions, targets: [batch, ...] of the same shape.
      weights: optional [batch].
    Returns:
      scalar weighted mean over the batch.
    """
    _check_same_shape(predictions, targets)
    targets = jnp.asarray(targets, jnp.result_type(predictions))
    return weighted_mean(_per_example_mean(jnp.square(predictions - targets)), weights)


def _soft_targets(logits, labels, label_smoothing):
    """Targets as probabilities [batch, classes] from int labels [batch] or soft targets."""
    num_classes = logits.shape[-1]
    if jnp.ndim(labels) == jnp.ndim(logits) - 1:
        if jnp.shape(labels) != logits.shape[:-1]:
            raise ValueError(
                f"labels must have shape {logits.shape[:-1]} for logits {logits.shape}; got {jnp.shape(labels)}"
            )
        check_labels("labels", labels, num_classes)
        targets = jax.nn.one_hot(labels, num_classes, dtype=logits.dtype)
    else:
        _check_same_shape(logits, labels)
        targets = jnp.asarray(labels, logits.dtype)
    smoothing = jnp.asarray(label_smoothing, logits.dtype)
    return (1 - smoothing) * targets + smoothing / num_classes


@declare(targets="labels", metrics={"accuracy": accuracy})
def cross_entropy(
    logits: jax.Array, labels: ArrayLike, weights: ArrayLike | None = None, *, label_smoothing: ArrayLike = 0.0
) -> jax.Array:
    """Softmax cross-entropy from logits: ``l = -sum_c t_c log softmax(z)_c``.

    Declared with ``targets="labels"`` and the metric ``accuracy``.

    Args:
      logits: [batch, classes] unnormalized scores z.
      labels: [batch] integer classes in [0, classes), or [batch, classes] one-hot / soft
        targets t (rows summing to 1).
      weights: optional [batch] per-example weights.
      label_smoothing: s in [0, 1): targets become (1 - s) t + s / classes
        (Szegedy et al. 2016). May be traced.
    Returns:
      scalar weighted mean over the batch.
    Raises:
      ValueError: for logits not [batch, classes], labels of the wrong shape or (when
        concrete) outside the classes, or a ``label_smoothing`` that is not a number in
        [0, 1) (its value is not read when traced).
    """
    check_in_range("label_smoothing", label_smoothing, 0, 1, high_open=True)
    if jnp.ndim(logits) != 2:
        raise ValueError(f"logits must have shape [batch, classes]; got {jnp.shape(logits)}")
    targets = _soft_targets(logits, labels, label_smoothing)
    return weighted_mean(-jnp.sum(targets * log_softmax(logits), axis=-1), weights)


@declare(targets="probabilities", metrics={"accuracy": binary_accuracy})
def binary_cross_entropy(logits: jax.Array, targets: ArrayLike, weights: ArrayLike | None = None) -> jax.Array:
    """Sigmoid cross-entropy from logits, ``l = softplus(z) - z t``
    (= -t log s(z) - (1-t) log(1-s(z)), s the sigmoid; softplus(z) = log(1 + e^z)).

    Its derivative, ``s(z) - t``, is right everywhere, 1/2 - t at z = 0 included; the
    value and gradient stay finite for |z| = 1e4. Declared with
    ``targets="probabilities"`` and the metric ``binary_accuracy`` (as "accuracy").

    Args:
      logits: [batch, ...] scores z; targets: same shape, in [0, 1].
      weights: optional [batch].
    Returns:
      scalar weighted mean over the batch (mean over any trailing axes per example).
    """
    _check_same_shape(logits, targets)
    targets = jnp.asarray(targets, jnp.result_type(logits))
    return weighted_mean(_per_example_mean(softplus(logits) - logits * targets), weights)
