"""Seed ensembles of a sweep's members (``fnn.ensemble``, ``SweepResult.ensemble``).

The ensemble averages what the members predict (softmax or sigmoid probabilities,
outputs for mse) and is scored with the trainer's loss and metrics: checked against a
NumPy computation from each member's own evaluation-mode outputs, for one member (the
ensemble is that member), per grid point, and on real data, where an ensemble of 8
digits MLPs is more accurate than its members on average. Bad input is refused before
anything is compiled.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sweep_setup import forbid

import fnn
from fnn.sweeps import ensembles as ensemble_module
from fnn.sweeps.ensembles import average, ensemble, output_link

N, FEATURES, SEEDS = 30, 4, 3


def small(loss, outputs, lr=0.1):
    """A configuration: MLP 4-8-outputs with batch norm and dropout (evaluation mode must
    use the running statistics and drop nothing), Adam, the given loss."""

    def config(lr=lr):
        return fnn.Trainer(fnn.mlp([FEATURES, 8, outputs], batchnorm=True, dropout=0.2), fnn.adam(lr), loss)

    return config


def targets(kind, rng):
    if kind == "labels":
        return rng.integers(0, 3, N).astype(np.int32)
    if kind == "probabilities":
        return rng.integers(0, 2, (N, 2)).astype(np.float32)
    return rng.normal(size=(N, 2)).astype(np.float32)


def member(i, *trees):
    """Member ``i`` of each stacked pytree."""
    return tuple(jax.tree.map(lambda a: a[i], tree) for tree in trees)


def member_outputs(trainer, table, x, params="best"):
    """Each member's evaluation-mode outputs [m, n, ...], one member at a time."""
    r = table.results
    p, s = (
        (r.best_params, r.best_model_state) if params == "best" else (r.train_state.params, r.train_state.model_state)
    )
    outputs = []
    for i in range(SEEDS):
        params_i, state_i = member(i, p, s)
        outputs.append(np.asarray(trainer.model.apply(params_i, x, state=state_i)))
    return np.stack(outputs)


def softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sigmoid(z):
    return 1 / (1 + np.exp(-z))


def numpy_scores(kind, outputs, y):
    """(loss, accuracy or None) of an averaged prediction, in float64 NumPy, and the same
    for each member alone: the reference for the ensemble and the members' mean."""
    outputs = outputs.astype(np.float64)

    def scores(z):  # z: one model's outputs [n, ...] or the members' [m, n, ...]
        if kind == "labels":
            p = softmax(z).mean(0) if z.ndim == 3 else softmax(z)
            return -np.mean(np.log(p[np.arange(len(y)), y])), np.mean(p.argmax(-1) == y)
        if kind == "probabilities":
            p = sigmoid(z).mean(0) if z.ndim == 3 else sigmoid(z)
            return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), np.mean((p > 0.5) == (y > 0.5))
        mean = z.mean(0) if z.ndim == 3 else z
        return np.mean((mean - y) ** 2), None

    return scores(outputs), [scores(z) for z in outputs]


@pytest.mark.parametrize(
    "loss, kind",
    [(fnn.cross_entropy, "labels"), (fnn.binary_cross_entropy, "probabilities"), (fnn.mse, "same_shape")],
)
def test_ensemble_equals_numpy_from_each_members_outputs(loss, kind):
    """3 seeds, 3 epochs on 30 random examples, scored in batches of 7 (the last padded),
    with each member's best and final params: the ensemble's loss and accuracy are those
    of the averaged probabilities (outputs for mse) computed in NumPy from each member's
    own outputs; the members' mean likewise."""
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(N, FEATURES)).astype(np.float32), targets(kind, rng)
    config = small(loss, 3 if kind == "labels" else 2)
    table = fnn.sweep(
        config, x, y, seeds=SEEDS, grid={"lr": [0.1]}, epochs=3, batch_size=10, validation=(x, y), devices=1
    )
    for params in ("best", "final"):
        [row] = ensemble(config, table, x, y, params=params, batch_size=7)
        (loss_ref, acc_ref), members = numpy_scores(kind, member_outputs(config(), table, x, params), y)
        assert row["lr"] == 0.1 and row["members"] == SEEDS
        np.testing.assert_allclose(row["loss"], loss_ref, rtol=1e-5)
        np.testing.assert_allclose(row["member_mean_loss"], np.mean([m[0] for m in members]), rtol=1e-5)
        if acc_ref is not None:
            assert row["accuracy"] == pytest.approx(acc_ref) and list(row)[-1] == "member_mean_accuracy"
            assert row["member_mean_accuracy"] == pytest.approx(np.mean([m[1] for m in members]))


def test_averaging_in_output_space_is_stable():
    """Logits of +-1e4: the ensemble's logits stay finite and give the mean probabilities."""
    z = jnp.array([[[1e4, -1e4]], [[-1e4, 1e4]]], jnp.float32)  # 2 members, 1 example, 2 classes
    np.testing.assert_allclose(jax.nn.softmax(average(z, "softmax")), [[0.5, 0.5]], rtol=1e-6)
    np.testing.assert_allclose(jax.nn.sigmoid(average(z, "sigmoid")), [[0.5, 0.5]], rtol=1e-6)
    assert np.all(np.isfinite(average(jnp.full((3, 1, 2), 1e4, jnp.float32), "sigmoid")))


def test_the_loss_decides_what_is_averaged():
    smoothed = functools.partial(fnn.cross_entropy, label_smoothing=0.1)
    redeclared = fnn.losses.Loss(fnn.cross_entropy.fn, targets="labels")
    assert [output_link(loss) for loss in (fnn.cross_entropy, smoothed, redeclared)] == ["softmax"] * 3
    assert output_link(fnn.binary_cross_entropy) == "sigmoid"
    assert output_link(fnn.mse) == "identity" and output_link(lambda p, t, w=None: fnn.mse(p, t, w)) == "identity"


