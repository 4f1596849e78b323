"""Checkpoints: round trip, atomic writes, refusal of bad files, bit-exact resume."""

import hashlib
import json
import os
import re
import struct
import subprocess
import sys

import chex
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


def test_round_trip_is_exact(tmp_path, tree):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree, metadata={"note": "x"})
    restored = checkpoint.restore(path, like=tree)
    assert jax.tree.structure(restored) == jax.tree.structure(tree)
    chex.assert_trees_all_equal(restored, tree, strict=True)  # values, dtypes and shapes; keys by their data
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


def test_restore_refuses_a_leaf_count_other_than_the_structure(tmp_path):
    tree = {"a": jnp.zeros(0), "b": jnp.zeros(0)}  # zero-size leaves: dropping or adding one keeps the payload valid
    path = tmp_path / "run.ckpt"
    for leaves in (lambda entries: entries[:1], lambda entries: entries * 2):
        checkpoint.save(path, tree)
        _rewrite_header(path, lambda header, leaves=leaves: {**header, "leaves": leaves(header["leaves"])})
        with pytest.raises(checkpoint.CheckpointError, match="leaves, expected 2") as caught:
            checkpoint.restore(path, like=tree)
        assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------- hostile headers


PREFIX = struct.Struct("<8sIQ")  # magic, format version, header length: the documented layout


def _rewrite_header(path, edit, header_len=None):
    """Replace the header of the checkpoint at ``path`` by ``edit(header)`` (an object to
    write as JSON, or raw bytes) and recompute the digest, so that only the header is hostile."""
    blob = path.read_bytes()
    magic, version, length = PREFIX.unpack_from(blob)
    start = PREFIX.size + length
    new = edit(json.loads(blob[PREFIX.size : start]))
    raw = new if isinstance(new, bytes) else json.dumps(new).encode()
    body = PREFIX.pack(magic, version, len(raw) if header_len is None else header_len) + raw + blob[start:-32]
    path.write_bytes(body + hashlib.sha256(body).digest())


def _set(leaf, **fields):
    """An edit of the entry of ``leaf`` (a key path such as "['w']")."""

    def edit(header, index):
        header["leaves"][index[leaf]].update(fields)
        return header

    return edit


def _top(**fields):
    """An edit of the header's top-level fields (None deletes one)."""

    def edit(header, index):
        header.update(fields)
        return {k: v for k, v in header.items() if v is not None}

    return edit


