"""What crosses processes in a multi-process run (``jax.distributed``): arrays made global
from data every process holds, arrays gathered back to every process, files written by
process 0 alone, and a check that every process passes the same data.

In a multi-process run each process runs the same script, and JAX's arrays may span
devices of several processes (a *global* array; no process can read it whole). fnn keeps
its host-side state — a sweep's population, a table, a checkpoint's tree — complete on
every process: it makes global arrays from that state before a compiled call
(:func:`distribute`) and gathers the call's results back to every process after it
(:func:`collect`), so that every process decides the next call alike and ends with the
same complete result. With one process every function here is the identity (or the
plain local operation): the same script runs unchanged on one process or many.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec

from fnn.types import PyTree


def is_multiprocess() -> bool:
    """Whether this process is one of several (``jax.process_count() > 1``)."""
    return jax.process_count() > 1


def _is_key(leaf) -> bool:
    return jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key)


def _global(leaf, sharding: NamedSharding) -> jax.Array:
    """One leaf, the same on every process, as a global array of ``sharding``."""
    if _is_key(leaf):
        data = _global(jax.random.key_data(leaf), _extended(sharding, 1))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(leaf))
    host = np.asarray(leaf)
    return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def _extended(sharding: NamedSharding, axes: int) -> NamedSharding:
    """``sharding`` for an array with ``axes`` more trailing (unsharded) axes."""
    return NamedSharding(sharding.mesh, PartitionSpec(*sharding.spec, *([None] * axes)))


def distribute(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """``tree`` placed with ``sharding``: ``jax.device_put`` where every device is this
    process's; otherwise a global array per leaf, built from this process's copy (which
    must be the same on every process: fnn's host state is). ``None``: unchanged."""
    if sharding is None:
        return tree
    if sharding.is_fully_addressable:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda leaf: _global(leaf, sharding), tree)


def replicated(sharding: NamedSharding) -> NamedSharding:
    """A sharding that holds a whole array on each device of ``sharding``'s mesh (data
    that every member of a call reads)."""
    return NamedSharding(sharding.mesh, PartitionSpec())


def shared(tree: PyTree, sharding: NamedSharding | None) -> PyTree:
    """Data that every member of a call reads (the training data, a PRNG key), placed for
    a call whose members are sharded by ``sharding``: as it is on one process (the
    compiled call moves it), whole on every device of the mesh across processes."""
    if sharding is None or sharding.is_fully_addressable:
        return tree
    return distribute(tree, replicated(sharding))


def collect(tree: PyTree) -> PyTree:
    """``tree`` with every leaf whole on this process (on its first local device): arrays
    that span other processes' devices are gathered from every process (a collective:
    every process must call it alike); others are returned as they are."""
    leaves = jax.tree.leaves(tree)
    if all(not isinstance(leaf, jax.Array) or leaf.is_fully_addressable for leaf in leaves):
        return tree
    return jax.tree.map(_collected, tree)


def _collected(leaf):
    if not isinstance(leaf, jax.Array) or leaf.is_fully_addressable:
        return leaf
    if _is_key(leaf):
        return jax.random.wrap_key_data(_collected(jax.random.key_data(leaf)), impl=jax.random.key_impl(leaf))
    whole = (
        leaf.addressable_data(0) if leaf.is_fully_replicated else multihost_utils.process_allgather(leaf, tiled=True)
    )
    return jax.device_put(np.asarray(whole), jax.local_devices()[0])


@contextlib.contextmanager
def process_zero_writes(name: str) -> Iterator[bool]:
    """``with process_zero_writes("fnn.checkpoint.save") as writing: if writing: ...``:
    only process 0 writes; every process then waits at a barrier named ``name`` (so that
    none races ahead of a save, e.g. to resume from a file not written yet)."""
    try:
        yield jax.process_index() == 0
    finally:
        if is_multiprocess():
            multihost_utils.sync_global_devices(name)


def check_same_data(arrays: PyTree, name: str = "x, y") -> None:
    """Refuse data that differs between processes: every process must pass the same
    training data to a sweep (each computes its members on all of it).

    Raises:
      ValueError: naming ``name`` and the processes whose data differs from process 0's.
    """
    if not is_multiprocess():
        return
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(arrays):
        host = np.ascontiguousarray(collect(leaf))
        sha.update(f"{host.dtype}{host.shape}".encode())
        sha.update(host.tobytes())
    digest = np.frombuffer(sha.digest(), np.uint8)
    every = np.asarray(multihost_utils.process_allgather(digest)).reshape(jax.process_count(), -1)
    differ = [i for i in range(len(every)) if not np.array_equal(every[i], every[0])]
    if differ:
        raise ValueError(
            f"{name} differ between processes: process(es) {differ} pass other data than process 0; in a "
            "multi-process sweep every process passes the same data (each trains its members on all of it)"
        )
