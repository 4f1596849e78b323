"""Checkpoints survive SIGKILL: a run killed at random moments resumes bit-identically.

A child process (tests/_checkpoint_child.py) trains a small MLP with a checkpoint after
every epoch on a slow disk (its fsync sleeps), and the test SIGKILLs it: a random delay
after k completed saves, or while its k-th save hangs with the temporary file written
(k and the delays drawn from a seeded RNG). After each kill the checkpoint is absent or
intact, the run resumed here with ``fit(resume=True)`` ends bit-identical to an
uninterrupted run, and no temporary file is left once the resumed run has saved.

The children share a JAX persistent compilation cache, filled by a first child that
runs the whole training while this process compiles it, so that a kill costs a process
start, not a compilation. The children inherit ``XLA_FLAGS`` as tests/conftest.py set
them and enable float64 like it: the same compiled program as in this process.
"""

import importlib.util
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import chex
import pytest

import fnn
from fnn import checkpoint

pytestmark = pytest.mark.slow

FNN_ROOT = Path(fnn.__file__).resolve().parents[1]  # the children import the fnn this process runs
CHILD = Path(__file__).with_name("_checkpoint_child.py")
_spec = importlib.util.spec_from_file_location("_checkpoint_child", CHILD)
child = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(child)

TIMEOUT = 120  # seconds a child may take to reach the moment of its kill
_rng = random.Random(10)
_EPOCH = 2 * child.FSYNC_SECONDS  # about an epoch and its save, in the child
# (mode, k, delay): kill `delay` s "after" k completed saves, or "during" save k (hung mid-write)
TRIALS = [
    ("after", 0, _rng.uniform(0, 0.2)),  # before the first save: no checkpoint yet
    ("during", 1, _rng.uniform(0, _EPOCH)),  # in the first save: a temporary and no checkpoint
    *((mode, _rng.randint(1, child.EPOCHS - 1), _rng.uniform(0, _EPOCH)) for mode in ("during", "after", "after")),
]


def _launch(path: Path, cache: Path, hang_at: int = 0, kind: str = "fit") -> subprocess.Popen:
    """Start the child training (``kind``: "fit" or one of ``child.SWEEPS``) with a
    checkpoint at ``path``; its stderr goes to child.err beside it."""
    env = os.environ | {
        "PYTHONPATH": os.pathsep.join(p for p in (str(FNN_ROOT), os.environ.get("PYTHONPATH")) if p),
        "JAX_COMPILATION_CACHE_DIR": str(cache),
        "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "0",
        "JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES": "0",
    }
    with open(path.with_name("child.err"), "w") as err:
        return subprocess.Popen(
            [sys.executable, str(CHILD), str(path), str(hang_at), kind], env=env, stdout=subprocess.DEVNULL, stderr=err
        )


def _stderr(folder: Path) -> str:
    """The end of what the child wrote to stderr."""
    return (folder / "child.err").read_text()[-3000:]


def _temporaries(folder: Path) -> set:
    """Names of the checkpoint temporary files in ``folder``."""
    return {p.name for p in folder.iterdir() if ".ckpt-" in p.name}


def _wait_for_saves(process: subprocess.Popen, folder: Path, count: int, completed: bool):
    """Poll ``folder`` until the child has begun ``count`` saves (and, if ``completed``, finished them)."""
    seen, deadline = set(), time.monotonic() + TIMEOUT
    while True:
        now = _temporaries(folder)
        seen |= now
        if len(seen) >= count and not (completed and now):
            return
        if process.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"the child ended or hung before its save {count}:\n{_stderr(folder)}")
        time.sleep(0.001)


def _kill(path: Path, cache: Path, mode: str, k: int, delay: float, kind: str = "fit") -> int:
    """Launch a child of ``kind`` checkpointing to ``path`` and SIGKILL it ``delay`` s after
    its k-th save (``mode`` "after") or while its k-th save hangs mid-write ("during");
    the number of saves it completed."""
    process = _launch(path, cache, hang_at=k if mode == "during" else 0, kind=kind)
    try:
        _wait_for_saves(process, path.parent, k, completed=mode == "after")
        time.sleep(delay)
    finally:
        process.kill()
        returncode = process.wait()
    assert returncode in (0, -signal.SIGKILL), _stderr(path.parent)
    if mode == "during":
        assert _temporaries(path.parent), "the kill was to land in a save, with its temporary file written"
    return k - (mode == "during")


def _train_state(result):
    """The run's final TrainState (``FitResult.train_state``; ``.state`` before that rename)."""
    return getattr(result, "train_state", None) or result.state


def _assert_bit_identical(a, b):
    """Same tree and leaves, bit for bit (dtypes and shapes included; PRNG keys by their key data)."""
    chex.assert_trees_all_equal(a, b, strict=True)


