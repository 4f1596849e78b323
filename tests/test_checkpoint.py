"""Checkpoints: round trip, atomic writes, refusal of bad files, bit-exact resume."""

import os
import struct

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import checkpoint
from fnn.datasets import load_digits
from fnn.optimizers import adam


@pytest.fixture
def tree():
    return {
        "w": jnp.arange(12, dtype=jnp.float32).reshape(3, 4),
        "b": jnp.ones(4, jnp.float64),
        "step": jnp.asarray(7, jnp.int32),
        "flag": jnp.asarray(True),
        "key": jax.random.key(3),
        "keys": jax.random.split(jax.random.key(4), 2),
        "nested": (jnp.zeros((0, 2)), [jnp.asarray(2.5, jnp.float32)]),
    }


def same(a, b):
    if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
    return a.dtype == b.dtype and np.array_equal(a, b)


def test_round_trip_is_exact(tmp_path, tree):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree, metadata={"note": "x"})
    restored = checkpoint.restore(path, like=tree)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    assert all(same(a, b) for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(restored)))
    header, _ = checkpoint.read(path)
    assert header["metadata"] == {"note": "x"}


def test_crash_mid_write_leaves_previous_file_intact(tmp_path, tree, monkeypatch):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    before = path.read_bytes()

    def crash(*args):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(os, "fsync", crash)
    with pytest.raises(OSError, match="simulated"):
        checkpoint.save(path, jax.tree.map(lambda a: a, {**tree, "w": tree["w"] + 1}))
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]  # no temporary file left


def _corrupt(path, offset_from_end):
    blob = bytearray(path.read_bytes())
    blob[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(blob))


@pytest.mark.parametrize(
    "damage, match",
    [
        (lambda p: _corrupt(p, 40), "corrupted"),
        (lambda p: _corrupt(p, 1), "corrupted"),
        (lambda p: p.write_bytes(p.read_bytes()[:-50]), "truncated"),
        (lambda p: p.write_bytes(p.read_bytes()[:10]), "truncated"),
        (lambda p: p.write_bytes(b"NOTACKPT" + p.read_bytes()[8:]), "not an fnn checkpoint"),
        (lambda p: p.write_bytes(p.read_bytes()[:8] + struct.pack("<I", 99) + p.read_bytes()[12:]), "newer"),
    ],
)
def test_damaged_files_are_refused(tmp_path, tree, damage, match):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    damage(path)
    with pytest.raises(checkpoint.CheckpointError, match=match):
        checkpoint.restore(path, like=tree)


def test_other_structure_is_refused(tmp_path, tree):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    with pytest.raises(checkpoint.CheckpointError, match="another structure"):
        checkpoint.restore(path, like={**tree, "extra": jnp.zeros(1)})
    with pytest.raises(checkpoint.CheckpointError, match="leaf"):
        checkpoint.restore(path, like={**tree, "w": jnp.zeros((4, 3), jnp.float32)})


# ---------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def setup():
    x, y = load_digits()
    x = (x[:600] / 16.0).astype(np.float32)
    trainer = fnn.Trainer(fnn.mlp([64, 16, 10], dropout=0.1), adam(1e-2), fnn.cross_entropy)
    return trainer, x, y[:600], dict(key=0, epochs=6, batch_size=64, validation=(x[:100], y[:100]))


def test_stopped_and_resumed_run_is_bit_identical(tmp_path, setup, monkeypatch):
    trainer, x, y, kwargs = setup
    path = tmp_path / "run.ckpt"
    uninterrupted = fnn.fit(trainer, x, y, **kwargs, checkpoint=tmp_path / "full.ckpt", checkpoint_every=2)
    one_call = fnn.fit(trainer, x, y, **kwargs)

    real_save, saves = checkpoint.save, []

    def save_then_crash(*args, **kw):
        real_save(*args, **kw)
        saves.append(1)
        if len(saves) == 2:
            raise KeyboardInterrupt("simulated interruption after epoch 4")

    monkeypatch.setattr(checkpoint, "save", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        fnn.fit(trainer, x, y, **kwargs, checkpoint=path, checkpoint_every=2)
    monkeypatch.setattr(checkpoint, "save", real_save)
    header, _ = checkpoint.read(path)
    resumed = fnn.fit(trainer, x, y, **kwargs, checkpoint=path, checkpoint_every=2, resume=True)

    for a, b, c in zip(*(jax.tree.leaves(r.state) for r in (uninterrupted, resumed, one_call))):
        assert same(a, b)
        assert same(a, c)  # the chunked program is the same program: bit-identical to one call too
    for name in uninterrupted.history:
        np.testing.assert_array_equal(uninterrupted.history[name], resumed.history[name])
    assert int(resumed.stop_epoch) == 6


def test_resume_refuses_a_checkpoint_of_another_run_shape(tmp_path, setup):
    trainer, x, y, kwargs = setup
    path = tmp_path / "run.ckpt"
    fnn.fit(trainer, x, y, **kwargs, checkpoint=path, checkpoint_every=3)
    other = fnn.Trainer(fnn.mlp([64, 8, 10], dropout=0.1), adam(1e-2), fnn.cross_entropy)
    with pytest.raises(checkpoint.CheckpointError):
        fnn.fit(other, x, y, **kwargs, checkpoint=path, checkpoint_every=3, resume=True)


def test_checkpoint_options_need_a_path(setup):
    trainer, x, y, kwargs = setup
    with pytest.raises(ValueError, match="checkpoint="):
        fnn.fit(trainer, x, y, **kwargs, checkpoint_every=2)
