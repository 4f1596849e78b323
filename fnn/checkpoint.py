"""Saving and restoring a run: one file, written atomically, verified on the way back.

File layout (all integers little-endian)::

    b"FNNCKPT\\n"                 8 bytes, the magic
    version                       uint32 (FORMAT_VERSION)
    header length                 uint64
    header                        UTF-8 JSON: tree structure, each leaf's dtype, shape
                                  and (for PRNG keys) key implementation, user metadata
    payload                       every leaf's bytes, C order, one after another
    sha256                        32 bytes: digest of everything above

Writing. ``save`` writes to a temporary file beside the target, named after it and its
writer — ``.<name>.ckpt-<host>-<pid>-<16 hex digits>`` for a target ``<name>``, where
``<host>`` is the writer's host name (characters other than ``A-Za-z0-9_.-`` replaced by
``_``, at most 64) and ``<pid>`` its process id — flushes and fsyncs it, renames it over
the target (atomic on POSIX) and fsyncs the folder, so a crash mid-write leaves the
previous checkpoint intact. A save that fails with an exception removes its temporary;
one that is killed cannot, so every save first removes the temporaries that killed
saves of the same target left behind: names of exactly that form, written on this host
by a process that no longer exists (never another file, never a temporary of this
process or of a live one, which may be mid-write). Several writers of one path — threads,
processes, or the hosts of a multi-host run on a shared filesystem — therefore never
remove each other's temporaries (the last rename wins). Temporaries written on other
hosts are left alone, since whether their writer lives cannot be told from here: a
killed save on another host leaves its temporary until a save from that host (or a
person) removes it; likewise one whose process id has since been reused. This relies on
each host sharing the filesystem having its own host name.

``check_destination(path)`` says, before a long run and without writing anything,
whether ``save`` could write there: ``fit`` calls it at the door, ``save`` before
every write. ``save`` also refuses a tree that ``read`` would refuse (a leaf of a dtype
other than bool or numeric, such as bfloat16).

Reading. ``read`` refuses, with a ``CheckpointError`` naming the file, anything but a
file ``save`` could have written: truncated, corrupted (checksum), of a newer format, or
with a header that does not describe its payload (a checksum only proves that the file
is what someone wrote, not that ``save`` wrote it): every leaf's dtype must be a plain
bool or numeric NumPy dtype, its shape a list of non-negative ints, its key
implementation one JAX knows, and the leaves' sizes must add up to the payload.
``restore`` also refuses a file of another structure than the tree it is asked to fill.

A training run's checkpoint (see ``fnn.fit``) holds the whole loop state: params, model
state, optimizer state, step and epoch counters, the run's PRNG key, the best params so
far and the history, which is what makes a resumed run bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import os
import re
import reprlib
import socket
import struct
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn import files, multihost

MAGIC = b"FNNCKPT\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")
_DIGEST_SIZE = 32
_TEMP_MARK = ".ckpt-"
_PLAIN_DTYPES = frozenset(np.dtype(c).str for c in "?" + np.typecodes["AllInteger"] + np.typecodes["AllFloat"])
_ENTRY_KEYS = ("dtype", "shape", "key_impl")
_MAX_NDIM = 64  # NumPy's limit
_MAX_BYTES = 2**62  # bound on (product of the non-zero dims) * itemsize; NumPy's limit is 2**63 - 1 bytes
_MAX_HOST_CHARS = 64  # Linux's HOST_NAME_MAX


class CheckpointError(ValueError):
    """A checkpoint file that cannot be restored (the message says why)."""


# ---------------------------------------------------------------------------- writing


def check_destination(path: str | os.PathLike[str], *, name: str = "checkpoint") -> None:
    """Check that ``save`` can write a checkpoint to ``path``, creating nothing.

    Args:
      path: the checkpoint file (str or os.PathLike); it need not exist yet.
      name: the argument's name, for the message.
    Raises:
      ValueError: naming the argument and what is wrong: not a path, a folder (or another
        non-regular file), a folder that does not exist or is not writable, or an existing
        file that is not writable.
    """
    try:
        path = os.fspath(path)
    except TypeError:
        path = ""  # not a path: refused just below
    if not isinstance(path, str) or not path:
        raise ValueError(f"{name} must be a file path (a non-empty str or os.PathLike)")
    problem = _destination_problem(path, os.path.dirname(os.path.abspath(path)))
    if problem:
        raise ValueError(f"{name}={path!r}: {problem}")


def _destination_problem(path: str, folder: str) -> str | None:
    """What keeps ``save`` from writing ``path`` (in ``folder``), or None."""
    if os.path.isdir(path):
        return "is a folder; give a file path inside it"
    if not os.path.isdir(folder):
        return f"{folder} is not a folder" if os.path.exists(folder) else f"the folder {folder} does not exist"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} is not writable"
    if os.path.exists(path) and not os.path.isfile(path):
        return "exists and is not a regular file"
    if os.path.exists(path) and not os.access(path, os.W_OK):
        return "the existing file is not writable (a checkpoint would replace it)"
    return None


def _is_key(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _entry(leaf) -> dict:
    """The header entry of ``leaf`` (an array, or a PRNG key array stored as its key data)."""
    if _is_key(leaf):
        data, impl = jax.eval_shape(jax.random.key_data, leaf), str(jax.random.key_impl(leaf))
    else:
        data, impl = leaf, None
    return {"dtype": np.dtype(data.dtype).str, "shape": list(data.shape), "key_impl": impl}


def _raw(leaf) -> bytes:
    """The bytes stored for ``leaf`` (a PRNG key array's key data)."""
    return np.ascontiguousarray(jax.random.key_data(leaf) if _is_key(leaf) else leaf).tobytes()


def save(path: str | os.PathLike[str], tree: Any, metadata: dict[str, Any] | None = None) -> None:
    """Write ``tree`` (a pytree of arrays) to ``path`` atomically.

    In a multi-process run every process calls it alike: arrays that span processes are
    gathered (``fnn.multihost.collect``), process 0 alone writes, and every process waits
    at a barrier until the file is written (none races ahead of a save).

    Args:
      path: destination file; its folder must exist.
      tree: pytree of arrays, scalars or PRNG keys.
      metadata: optional JSON-serializable dict stored in the header.
    Raises:
      ValueError: ``path`` cannot be written (see ``check_destination``), or ``tree`` or
        ``metadata`` holds what ``read`` would refuse (a leaf of a dtype other than bool
        or numeric, such as bfloat16 or object; metadata other than a dict).
      OSError: the write itself failed (the previous checkpoint is left as it was).
    """
    check_destination(path, name="path")
    leaves, treedef = jax.tree.flatten(multihost.collect(tree))
    leaves = [leaf if _is_key(leaf) else np.asarray(leaf) for leaf in jax.device_get(leaves)]
    metadata = {} if metadata is None else metadata
    header = {"treedef": str(treedef), "leaves": [_entry(leaf) for leaf in leaves], "metadata": metadata}
    problem = _header_problem(header)
    if problem:
        raise ValueError(f"cannot save to {path}: {problem}")
    encoded = json.dumps(header).encode()
    with multihost.process_zero_writes("fnn.checkpoint.save") as writing:
        if writing:
            body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(encoded)) + encoded + b"".join(_raw(leaf) for leaf in leaves)
            _remove_stale_temporaries(path)
            _write_atomically(path, body + hashlib.sha256(body).digest())


