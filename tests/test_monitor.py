"""Which way is better: metrics declare it, and fit, halving and PBT follow the declaration
(fnn.losses.maximizes, fnn.losses.ranking, fnn.fit.resolve_monitor)."""

import numpy as np
import pytest

import fnn
from fnn import losses


def _error(predictions, targets, weights=None):
    return 1.0 - fnn.accuracy(predictions, targets, weights)


def _score(predictions, targets, weights=None):
    return fnn.accuracy(predictions, targets, weights)


METRICS = {
    "accuracy": fnn.accuracy,  # declared higher_is_better by fnn
    "score": losses.higher_is_better(_score),  # the same values, declared by the user
    "error": losses.lower_is_better(_error),  # 1 - accuracy: better when lower
    "plain": _score,  # no declared direction: reported, not monitored
}


def config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 16, 10]), fnn.adam(lr), fnn.cross_entropy, metrics=METRICS)


def test_directions_are_declared_and_equal_by_value():
    assert losses.maximizes("val_accuracy", config().metrics) and losses.maximizes("score", config().metrics)
    assert not losses.maximizes("val_error", config().metrics) and not losses.maximizes("val_loss", config().metrics)
    assert losses.higher_is_better(_score) == losses.higher_is_better(_score)  # a config built twice: one program
    assert losses.lower_is_better(losses.higher_is_better(_score)).higher_is_better is False
    with pytest.raises(ValueError, match=r"monitor='val_plain' names a metric whose direction is not declared"):
        losses.maximizes("val_plain", config().metrics)
    with pytest.raises(ValueError, match="metric must be a function"):
        losses.higher_is_better(0.5)


def test_ranking_puts_the_best_first_and_unusable_members_last():
    values = np.array([0.2, np.nan, 0.9, 0.5])
    np.testing.assert_array_equal(np.argsort(losses.ranking(values, True, [True, True, True, False])), [2, 0, 1, 3])
    np.testing.assert_array_equal(np.argsort(losses.ranking(values, False)), [0, 3, 2, 1])


def test_fit_keeps_the_best_epoch_in_the_declared_direction(digits_300):
    x, y, x_val, y_val = digits_300
    options = dict(key=0, epochs=6, batch_size=50, validation=(x_val, y_val))
    for monitor, best in (("val_score", np.argmax), ("val_error", np.argmin), ("val_accuracy", np.argmax)):
        result = fnn.fit(config(1e-3), x, y, monitor=monitor, **options)
        assert int(result.best_epoch) == int(best(np.asarray(result.history[monitor]))), monitor
    with pytest.raises(ValueError, match="direction is not declared.*higher_is_better\\(plain\\)"):
        fnn.fit(config(), x, y, monitor="val_plain", **options)


def test_halving_and_pbt_rank_a_user_metric_as_declared(digits_300):
    x, y, x_val, y_val = digits_300
    grid = {"lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0, 3.0, 1e-4]}
    options = dict(seeds=[0], grid=grid, epochs=4, batch_size=50, validation=(x_val, y_val), devices=1)
    rungs = {
        monitor: fnn.sweep(config, x, y, schedule=fnn.halving(1, monitor=monitor), **options).rung
        for monitor in ("val_accuracy", "val_score", "val_error")
    }
    np.testing.assert_array_equal(rungs["val_score"], rungs["val_accuracy"])
    np.testing.assert_array_equal(rungs["val_error"], rungs["val_accuracy"])
    with pytest.raises(ValueError, match="direction is not declared"):
        fnn.sweep(config, x, y, schedule=fnn.halving(1, monitor="val_plain"), **options)

    pbt = dict(population={"lr": [1e-3, 1e-2, 3e-1, 3.0]}, interval=1, hyperparameters=["lr"], epochs=3)
    runs = {
        monitor: fnn.pbt(config, x, y, monitor=monitor, batch_size=50, validation=(x_val, y_val), devices=1, **pbt)
        for monitor in ("val_accuracy", "val_score", "val_error")
    }
    for monitor in ("val_score", "val_error"):
        np.testing.assert_array_equal(runs[monitor].parents, runs["val_accuracy"].parents)
        assert runs[monitor].best() == runs["val_accuracy"].best()
    assert runs["val_accuracy"].maximize and not runs["val_error"].maximize
    with pytest.raises(ValueError, match="direction is not declared"):
        fnn.pbt(config, x, y, monitor="val_plain", batch_size=50, validation=(x_val, y_val), **pbt)