def _outcome(result):
    """What must not depend on interruptions: final state, best params, history, stop epoch."""
    return _train_state(result), result.best_params, result.history, result.stop_epoch


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """The children's JAX compilation cache."""
    return tmp_path_factory.mktemp("jax-cache")


@pytest.fixture(scope="module")
def run(tmp_path_factory, cache):
    """``(trainer, x, y, uninterrupted result, folder)``; the folder holds this process's
    final checkpoint ``run.ckpt`` and the first child's ``child.ckpt`` (same run)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    first = _launch(folder / "child.ckpt", cache)
    trainer, x, y = child.problem()
    try:
        result = fnn.fit(trainer, x, y, **child.OPTIONS, checkpoint=folder / "run.ckpt")
        returncode = first.wait(TIMEOUT)
    finally:
        first.kill()
        first.wait()  # reaped even when fit raised (else: ResourceWarning, an error here)
    assert returncode == 0, _stderr(folder)
    return trainer, x, y, result, folder


def test_a_run_in_a_child_process_is_bit_identical_to_one_here(run):
    *_, folder = run
    _assert_bit_identical(checkpoint.read(folder / "child.ckpt")[1], checkpoint.read(folder / "run.ckpt")[1])


@pytest.mark.parametrize("mode, k, delay", TRIALS, ids=[f"{mode}-save-{k}" for mode, k, _ in TRIALS])
def test_a_killed_run_resumes_bit_identically(tmp_path, run, cache, mode, k, delay):
    trainer, x, y, uninterrupted, _ = run
    path = tmp_path / "run.ckpt"
    saved = _kill(path, cache, mode, k, delay)
    assert path.exists() == (saved > 0)
    if saved:
        checkpoint.read(path)  # complete and verified

    resumed = fnn.fit(trainer, x, y, **child.OPTIONS, checkpoint=path, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.err", "run.ckpt"]  # no temporary left
    _assert_bit_identical(_outcome(resumed), _outcome(uninterrupted))


# ---------------------------------------------------------------------------- sweeps
# A chunked sweep (4 members in chunks of 2, stopping every 2 of 8 epochs: 8 calls, a save
# after each), successive halving (6 members in chunks of 4, rungs of 2 epochs: 4 calls)
# and PBT (4 members, intervals of 2 epochs: a save after each of the 4).

SAVES = {"sweep": 8, "halving": 4, "pbt": 4}
SWEEP_TRIALS = [
    (kind, mode, _rng.randint(1, SAVES[kind] - (mode == "after")), _rng.uniform(0, _EPOCH))
    for kind in SAVES
    for mode in ("during", "after")
] + [("sweep", "after", 0, _rng.uniform(0, 0.2))]


def _sweep(kind: str, **checkpointing):
    _, x, y = child.problem()
    if kind == "pbt":
        return fnn.pbt(child.config, x, y, **child.PBT, **child.SWEEP_OPTIONS, **checkpointing)
    return fnn.sweep(child.config, x, y, **child.SWEEPS[kind], **child.SWEEP_OPTIONS, **checkpointing)


def _sweep_outcome(result) -> tuple:
    """What a resumed sweep or PBT run must reproduce bit for bit."""
    if isinstance(result, fnn.PBTResult):
        return result.results, result.parents, result.scores, result.hyperparameters
    return result.results, result.calls, result.member_epochs, result.rung


@pytest.fixture(scope="module")
def swept(tmp_path_factory, cache):
    """``{kind: the uninterrupted sweep's result}``; a first child of each kind runs the
    same sweep meanwhile, filling the children's compilation cache."""
    results = {}
    for kind in SAVES:
        folder = tmp_path_factory.mktemp(f"uninterrupted-{kind}")
        first = _launch(folder / "child.ckpt", cache, kind=kind)
        try:
            results[kind] = _sweep(kind, checkpoint=folder / "run.ckpt")
            returncode = first.wait(TIMEOUT)
        finally:
            first.kill()
            first.wait()
        assert returncode == 0, _stderr(folder)
        assert getattr(results[kind], "calls", SAVES[kind]) == SAVES[kind]
    return results


@pytest.mark.parametrize(
    "kind, mode, k, delay", SWEEP_TRIALS, ids=[f"{kind}-{mode}-save-{k}" for kind, mode, k, _ in SWEEP_TRIALS]
)
def test_a_killed_sweep_resumes_bit_identically(tmp_path, swept, cache, kind, mode, k, delay):
    path = tmp_path / "run.ckpt"
    saved = _kill(path, cache, mode, k, delay, kind)
    assert path.exists() == (saved > 0)

    resumed = _sweep(kind, checkpoint=path, resume=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["child.err", "run.ckpt"]  # no temporary left
    _assert_bit_identical(_sweep_outcome(resumed), _sweep_outcome(swept[kind]))
