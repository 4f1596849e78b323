"""Population-based training (``fnn.pbt``): one program, truncation selection, exact copies."""

from __future__ import annotations

import numpy as np
import pytest
from _sweep_setup import config, forbid, sweep_options

import fnn
from fnn.sweeps import population_based as pbt_lib

EPOCHS, INTERVAL, SIZE = 8, 2, 8
LRS = np.logspace(-4, -1, SIZE)


@pytest.fixture(scope="module")
def options(digits_300):
    return sweep_options(digits_300, EPOCHS)


@pytest.fixture(scope="module")
def run(digits_300, options):
    return fnn.pbt(
        config, *digits_300[:2], population={"lr": LRS}, interval=INTERVAL, hyperparameters=["lr"], **options
    )


def test_shapes_and_determinism(digits_300, options, run):
    intervals = EPOCHS // INTERVAL
    assert run.hyperparameters["lr"].shape == run.parents.shape == run.scores.shape == (intervals, SIZE)
    np.testing.assert_array_equal(run.hyperparameters["lr"][0], LRS)
    np.testing.assert_array_equal(run.parents[-1], np.arange(SIZE))  # the last interval keeps everyone
    again = fnn.pbt(
        config, *digits_300[:2], population={"lr": LRS}, interval=INTERVAL, hyperparameters=["lr"], **options
    )
    np.testing.assert_array_equal(again.scores, run.scores)
    np.testing.assert_array_equal(again.parents, run.parents)
    np.testing.assert_array_equal(again.hyperparameters["lr"], run.hyperparameters["lr"])


def test_the_bottom_quarter_copies_the_top_quarter_and_perturbs(run):
    q = SIZE // 4
    for i in range(run.parents.shape[0] - 1):
        order = np.argsort(run.scores[i], kind="stable")  # val_loss: lower is better
        top, bottom = set(order[:q]), set(order[-q:])
        for j in range(SIZE):
            parent = int(run.parents[i, j])
            before, after = run.hyperparameters["lr"][i], run.hyperparameters["lr"][i + 1]
            if j in bottom:
                assert parent in top
                assert np.isclose(after[j] / before[parent], 0.8) or np.isclose(after[j] / before[parent], 1.25)
            else:
                assert parent == j and after[j] == before[j]


def test_copied_state_carries_the_parents_history(run):
    """Each member's final history is its lineage's: at the end of interval i it holds the
    value the member it descends from had then (so params, optimizer state and history
    were copied whole)."""
    history = np.asarray(run.results.history["val_loss"])
    for j in range(SIZE):
        for i, ancestor in enumerate(run.lineage(j)):
            assert history[j, (i + 1) * INTERVAL - 1] == run.scores[i, ancestor]


def test_a_copy_gets_a_fresh_key(digits_300, options):
    """With perturb=(1,) a copy has its parent's state and hyperparameters; its own key
    makes its next interval differ from the parent's."""
    run = fnn.pbt(
        config,
        *digits_300[:2],
        population={"lr": LRS},
        interval=INTERVAL,
        hyperparameters=["lr"],
        perturb=(1.0,),
        **options,
    )
    parents = run.parents[0]
    child = int(np.flatnonzero(parents != np.arange(SIZE))[0])
    parent = int(parents[child])
    loss = np.asarray(run.results.history["loss"])
    if run.parents[1, child] == child and run.parents[1, parent] == parent:
        assert loss[child, INTERVAL] != loss[parent, INTERVAL]
    assert run.hyperparameters["lr"][1, child] == run.hyperparameters["lr"][0, parent]


def test_the_first_interval_is_a_plain_sweep(digits_300, options):
    """Until the first exploit every member trains as a sweep member would; at the end,
    each member holds the first-interval history of the member its lineage started from."""
    seeds = np.zeros(SIZE, dtype=int)  # a sweep's grid points share seed 0
    run = fnn.pbt(
        config,
        *digits_300[:2],
        population={"lr": LRS},
        interval=INTERVAL,
        hyperparameters=["lr"],
        seeds=seeds,
        **options,
    )
    table = fnn.sweep(config, *digits_300[:2], grid={"lr": LRS}, **options | dict(epochs=INTERVAL))
    np.testing.assert_allclose(run.scores[0], np.asarray(table.results.history["val_loss"])[:, -1], rtol=1e-5)
    for name in table.results.history:
        np.testing.assert_allclose(
            np.asarray(run.results.history[name])[:, :INTERVAL],
            np.asarray(table.results.history[name])[[run.lineage(j)[0] for j in range(SIZE)]],
            rtol=1e-5,
        )


def test_best_skips_diverged_members_and_refuses_when_all_diverged(run):
    """best() ranks only members that did not diverge; with none left there is no best."""
    scores = np.array([[1.0, 2.0, 3.0, 4.0], [0.1, 0.5, np.nan, 0.3]])
    diverged = np.array([True, False, True, False])
    result = run._replace(scores=scores, results=run.results._replace(diverged=diverged))
    assert result.best() == 3  # member 0 has the lowest score but diverged
    every = result._replace(results=run.results._replace(diverged=np.ones(4, bool)))
    with pytest.raises(ValueError, match="no best member: all 4 members diverged"):
        every.best()
    with pytest.raises(ValueError, match="no best member"):  # no finite final score either
        result._replace(scores=np.full((2, 4), np.nan)).best()


def dropout_config(lr=1e-2, dropout=0.5):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=dropout), fnn.adam(lr), fnn.cross_entropy)


