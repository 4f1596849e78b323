"""Devices: every CPU core as a device; runs and mini-batches sharded over a mesh with
``jax.sharding``; many hosts with ``jax.distributed``.

**Every core.** XLA:CPU runs a program of small operations (a sweep of small models) on
one core; JAX's CPU backend starts with one device. ``use_cpu_cores()``, called first
thing in a script, gives JAX one CPU device per core, and a sweep then trains its members
on all of them (below). ``fnn.sweep`` warns once (``UnusedCoresWarning``) when it runs on
a single CPU device of a machine with more cores. A lone ``fit`` runs on one device
whatever the count: large matrix products still use every core there (the threads
are shared by the devices; see ``experiments/bench_fit.py`` for the measurement)::

    import fnn
    fnn.distributed.use_cpu_cores()      # before any JAX computation

Three ways to use more than one device, all on JAX's own engine (no ``pmap``, no
home-made protocol):

1. **Sweep-parallel** (``member_sharding``). ``fnn.sweep`` runs many members (seeds ×
   hyperparameters) as one vmapped program; with several devices each chunk's member
   axis is sharded over a 1-D mesh ``"members"`` (``NamedSharding``), so every device
   trains its own members and no data crosses devices during training. Results equal
   the single-device sweep::

       fnn.sweep(config, x, y, seeds=32, devices=4, ...)   # first 4 local devices

2. **Data-parallel** (``data_parallel``). One run; each mini-batch's example axis is
   split over a 1-D mesh ``"data"``, the parameters are replicated, and the compiler
   inserts the all-reduce that averages the gradients. Results equal single-device
   ``fit`` up to float reassociation (the batch sum is added up in another order)::

       sharding = fnn.distributed.data_parallel()          # all devices
       fnn.fit(trainer, x, y, key=0, epochs=10, batch_size=64, batch_sharding=sharding)

   ``batch_size`` must be a multiple of the number of devices (``check_batch_divisible``).

3. **Many processes** (``initialize``, ``process_shard``). Every process runs the same
   script and calls ``initialize()`` before any other JAX call (the explicit
   ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID``, else JAX's
   cluster detection: Slurm, Open MPI, Kubernetes, Cloud TPU); then ``jax.devices()``
   lists every process's devices, a sweep's members spread over all of them (each
   process trains its share; ``fnn.multihost`` gathers the results back to every
   process), and ``process_shard`` tells each process which contiguous part of the data
   is its own for data-parallel work::

       index, count = fnn.distributed.initialize()
       table = fnn.sweep(config, x, y, seeds=1000, ...)   # every process: the whole table

Fake devices for testing on one CPU: ``XLA_FLAGS=--xla_force_host_platform_device_count=4``
(or ``jax.config.update("jax_num_cpu_devices", 4)``) before JAX starts.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, NamedTuple, cast

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from fnn import multihost
from fnn.checks import check_bool, check_int

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"
_FORCED_COUNT = re.compile(r"--xla_force_host_platform_device_count=(\d+)")


# ---------------------------------------------------------------------------- CPU cores


class UnusedCoresWarning(UserWarning):
    """A sweep runs on one CPU device while the process may use more cores."""


def cpu_cores() -> int:
    """The number of CPU cores this process may run on (its affinity mask; ``os.cpu_count()``
    where the platform has none)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def use_cpu_cores(n: int | None = None) -> int:
    """Give JAX ``n`` CPU devices (default: one per core), before any JAX computation.

    Sets ``jax_num_cpu_devices``; call it first thing in a script, after the imports. A
    sweep then shards its members over the devices (one program per device, each on its
    own core); a lone ``fit`` runs on the first device and its large matrix products still
    use every core, because the devices share one pool of compute threads. Where
    ``XLA_FLAGS`` already sets ``--xla_force_host_platform_device_count`` and ``n`` is not
    given, that count is kept. Accelerators (GPU, TPU) are not affected: this only sets how
    many devices the CPU backend has.

    Args:
      n: the number of CPU devices (>= 1); default ``cpu_cores()``.
    Returns:
      the number of CPU devices JAX will have.
    Raises:
      ValueError: naming ``n`` when it is not an int >= 1.
      RuntimeError: when JAX has already run a computation with another number of CPU
        devices (the count is fixed once the backend starts): move the call up.
    """
    if n is None:
        forced = _FORCED_COUNT.search(os.environ.get("XLA_FLAGS", ""))
        n = int(forced.group(1)) if forced else cpu_cores()
    elif isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1 (CPU devices); got {n!r}")
    try:
        jax.config.update("jax_num_cpu_devices", int(n))
    except RuntimeError:  # the backend has started: fine if it already has n CPU devices
        have = len(jax.devices("cpu"))
        if have != n:
            raise RuntimeError(
                f"use_cpu_cores({n}) came after JAX started its CPU backend with {have} device(s): call "
                "fnn.distributed.use_cpu_cores() first thing in the script, before any JAX computation"
            ) from None
    return int(n)


