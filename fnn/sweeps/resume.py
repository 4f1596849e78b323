"""Saving a sweep's whole population, and resuming it bit for bit after a kill.

``fnn.sweep(..., checkpoint=path)`` saves, after every compiled call (each chunk, each
rung, each ``checkpoint_every`` or ``compact_every`` interval), everything the sweep
needs to go on: every member's epoch-loop carry (params, optimizer and model state, the
run key, counters, best params, histories; zeros for members not run yet), the call in
progress (its members, end epoch and how many of its chunks ran),
successive halving's position (rung, members alive, each member's last rung) and the
compute counters. One atomic file (:mod:`fnn.checkpoint`), replaced at each save.

``resume=True`` reads it back — after comparing the sweep it was written for with this
call (members, epochs, schedule, chunk, options, a digest of the data, the shape of
every member's carry), so that a file of another sweep is refused with what differs —
then runs the rest of the call in progress and carries on. The sweep's driver decides
each call from the population's state alone (who is live, at which epoch), so the
resumed sweep makes the calls the uninterrupted one made, with the same inputs: its
result is bit-identical on the same machine.
"""

from __future__ import annotations

import os

import jax
import numpy as np

from fnn import checkpoint as checkpoint_lib
from fnn import resume as resume_lib
from fnn.options import ANY, OPTIONS
from fnn.sweeps.population import Pending, Population, zeros
from fnn.sweeps.successive_halving import Rungs
from fnn.train import Trainer

FORMAT = "fnn.sweep 1"


def describe(table: dict, carry, x, y, settings: dict, fit_kwargs: dict, trainer: Trainer) -> dict:
    """A sweep's (or a PBT run's) description, stored with its checkpoint and compared
    on resume.

    Args:
      table: ``{name: [members]}``: the members' hyperparameters and seeds.
      carry: the shapes of one member's carry (``[1, ...]``, e.g. ``Population.carry_shapes(1)``).
      x, y: the training data.
      settings: the entry point's own options that decide its numbers (JSON values), e.g.
        ``{"entry": "fnn.sweep", "epochs": 20, "schedule": "...", ...}``.
      fit_kwargs: fit's options (by ``repr``; arrays such as ``validation`` by a digest;
        those that do not decide the numbers, such as ``progress``, left out:
        ``fnn.options``).
      trainer: the configuration at the first member's hyperparameters (concrete): its
        numbers and the static fields of its configuration objects
        (``trainer.accumulate``, ``trainer.optimizer.nesterov``, ...;
        ``fnn.resume.describe_trainer``) are described too, so that a sweep resumed with
        another configuration outside the grid is refused.
    Returns:
      ``{"settings": {...}, "arrays": {path: "dtype[shape]"}}``: ``settings`` with fit's
      options, the members, the trainer and a digest of the data, and the shape of one
      member's carry outside its histories.
    """
    members = {name: np.asarray(values).tolist() for name, values in table.items()}
    arrays = {
        jax.tree_util.keystr(path): f"{leaf.dtype}{list(leaf.shape[1:])}"
        for path, leaf in jax.tree_util.tree_leaves_with_path(carry._replace(result=carry.result._replace(history={})))
    }
    options = {
        name: resume_lib.digest(value) if any(np.ndim(leaf) for leaf in jax.tree.leaves(value)) else repr(value)
        for name, value in sorted(fit_kwargs.items())
        if OPTIONS[name].on_resume != ANY
    }
    return {
        "settings": {
            **options,
            **settings,
            **resume_lib.describe_trainer(trainer),
            "members": members,
            "data (SHA-256)": resume_lib.digest((x, y)),
        },
        "arrays": arrays,
    }


def save(path: str | os.PathLike[str], tree, description: dict, state: dict) -> None:
    """Write ``tree`` (arrays) and ``state`` (JSON values) with ``description`` to ``path``, atomically."""
    checkpoint_lib.save(path, tree, metadata={"format": FORMAT, **description, "state": state})


def load(path: str | os.PathLike[str], description: dict) -> dict:
    """The JSON state saved at ``path``, once its description matches ``description``.

    Raises:
      ValueError: the file was not written by a sweep or PBT run, or for another one
        (naming the first setting or array that differs).
      fnn.checkpoint.CheckpointError: a damaged file.
    """
    header, _ = checkpoint_lib.read(path)
    saved = header.get("metadata") or {}
    if saved.get("format") != FORMAT:
        raise ValueError(
            f"checkpoint {path} was not written by {description['settings']['entry']} (no such run's description); "
            "cannot resume from it"
        )
    resume_lib.compare(path, saved, description, extendable=())
    return saved["state"]


def save_population(path: str | os.PathLike[str], population: Population, description: dict) -> None:
    """Write a sweep's population to ``path`` atomically (see the module docstring)."""
    pending, rungs = population.pending, population.rungs
    state = {
        "calls": population.calls,
        "member_epochs": population.member_epochs,
        "loops": population.loops is not None,
        "pending": None if pending is None else [pending.which.tolist(), *pending[1:]],
        "rungs": None if rungs is None else [rungs.k, rungs.alive.tolist(), rungs.rung.tolist()],
    }
    save(path, {"loops": population.loops}, description, state)


def restore_population(path: str | os.PathLike[str], population: Population, description: dict) -> None:
    """Fill ``population`` with the state saved at ``path`` for the sweep ``description``
    (raises as :func:`load`)."""
    state = load(path, description)
    like = {"loops": zeros(population.carry_shapes(population.size)) if state["loops"] else None}
    population.loops = checkpoint_lib.restore(path, like)["loops"]
    population.calls, population.member_epochs = state["calls"], state["member_epochs"]
    if state["pending"] is not None:
        which, *rest = state["pending"]
        population.pending = Pending(np.asarray(which, dtype=int), *rest)
    if state["rungs"] is not None:
        k, alive, rung = state["rungs"]
        population.rungs = Rungs(k, np.asarray(alive, dtype=int), np.asarray(rung, dtype=int))
