"""Sweeps resume from their checkpoint bit for bit (fnn.sweeps.resume).

Here a sweep is stopped right after its k-th save (its first, a middle one, and the last but
one) by an exception from the save (in this process, so every program is compiled once); tests/test_checkpoint_kill.py
SIGKILLs child processes at random moments, during training and during saves.
"""

import re

import chex
import numpy as np
import pytest
from _sweep_setup import sweep_options

import fnn
from fnn.sweeps import resume as sweep_resume


def config(lr=1e-2, dropout=0.0):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=dropout), fnn.adam(lr), fnn.cross_entropy)


EPOCHS = 7
KINDS = {
    "chunks and checkpoint_every": dict(seeds=3, grid={"lr": [1e-2, 3e-2]}, chunk_size=4, checkpoint_every=3),
    "halving": dict(
        seeds=[0], grid={"lr": [1e-3, 1e-2, 3e-2], "dropout": [0.0, 0.1, 0.2]}, schedule=fnn.halving(2), chunk_size=4
    ),
    "compaction": dict(seeds=4, grid={"lr": [1e-2, 1.0]}, compact_every=2, patience=1, chunk_size=4),
}


class Stopped(Exception):
    """Raised by a save to stop the sweep there, as a kill after the save would."""


def _options(digits, kind: str) -> dict:
    return sweep_options(digits, EPOCHS, **KINDS[kind])


def _stop_after_save(monkeypatch, k: int):
    """Make the k-th save of the next sweep stop it (the file written)."""
    save, count = sweep_resume.save_population, [0]

    def save_then_stop(*args):
        save(*args)
        count[0] += 1
        if count[0] == k:
            raise Stopped

    monkeypatch.setattr(sweep_resume, "save_population", save_then_stop)


@pytest.mark.parametrize("kind", KINDS)
def test_a_sweep_stopped_after_a_save_resumes_bit_identically(digits_300, tmp_path, monkeypatch, kind):
    x, y, *_ = digits_300
    options = _options(digits_300, kind)
    whole = fnn.sweep(config, x, y, checkpoint=tmp_path / "whole.ckpt", **options)
    assert whole.calls >= 4  # several chunks, rungs or intervals: saves to stop after
    for k in sorted({1, whole.calls // 2, whole.calls - 1}):  # a first, a middle and the last save but one
        path = tmp_path / f"stopped-{k}.ckpt"
        with monkeypatch.context() as patch:
            _stop_after_save(patch, k)
            with pytest.raises(Stopped):
                fnn.sweep(config, x, y, checkpoint=path, **options)
        resumed = fnn.sweep(config, x, y, checkpoint=path, resume=True, **options)
        chex.assert_trees_all_equal(resumed.results, whole.results, strict=True)
        assert (resumed.calls, resumed.member_epochs) == (whole.calls, whole.member_epochs), k
        if whole.rung is not None:
            np.testing.assert_array_equal(resumed.rung, whole.rung)


def test_checkpoint_every_changes_the_numbers_by_rounding_only(digits_300, tmp_path):
    x, y, *_ = digits_300
    options = _options(digits_300, "chunks and checkpoint_every")
    saved = fnn.sweep(config, x, y, checkpoint=tmp_path / "run.ckpt", **options)
    options.pop("checkpoint_every")
    plain = fnn.sweep(config, x, y, **options)
    chex.assert_trees_all_close(saved.results.history, plain.results.history, rtol=1e-5, atol=1e-6)
    assert saved.calls > plain.calls


def test_resume_says_where_it_resumed_and_a_finished_sweep_runs_nothing(digits_300, tmp_path, capsys):
    x, y, *_ = digits_300
    options = _options(digits_300, "halving")
    whole = fnn.sweep(config, x, y, checkpoint=tmp_path / "run.ckpt", **options)
    again = fnn.sweep(config, x, y, checkpoint=tmp_path / "run.ckpt", resume=True, progress=True, **options)
    assert f"resumed from {tmp_path / 'run.ckpt'}: {whole.calls} compiled calls done" in capsys.readouterr().out
    chex.assert_trees_all_equal(again.results, whole.results)
    assert again.calls == whole.calls


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(seeds=4), "members="),
        (dict(epochs=8), "epochs=8"),
        (dict(schedule=fnn.halving(3)), "schedule="),
        (dict(chunk_size=2), "chunk=2"),
        (dict(batch_size=25), "batch_size="),
        (dict(tol=0.5), "tol="),
        (dict(x_scale=2.0), "data \\(SHA-256\\)="),
        (
            dict(
                config=lambda lr=1e-2, dropout=0.0: fnn.Trainer(fnn.mlp([64, 8, 10]), fnn.adam(lr), fnn.cross_entropy)
            ),
            "parameters differ",
        ),
    ],
)
def test_a_checkpoint_of_another_sweep_is_refused_with_what_differs(digits_300, tmp_path, change, message):
    x, y, *_ = digits_300
    options = _options(digits_300, "halving")
    path = tmp_path / "run.ckpt"
    fnn.sweep(config, x, y, checkpoint=path, **options)
    build = change.pop("config", config)
    x = x * change.pop("x_scale", 1.0)
    with pytest.raises(ValueError, match=f"cannot resume from {re.escape(str(path))}: .*{message}"):
        fnn.sweep(build, x, y, checkpoint=path, resume=True, **(options | change))


