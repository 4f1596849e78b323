"""The learning-rate range test as one program: one member per learning rate, vmapped.

The classic range test (Smith 2017, "Cyclical Learning Rates for Training Neural
Networks", section 3.3; fastai's ``lr_find``, Lightning's LR finder) is one run whose
learning rate grows exponentially with every update, read off the running training
loss. Here every learning rate gets a run of its own, all of them vmapped in one
compiled program: member ``i`` trains ``steps`` updates at the constant rate ``lrs[i]``,
from the same initial params (drawn from ``key``) and on the same mini-batches in the
same order, so that only the learning rate differs. The members are a population of
fit's runs (``fnn.sweeps.population``, the engine of every sweep), all keyed by ``key``
and trained with fit's ``max_steps=steps`` over as many epochs as ``steps`` needs (a few
mini-batches more for a float16 trainer, whose loss scale may skip steps); a
member's loss after ``steps`` updates, evaluated on the whole training set (or on
``validation``) at the end of its last epoch, is one point of the curve; a member that
diverged scores ``+inf``. Unlike the ramp, no point carries the history of smaller rates,
and no smoothing over time is needed.

The curve is smoothed over neighbouring rates (:func:`smooth`), and the suggestion is the
rate of steepest descent of the smoothed loss against ``log10(lr)`` among the rates below
the smoothed curve's minimum (:func:`suggest`), as fastai's ``lr_find`` ("steep") and
Lightning's ``LRFinder.suggestion`` choose it.

    def config(lr=1e-3):
        return fnn.Trainer(fnn.mlp([64, 32, 10]), fnn.sgd(lr, momentum=0.9), fnn.cross_entropy)

    test = fnn.lr_range(config, x, y, steps=100, batch_size=32)
    print(test.summary())       # lrs, losses, smoothed; suggested lr
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from fnn.batching import num_steps
from fnn.checks import as_key, check_int, is_concrete
from fnn.sweeps.grid_sweep import populate
from fnn.sweeps.population import Population
from fnn.train import Trainer

WINDOW = 5  # rates averaged by the smoothing: the rate and two neighbours on each side


class LRRangeResult(NamedTuple):
    """The range test's curve and its suggestion.

    Attributes:
      lrs: [k] the learning rates tried, increasing.
      losses: [k] each rate's loss after ``steps`` updates (``+inf`` where it diverged).
      smoothed: [k] the losses smoothed over neighbouring rates (:func:`smooth`).
      suggestion: the rate of steepest descent of ``smoothed`` (:func:`suggest`); NaN
        when the smoothed loss does not descend: its minimum is at the smallest rate, or
        no smoothed loss past the smallest rate is finite (on a coarse grid a diverged
        rate's ``+inf`` reaches every rate's window); ``summary()`` says which.
      steps: the updates each rate trained.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float
    steps: int

    def summary(self) -> str:
        """A markdown table, one line per rate (the suggestion marked), then the suggestion."""
        lines = [f"| lr | loss after {self.steps} steps | smoothed |", "|---|---|---|"]
        for lr, loss, smoothed in zip(self.lrs, self.losses, self.smoothed):
            mark = " ← suggested" if lr == self.suggestion else ""
            lines.append(f"| {lr:.3g} | {loss:.4g} | {smoothed:.4g}{mark} |")
        if math.isnan(self.suggestion):
            lines.append(f"\nno suggestion: {self._why_no_suggestion()}")
        else:
            lines.append(f"\nsuggested lr {self.suggestion:.3g} (steepest descent of the smoothed loss)")
        return "\n".join(lines)

    def _why_no_suggestion(self) -> str:
        """Why the smoothed curve gives no rate, and what to try."""
        diverged = self.lrs[~np.isfinite(self.losses)]
        if diverged.size and not np.isfinite(self.smoothed[1:]).any():
            return (
                f"the rate {diverged[0]:.3g} diverged, and the smoothing averages each rate with its {WINDOW // 2} "
                f"neighbours on each side, so no rate above the smallest keeps a finite smoothed loss; use more "
                f"rates below {diverged[0]:.3g} (a finer grid)"
            )
        return "the smoothed loss is lowest at the smallest rate; try smaller rates"