_warned_cores: list[bool] = []  # one warning per process


def warn_unused_cores(where: str, devices: int | Sequence[jax.Device] | None, depth: int = 1) -> None:
    """Warn once per process (``UnusedCoresWarning``) when ``where`` runs on a single CPU
    device although the process may use more cores and ``devices`` was left to fnn.

    ``depth``: calls between the entry point ``where`` and this one (1: the entry point
    calls it), so that the warning points at the user's line."""
    if _warned_cores or devices is not None or multihost.is_multiprocess():  # processes share the cores
        return
    local = jax.local_devices()
    cores = cpu_cores()
    if len(local) == 1 and local[0].platform == "cpu" and cores > 1:
        _warned_cores.append(True)
        warnings.warn(
            f"{where} runs on 1 CPU device of the {cores} cores this process may use: call "
            "fnn.distributed.use_cpu_cores() first thing in the script (before any JAX computation) to train "
            f"members on every core, or pass devices=1 to {where} to keep one",
            UnusedCoresWarning,
            stacklevel=2 + depth,
        )


# ---------------------------------------------------------------------------- meshes


def resolve_devices(devices: int | Sequence[jax.Device] | None, available: Iterable[jax.Device]) -> list[jax.Device]:
    """The devices a ``devices=`` argument names.

    Args:
      devices: ``None`` (all of ``available``), an int ``k`` (the first ``k`` of
        ``available``) or a sequence of ``jax.Device``.
      available: the devices to choose from by default or by count.
    Returns:
      a non-empty list of distinct devices.
    Raises:
      ValueError: naming ``devices`` when it asks for more devices than exist, for
        fewer than one, or holds something that is not a distinct JAX device.
    """
    available = list(available)
    if devices is None:
        return available
    if isinstance(devices, (int, np.integer)) and not isinstance(devices, bool):
        if devices > len(available):
            raise ValueError(
                f"devices={devices} asks for more devices than exist: {len(available)} available "
                f"({available[0].platform}); pass 1 <= devices <= {len(available)}, a list of devices, or None "
                "(on CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N gives N devices)"
            )
        if devices < 1:
            raise ValueError(f"devices must be >= 1 (a device count); got {devices}")
        return available[:devices]
    given = devices
    devices = [devices] if isinstance(devices, (jax.Device, str)) or not hasattr(devices, "__iter__") else list(devices)
    if not devices or not all(isinstance(d, jax.Device) for d in devices):
        raise ValueError(f"devices must be None, a count >= 1 or a non-empty list of jax devices; got {given!r}")
    if len(set(devices)) != len(devices):
        raise ValueError(f"devices must not repeat a device; got {devices!r}")
    return devices


def _mesh_sharding(devices: list, axis: str) -> NamedSharding:
    return NamedSharding(Mesh(np.array(devices), (axis,)), PartitionSpec(axis))


def member_sharding(devices: int | Sequence[jax.Device] | None, members: int) -> NamedSharding | None:
    """A NamedSharding of a sweep's member axis over ``devices`` (a 1-D mesh "members").

    Args:
      devices: ``None`` for every device — of every process in a multi-process run (after
        ``initialize``), so that each process computes its own share of the members —,
        an int count (the first that many of ``jax.devices()``) or a list of devices
        (``jax.local_devices()`` keeps a process's members on its own devices). On one
        process, more than ``members`` devices are not used: the mesh takes the first
        ``members`` of them, so no device computes padding only; across processes the
        mesh keeps every device asked for (each process takes part in every call).
      members: members per chunk (>= 1).
    Returns:
      the sharding, or None when a single device remains (nothing to shard).
    Raises:
      ValueError: naming ``devices`` when more devices are asked for than exist.
    """
    devices = resolve_devices(devices, jax.devices())
    if not multihost.is_multiprocess():
        devices = devices[: max(int(members), 1)]
    if len(devices) <= 1:
        return None
    return _mesh_sharding(devices, "members")


