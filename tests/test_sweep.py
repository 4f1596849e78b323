"""Sweeps: seeds × hyperparameter grids as one vmapped program, on one device.

Every sweep here uses the same configuration and fit options, so the compiled program
of a 6-member chunk is built once and shared by the tests (only the chunked sweep, with
4-member chunks, compiles a second one). Multi-device sweeps: tests/test_distributed.py.
"""

import operator

import chex
import jax
import numpy as np
import pytest
from _sweep_setup import BATCH, config, count_compiles, forbid

import fnn
from fnn import progress
from fnn.sweeps import members, sweep

EPOCHS, STEPS = 5, 6  # 300 examples: 6 updates an epoch
LRS, SEEDS = [1e-2, 3e-3], 3


@pytest.fixture(scope="module")
def options(digits_300):
    """The fit options every sweep and single run here shares."""
    return dict(epochs=EPOCHS, batch_size=BATCH, validation=digits_300[2:], patience=2, tol=1e-3)


@pytest.fixture(scope="module")
def run(digits_300, options):
    """``run(**sweep_arguments)``: a sweep of ``config`` on the data with the shared options."""
    return lambda **kwargs: sweep(config, digits_300[0], digits_300[1], **(options | kwargs))


@pytest.fixture(scope="module")
def swept(run):
    """The 2 lr × 3 seed sweep, one chunk."""
    return run(seeds=SEEDS, grid={"lr": LRS})


def assert_members_close(batched, i, single, rtol=1e-5, atol=1e-6):
    """Member ``i`` of a stacked FitResult equals a single FitResult."""
    pick = jax.tree.map(lambda a: a[i], (batched.train_state.params, batched.best_params, batched.history))
    chex.assert_trees_all_close(
        pick, (single.train_state.params, single.best_params, single.history), rtol=rtol, atol=atol
    )
    for name in ("stop_epoch", "best_epoch", "stopped_early", "diverged"):
        assert getattr(batched, name)[i] == getattr(single, name), name


# ---------------------------------------------------------------------------- numbers


def test_sweep_equals_members_run_one_at_a_time(digits_300, options, swept):
    """2 lr × 3 seeds in one vmapped program == the 6 runs of fit(config(lr), key=seed)."""
    x, y, _, _ = digits_300
    table = swept.hyperparameters
    assert list(table["lr"]) == [1e-2] * 3 + [3e-3] * 3 and list(table["seed"]) == [0, 1, 2] * 2
    for i, (lr, seed) in enumerate(zip(table["lr"], table["seed"])):
        single = fnn.fit(config(float(lr)), x, y, key=int(seed), **options)
        assert_members_close(swept.results, i, single)
    assert int(swept.results.train_state.step[0]) == EPOCHS * STEPS


def test_batch_norm_members_equal_their_runs_alone(digits_300):
    """A batch-norm MLP under Adam: members equal fit alone to the same tolerance, running
    statistics included. fnn.mlp puts no bias before batch norm: its gradient is rounding
    noise, which Adam amplifies into steps that depend on the summation order (over
    thousands of steps a member then drifts away from its run alone)."""
    x, y, xv, yv = digits_300
    params, _ = fnn.mlp([64, 16, 8, 10], batchnorm=True).init(jax.random.key(0))
    assert [sorted(p) for p in params if p] == [["w"], ["offset", "scale"], ["w"], ["offset", "scale"], ["b", "w"]]
    bn = lambda lr=1e-2: fnn.Trainer(fnn.mlp([64, 16, 10], batchnorm=True), fnn.adam(lr), fnn.cross_entropy)  # noqa: E731
    options = dict(epochs=3, batch_size=BATCH, validation=(xv, yv))
    swept = sweep(bn, x, y, seeds=2, **options)
    for seed in range(2):
        alone = fnn.fit(bn(), x, y, key=seed, **options)
        assert_members_close(swept.results, seed, alone)
        member_state = jax.tree.map(operator.itemgetter(seed), swept.results.train_state.model_state)
        chex.assert_trees_all_close(member_state, alone.train_state.model_state, rtol=1e-5, atol=1e-6)


def test_chunks_smaller_than_the_sweep_give_the_same_numbers(run, swept):
    """6 members in chunks of 4: the second chunk is padded with repeated members."""
    chunked = run(seeds=SEEDS, grid={"lr": LRS}, chunk_size=4)
    chex.assert_shape(chunked.results.history["loss"], (6, EPOCHS))
    for i in range(6):
        assert_members_close(chunked.results, i, jax.tree.map(operator.itemgetter(i), swept.results))