# --- on digits: grid points, one member, and the ensemble's gain ---------------------------


def digits_config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 32, 10], dropout=0.1), fnn.adam(lr), fnn.cross_entropy)


@pytest.fixture(scope="module")
def digits(all_digits):
    """1,000 training, 300 validation and 497 held-out digits, scaled to [0, 1]."""
    x, y = all_digits
    return (x[:1000], y[:1000]), (x[1000:1300], y[1000:1300]), (x[1300:], y[1300:])


@pytest.fixture(scope="module")
def swept(digits):
    """2 learning rates x 8 seeds, 10 epochs, best params on validation loss."""
    train, validation, _ = digits
    options = dict(seeds=8, grid={"lr": [1e-2, 3e-3]}, epochs=10, batch_size=50, validation=validation, devices=1)
    return fnn.sweep(digits_config, *train, **options)


def test_members_are_grouped_by_grid_point(digits, swept):
    """Rows in the order of SweepResult.aggregate, 8 members each. On the validation set,
    with the best params, the members' mean is the mean of each member's best validation
    loss and accuracy as fit's loop recorded them (table.aggregate)."""
    rows = swept.ensemble(digits_config, *digits[1])
    assert [(r["lr"], r["members"]) for r in rows] == [(1e-2, 8), (3e-3, 8)]
    for name in ("loss", "accuracy"):
        recorded = swept.aggregate(f"best_val_{name}")
        assert [(a["lr"], a["seeds"]) for a in recorded] == [(r["lr"], r["members"]) for r in rows]
        np.testing.assert_allclose([r[f"member_mean_{name}"] for r in rows], [a["mean"] for a in recorded], rtol=1e-5)


def test_an_ensemble_of_one_is_that_member(digits, swept):
    """A table of one member (seed 5 of lr 1e-2, taken from the sweep): the ensemble's
    scores are the member's own."""
    pick = lambda tree: jax.tree.map(lambda a: a[5:6], tree)  # noqa: E731
    one = swept._replace(hyperparameters=pick(swept.hyperparameters), results=pick(swept.results))
    [row] = ensemble(digits_config, one, *digits[2])
    assert row["members"] == 1 and int(one.hyperparameters["seed"][0]) == 5
    np.testing.assert_allclose(row["loss"], row["member_mean_loss"], rtol=1e-6)
    assert row["accuracy"] == row["member_mean_accuracy"]


def test_an_ensemble_of_8_digits_mlps_beats_its_members_mean(digits, swept):
    """On the 497 held-out digits, for both grid points (measured here): lr 1e-2,
    ensemble accuracy 0.9155 vs member mean 0.9029 (loss 0.311 vs 0.334); lr 3e-3,
    0.8853 vs 0.8823 (0.408 vs 0.421). The accuracy is the property of the data; the
    loss follows from Jensen's inequality (-log is convex: the NLL of averaged
    probabilities is at most the members' mean NLL, equal only when they agree)."""
    for row in ensemble(digits_config, swept, *digits[2]):
        assert row["accuracy"] >= row["member_mean_accuracy"], row
        assert row["loss"] < row["member_mean_loss"], row


def test_diverged_members_are_left_out_and_counted(digits, swept):
    """Seeds 0-3 of lr 1e-2 and every seed of lr 3e-3 marked as diverged: the first grid
    point is the ensemble of seeds 4-7 (the same program as a table of those four alone:
    bit-identical), the second has no ensemble (NaN), and each row counts what it left out."""
    diverged = np.array([True] * 4 + [False] * 4 + [True] * 8)
    marked = swept._replace(results=swept.results._replace(diverged=diverged))
    first, second = ensemble(digits_config, marked, *digits[2])
    pick = lambda tree: jax.tree.map(lambda a: a[4:8], tree)  # noqa: E731
    alone = swept._replace(hyperparameters=pick(swept.hyperparameters), results=pick(swept.results))
    [expected] = ensemble(digits_config, alone, *digits[2])
    assert first == expected | {"diverged": 4}
    assert (second["lr"], second["members"], second["diverged"]) == (3e-3, 0, 8)
    assert all(np.isnan(second[k]) for k in ("loss", "accuracy", "member_mean_loss", "member_mean_accuracy"))


# --- bad input ---------------------------------------------------------------------------


def wider(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=0.1), fnn.adam(lr), fnn.cross_entropy)


def no_lr(l2=0.0):
    return digits_config()


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(params="last"), "params must be 'best'"),
        (dict(batch_size=0), "batch_size must be >= 1"),
        (dict(x=np.zeros((10, 32), np.float32), y=np.zeros(10, np.int32)), "x of shape"),
        (dict(y=np.full(497, 10, np.int32)), r"y must lie in \[0, 10\)"),
        (dict(config=wider), "table's members do not fit the configuration's model"),
        (dict(config=no_lr), "refused by the configuration"),
        (dict(table="table"), "table must be the SweepResult"),
    ],
)
def test_bad_input_raises_before_compiling(digits, swept, change, match, monkeypatch):
    forbid(monkeypatch, ensemble_module, "_scores", "the ensemble's program")
    arguments = dict(config=digits_config, table=swept, x=digits[2][0], y=digits[2][1]) | change
    with pytest.raises(ValueError, match=match):
        positional = [arguments.pop(k) for k in ("config", "table", "x", "y")]
        ensemble(*positional, **arguments)