def data_parallel(devices: int | Sequence[jax.Device] | None = None) -> NamedSharding:
    """A sharding that splits a mini-batch's example axis over ``devices`` (mesh "data").

    Pass it as ``fnn.fit(..., batch_sharding=data_parallel())``: every mini-batch array
    (inputs, targets, example weights) is split along its first axis, parameters and
    optimizer state stay replicated, and the compiler averages the gradients across
    devices with an all-reduce. ``batch_size`` must be a multiple of the device count.

    Args:
      devices: ``None`` for all devices (every process's, after ``initialize``),
        an int count (the first that many) or a list of devices.
    Returns:
      ``NamedSharding(Mesh(devices, ("data",)), PartitionSpec("data"))``.
    Raises:
      ValueError: naming ``devices`` when more devices are asked for than exist.
    """
    return _mesh_sharding(resolve_devices(devices, jax.devices()), "data")


def check_batch_divisible(batch_size: int, sharding: NamedSharding | None) -> None:
    """Raise unless ``batch_size`` splits evenly over ``sharding``'s first-axis shards.

    The eager check ``fit`` makes on ``batch_sharding`` before anything is traced.

    Args:
      batch_size: examples per mini-batch.
      sharding: ``None`` (no check) or a ``NamedSharding`` such as ``data_parallel()``.
    Raises:
      ValueError: naming ``batch_sharding`` when it is not a NamedSharding, or
        ``batch_size`` when it is not a multiple of the number of shards.
    """
    if sharding is None:
        return
    if not isinstance(sharding, NamedSharding):
        raise ValueError(
            f"batch_sharding must be a jax.sharding.NamedSharding (see fnn.distributed.data_parallel); got {sharding!r}"
        )
    spec = sharding.spec[0] if len(sharding.spec) else None
    axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
    shards = int(np.prod([sharding.mesh.shape[a] for a in axes], dtype=int))
    if batch_size % shards:
        raise ValueError(
            f"batch_size must be a multiple of the {shards} devices the batch is split over; got {batch_size}: "
            f"use batch_size={shards * max(batch_size // shards, 1)} or fewer devices"
        )


# ---------------------------------------------------------------------------- many hosts


class ProcessInfo(NamedTuple):
    """This process's place among the processes of a multi-host run."""

    index: int  # type: ignore[assignment]  # shadows tuple.index (a public field name)
    count: int  # type: ignore[assignment]  # shadows tuple.count


def _env_int(environ: Mapping[str, str], name: str) -> int:
    text = environ[name].strip()
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer; got {text!r}") from None


HEARTBEAT_TIMEOUT = 30  # seconds: a process that stops answering for this long fails the others
CLUSTERS = "Slurm, Open MPI, mpi4py, Kubernetes and Cloud TPU"  # what jax.distributed.initialize detects


def initialize(environ: Mapping[str, str] | None = None, *, heartbeat_timeout: int = HEARTBEAT_TIMEOUT) -> ProcessInfo:
    """Join a multi-process run (``jax.distributed.initialize``); alone, run alone.

    Call it first thing, before any other JAX computation; every process runs the same
    script. Where the processes come from:

    - ``JAX_COORDINATOR_ADDRESS`` (``host:port`` where process 0 serves the coordinator,
      e.g. ``127.0.0.1:1234`` for processes on one machine), ``JAX_NUM_PROCESSES`` and
      ``JAX_PROCESS_ID`` (``0 .. num_processes - 1``), when set, are checked and passed;
    - otherwise JAX's own cluster detection decides (Slurm, Open MPI, mpi4py,
      Kubernetes, Cloud TPU: ``jax.distributed.initialize()`` with no arguments);
    - with neither, nothing is initialized and the process runs alone.

    Afterwards ``jax.devices()`` holds every process's devices: a sweep, PBT and the LR
    range test spread their members over all of them, and ``data_parallel()`` spans them.

    Faults: each process sends heartbeats to the coordinator; when one stops (killed,
    crashed, its machine lost) for ``heartbeat_timeout`` seconds, JAX ends the others with
    an error that says so, rather than leaving them waiting on a collective forever.

    Args:
      environ: the environment to read (default ``os.environ``).
      heartbeat_timeout: seconds without a heartbeat before a process counts as dead (>= 1).
    Returns:
      ``ProcessInfo(index, count)`` (``jax.process_index()``, ``jax.process_count()``).
    Raises:
      ValueError: naming the variable that is missing (when another one is set), not an
        integer, or out of range (``num_processes < 1``, ``process_id`` outside
        ``[0, num_processes)``, an address without a port); a bad ``heartbeat_timeout``.
      RuntimeError: from JAX when it was already initialized or JAX already ran.
    """
    environ = os.environ if environ is None else environ
    heartbeat_timeout = check_int("heartbeat_timeout", heartbeat_timeout)
    names = (ENV_COORDINATOR, ENV_NUM_PROCESSES, ENV_PROCESS_ID)
    present = [name for name in names if environ.get(name, "").strip()]
    if not present:
        return _initialize_detected(heartbeat_timeout)
    for name in names:
        if name not in present:
            raise ValueError(
                f"environment variable {name} is not set, but {', '.join(present)} is: a multi-process run needs "
                f"all of {', '.join(names)}"
            )
    address = environ[ENV_COORDINATOR].strip()
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(
            f"environment variable {ENV_COORDINATOR} must be host:port (e.g. 127.0.0.1:1234); got {address!r}"
        )
    count = _env_int(environ, ENV_NUM_PROCESSES)
    if count < 1:
        raise ValueError(f"environment variable {ENV_NUM_PROCESSES} must be >= 1; got {count}")
    index = _env_int(environ, ENV_PROCESS_ID)
    if not 0 <= index < count:
        raise ValueError(
            f"environment variable {ENV_PROCESS_ID} must lie in [0, {count}) ({ENV_NUM_PROCESSES}={count}); got {index}"
        )
    jax.distributed.initialize(
        coordinator_address=address, num_processes=count, process_id=index, heartbeat_timeout_seconds=heartbeat_timeout
    )
    return ProcessInfo(index, count)