HOSTILE_HEADERS = {  # each keeps the payload's size unless said otherwise, so only the validation can refuse it
    "negative dims": _set("['w']", shape=[-3, -4]),
    "negative dim read as the rest": _set("['w']", shape=[-1]),
    "overflowing dims": _set("['nested'][0]", shape=[2**32, 2**32, 2]),  # int64 product wraps to 0 bytes
    "huge dims of an empty leaf": _set("['nested'][0]", shape=[0, 2**70]),
    "empty leaf past NumPy's byte limit": _set("['nested'][0]", shape=[0, 2**61, 2]),  # 2**62 items of 4+ bytes
    "empty leaf with one huge dim": _set("['nested'][0]", shape=[0, 2**62 - 1]),
    "empty leaf with huge dims last": _set("['nested'][0]", shape=[2**31, 2**31, 0]),
    "empty bool leaf past NumPy's limit": _set("['nested'][0]", dtype="|b1", shape=[2**63, 0]),
    "too many dims": _set("['step']", shape=[1] * 65),
    "float dims": _set("['w']", shape=[3.0, 4]),
    "bool dims": _set("['b']", shape=[True, 4]),
    "string shape": _set("['w']", shape="3,4"),
    "null shape": _set("['step']", shape=None),
    "object dtype": _set("['b']", dtype="|O"),
    "void dtype": _set("['b']", dtype="V8"),
    "unicode dtype": _set("['b']", dtype="<U4", shape=[2]),
    "bytes dtype": _set("['b']", dtype="|S8"),
    "datetime dtype": _set("['b']", dtype="<M8[s]"),
    "structured dtype": _set("['b']", dtype="<f4,<f4"),
    "subarray dtype": _set("['b']", dtype="(2,)<f8", shape=[2]),
    "numeric dtype as a number": _set("['b']", dtype=8),
    "unknown key_impl": _set("['key']", key_impl="not-a-prng"),
    "key_impl of a float leaf": _set("['b']", key_impl="threefry2x32"),
    "key_impl of the wrong shape": _set("['flag']", key_impl="threefry2x32"),
    "key_impl a number": _set("['key']", key_impl=2),
    "missing dtype": lambda h, index: {**h, "leaves": [{"shape": e["shape"], "key_impl": None} for e in h["leaves"]]},
    "leaf entry a list": lambda h, index: {**h, "leaves": [list(e.values()) for e in h["leaves"]]},
    "leaves an object": lambda h, index: {**h, "leaves": {"0": h["leaves"][0]}},
    "missing leaves": _top(leaves=None),
    "missing treedef": _top(treedef=None),
    "treedef a number": _top(treedef=3),
    "metadata a list": _top(metadata=[]),
    "missing metadata": _top(metadata=None),
    "header a list": lambda h, index: [h],
    "header null": lambda h, index: None,
    "header deeply nested": lambda h, index: b"[" * 100_000 + b"]" * 100_000,
    "header not UTF-8": lambda h, index: b"\xff\xfe",
    "header with a 5000-digit int": lambda h, index: json.dumps(h).replace("[3, 4]", f"[{'9' * 5000}, 4]").encode(),
    "sizes short of the payload": _set("['w']", shape=[3, 3]),
    "sizes past the payload": _set("['w']", shape=[3, 5]),
}


@pytest.mark.parametrize("edit", HOSTILE_HEADERS.values(), ids=HOSTILE_HEADERS.keys())
def test_hostile_headers_are_refused_naming_the_file(tmp_path, tree, edit):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    index = {jax.tree_util.keystr(p): i for i, (p, _) in enumerate(jax.tree_util.tree_leaves_with_path(tree))}
    _rewrite_header(path, lambda header: edit(header, index))
    with pytest.raises(checkpoint.CheckpointError) as caught:
        checkpoint.read(path)
    assert str(path) in str(caught.value)


def test_an_empty_leaf_with_a_large_dim_is_read(tmp_path, tree):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    index = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(tree)].index("['nested'][0]")
    _rewrite_header(path, lambda header: _set("['nested'][0]", shape=[0, 2**40])(header, {"['nested'][0]": index}))
    assert checkpoint.read(path)[1][index].shape == (0, 2**40)


def test_what_numpy_refuses_while_decoding_becomes_a_checkpoint_error(tmp_path, tree, monkeypatch):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)

    def refuse(*args, **kwargs):
        raise ValueError("array is too big (simulated)")

    monkeypatch.setattr(np, "frombuffer", refuse)
    with pytest.raises(checkpoint.CheckpointError, match="simulated") as caught:
        checkpoint.read(path)
    assert str(caught.value).startswith(f"{path}: leaf 0")


@pytest.mark.parametrize("header_len", [10**6, 2**64 - 1])
def test_header_length_past_the_end_is_refused(tmp_path, tree, header_len):
    path = tmp_path / "run.ckpt"
    checkpoint.save(path, tree)
    _rewrite_header(path, lambda header: header, header_len=header_len)
    with pytest.raises(checkpoint.CheckpointError, match="past the end") as caught:
        checkpoint.read(path)
    assert str(path) in str(caught.value)


# ---------------------------------------------------------------------------- destination


def _unwritable(target, monkeypatch):
    """Make ``target`` read-only; root writes anyway, so for root also deny it in ``os.access``."""
    target.chmod(0o500 if target.is_dir() else 0o400)
    if os.geteuid() != 0:
        return
    real_access = os.access

    def access(path, mode, **kwargs):
        return not (mode & os.W_OK and os.fspath(path) == str(target)) and real_access(path, mode, **kwargs)

    monkeypatch.setattr(os, "access", access)