def test_checkpoint_options_are_checked_before_anything_runs(digits_300, tmp_path):
    x, y, *_ = digits_300
    options = _options(digits_300, "halving")
    with pytest.raises(ValueError, match="checkpoint_every and resume need checkpoint="):
        fnn.sweep(config, x, y, resume=True, **options)
    with pytest.raises(ValueError, match="checkpoint"):
        fnn.sweep(config, x, y, checkpoint=tmp_path / "no-such-folder" / "run.ckpt", **options)
    with pytest.raises(ValueError, match="resume must be"):
        fnn.sweep(config, x, y, checkpoint=tmp_path / "run.ckpt", resume="yes", **options)
    fnn.fit(config(), x, y, key=0, epochs=2, batch_size=50, checkpoint=tmp_path / "fit.ckpt")
    with pytest.raises(ValueError, match="not written by fnn.sweep"):
        fnn.sweep(config, x, y, checkpoint=tmp_path / "fit.ckpt", resume=True, **options)
    assert not (tmp_path / "run.ckpt").exists()


PBT = dict(population={"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, interval=2, hyperparameters=["lr"])


def _pbt_outcome(run):
    return run.results, run.parents, run.scores, run.hyperparameters


def test_pbt_stopped_after_a_save_resumes_bit_identically(digits_300, tmp_path, monkeypatch, capsys):
    x, y, *_ = digits_300
    options = sweep_options(digits_300, EPOCHS, **PBT)
    whole = fnn.pbt(config, x, y, checkpoint=tmp_path / "whole.ckpt", **options)
    chex.assert_trees_all_equal(_pbt_outcome(fnn.pbt(config, x, y, **options)), _pbt_outcome(whole), strict=True)
    for k in range(1, 4):  # 4 intervals, a save after each
        path = tmp_path / f"stopped-{k}.ckpt"
        with monkeypatch.context() as patch:
            save, count = sweep_resume.save, [0]

            def save_then_stop(*args, save=save, count=count, k=k):
                save(*args)
                count[0] += 1
                if count[0] == k:
                    raise Stopped

            patch.setattr(sweep_resume, "save", save_then_stop)
            with pytest.raises(Stopped):
                fnn.pbt(config, x, y, checkpoint=path, **options)
        resumed = fnn.pbt(config, x, y, checkpoint=path, resume=True, progress=k == 1, **options)
        chex.assert_trees_all_equal(_pbt_outcome(resumed), _pbt_outcome(whole), strict=True)
        if k == 1:
            assert f"resumed from {path}: 1 of 4 intervals done" in capsys.readouterr().out
    with pytest.raises(ValueError, match="cannot resume from .*key="):
        fnn.pbt(config, x, y, checkpoint=tmp_path / "whole.ckpt", resume=True, key=1, **options)
    with pytest.raises(ValueError, match="written for epochs='7'; this call has epochs='8'$"):
        fnn.pbt(config, x, y, checkpoint=tmp_path / "stopped-1.ckpt", resume=True, **options | dict(epochs=8))
    fnn.fit(config(), x, y, key=0, epochs=2, batch_size=50, checkpoint=tmp_path / "fit.ckpt")
    with pytest.raises(ValueError, match="not written by fnn.pbt"):
        fnn.pbt(config, x, y, checkpoint=tmp_path / "fit.ckpt", resume=True, **options)
