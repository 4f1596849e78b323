"""Memory of a sweep: the bytes one member keeps live, and how many members fit a budget.

``fnn.sweep(..., chunk_size="auto")`` runs as many members per compiled call as fit in
a memory budget (default half of the memory free now), so that a large grid needs no
thought about memory: the chunks run one after another and the peak stays that of one
chunk. The estimate of one member's live memory, in bytes, adds up (all from shapes, no
computation):

* the peak of one training step: the most bytes live at once while the equations of
  ``jax.make_jaxpr(Trainer.train_step)`` on one mini-batch run in order (the state
  before and after the update, activations, gradients; :func:`peak_bytes`);
* its train state twice more (the masked choice of state after a step, and the best
  params and batch-norm state kept for ``best_params``);
* one epoch's mini-batch indices and weights and the permutation's sort keys;
* the history (8 bytes per entry and epoch).

The data (``x``, ``y``, the validation set) are shared by every member and counted once.
The estimate errs high (XLA fuses elementwise intermediates away); the tests compare it
with XLA's own memory analysis of the compiled sweep and check that the chunks it picks
give the same results as one call.
"""

from __future__ import annotations

import math
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend import core as jex_core

from fnn.batching import num_steps

DEFAULT_FRACTION = 0.5  # of the memory free when the sweep starts


def nbytes(tree: Any) -> int:
    """Bytes of every array leaf of ``tree`` (arrays or ShapeDtypeStructs; a typed PRNG key
    counts its key data)."""
    return int(sum(math.prod(np.shape(leaf)) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree)))


def _value_bytes(var) -> int:
    aval = var.aval
    return nbytes(jax.ShapeDtypeStruct(aval.shape, aval.dtype)) if hasattr(aval, "shape") else 0


def _inner_jaxprs(eqn):
    for param in eqn.params.values():
        for inner in param if isinstance(param, (tuple, list)) else (param,):
            inner = getattr(inner, "jaxpr", inner)  # a ClosedJaxpr holds a Jaxpr
            if hasattr(inner, "eqns"):
                yield inner


def peak_bytes(jaxpr) -> int:
    """The most bytes live at once while ``jaxpr``'s equations run in order.

    A value is live from the equation that makes it to the last one that reads it (the
    outputs to the end); an equation that calls an inner jaxpr adds that jaxpr's own
    peak while it runs. XLA fuses elementwise chains, so the compiled program holds less:
    measured against ``compiled.memory_analysis()`` for MLP sweeps, the estimate of a
    member (``member_bytes``) was 20-40% above XLA's (tests/test_memory.py).
    """
    is_var = lambda v: not isinstance(v, jex_core.Literal)  # noqa: E731
    last_read = {v: i for i, eqn in enumerate(jaxpr.eqns) for v in eqn.invars if is_var(v)}
    last_read |= {v: len(jaxpr.eqns) for v in jaxpr.outvars if is_var(v)}
    live = sum(_value_bytes(v) for v in [*jaxpr.invars, *jaxpr.constvars])
    peak = live
    for i, eqn in enumerate(jaxpr.eqns):
        made = sum(_value_bytes(v) for v in eqn.outvars)
        peak = max(peak, live + made + max((peak_bytes(inner) for inner in _inner_jaxprs(eqn)), default=0))
        live += made - sum(_value_bytes(v) for v in {v for v in eqn.invars if is_var(v) and last_read[v] == i})
        live -= sum(_value_bytes(v) for v in eqn.outvars if v not in last_read)
    return peak


def member_bytes(trainer: Any, x: Any, y: Any, *, batch_size: int, epochs: int, history_entries: int) -> int:
    """Estimated live bytes of one member of a sweep (see the module docstring).

    Args:
      trainer: the member's ``fnn.Trainer`` (concrete or not: only shapes are used).
      x, y: the training data (shapes [n, ...]); only their shapes are used.
      batch_size: examples per mini-batch.
      epochs: epochs of the run (the history's length).
      history_entries: history entries per epoch (loss, metrics, lr, validation ones).
    Returns:
      bytes, an int > 0.
    """
    n = int(np.shape(x)[0])
    state = jax.eval_shape(trainer.init, 0)
    batch = tuple(jax.ShapeDtypeStruct((batch_size, *np.shape(a)[1:]), jnp.result_type(a)) for a in (x, y))
    weights = jax.ShapeDtypeStruct((batch_size,), jnp.float32)
    step = jax.make_jaxpr(trainer.train_step)(state, (*batch, weights))
    kept = 2 * nbytes(state)  # the masked choice of state, the best params and batch-norm state
    order = num_steps(n, batch_size, False) * batch_size * 8 + n * 12
    return peak_bytes(step.jaxpr) + kept + order + 8 * epochs * history_entries


def free_memory(device: jax.Device) -> int:
    """Bytes free on ``device`` now: its allocator's limit minus what is in use where JAX
    reports it (GPU, TPU), else the host's available memory (``MemAvailable`` on Linux)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and "bytes_limit" in stats:
        return int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def chunk_for_budget(per_member: int, shared: int, budget: int, members: int, devices: list[jax.Device]) -> int:
    """The largest chunk (members per compiled call) whose estimated memory fits ``budget``.

    Args:
      per_member: bytes one member keeps live (``member_bytes``).
      shared: bytes every member shares (the data), counted once per device.
      budget: bytes available per device; CPU devices share the host's memory, so there
        it is the budget for all of them together.
      members: members in the sweep (the chunk is at most this).
      devices: the devices the chunk is sharded over.
    Returns:
      the chunk size, between 1 and ``members``, a multiple of the number of devices
      where it is at least that.
    Raises:
      ValueError: when not even one member fits, naming the budget and the estimate.
    """
    count = len(devices)
    fits = (budget - shared) // per_member  # CPU devices share one budget; others have one each
    if fits < 1:
        raise ValueError(
            f"chunk_size='auto': one member needs about {per_member / 2**20:.1f} MiB besides {shared / 2**20:.1f} "
            f"MiB of data, more than the memory budget of {budget / 2**20:.1f} MiB: raise memory_budget or pass "
            "an explicit chunk_size"
        )
    chunk = min(int(fits if devices[0].platform == "cpu" else fits * count), members)
    return chunk // count * count if chunk >= count else chunk
