"""The training run that tests/test_checkpoint_kill.py starts in a subprocess and kills.

    python tests/_checkpoint_child.py PATH [HANG_AT_SAVE [KIND]]

trains ``problem()`` with a checkpoint at ``PATH`` after every epoch (``KIND`` "fit", the
default), or runs the sweep ``SWEEPS[KIND]`` of the same problem with a checkpoint after
every compiled call (chunks of 2 members every 2 epochs; successive halving), or ("pbt")
population-based training of it with a checkpoint after every interval. Every fsync of a
file sleeps ``FSYNC_SECONDS`` (a slow disk: saves take a good share of the run, so that a
kill at a random moment can land in one), and with ``HANG_AT_SAVE = k > 0`` the k-th
save hangs in its fsync, its temporary file written, until the process is killed.
The test imports ``problem``, ``OPTIONS``, ``config``, ``SWEEPS`` and ``PBT`` from here, to run the
same training itself.
"""

import os
import stat
import sys
import time

import jax
import numpy as np

import fnn

EPOCHS = 8
OPTIONS = dict(key=0, epochs=EPOCHS, batch_size=16, checkpoint_every=1)
FSYNC_SECONDS = 0.05


def problem():
    """``(trainer, x, y)``: a 4-8-3 MLP and 64 random examples of 3 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(64, 4)).astype(np.float32)
    y = rng.integers(0, 3, size=64)
    return fnn.Trainer(fnn.mlp([4, 8, 3]), fnn.adam(1e-2), fnn.cross_entropy), x, y


def config(lr=1e-2):
    """The sweeps' configuration: ``problem()``'s trainer at learning rate ``lr``."""
    return fnn.Trainer(fnn.mlp([4, 8, 3]), fnn.adam(lr), fnn.cross_entropy)


SWEEPS = {
    "sweep": dict(seeds=2, grid={"lr": [1e-2, 3e-2]}, chunk_size=2, checkpoint_every=2),
    "halving": dict(
        seeds=[0], grid={"lr": [1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]}, chunk_size=4, schedule=fnn.halving(2)
    ),
}
SWEEP_OPTIONS = dict(epochs=EPOCHS, batch_size=16, devices=1)
PBT = dict(population={"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, interval=2, hyperparameters=["lr"])  # 4 intervals


def _slow_fsync(fsync, hang_at: int):
    """``fsync`` that sleeps ``FSYNC_SECONDS`` for a file, and for ever at the ``hang_at``-th file."""
    files = 0

    def slow(fd):
        nonlocal files
        if stat.S_ISREG(os.fstat(fd).st_mode):
            files += 1
            time.sleep(FSYNC_SECONDS if files != hang_at else 3600)
        fsync(fd)

    return slow


def main(path: str, hang_at: int = 0, kind: str = "fit"):
    """Train ``problem()`` with a checkpoint at ``path`` (settings as tests/conftest.py)."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    os.fsync = _slow_fsync(os.fsync, hang_at)
    trainer, x, y = problem()
    if kind == "fit":
        fnn.fit(trainer, x, y, **OPTIONS, checkpoint=path)
    elif kind == "pbt":
        fnn.pbt(config, x, y, **PBT, **SWEEP_OPTIONS, checkpoint=path)
    else:
        fnn.sweep(config, x, y, **SWEEPS[kind], **SWEEP_OPTIONS, checkpoint=path)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:3]), *sys.argv[3:])
