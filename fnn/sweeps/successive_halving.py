"""Successive halving inside a sweep: train everyone a little, keep the best third, repeat.

``fnn.sweep(config, x, y, grid=..., epochs=E, schedule=fnn.halving(rung_epochs=r,
eta=3))`` runs *rungs*: every member trains ``r`` epochs; the best ``⌊n/eta⌋`` by the
monitored value (at each member's last epoch; ties go to the lower member index) go on
with their whole state — params, optimizer state, PRNG key, history so far — for ``r``
epochs more; and so on until one member remains, which trains on to epoch ``E`` (or the
epochs run out first, and the rung that reaches ``E`` ends the sweep). A diverged member
ranks last; kept or not, it never trains again, and its ``rung`` is the one in which it
diverged (when every member diverged, none reaches a later rung). A 27-point grid
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
from typing import NamedTuple

import numpy as np

from fnn import losses as losses_lib
from fnn.checks import check_int
from fnn.sweeps.population import Population


@dataclasses.dataclass(frozen=True)
class Halving:
    """A successive-halving schedule for ``fnn.sweep(..., schedule=...)`` (see the module docstring).

    fnn's construction convention (docs/architecture.md): the class checks its arguments
    when built (``__post_init__``) and ``halving`` is the class itself. Every field is
    structure read on the host, so it is a plain frozen dataclass, not a pytree.

    Args:
      rung_epochs: epochs each rung trains its members, an int >= 1.
      eta: after each rung, the best ``⌊members / eta⌋`` (at least one) go on; an int >= 2.
      monitor: the history entry that ranks members (its value at each member's last
        epoch run); default the sweep's ``monitor``: "val_loss" with validation data,
        else "loss"; maximized or minimized as ``fit`` does it
        (``fnn.fit.resolve_monitor``: by the metric's declared direction).

    Raises:
      ValueError: for a bad argument, naming it (an unknown ``monitor`` is refused by the
        sweep, which knows the history's entries).
    """

    rung_epochs: int
    eta: int = 3
    monitor: str | None = None

    def __post_init__(self):
        object.__setattr__(self, "rung_epochs", check_int("rung_epochs", self.rung_epochs))
        object.__setattr__(self, "eta", check_int("eta", self.eta, minimum=2))  # eta = 1 would keep every member
        if self.monitor is not None and not isinstance(self.monitor, str):
            raise ValueError(f"monitor must be a history entry's name (a str) or None; got {self.monitor!r}")


halving = Halving  # the public name is the class itself


class Rungs(NamedTuple):
    """Where successive halving stands: rung ``k`` is running members ``alive``;
    ``rung[m]`` is the last rung member ``m`` ran in (saved with a sweep's checkpoint)."""

    k: int
    alive: np.ndarray
    rung: np.ndarray


def run_rungs(population: Population, schedule: Halving, epochs: int, monitor: str, advance) -> np.ndarray:
    """Run the rungs of ``schedule`` on ``population`` (its members' carries are updated),
    from the start or, for a resumed sweep, from ``population.rungs``.

    Args:
      population: the sweep's population.
      schedule: the halving schedule.
      epochs: the sweep's total epochs.
      monitor: the history entry that ranks members (checked by the caller).
      advance: ``advance(population, which, end, label)``: runs members ``which`` to
        epoch ``end`` (the sweep's, so that compaction applies within a rung; members
        already there are not run again).
    Returns:
      [members] ints: the rung (0-based) at which each member stopped: the last rung it
      ran in. A diverged member ranks last and, when too few members are left, is still
      kept, but it never trains again: it stays at the rung where it diverged (so when
      every member diverged, none reaches a later rung).
    """
    n = population.size
    state = population.rungs or Rungs(0, np.arange(n), np.zeros(n, dtype=int))
    while True:  # at most one rung per member: each rung keeps fewer
        k, alive = state.k, state.alive
        end = epochs if alive.size == 1 else min((k + 1) * schedule.rung_epochs, epochs)
        state.rung[alive[~_diverged(population)[alive]]] = k  # a diverged member keeps the rung it diverged in
        population.rungs = state
        advance(population, alive, end, f"rung {k} ({alive.size} members)")
        if end >= epochs:
            return state.rung
        state = Rungs(k + 1, survivors(population, alive, schedule.eta, monitor), state.rung)


def survivors(population: Population, alive: np.ndarray, eta: int, monitor: str) -> np.ndarray:
    """The best ``max(1, ⌊len(alive) / eta⌋)`` of members ``alive``, in member order.

    Ranked by the monitored value at each member's last epoch run, in the monitor's
    direction (``fnn.losses.maximizes``); a diverged member or one without a finite value
    ranks last (``fnn.losses.ranking``); ties go to the lower member index.
    """
    maximize = losses_lib.maximizes(monitor, population.trainer.metrics)
    keys = np.asarray(
        losses_lib.ranking(last_values(population, monitor)[alive], maximize, ~_diverged(population)[alive])
    )
    order = np.lexsort((alive, keys))  # by key, then by member index
    keep = max(1, alive.size // eta)
    return np.sort(alive[order[:keep]])


def _diverged(population: Population) -> np.ndarray:
    """Whether each member has diverged ([members] bools; none before the first call)."""
    if population.loops is None:
        return np.zeros(population.size, dtype=bool)
    return np.asarray(population.results.diverged)


def last_values(population: Population, name: str) -> np.ndarray:
    """History entry ``name`` at each member's last epoch run ([members]; NaN before any)."""
    history = np.asarray(population.results.history[name])
    last = population.epochs() - 1
    return np.where(last >= 0, history[np.arange(population.size), np.maximum(last, 0)], np.nan)