def _initialize_detected(heartbeat_timeout: int) -> ProcessInfo:
    """``jax.distributed.initialize()`` by JAX's cluster detection; alone where it finds no cluster."""
    try:
        jax.distributed.initialize(heartbeat_timeout_seconds=heartbeat_timeout)
    except ValueError as error:  # JAX found no cluster to take the coordinator's address from
        if "coordinator_address" not in str(error):
            raise
        return ProcessInfo(0, 1)
    return ProcessInfo(jax.process_index(), jax.process_count())


initialize_from_env = initialize  # the earlier name, kept for existing scripts


def process_shard(
    n_examples: int, process_index: int | None = None, process_count: int | None = None, *, drop_remainder: bool = False
) -> slice:
    """The contiguous part ``[start, stop)`` of ``n_examples`` that belongs to one process.

    The parts of processes ``0 .. count-1`` are disjoint, in order, and cover every example.
    With ``n = q * count + r``, the first ``r`` processes get ``q + 1`` examples and the
    others ``q`` (as ``numpy.array_split``). With ``drop_remainder=True`` every process gets
    exactly ``q`` and the last ``r`` examples go unused: equal shards, as needed to
    assemble one global array (``jax.make_array_from_process_local_data``).

    Args:
      n_examples: the number of examples (>= 0).
      process_index: which process (default ``jax.process_index()``).
      process_count: how many processes (default ``jax.process_count()``).
      drop_remainder: equal shards, dropping the ``n % count`` examples at the end (a bool).
    Returns:
      a ``slice`` to index the example axis with.
    Raises:
      ValueError: naming the argument that is out of range or of another kind.
    """
    count = jax.process_count() if process_count is None else process_count
    index = jax.process_index() if process_index is None else process_index
    for name, value, low in (("n_examples", n_examples, 0), ("process_count", count, 1)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
            raise ValueError(f"{name} must be an int >= {low}; got {value!r}")
    if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < count:
        raise ValueError(f"process_index must be an int in [0, {count}); got {index!r}")
    drop_remainder = check_bool("drop_remainder", drop_remainder)
    size, extra = divmod(int(n_examples), int(count))
    if drop_remainder:
        return slice(index * size, (index + 1) * size)
    start = index * size + min(index, extra)
    return slice(start, start + size + (index < extra))


def shard_for_process(
    data: Any, process_index: int | None = None, process_count: int | None = None, *, drop_remainder: bool = False
) -> Any:
    """This process's part of ``data``: every leaf sliced with ``process_shard``.

    Args:
      data: an array or a pytree of arrays (e.g. ``(x, y)``) sharing their first axis.
      process_index, process_count, drop_remainder: as for ``process_shard``.
    Returns:
      ``data`` with every leaf cut to this process's examples.
    Raises:
      ValueError: naming ``data`` when the leaves differ in their number of examples.
    """
    lengths = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in jax.tree.leaves(data)}
    if len(lengths) != 1 or None in lengths:
        raise ValueError(
            f"data must be arrays with the same number of examples (first axis); got lengths {sorted(map(str, lengths))}"
        )
    part = process_shard(cast(int, lengths.pop()), process_index, process_count, drop_remainder=drop_remainder)
    return jax.tree.map(lambda leaf: leaf[part], data)
