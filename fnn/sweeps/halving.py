"""Successive halving inside a sweep: train everyone a little, keep the best third, repeat.

``fnn.sweep(config, x, y, grid=..., epochs=E, schedule=fnn.halving(rung_epochs=r,
eta=3))`` runs *rungs*: every member trains ``r`` epochs; the best ``⌊n/eta⌋`` by the
monitored value (at each member's last epoch; ties go to the lower member index) go on
with their whole state — params, optimizer state, PRNG key, history so far — for ``r``
epochs more; and so on until one member remains, which trains on to epoch ``E`` (or the
epochs run out first, and the rung that reaches ``E`` ends the sweep). A 27-point grid
with ``eta=3`` runs rungs of 27, 9, 3 and 1 members: 27r + 9r + 3r + (E - 3r)
member-epochs instead of 27E.

Reference: successive halving, Jamieson & Talwalkar, "Non-stochastic best arm
identification and hyperparameter optimization", AISTATS 2016; Li et al., "Hyperband",
JMLR 2018 (Algorithm 1's inner loop). Here each rung is a compiled, vmapped call over
its members (one program per population size, cached: ``fnn.sweeps.population``), and a
member that goes on equals the same member trained without halving to float32 rounding
(XLA:CPU picks its batched-matmul kernels by a call's member count; the first rung, which
runs every member, is bit-identical to the full sweep).

Cost: each population size compiles its own program once (a few seconds for a small
MLP on CPU), so on a small problem halving pays only when the epochs it saves outweigh
those compiles; JAX's persistent compilation cache (``jax_compilation_cache_dir``)
removes them from later runs.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from fnn.checks import check_int
from fnn.sweeps.population import Population


@dataclasses.dataclass(frozen=True)
class Halving:
    """A successive-halving schedule (see the module docstring); make it with ``halving``."""

    rung_epochs: int
    eta: int = 3
    monitor: str | None = None


def halving(rung_epochs: int, eta: int = 3, monitor: str | None = None) -> Halving:
    """A successive-halving schedule for ``fnn.sweep(..., schedule=...)``.

    Args:
      rung_epochs: epochs each rung trains its members (>= 1).
      eta: after each rung, the best ``⌊members / eta⌋`` (at least one) go on (>= 2).
      monitor: the history entry that ranks members (its value at each member's last
        epoch run); default the sweep's ``monitor``: "val_loss" with validation data,
        else "loss". Names ending in "accuracy" are maximized, others minimized.
    Returns:
      the schedule.
    Raises:
      ValueError: for a bad argument (an unknown ``monitor`` is refused by the sweep,
        which knows the history's entries).
    """
    if monitor is not None and not isinstance(monitor, str):
        raise ValueError(f"monitor must be a history entry's name (a str) or None; got {monitor!r}")
    eta = check_int("eta", eta)
    if eta < 2:
        raise ValueError(f"eta must be an int >= 2 (keep 1/eta of the members at each rung); got {eta}")
    return Halving(rung_epochs=check_int("rung_epochs", rung_epochs), eta=eta, monitor=monitor)


def run_rungs(population: Population, schedule: Halving, epochs: int, monitor: str, advance) -> np.ndarray:
    """Run the rungs of ``schedule`` on ``population`` (its members' carries are updated).

    Args:
      population: the sweep's population, not run yet.
      schedule: the halving schedule.
      epochs: the sweep's total epochs.
      monitor: the history entry that ranks members (checked by the caller).
      advance: ``advance(population, which, end, label)``: runs members ``which`` to
        epoch ``end`` (the sweep's, so that compaction applies within a rung).
    Returns:
      [members] ints: the rung (0-based) at which each member stopped.
    """
    alive = np.arange(population.size)
    rung = np.zeros(population.size, dtype=int)
    for k in range(population.size):  # at most one rung per member: each rung keeps fewer
        end = epochs if alive.size == 1 else min((k + 1) * schedule.rung_epochs, epochs)
        advance(population, alive, end, f"rung {k} ({alive.size} members)")
        rung[alive] = k
        if end >= epochs:
            break
        alive = survivors(population, alive, schedule.eta, monitor)
    return rung


def survivors(population: Population, alive: np.ndarray, eta: int, monitor: str) -> np.ndarray:
    """The best ``max(1, ⌊len(alive) / eta⌋)`` of members ``alive``, in member order.

    Ranked by the monitored value at each member's last epoch run (higher is better for
    names ending in "accuracy", lower otherwise); a diverged member or one without a
    finite value ranks last; ties go to the lower member index.
    """
    scores = last_values(population, monitor)[alive]
    if monitor.endswith("accuracy"):
        scores = -scores
    diverged = np.asarray(population.results.diverged)[alive]
    scores = np.where(np.isfinite(scores) & ~diverged, scores, np.inf)
    order = np.lexsort((alive, scores))  # by score, then by member index
    keep = max(1, alive.size // eta)
    return np.sort(alive[order[:keep]])


def last_values(population: Population, name: str) -> np.ndarray:
    """History entry ``name`` at each member's last epoch run ([members]; NaN before any)."""
    history = np.asarray(population.results.history[name])
    last = population.epochs() - 1
    return np.where(last >= 0, history[np.arange(population.size), np.maximum(last, 0)], np.nan)
