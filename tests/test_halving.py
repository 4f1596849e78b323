"""Successive halving and compaction in ``fnn.sweep``: they change the compute, not the results.

A member that goes on through the rungs equals the same member in the full sweep, and
``fit`` alone, to float32 rounding (``rtol=1e-5``, as any sweep member: XLA:CPU picks its
batched-matmul kernel by the number of members in a call, so a member in a call of 3 is
not bit-identical to itself in a call of 9; its state passes between calls untouched).
The first rung runs every member in one call, so it is bit-identical to the full sweep.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _sweep_setup import config, forbid, sweep_options

import fnn
from fnn.sweeps import population as population_lib

EPOCHS = 9
LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
L2S = [0.0, 1e-3, 1e-2]  # no regularizer by default in the config: l2 acts only where > 0


@pytest.fixture(scope="module")
def options(digits_300):
    return sweep_options(digits_300, EPOCHS)


@pytest.fixture(scope="module")
def grid():
    return {"lr": LRS[:3], "l2": L2S}  # 9 points


@pytest.fixture(scope="module")
def full(digits_300, options, grid):
    return fnn.sweep(config, *digits_300[:2], grid=grid, **options)


@pytest.fixture(scope="module")
def halved(digits_300, options, grid):
    return fnn.sweep(config, *digits_300[:2], grid=grid, schedule=fnn.halving(rung_epochs=2, eta=3), **options)


def history(table, name, member):
    return np.asarray(table.results.history[name][member])


def test_rungs_keep_the_best_third_by_the_monitored_value(full, halved):
    rung = halved.rung
    assert np.bincount(rung).tolist() == [6, 2, 1]  # 9 -> 3 -> 1
    stop = np.asarray(halved.results.stop_epoch)
    assert np.all(stop[rung == 0] == 2) and np.all(stop[rung == 1] == 4) and np.all(stop[rung == 2] == EPOCHS)
    # rung 0 ranks every member by val_loss after epoch 2 (index 1), as the full sweep saw it
    first = history(full, "val_loss", slice(None))[:, 1]
    assert set(np.flatnonzero(rung >= 1)) == set(np.argsort(first, kind="stable")[:3])
    # rung 1 ranks those three by their own val_loss after epoch 4
    second = {i: history(halved, "val_loss", i)[3] for i in np.flatnonzero(rung >= 1)}
    assert np.flatnonzero(rung == 2).tolist() == [min(second, key=second.get)]
    rows = halved.rows()
    assert [row["rung"] for row in rows] == rung.tolist()
    assert all(row["stop_epoch"] == {0: 2, 1: 4, 2: EPOCHS}[row["rung"]] for row in rows)


def test_the_first_rung_is_the_full_sweep_bit_for_bit(full, halved):
    for name in full.results.history:
        np.testing.assert_array_equal(
            np.asarray(halved.results.history[name])[:, :2], np.asarray(full.results.history[name])[:, :2]
        )
    stopped = np.flatnonzero(halved.rung == 0)
    assert np.all(np.isnan(np.asarray(halved.results.history["loss"])[stopped, 2:]))


def test_a_continuing_member_equals_the_full_sweep_and_fit_alone(digits_300, options, full, halved):
    winner = int(np.flatnonzero(halved.rung == 2)[0])
    for name in full.results.history:
        np.testing.assert_allclose(history(halved, name, winner), history(full, name, winner), rtol=1e-5)
    pick = jax.tree.map(lambda a: np.asarray(a[winner]), halved.results.train_state.params)
    same = jax.tree.map(lambda a: np.asarray(a[winner]), full.results.train_state.params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), pick, same)
    point = {k: float(halved.hyperparameters[k][winner]) for k in ("lr", "l2")}
    fit_options = {k: v for k, v in options.items() if k != "devices"}
    alone = fnn.fit(config(**point), *digits_300[:2], key=int(halved.hyperparameters["seed"][winner]), **fit_options)
    np.testing.assert_allclose(history(halved, "val_loss", winner), np.asarray(alone.history["val_loss"]), rtol=1e-5)


def test_halving_spends_fewer_member_epochs(full, halved):
    assert full.member_epochs == 9 * EPOCHS
    # rung 0: 9 members x 2 epochs; rung 1: 3 members (a bucket of 3) x 2; rung 2: 1 x 5
    assert halved.member_epochs == 9 * 2 + 3 * 2 + 1 * 5
    assert halved.calls == 3
    assert "29 member-epochs computed" in halved.summary("best_val_accuracy")


def test_ties_go_to_the_lower_member_index(digits_300, options):
    table = fnn.sweep(
        config, *digits_300[:2], grid={"lr": [1e-2] * 4}, schedule=fnn.halving(rung_epochs=1, eta=2), **options
    )
    assert table.rung.tolist() == [2, 1, 0, 0]  # identical members: 4 -> 2 -> 1 by index


def test_a_diverged_member_never_reaches_a_rung_it_did_not_train_in(digits_300, options):
    """lr 1e6 diverges at its second update (loss above the threshold). With 4 members and
    eta 2, rung 0 keeps member 0 and, ranked last but filling the second place, member 1,
    which cannot train on: it stays at rung 0. When every member diverges (threshold 1e-3:
    at the first update), every member stays at rung 0: no finalist that never trained."""
    halving = fnn.halving(rung_epochs=1, eta=2)
    table = fnn.sweep(
        config,
        *digits_300[:2],
        grid={"lr": [1e-2] + [1e6] * 3},
        schedule=halving,
        divergence_threshold=100.0,
        **options,
    )
    assert table.results.diverged.tolist() == [False, True, True, True]
    assert table.rung.tolist() == [2, 0, 0, 0]  # kept or not, the diverged members stopped at rung 0
    assert [row["rung"] for row in table.rows()] == [2, 0, 0, 0]
    every = fnn.sweep(
        config, *digits_300[:2], grid={"lr": [1e-2] * 4}, schedule=halving, divergence_threshold=1e-3, **options
    )
    assert all(every.results.diverged) and every.rung.tolist() == [0, 0, 0, 0]
    assert every.calls == 1  # nothing ran after rung 0


def test_rank_by_accuracy_is_maximized(digits_300, options, grid):
    table = fnn.sweep(
        config,
        *digits_300[:2],
        grid=grid,
        schedule=fnn.halving(rung_epochs=2, eta=3, monitor="val_accuracy"),
        **options,
    )
    accuracy = history(table, "val_accuracy", slice(None))[:, 1]
    kept = np.flatnonzero(table.rung >= 1)
    assert accuracy[kept].min() >= np.delete(accuracy, kept).max()


def test_compaction_drops_stopped_members_and_changes_no_result(digits_300, options):
    grid = {"lr": LRS}
    stopping = options | dict(patience=1, tol=0.05, monitor="val_loss")
    whole = fnn.sweep(config, *digits_300[:2], grid=grid, **stopping)
    stops = np.asarray(whole.results.stop_epoch)
    assert stops.min() < EPOCHS and stops.max() == EPOCHS  # some stop early, some run on: compaction has work
    compact = fnn.sweep(config, *digits_300[:2], grid=grid, compact_every=2, **stopping)
    np.testing.assert_array_equal(np.asarray(compact.results.stop_epoch), stops)
    np.testing.assert_array_equal(np.asarray(compact.results.best_epoch), np.asarray(whole.results.best_epoch))
    for name in whole.results.history:
        np.testing.assert_allclose(
            np.asarray(compact.results.history[name]), np.asarray(whole.results.history[name]), rtol=1e-5
        )
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6),
        compact.results.best_params,
        whole.results.best_params,
    )
    assert whole.member_epochs == len(LRS) * EPOCHS
    assert compact.member_epochs < whole.member_epochs


def test_buckets_bound_the_programs():
    assert population_lib.buckets(27, 1) == [27, 14, 7, 4, 2, 1]
    assert population_lib.buckets(27, 2) == [28, 14, 8, 4, 2]
    assert population_lib.buckets(1, 1) == [1]


def test_rungs_reuse_their_programs(digits_300, options, grid, halved):
    before = population_lib.advance._cache_size()
    again = fnn.sweep(config, *digits_300[:2], grid=grid, schedule=fnn.halving(rung_epochs=2, eta=3), **options)
    assert population_lib.advance._cache_size() == before
    np.testing.assert_array_equal(again.rung, halved.rung)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(schedule=fnn.halving(2, monitor="val_f1")), "halving's monitor must be one of"),
        (dict(schedule="halving"), "schedule must be fnn.halving"),
        (dict(compact_every=0), "compact_every"),
        (dict(compact_every=1.5), "compact_every"),
    ],
)
def test_bad_input_is_refused_before_compiling(digits_300, options, grid, change, match, monkeypatch):
    forbid(monkeypatch, population_lib, "advance", "the sweep program")
    with pytest.raises(ValueError, match=match):
        fnn.sweep(config, *digits_300[:2], grid=grid, **options | change)


@pytest.mark.parametrize(
    "arguments, match",
    [
        (dict(rung_epochs=0), "rung_epochs"),
        (dict(rung_epochs=2.5), "rung_epochs"),
        (dict(rung_epochs=2, eta=1), "eta must be >= 2; got 1"),
        (dict(rung_epochs=2, eta=0), "eta must be >= 2; got 0"),  # not ">= 1": 1 is refused too
        (dict(rung_epochs=2, monitor=3), "monitor must be"),
    ],
)
def test_halving_refuses_bad_arguments(arguments, match):
    with pytest.raises(ValueError, match=match):
        fnn.halving(**arguments)
