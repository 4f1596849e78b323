"""The training run that tests/test_checkpoint_kill.py starts in a subprocess and kills.

    python tests/_checkpoint_child.py PATH [HANG_AT_SAVE]

trains ``problem()`` with a checkpoint at ``PATH`` after every epoch. Every fsync of a
file sleeps ``FSYNC_SECONDS`` (a slow disk: saves take a good share of the run, so that a
kill at a random moment can land in one), and with ``HANG_AT_SAVE = k > 0`` the k-th
save hangs in its fsync, its temporary file written, until the process is killed.
The test imports ``problem`` and ``OPTIONS`` from here, to run the same training itself.
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


def main(path: str, hang_at: int = 0):
    """Train ``problem()`` with a checkpoint at ``path`` (settings as tests/conftest.py)."""
    jax.config.update("jax_enable_x64", True)
    jax.config.update("jax_numpy_dtype_promotion", "strict")
    jax.config.update("jax_numpy_rank_promotion", "raise")
    os.fsync = _slow_fsync(os.fsync, hang_at)
    trainer, x, y = problem()
    fnn.fit(trainer, x, y, **OPTIONS, checkpoint=path)


if __name__ == "__main__":
    main(sys.argv[1], *(int(a) for a in sys.argv[2:]))
