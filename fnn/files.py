"""Files written whole or not at all: a temporary beside the target, fsynced, renamed over it.

:func:`write_atomically` is how fnn writes every file it keeps — checkpoints
(:mod:`fnn.checkpoint`) and downloaded or generated datasets (:mod:`fnn.datasets`). The
file is written to a new temporary in the target's folder (created exclusively, readable
and writable by its owner only), flushed and fsynced, renamed over the target (atomic on
POSIX) and the folder fsynced: a reader sees the old file or the new one, never part of
one, and a crash mid-write leaves the old file intact. A write that fails with an
exception removes its temporary; one that is killed cannot: the caller's ``prefix`` names
its temporaries so that it can tell them apart (``fnn.checkpoint`` removes those of killed
saves).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from typing import BinaryIO

RANDOM_HEX_DIGITS = 16  # of a temporary's name: 64 random bits, so names never collide


def write_atomically(
    path: str | os.PathLike[str], write: Callable[[BinaryIO], object], *, prefix: str, suffix: str = ""
) -> None:
    """Write the file ``path`` with ``write(file)``, atomically and durably.

    Args:
      path: the file to write (or replace); its folder must exist.
      write: writes the content to the binary file it is given (open on the temporary).
      prefix: how the temporary's name starts (put a ``.`` first to hide it); the name is
        ``prefix``, :data:`RANDOM_HEX_DIGITS` random hex digits, then ``suffix``.
      suffix: how the temporary's name ends.
    Raises:
      whatever ``write``, the file system or the rename raises; ``path`` is then as it
      was and the temporary is removed.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f"{prefix}{secrets.token_hex(RANDOM_HEX_DIGITS // 2)}{suffix}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove(tmp)
        raise
    _fsync_folder(folder)


def remove(path: str | os.PathLike[str]) -> None:
    """Remove the file ``path`` if it is there.

    Args:
      path: the file; a missing one is no error.
    """
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