def test_early_stopping_per_member_and_no_recompilation(run, swept):
    """lr 0 never improves: with patience 2 those members stop after epoch 3 (1-based)
    and stop updating, while the lr 1e-2 members run all epochs, unchanged by their
    stopped neighbours. Same configuration and shapes: the program is not compiled again."""
    with count_compiles() as compiles:
        result = run(seeds=SEEDS, grid={"lr": [1e-2, 0.0]}).results
    assert compiles == []
    stopped, going = slice(3, 6), slice(0, 3)
    assert list(result.stop_epoch[stopped]) == [3] * 3 and all(result.stopped_early[stopped])
    assert list(result.train_state.step[stopped]) == [3 * STEPS] * 3
    assert np.all(np.isnan(result.history["loss"][stopped, 3:])) and list(result.best_epoch[stopped]) == [0] * 3
    assert list(result.stop_epoch[going]) == [EPOCHS] * 3 and not any(result.stopped_early[going])
    for i in range(3):
        assert_members_close(result, i, jax.tree.map(operator.itemgetter(i), swept.results), rtol=0, atol=0)


# ---------------------------------------------------------------------------- the table


def test_rows_hold_hyperparameters_seed_and_final_and_best_metrics(swept):
    rows = swept.rows()
    h = swept.results.history
    assert len(rows) == 6
    for i, row in enumerate(rows):
        assert (row["lr"], row["seed"]) == (swept.hyperparameters["lr"][i], swept.hyperparameters["seed"][i])
        stop, best = int(swept.results.stop_epoch[i]), int(swept.results.best_epoch[i])
        assert (row["stop_epoch"], row["best_epoch"], row["diverged"]) == (stop, best, False)
        assert row["final_val_loss"] == pytest.approx(float(h["val_loss"][i, stop - 1]))
        assert row["best_val_loss"] == pytest.approx(float(h["val_loss"][i, best]))
        assert row["final_accuracy"] == pytest.approx(float(h["accuracy"][i, stop - 1]))


def test_aggregate_and_summary_over_seeds(swept):
    final = np.array([row["final_val_accuracy"] for row in swept.rows()]).reshape(2, SEEDS)
    groups = swept.aggregate("final_val_accuracy")
    assert [g["lr"] for g in groups] == LRS and all(g["seeds"] == SEEDS for g in groups)
    for g, values in zip(groups, final):
        assert (g["mean"], g["std"], g["min"], g["max"]) == pytest.approx(
            (values.mean(), values.std(), values.min(), values.max())
        )
    assert [(point, members) for point, members in swept.groups()] == [
        ({"lr": LRS[0]}, [0, 1, 2]),
        ({"lr": LRS[1]}, [3, 4, 5]),
    ]
    lines = swept.summary("final_val_accuracy").splitlines()
    assert lines[0] == "| lr | seeds | final_val_accuracy mean ± std | min | max |"
    assert lines[1] == "|---|---|---|---|---|" and len(lines) == 6
    assert lines[2].startswith("| 0.01 | 3 | ") and f"{final[0].mean():.4f} ± {final[0].std():.4f}" in lines[2]
    assert lines[3].startswith("| 0.003 | 3 | ")
    assert lines[5] == "6 members in 1 compiled call(s) of up to 6 members; 30 member-epochs computed"
    assert swept.chunk_size == 6 and swept.calls == 1 and swept.member_epochs == 6 * EPOCHS


def test_a_member_that_diverged_in_its_first_epoch_has_every_key_and_the_summary_counts_it(run):
    """lr 1e6 diverges at the second update (its loss passes the threshold): no best epoch.
    Its rows hold every key (best_* NaN); aggregate and summary leave it out of the
    statistics and say so, instead of a KeyError."""
    table = run(seeds=SEEDS, grid={"lr": [1e-2, 1e6]}, divergence_threshold=100.0)
    rows = table.rows()
    assert all(row.keys() == rows[0].keys() for row in rows) and "best_val_loss" in rows[0]
    assert [row["diverged"] for row in rows] == [False] * SEEDS + [True] * SEEDS
    assert all(row["best_epoch"] == -1 and np.isnan(row["best_val_loss"]) for row in rows[SEEDS:])
    good, bad = table.aggregate("best_val_loss")
    assert (good["seeds"], good["diverged"], good["missing"]) == (SEEDS, 0, 0)
    assert good["mean"] == pytest.approx(np.mean([row["best_val_loss"] for row in rows[:SEEDS]]))
    assert (bad["seeds"], bad["diverged"], bad["missing"]) == (SEEDS, SEEDS, SEEDS) and np.isnan(bad["mean"])
    lines = table.summary("best_loss").splitlines()
    assert lines[0] == "| lr | seeds | diverged | best_loss mean ± std | min | max |"
    assert lines[2].startswith("| 0.01 | 3 | 0 | ") and lines[3] == "| 1e+06 | 3 | 3 | nan ± nan | nan | nan |"
    assert "3 of 6 members diverged; 3 have no best_loss (left out of mean, std, min and max)" in lines