def _read_only_folder(folder, monkeypatch):
    (folder / "ro").mkdir()
    _unwritable(folder / "ro", monkeypatch)
    return folder / "ro" / "run.ckpt"


def _read_only_file(folder, monkeypatch):
    (folder / "run.ckpt").write_bytes(b"")
    _unwritable(folder / "run.ckpt", monkeypatch)
    return folder / "run.ckpt"


BAD_DESTINATIONS = {  # name: (arrange(folder, monkeypatch) -> the path to check, what the message says)
    "folder missing": (lambda folder, _: folder / "missing" / "run.ckpt", "folder .*missing does not exist"),
    "path a folder": (lambda folder, _: folder, "is a folder"),
    "path a fifo": (lambda folder, _: os.mkfifo(folder / "fifo") or folder / "fifo", "not a regular file"),
    "folder read-only": (_read_only_folder, "folder .*ro is not writable"),
    "file read-only": (_read_only_file, "existing file is not writable"),
    "not a path": (lambda folder, _: 42, "must be a file path"),
    "empty": (lambda folder, _: "", "must be a file path"),
}


@pytest.mark.parametrize("arrange, match", BAD_DESTINATIONS.values(), ids=BAD_DESTINATIONS.keys())
def test_check_destination_says_what_is_wrong_and_writes_nothing(tmp_path, monkeypatch, arrange, match):
    path = arrange(tmp_path, monkeypatch)
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(ValueError, match="checkpoint") as caught:
        checkpoint.check_destination(path)
    assert caught.match(match)
    assert sorted(tmp_path.rglob("*")) == before


def test_check_destination_accepts_a_new_or_writable_file(tmp_path, tree):
    checkpoint.check_destination(tmp_path / "run.ckpt")
    checkpoint.check_destination(str(tmp_path / "run.ckpt"))
    assert list(tmp_path.iterdir()) == []
    checkpoint.save(tmp_path / "run.ckpt", tree)
    checkpoint.check_destination(tmp_path / "run.ckpt")


def test_save_refuses_a_missing_folder_before_writing(tmp_path, tree):
    with pytest.raises(ValueError, match="path=.*does not exist"):
        checkpoint.save(tmp_path / "missing" / "run.ckpt", tree)


@pytest.mark.parametrize(
    "tree, metadata, match",
    [
        ({"w": jnp.ones(3, jnp.bfloat16)}, None, "dtype"),
        ({"w": np.array([None, 1])}, None, "dtype"),
        ({"w": jnp.ones(3)}, ["not", "a", "dict"], "metadata"),
    ],
    ids=["bfloat16 leaf", "object leaf", "metadata a list"],
)
def test_save_refuses_what_read_would_refuse_and_writes_nothing(tmp_path, tree, metadata, match):
    with pytest.raises(ValueError, match=match):
        checkpoint.save(tmp_path / "run.ckpt", tree, metadata=metadata)
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------- temporary files


def _temporary_name(target, tree, monkeypatch):
    """The name a save of ``target`` gives its temporary file (seen by failing the rename)."""
    names = []

    def fail(src, dst):
        names.append(os.path.basename(src))
        raise OSError("rename refused (simulated)")

    with monkeypatch.context() as m:
        m.setattr(os, "replace", fail)
        with pytest.raises(OSError, match="simulated"):
            checkpoint.save(target, tree)
    return names[0]


def _written_by(name, pid=None, host=None):
    """The temporary's ``name`` (``.<target>.ckpt-<host>-<pid>-<hex>``) as process ``pid`` on ``host`` would name it."""
    head, old_pid, random = name.rsplit("-", 2)
    prefix, old_host = re.fullmatch(r"(\..*?\.ckpt-)(.*)", head).groups()
    return f"{prefix}{old_host if host is None else host}-{old_pid if pid is None else pid}-{random}"