def test_reachable_values_must_be_ones_the_configuration_accepts():
    """4 intervals, 3 explores by (0.8, 1.25): a dropout rate of 0.6 can reach 0.6 * 1.25^3
    = 1.17, which Dropout refuses; bounds inside [0, 1) make it fine; (0, 1) is not
    (1.0 itself is refused). The extremes of every start times up to 3 factors."""
    reach = pbt_lib._reach
    assert reach(np.array([0.1, 0.6]), (0.8, 1.25), 3, (-np.inf, np.inf)) == pytest.approx(
        [0.1 * 0.8**3, 0.6 * 1.25**3]
    )
    assert reach(np.array([0.1, 0.6]), (0.8, 1.25), 3, (0.0, 0.9)) == [0.0, 0.9]
    assert reach(np.array([1e-3]), (0.8, 1.25), 2, (1e-4, np.inf)) == pytest.approx([1e-4, 1e-3 * 1.25**2])
    assert reach(np.array([0.0, 0.5]), (2.0, 4.0), 5000, (-np.inf, np.inf)) == [0.0, np.inf]  # 0 stays 0
    assert reach(np.array([0.5]), (1.5, 2.0), 3, (-np.inf, np.inf)) == [0.75, 4.0]  # factors > 1: at least one


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(population={"dropout": [0.1, 0.6]}), r"exploring can take 'dropout' to 1\.172 .*rate must lie in \[0"),
        (dict(population={"dropout": [0.1, 0.6]}, bounds={"dropout": (0.0, 1.0)}), "can take 'dropout' to 1 "),
        (dict(population={"dropout": [0.1, 0.6]}, bounds={"dropout": (0.0, 0.9)}), None),  # reaches the program
        (dict(population={"lr": [1e-3, 1e-2]}, hyperparameters=["lr"], perturb=(0.5,)), None),
        (dict(population={"lr": [1e-3, 1e-2]}, hyperparameters=["lr"], perturb=(-1.0,)), "perturb"),
    ],
)
def test_perturbed_values_are_checked_before_compiling(digits_300, options, change, match, monkeypatch):
    forbid(monkeypatch, pbt_lib, "_program", "the pbt program")
    arguments = dict(interval=INTERVAL, hyperparameters=["dropout"]) | options | change
    with pytest.raises(AssertionError if match is None else ValueError, match=match or "the pbt program ran"):
        fnn.pbt(dropout_config, *digits_300[:2], **arguments)


def test_new_starting_values_reuse_the_program(digits_300, options, run):
    before = pbt_lib._program._cache_size()
    fnn.pbt(config, *digits_300[:2], population={"lr": LRS * 2}, interval=INTERVAL, hyperparameters=["lr"], **options)
    assert pbt_lib._program._cache_size() == before


def test_a_population_count_starts_at_the_defaults_and_bounds_clip(digits_300, options):
    run = fnn.pbt(
        config,
        *digits_300[:2],
        population=4,
        interval=INTERVAL,
        hyperparameters=["lr", "l2"],
        bounds={"lr": (0.0, 1.5e-2)},
        perturb=(2.0,),
        **options,
    )
    np.testing.assert_array_equal(run.hyperparameters["lr"][0], np.full(4, 1e-2))  # config's defaults
    np.testing.assert_array_equal(run.hyperparameters["l2"], np.zeros((EPOCHS // INTERVAL, 4)))  # 0 x 2 = 0
    assert sorted(run.hyperparameters["lr"][1]) == [1e-2, 1e-2, 1e-2, 1.5e-2]  # one copy, doubled, clipped
    assert 0 <= run.best() < 4


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(population=1), "at least 2 members"),
        (dict(population={"lr": [1e-3, 1e-2], "l2": [0.0]}), r"population arrays must have equal lengths \(one value"),
        (dict(population={"lr": []}), r"population\['lr'\] must list at least one value"),
        (dict(population={"momentum": [0.9, 0.8]}), "population key 'momentum' is not a hyperparameter"),
        (dict(bounds=["lr"]), r"bounds must be a dict \{name: \(low, high\)\} or None; got list \['lr'\]"),
        (dict(interval=EPOCHS), "interval must be < epochs"),
        (dict(interval=EPOCHS + 5), r"interval=13 with epochs=8 would never exploit"),
        (dict(fraction=np.array(0.25)), "fraction must be a real number"),
        (dict(fraction=True), "fraction must be a real number"),
        (dict(hyperparameters=["momentum"]), "not a parameter of the configuration"),
        (dict(hyperparameters="lr"), "non-empty list"),
        (dict(fraction=0.75), "fraction"),
        (dict(perturb=(0.8, -1.0)), "perturb"),
        (dict(bounds={"l2": (0, 1)}), "not one of the perturbed"),
        (dict(interval=0), "interval"),
        (dict(seeds=[0, 1]), "seeds must be 8 int seeds"),
        (dict(patience=2), "patience= is not a pbt option"),
        (dict(monitor="val_f1"), "monitor must be one of"),
        (dict(population={"lr": [1e-3, -1.0]}), "grid point {'lr': -1.0} is refused"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_bad_input_is_refused_before_compiling(digits_300, options, change, match, monkeypatch):
    """Each bad argument is refused by name, before the program runs; pbt's own arguments
    are named as pbt's (population, not grid)."""
    forbid(monkeypatch, pbt_lib, "_program", "the pbt program")
    arguments = dict(population={"lr": LRS}, interval=INTERVAL, hyperparameters=["lr"]) | options | change
    with pytest.raises(ValueError, match=match) as info:
        fnn.pbt(config, *digits_300[:2], **arguments)
    assert "product=False" not in str(info.value) and "grid[" not in str(info.value)


@pytest.mark.parametrize("fraction", [np.float32(0.25), np.float64(0.25), 0.25, np.int64(0) + 0.25])
def test_numpy_fractions_are_taken_like_python_floats(fraction):
    assert pbt_lib._replaced(fraction, 8) == 2