def test_aggregate_leaves_out_members_without_a_value(swept):
    """Member 0 marked as diverged in its first epoch: its grid point's statistics are
    over the other two seeds, and the counts say so."""
    r = swept.results
    table = swept._replace(
        results=r._replace(best_epoch=np.asarray(r.best_epoch).copy(), diverged=np.asarray(r.diverged).copy())
    )
    table.results.best_epoch[0], table.results.diverged[0] = -1, True
    values = [row["best_val_loss"] for row in swept.rows()[1:SEEDS]]
    first = table.aggregate("best_val_loss")[0]
    assert (first["seeds"], first["diverged"], first["missing"]) == (SEEDS, 1, 1)
    assert (first["mean"], first["min"], first["max"]) == pytest.approx((np.mean(values), min(values), max(values)))
    assert "1 of 6 members diverged; 1 have no best_val_loss" in table.summary("best_val_loss")
    assert table.aggregate("final_val_loss")[0]["missing"] == 0  # the final value is the last finite one
    with pytest.raises(ValueError, match=r"metric must be one of the rows' keys \['lr', 'seed'"):
        swept.aggregate("best_f1")


def test_product_and_zip_of_the_grid():
    grid = {"lr": [1e-2, 1e-3], "l2": [0.0, 1e-4]}
    product = members(config, grid, seeds=2)
    assert list(zip(product["lr"], product["l2"], product["seed"])) == [
        (lr, l2, s) for lr in grid["lr"] for l2 in grid["l2"] for s in (0, 1)
    ]
    zipped = members(config, grid, seeds=[7], product=False)
    assert list(zip(zipped["lr"], zipped["l2"], zipped["seed"])) == [(1e-2, 0.0, 7), (1e-3, 1e-4, 7)]
    assert list(members(config, {}, seeds=3)) == ["seed"]


# ---------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(grid={"momentum": [0.9]}), "'momentum' is not a hyperparameter"),
        (dict(grid={"lr": [1e-2, 1e-3], "l2": [0.0]}, product=False), "equal lengths"),
        (dict(grid={"lr": []}), r"grid\['lr'\]"),
        (dict(chunk_size=0), "chunk_size must be >= 1"),
        (dict(chunk_size=2.5), "chunk_size"),
        (dict(seeds=0), "seeds must be >= 1"),
        (dict(seeds=[]), "seeds"),
        (dict(seeds=[0.5, 1.5]), "seeds"),
        (dict(key=0), "key= is not a sweep option"),
        (dict(train_state=None), "train_state= is not a sweep option"),
        (dict(devices=len(jax.devices()) + 1), "devices"),
    ],
)
def test_bad_input_raises_before_compiling(run, change, match, monkeypatch):
    forbid(monkeypatch, fnn.sweeps.population, "advance", "the sweep program")
    with pytest.raises(ValueError, match=match):
        run(**({"seeds": 2, "grid": {"lr": LRS}} | change))


def test_tol_is_traced_data_a_new_value_reuses_the_program(digits_300, options, run, swept):
    """tol (here a NumPy scalar, which fit accepts) is passed to the compiled program as
    data: a new value compiles nothing, and member 0 still matches fit run alone."""
    with count_compiles() as compiles:
        result = run(seeds=SEEDS, grid={"lr": LRS}, tol=np.array(0.5)).results
    assert compiles == []
    single = fnn.fit(config(LRS[0]), digits_300[0], digits_300[1], key=0, **(options | {"tol": 0.5}))
    assert_members_close(result, 0, single)


# ---------------------------------------------------------------------------- progress


def test_progress_summarizes_each_chunks_real_members_only(run, capsys):
    """3 members in chunks of 2: the second chunk is padded with a copy of member 0
    (lr 1e-2). Every line is labelled with its chunk, counts only the chunk's real
    members still running, and its mean is theirs (the padding would move it)."""
    lrs = [1e-2, 3e-3, 1e-3]
    result = run(seeds=1, grid={"lr": lrs}, chunk_size=2, progress=True).results
    lines = [line for line in capsys.readouterr().out.splitlines() if "epoch" in line]
    loss = np.asarray(result.history["loss"])
    expected = []
    for label, real in (("chunk 1/2", [0, 1]), ("chunk 2/2", [2])):
        for epoch in range(EPOCHS):
            going = [i for i in real if np.isfinite(loss[i, epoch])]
            if going:
                expected.append((label, epoch, going, len(real)))
    assert len(lines) == len(expected)
    for line, (label, epoch, going, total) in zip(lines, expected):
        assert line.startswith(f"{label}  epoch {epoch + 1}/{EPOCHS}  "), line
        assert f"  {len(going)}/{total} running  " in line, line
        mean = float(line.split("  loss ")[1].split()[0])
        assert mean == pytest.approx(float(np.mean(loss[going, epoch])), abs=2e-4), line
        lr = float(line.split("  lr ")[1].split()[0])
        assert lr == pytest.approx(float(np.mean([lrs[i] for i in going])), rel=1e-3), line
    assert progress._run["members"] is None and progress._run["label"] == ""  # restored after the sweep