def _host() -> str:
    """This host's name as it appears in temporaries' names: ``[A-Za-z0-9_.-]``, at most 64 characters."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", socket.gethostname())[:_MAX_HOST_CHARS] or "_"


def _temporary_prefix(path) -> tuple[str, str]:
    """``(folder, ".<name>.ckpt-<host>-")``: where this host's temporaries of ``<folder>/<name>`` go, how
    their names start."""
    folder, name = os.path.split(os.path.abspath(path))
    return folder, f".{name}{_TEMP_MARK}{_host()}-"


def _process_is_gone(pid: int) -> bool:
    """Whether no process ``pid`` exists on this host (a process we may not signal exists)."""
    if pid <= 0 or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError, ValueError):  # PermissionError: it exists; others: cannot tell
        return False
    return False


def _remove_stale_temporaries(path):
    """Remove the temporaries that killed saves of ``path`` on this host left behind (and no other file)."""
    folder, prefix = _temporary_prefix(path)
    pattern = re.compile(re.escape(prefix) + f"([1-9][0-9]*)-[0-9a-f]{{{files.RANDOM_HEX_DIGITS}}}")
    for entry in os.listdir(folder):
        match = pattern.fullmatch(entry)
        if match and _process_is_gone(int(match[1])):
            files.remove(os.path.join(folder, entry))


def _write_atomically(path, blob: bytes):
    """Write ``blob`` to ``path`` through a temporary named after this process (``fnn.files``)."""
    _, prefix = _temporary_prefix(path)
    files.write_atomically(path, lambda f: f.write(blob), prefix=f"{prefix}{os.getpid()}-")


# ---------------------------------------------------------------------------- reading


def read(path: str | os.PathLike[str]) -> tuple[dict[str, Any], list[Any]]:
    """Read and verify a checkpoint file.

    Args:
      path: a file written by ``save``.
    Returns:
      ``(header, leaves)``: the header dict and the list of leaves (NumPy arrays; PRNG
      keys re-wrapped as JAX key arrays).
    Raises:
      CheckpointError: naming the file: truncated, corrupted, not a checkpoint, a newer
        format, or a header that does not describe a payload ``save`` could have written.
      OSError: the file cannot be opened.
    """
    with open(path, "rb") as f:
        blob = f.read()
    body, digest = blob[:-_DIGEST_SIZE], blob[-_DIGEST_SIZE:]
    start = _header_end(path, blob)
    header = _parse_header(path, body[_PREFIX.size : start])
    sizes = [math.prod(e["shape"]) * np.dtype(e["dtype"]).itemsize for e in header["leaves"]]
    if len(body) - start != sum(sizes):
        raise CheckpointError(
            f"{path}: truncated or padded: payload is {len(body) - start} bytes, expected {sum(sizes)}"
        )
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: corrupted (SHA-256 checksum mismatch)")
    offsets = itertools.accumulate(sizes, initial=start)
    pieces = enumerate(zip(header["leaves"], offsets))
    return header, [_leaf(path, i, entry, body, offset) for i, (entry, offset) in pieces]


def _header_end(path, blob: bytes) -> int:
    """Check the fixed-size prefix; returns where the header ends (the payload starts)."""
    if len(blob) < _PREFIX.size + _DIGEST_SIZE:
        raise CheckpointError(f"{path}: truncated ({len(blob)} bytes is shorter than any checkpoint)")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not an fnn checkpoint (magic {magic!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {version}, newer than this fnn reads ({FORMAT_VERSION}); upgrade fnn"
        )
    if header_len > len(blob) - _PREFIX.size - _DIGEST_SIZE:
        raise CheckpointError(f"{path}: truncated: the header length ({header_len} bytes) points past the end")
    return _PREFIX.size + header_len


def _parse_header(path, raw: bytes) -> dict:
    """The header as a dict, refused unless it has the form ``save`` writes."""
    try:
        header = json.loads(raw)
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: corrupted or truncated header (not readable as UTF-8 JSON)") from None
    problem = _header_problem(header)
    if problem:
        raise CheckpointError(f"{path}: invalid header: {problem}")
    return header


def _header_problem(header) -> str | None:
    """What is wrong with a parsed header, or None."""
    if not isinstance(header, dict) or not isinstance(header.get("leaves"), list):
        return 'not an object with a list of "leaves"'
    if not isinstance(header.get("treedef"), str):
        return '"treedef" is not a string'
    if not isinstance(header.get("metadata"), dict):
        return '"metadata" is not an object'
    for i, entry in enumerate(header["leaves"]):
        problem = _entry_problem(entry)
        if problem:
            return f"leaf {i}: {problem}"
    return None


def _entry_problem(entry) -> str | None:
    """What is wrong with one leaf's header entry, or None."""
    if not isinstance(entry, dict) or not all(k in entry for k in _ENTRY_KEYS):
        return f"not an object with the keys {', '.join(_ENTRY_KEYS)}"
    dtype, shape, impl = (entry[k] for k in _ENTRY_KEYS)
    if not isinstance(dtype, str) or dtype not in _PLAIN_DTYPES:
        return f"dtype {reprlib.repr(dtype)} is not a plain bool or numeric NumPy dtype"
    if not (isinstance(shape, list) and len(shape) <= _MAX_NDIM and all(type(d) is int and d >= 0 for d in shape)):
        return f"shape {reprlib.repr(shape)} is not a list of at most {_MAX_NDIM} non-negative ints"
    # NumPy refuses a shape whose non-zero dims and item size multiply past 2**63 - 1 bytes, even when another
    # dim is 0 (an empty array); each dim is at most that product, so this bounds each dim too
    if math.prod(d for d in shape if d) * np.dtype(dtype).itemsize >= _MAX_BYTES:
        return f"shape {reprlib.repr(shape)} is too large for an array of dtype {dtype}"
    if impl is not None and not isinstance(impl, str):
        return f"key_impl {reprlib.repr(impl)} is neither null nor a PRNG implementation name"
    return None