@pytest.fixture
def dead_pid():
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def live_pid():
    """The pid of another live process (a sleeping child)."""
    process = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    yield process.pid
    process.kill()
    process.wait()


def test_temporaries_are_named_after_their_target_and_writer_and_removed_on_failure(tmp_path, tree, monkeypatch):
    name = _temporary_name(tmp_path / "run.ckpt", tree, monkeypatch)
    assert re.fullmatch(rf"\.run\.ckpt\.ckpt-[A-Za-z0-9_.-]+-{os.getpid()}-[0-9a-f]{{16}}", name), name
    assert list(tmp_path.iterdir()) == []  # the failed save removed it


def test_stale_temporaries_of_the_same_checkpoint_are_removed_by_the_next_save(tmp_path, tree, monkeypatch, dead_pid):
    path = tmp_path / "run.ckpt"
    # what two killed saves on this host would leave
    stale = [_written_by(_temporary_name(path, tree, monkeypatch), pid=dead_pid) for _ in range(2)]
    others = [
        _written_by(_temporary_name(tmp_path / "other.ckpt", tree, monkeypatch), pid=dead_pid),  # another's
        # a checkpoint whose name extends ours
        _written_by(_temporary_name(tmp_path / "run.ckpt.ckpt-x", tree, monkeypatch), pid=dead_pid),
        stale[0] + "0",
        stale[0] + ".bak",
        stale[0][1:],
        _written_by(stale[0], pid=f"0{dead_pid}"),
        "notes.txt",
    ]
    for name in stale + others:
        (tmp_path / name).write_bytes(b"partial")
    checkpoint.save(path, tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(others + ["run.ckpt"])
    checkpoint.restore(path, like=tree)


def test_temporaries_of_live_writers_and_other_hosts_survive_a_save(tmp_path, tree, monkeypatch, live_pid, dead_pid):
    path = tmp_path / "run.ckpt"
    name = _temporary_name(path, tree, monkeypatch)
    host = name.rsplit("-", 2)[0].removeprefix(".run.ckpt.ckpt-")  # this host's, as the name gives it
    survivors = [
        _written_by(name, pid=live_pid),  # another live process on this host, maybe mid-write
        _written_by(_temporary_name(path, tree, monkeypatch)),  # this process's own
        _written_by(name, pid=dead_pid, host=host + "x"),  # another host's: whether its writer lives is unknown
        _written_by(name, pid=dead_pid, host="other-host.example"),
    ]
    for survivor in survivors:
        (tmp_path / survivor).write_bytes(b"partial")
    checkpoint.save(path, tree)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(survivors + ["run.ckpt"])


def test_a_save_between_another_writers_write_and_rename_leaves_it_intact(tmp_path, tree, monkeypatch):
    path = tmp_path / "run.ckpt"
    real_replace, renamed = os.replace, []

    def save_in_between(src, dst):  # the first writer paused with its temporary written: a second one saves
        if not renamed:
            renamed.append(src)
            checkpoint.save(path, {**tree, "step": jnp.asarray(8, jnp.int32)})
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", save_in_between)
    checkpoint.save(path, tree)
    assert [p.name for p in tmp_path.iterdir()] == ["run.ckpt"]
    chex.assert_trees_all_equal(checkpoint.restore(path, like=tree), tree, strict=True)  # the last rename wins


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

    # the chunked program is the same program: bit-identical to one call too
    chex.assert_trees_all_equal(uninterrupted.train_state, resumed.train_state, one_call.train_state, strict=True)
    chex.assert_trees_all_equal(uninterrupted.history, resumed.history)
    assert int(resumed.stop_epoch) == 6


def test_checkpoint_options_need_a_path(setup):
    trainer, x, y, kwargs = setup
    with pytest.raises(ValueError, match="checkpoint="):
        fnn.fit(trainer, x, y, **kwargs, checkpoint_every=2)