def lr_range(
    config: Callable[..., Trainer],
    x: ArrayLike,
    y: ArrayLike,
    *,
    lrs: ArrayLike | None = None,
    steps: int,
    batch_size: int,
    key: ArrayLike = 0,
    validation: tuple[ArrayLike, ArrayLike] | None = None,
    devices: int | Sequence[jax.Device] | None = None,
) -> LRRangeResult:
    """Train one member per learning rate for ``steps`` updates, as one vmapped program.

    Args:
      config: ``config(lr=..., ...) -> Trainer``, a sweep configuration (see
        ``fnn.sweep``) with a keyword ``lr``, traced as sweeps trace it; the other
        keywords keep their defaults.
      x, y: [n, ...] training data, shared by every member.
      lrs: [k] learning rates: positive, finite, increasing, k >= 3; default
        ``np.logspace(-5, 0, 32)``.
      steps: updates per member (static), >= 1; the mini-batches are fit's epochs
        (``fnn.batching.epoch_batches`` with the epoch keys of a run keyed ``key``),
        as many as ``steps`` needs, the same for every member.
      batch_size: examples per update (static), 1 <= batch_size <= n.
      key: int seed or PRNG key: the initial params, the data order and dropout, shared
        by every member (as ``fnn.fit``'s ``key``).
      validation: optional ``(x_val, y_val)`` to score the members on; default the
        training set.
      devices: shard the members over these devices (``fnn.distributed.member_sharding``;
        the rates are padded by repeating the last one to a multiple of the devices):
        ``None`` (all local devices), a count or a list.
    Returns:
      an :class:`LRRangeResult`.
    Raises:
      ValueError: for bad input, before anything is compiled: ``lrs``, ``steps``,
        ``config`` without ``lr``, a rate the configuration refuses, and everything
        ``fnn.fit`` checks of the data, ``batch_size``, ``key`` and ``validation``.
    """
    rates = check_lrs(np.logspace(-5, 0, 32) if lrs is None else lrs)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    _check_takes_lr(config)
    key = as_key(key)
    seeds = np.repeat(np.asarray(jax.random.key_data(key))[None], rates.size, axis=0)  # one run key for every member
    examples = np.shape(x)[0] if np.ndim(x) else 1  # data that is not an array is refused by fit's checks
    batches = steps + skip_allowance(config(lr=float(rates[0])), steps)
    epochs = -(-batches // num_steps(examples, batch_size, False))
    options = dict(
        epochs=epochs, batch_size=batch_size, max_steps=steps, validation=(x, y) if validation is None else validation
    )
    population = populate(config, x, y, {"lr": rates, "seed": seeds}, None, None, devices, options, "fnn.lr_range")
    losses = _range_test(population, epochs)
    smoothed = smooth(losses)
    return LRRangeResult(rates, losses, smoothed, suggest(rates, smoothed), steps)


def skip_allowance(trainer: Any, steps: int) -> int:
    """The mini-batches beyond ``steps`` that a float16 member may need: steps its loss
    scale skips (``fnn.loss_scaling``) do not count as updates. Its back-offs from
    ``initial_scale`` to ``min_scale``, and one per growth in ``steps`` updates; 0 without
    loss scaling (or for traced scale settings, which a range test does not have)."""
    scaling = getattr(trainer, "loss_scaling", None)  # a config that returns no Trainer is refused by the sweep
    if scaling is None or not is_concrete((scaling.initial_scale, scaling.min_scale, scaling.factor)):
        return 0
    ratio = float(scaling.initial_scale) / float(scaling.min_scale)
    return math.ceil(math.log(ratio) / math.log(float(scaling.factor))) + steps // scaling.period


def _range_test(population: Population, epochs: int) -> np.ndarray:
    """Run every member to the end; their losses after their last epoch, the one in which
    ``max_steps`` fell ([k]; ``+inf`` where a member diverged or its loss is not finite)."""
    population.run(np.arange(population.size), epochs)
    result = population.results
    last = np.asarray(result.train_state.epoch) - 1
    losses = np.asarray(result.history["val_loss"], dtype=float)[np.arange(last.size), last]
    return np.where(np.isfinite(losses) & ~np.asarray(result.diverged), losses, np.inf)


def check_lrs(lrs: Any) -> np.ndarray:
    """``lrs`` as a float array [k]: 1-D, k >= 3, positive, finite, strictly increasing.

    Raises:
      ValueError: naming ``lrs`` and what was expected.
    """
    try:
        rates = np.asarray(lrs, dtype=float)
    except (TypeError, ValueError):
        raise ValueError(f"lrs must be a 1-D array of learning rates; got {lrs!r}") from None
    if rates.ndim != 1 or rates.size < 3:
        raise ValueError(f"lrs must be a 1-D array of at least 3 learning rates; got shape {rates.shape}")
    if not (np.all(np.isfinite(rates)) and np.all(rates > 0) and np.all(np.diff(rates) > 0)):
        raise ValueError(f"lrs must be finite, positive and strictly increasing; got {rates.tolist()}")
    return rates


def _check_takes_lr(config: Callable) -> None:
    """Refuse a configuration that has no keyword ``lr`` (the rate the test varies)."""
    try:
        parameters = inspect.signature(config).parameters
    except (TypeError, ValueError):
        raise ValueError(f"config must be a function config(lr=...) -> fnn.Trainer; got {config!r}") from None
    if "lr" not in parameters and not any(p.kind is p.VAR_KEYWORD for p in parameters.values()):
        raise ValueError(
            f"config must take the learning rate as a keyword lr= (the range test varies it); it takes {list(parameters)}"
        )


def smooth(losses: ArrayLike, window: int = WINDOW) -> np.ndarray:
    """The losses smoothed over neighbouring rates: a centered moving average.

    ``smoothed[i]`` is the mean of ``losses[j]`` for ``|j - i| <= window // 2`` (fewer at
    the ends): with log-spaced rates, a window of equal width in ``log(lr)``. A diverged
    rate (``+inf``) makes its neighbours' averages ``+inf`` too, so the curve's minimum
    keeps clear of the divergence (as intended; on a grid of few rates this may leave no
    finite average above the smallest rate, and so no suggestion).

    Args:
      losses: [k] the losses, in the order of increasing rate.
      window: rates per average (odd, >= 1).
    Returns:
      [k] the smoothed losses.
    """
    values = np.asarray(losses, dtype=float)
    half = check_int("window", window) // 2
    return np.array([values[max(0, i - half) : i + half + 1].mean() for i in range(values.size)])


def suggest(lrs: ArrayLike, smoothed: ArrayLike) -> float:
    """The rate of steepest descent of the smoothed loss against ``log10(lr)``.

    Rule: with ``m`` the index of the smoothed curve's minimum, the slope
    ``d smoothed / d log10(lr)`` is taken at the rates ``0 .. m`` (``np.gradient``: central
    differences inside, one-sided at the ends) and the rate with the most negative slope is
    suggested — the steepest point of the descent, where the loss falls fastest, below the
    rate where it stops falling. This is fastai's "steep" suggestion (``lr_find``, the
    steepest slope of the loss in log lr) and Lightning's ``LRFinder.suggestion`` (the
    minimum of ``np.gradient`` of the loss), restricted to the descent.

    Args:
      lrs: [k] increasing learning rates; smoothed: [k] their smoothed losses.
    Returns:
      the suggested rate; NaN when the curve does not descend (``m == 0``).
    """
    rates, values = np.asarray(lrs, dtype=float), np.asarray(smoothed, dtype=float)
    lowest = int(np.argmin(values))
    if lowest == 0 or not np.isfinite(values[lowest]):
        return float("nan")
    with np.errstate(invalid="ignore"):  # inf - inf where a rate before the minimum diverged
        slopes = np.gradient(values[: lowest + 1], np.log10(rates[: lowest + 1]))
    slopes = np.where(np.isfinite(slopes), slopes, np.inf)
    return float(rates[int(np.argmin(slopes))]) if np.any(np.isfinite(slopes)) else float("nan")