def _leaf(path, i: int, entry: dict, body: bytes, offset: int):
    """Leaf ``i``, decoded from ``body`` at ``offset``: a NumPy array, or a JAX key array."""
    try:  # the header was validated; this turns whatever NumPy still refuses into a CheckpointError
        data = np.frombuffer(body, np.dtype(entry["dtype"]), math.prod(entry["shape"]), offset)
        data = data.reshape(entry["shape"])
    except Exception as e:
        raise CheckpointError(
            f"{path}: leaf {i}: cannot read {entry['dtype']} {reprlib.repr(entry['shape'])} data ({e})"
        ) from e
    if entry["key_impl"] is None:
        return data.copy()
    try:
        return jax.random.wrap_key_data(data, impl=entry["key_impl"])  # type: ignore[arg-type]  # takes NumPy too
    except Exception as e:
        raise CheckpointError(
            f"{path}: leaf {i}: this JAX cannot read {entry['dtype']} {entry['shape']} data as keys of PRNG "
            f"implementation {reprlib.repr(entry['key_impl'])} (an unknown implementation, or data of another shape)"
        ) from e


def restore(path: str | os.PathLike[str], like: Any) -> Any:
    """Restore the pytree saved at ``path`` into the structure of ``like``.

    Args:
      path: a file written by ``save``.
      like: a pytree with the expected structure, leaf shapes and dtypes.
    Returns:
      the restored pytree (JAX arrays).
    Raises:
      CheckpointError: see ``read``, or a structure, leaf count, shape, dtype or key
        implementation that differs from ``like``'s (the message says what differs).
    """
    header, leaves = read(path)
    like_leaves, treedef = jax.tree.flatten(like)
    if header["treedef"] != str(treedef):
        raise CheckpointError(
            f"{path}: holds a tree of another structure:\n  file:     {header['treedef']}\n  expected: {treedef}"
        )
    if len(leaves) != len(like_leaves):
        raise CheckpointError(f"{path}: holds {len(leaves)} leaves, expected {len(like_leaves)}")
    for i, (entry, want) in enumerate(zip(header["leaves"], like_leaves)):
        expected = _entry(want)
        if entry != expected:
            raise CheckpointError(f"{path}: leaf {i} is {_describe(entry)}, expected {_describe(expected)}")
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])


def _describe(entry: dict) -> str:
    """A header entry in words, such as ``<f4 [3, 4]``."""
    kind = f"key<{entry['key_impl']}> data " if entry["key_impl"] else ""
    return f"{kind}{entry['dtype']} {entry['shape']}"
