"""Resuming a run: extending a finished run with more epochs, and mismatches said in the
user's words (fnn.resume)."""

import chex
import numpy as np
import pytest

import fnn
from fnn.datasets import load_digits

OPTIONS = dict(key=0, batch_size=64)


@pytest.fixture(scope="module")
def setup():
    x, y = load_digits()
    x = (x[:400] / 16.0).astype(np.float32)
    trainer = fnn.Trainer(fnn.mlp([64, 16, 10], dropout=0.1), fnn.adam(1e-2), fnn.cross_entropy)
    return trainer, x, y[:400], (x[:100], y[:100])


def assert_same_run(a, b):
    chex.assert_trees_all_equal((a.train_state, a.best_params, a.history), (b.train_state, b.best_params, b.history))
    assert int(a.best_epoch) == int(b.best_epoch) and int(a.stop_epoch) == int(b.stop_epoch)


def test_a_finished_run_extended_with_more_epochs_equals_the_longer_run(tmp_path, setup):
    trainer, x, y, validation = setup
    path = tmp_path / "run.ckpt"
    short = fnn.fit(trainer, x, y, **OPTIONS, epochs=2, validation=validation, checkpoint=path)
    chex.assert_shape(short.history["loss"], (2,))
    extended = fnn.fit(trainer, x, y, **OPTIONS, epochs=4, validation=validation, checkpoint=path, resume=True)
    longer = fnn.fit(trainer, x, y, **OPTIONS, epochs=4, validation=validation)
    assert_same_run(extended, longer)
    np.testing.assert_array_equal(extended.history["loss"][:2], short.history["loss"])
    # the file now holds the 4-epoch run: resuming it again changes nothing
    again = fnn.fit(trainer, x, y, **OPTIONS, epochs=4, validation=validation, checkpoint=path, resume=True)
    assert_same_run(again, longer)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(epochs=1), r"written for epochs=2; this call has epochs=1: pass epochs >= 2"),
        (dict(batch_size=32), r"written for batch_size=64; this call has batch_size=32"),
        (dict(validation=None), r"written for validation examples=100; this call has validation examples=0"),
        (
            dict(model=fnn.mlp([64, 8, 10], dropout=0.1)),
            r"the model's parameters differ .*: params\[0\]\['b'\] is float32\[16\] in the checkpoint, float32\[8\] in this call",
        ),
        (dict(optimizer=fnn.sgd(0.1)), r"the optimizer's state differs"),
        (dict(patience=3), r"written for patience=None; this call has patience=3"),
        (
            dict(optimizer=fnn.adam(1e-1)),
            r"trainer\.optimizer\.lr\.value=0\.01; this call has trainer\.optimizer\.lr\.value=0\.1",
        ),
        (dict(key=7), r"written for key="),
        (dict(x="shifted"), r"written for data \(SHA-256\)="),
        (dict(tol=0.5), r"written for tol='0\.0'; this call has tol='0\.5'"),
        # every option fnn.options declares SAME is compared, e.g. the evaluation's batch
        # size (it orders the validation sums, so it decides the bits of val_loss)
        (dict(eval_batch_size=32), r"written for eval_batch_size=100; this call has eval_batch_size=32"),
    ],
)
def test_resuming_with_other_settings_says_what_differs(tmp_path, setup, change, match):
    trainer, x, y, validation = setup
    path = tmp_path / "run.ckpt"
    fnn.fit(trainer, x, y, **OPTIONS, epochs=2, validation=validation, checkpoint=path)
    change = dict(change)
    if "model" in change or "optimizer" in change:
        trainer = fnn.Trainer(
            change.pop("model", trainer.model), change.pop("optimizer", trainer.optimizer), fnn.cross_entropy
        )
    if change.pop("x", None):
        x = x + 1e-3  # same shape, other data
    kwargs = dict(OPTIONS, epochs=2, validation=validation) | change
    with pytest.raises(ValueError, match=match):
        fnn.fit(trainer, x, y, **kwargs, checkpoint=path, resume=True)


def test_a_checkpoint_not_written_by_fit_is_refused(tmp_path, setup):
    trainer, x, y, _ = setup
    path = tmp_path / "other.ckpt"
    fnn.checkpoint.save(path, {"w": np.zeros(3, np.float32)})
    with pytest.raises(ValueError, match="not written by fnn.fit"):
        fnn.fit(trainer, x, y, **OPTIONS, epochs=2, checkpoint=path, resume=True)
