"""Saving and restoring a run: one file, written atomically, verified on the way back.

File layout (all integers little-endian)::

    b"FNNCKPT\\n"                 8 bytes, the magic
    version                       uint32 (FORMAT_VERSION)
    header length                 uint64
    header                        UTF-8 JSON: tree structure, each leaf's dtype, shape
                                  and (for PRNG keys) key implementation, user metadata
    payload                       every leaf's bytes, C order, one after another
    sha256                        32 bytes: digest of everything above

``save`` writes to a temporary file in the same folder, flushes and fsyncs it, then
renames it over the target (atomic on POSIX), so a crash mid-write leaves the previous
checkpoint intact. ``restore`` refuses a file that is truncated, corrupted (checksum),
of a newer format, or of another structure than the tree it is asked to fill.

A training run's checkpoint (see ``fnn.fit``) holds the whole loop state: params, model
state, optimizer state, step and epoch counters, the run's PRNG key, the best params so
far and the history, which is what makes a resumed run bit-identical to an
uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

MAGIC = b"FNNCKPT\n"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<8sIQ")


class CheckpointError(ValueError):
    """A checkpoint file that cannot be restored (the message says why)."""


def _is_key(leaf) -> bool:
    return jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _leaf_record(leaf):
    """(header entry, raw bytes) of one leaf."""
    if _is_key(leaf):
        impl = str(jax.random.key_impl(leaf))
        data = np.asarray(jax.random.key_data(leaf))
    else:
        impl, data = None, np.asarray(leaf)
    entry = {"dtype": data.dtype.str, "shape": list(data.shape), "key_impl": impl}
    return entry, np.ascontiguousarray(data).tobytes()


def save(path, tree, metadata: dict | None = None):
    """Write ``tree`` (a pytree of arrays) to ``path`` atomically.

    Args:
      path: destination file; its folder must exist.
      tree: pytree of arrays, scalars or PRNG keys.
      metadata: optional JSON-serializable dict stored in the header.
    """
    leaves, treedef = jax.tree.flatten(tree)
    records = [_leaf_record(leaf) for leaf in jax.device_get(leaves)]
    header = json.dumps(
        {"treedef": str(treedef), "leaves": [entry for entry, _ in records], "metadata": metadata or {}}
    ).encode()
    body = _PREFIX.pack(MAGIC, FORMAT_VERSION, len(header)) + header + b"".join(raw for _, raw in records)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".ckpt-", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(body)
            f.write(hashlib.sha256(body).digest())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_folder(folder)


def _fsync_folder(folder):
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read(path):
    """Read and verify a checkpoint file.

    Returns:
      ``(header, leaves)``: the header dict and the list of leaves (NumPy arrays; PRNG
      keys re-wrapped as JAX key arrays).
    Raises:
      CheckpointError: truncated, corrupted, not a checkpoint, or a newer format.
    """
    with open(path, "rb") as f:
        blob = f.read()
    if len(blob) < _PREFIX.size + 32:
        raise CheckpointError(f"{path}: truncated ({len(blob)} bytes is shorter than any checkpoint)")
    magic, version, header_len = _PREFIX.unpack_from(blob)
    if magic != MAGIC:
        raise CheckpointError(f"{path}: not an fnn checkpoint (magic {magic!r})")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: written in checkpoint format {version}, newer than this fnn reads ({FORMAT_VERSION}); upgrade fnn"
        )
    body, digest = blob[:-32], blob[-32:]
    start = _PREFIX.size + header_len
    try:
        header = json.loads(body[_PREFIX.size:start])
        sizes = [int(np.prod(e["shape"])) * np.dtype(e["dtype"]).itemsize for e in header["leaves"]]
    except (ValueError, KeyError, TypeError):
        raise CheckpointError(f"{path}: corrupted or truncated header") from None
    if len(body) != start + sum(sizes):
        raise CheckpointError(f"{path}: truncated or padded: payload is {len(body) - start} bytes, expected {sum(sizes)}")
    if hashlib.sha256(body).digest() != digest:
        raise CheckpointError(f"{path}: corrupted (SHA-256 checksum mismatch)")
    leaves, offset = [], start
    for entry, size in zip(header["leaves"], sizes):
        data = np.frombuffer(body, np.dtype(entry["dtype"]), int(np.prod(entry["shape"])), offset).reshape(entry["shape"])
        offset += size
        leaves.append(jax.random.wrap_key_data(data, impl=entry["key_impl"]) if entry["key_impl"] else data.copy())
    return header, leaves


def restore(path, like):
    """Restore the pytree saved at ``path`` into the structure of ``like``.

    Args:
      path: a file written by ``save``.
      like: a pytree with the expected structure, leaf shapes and dtypes.
    Returns:
      the restored pytree (JAX arrays).
    Raises:
      CheckpointError: see ``read``, or a structure, shape or dtype that differs from
        ``like``'s (the message says what differs).
    """
    header, leaves = read(path)
    like_leaves, treedef = jax.tree.flatten(like)
    if header["treedef"] != str(treedef):
        raise CheckpointError(
            f"{path}: holds a tree of another structure:\n  file:     {header['treedef']}\n  expected: {treedef}"
        )
    for i, (entry, want) in enumerate(zip(header["leaves"], like_leaves)):
        is_key = _is_key(want)
        want_shape = list(jax.eval_shape(jax.random.key_data, want).shape if is_key else jnp.shape(want))
        if entry["shape"] != want_shape or is_key != bool(entry["key_impl"]) or (
            not is_key and np.dtype(entry["dtype"]) != want.dtype
        ):
            raise CheckpointError(
                f"{path}: leaf {i} is {entry['dtype']} {entry['shape']}, expected {want.dtype} {want_shape}"
            )
    return jax.tree.unflatten(treedef, [jnp.asarray(leaf) for leaf in leaves])
