"""A population: many members' runs carried between compiled calls.

Every member of a sweep runs ``fit``'s own loop (``fnn.fit.plan`` builds its carry,
``fnn.loop.run_epochs`` advances it), vmapped over the member axis. Under ``vmap`` a
member that stopped keeps riding the loop until the last one stops, so a sweep that
wants to spend its compute on the live members must stop the compiled run at epoch
boundaries and choose who goes on: successive halving keeps the best fraction
(``fnn.sweeps.successive_halving``), compaction drops members that stopped early (``sweep(...,
compact_every=k)``). :class:`Population` holds every member's loop carry between those
calls, runs any subset of members to a given epoch, and writes their new carries back.

:func:`advance_members` is the one engine that runs members, for every entry point:
``Population`` compiles it per bucket (sweeps, halving, compaction, the LR range test,
whose members are fit's runs with ``max_steps``), and population-based training calls it
inside its own compiled scan over intervals (``fnn.sweeps.population_based``).

Compiles stay bounded: a subset runs padded (by repeating its last member, whose extra
results are dropped) to the smallest *bucket* that holds it — the chunk size halved
0, 1, 2, ... times, rounded up to a multiple of the devices — so a population of ``n``
members compiles at most ``log2(n) + 1`` programs, each cached across calls.

A member's state passes between calls untouched, so a member that goes on in a smaller
population computes what it would have computed in the full one — to float32 rounding,
not bit for bit: XLA:CPU picks its batched-matmul kernels by the number of members in a
call (tests/test_halving.py checks ``rtol=1e-5``; a call of the same size is bit-identical).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, PartitionSpec

from fnn import multihost
from fnn import progress as progress_lib
from fnn.distributed import member_sharding
from fnn.fit import plan
from fnn.loop import FitResult, Loop, run_epochs
from fnn.programs import host_array, jit_program


def member_run(config: Callable, options: tuple, x, y, arrays: dict, member: dict):
    """One member's checked run (``fnn.fit.Run``): ``config`` at its hyperparameters,
    keyed by its seed, with the sweep's options (static ``options``, traced ``arrays``)."""
    hyper = {k: v for k, v in member.items() if k != "seed"}
    return plan(config(**hyper), x, y, key=member["seed"], **arrays, **dict(options))


def start_members(config: Callable, options: tuple, x, y, arrays: dict, members: dict) -> Loop:
    """Every member's loop carry before its first epoch, stacked on a leading member axis
    (``members``: ``{name: [m]}``, hyperparameters and ``seed``)."""
    return jax.vmap(lambda member: member_run(config, options, x, y, arrays, member).loop)(members)


def advance_members(config: Callable, options: tuple, x, y, arrays: dict, members: dict, loops: Loop | None, end):
    """The engine every member-running entry point uses (sweeps, halving, compaction,
    PBT, the LR range test): run every member of ``members`` from its carry in ``loops``
    (``None``: from its start) until epoch ``end`` (a traced int32 scalar), an early
    stop, divergence or ``max_steps``, vmapped over the member axis (traceable: PBT calls
    it inside its own compiled scan).

    Returns:
      the members' new carries, stacked on a leading member axis.
    """
    if loops is None:
        loops = start_members(config, options, x, y, arrays, members)

    def one(member: dict, loop: Loop) -> Loop:
        run = member_run(config, options, x, y, arrays, member)
        return run_epochs(run.trainer, loop, run.data, end, run.settings)

    return jax.vmap(one)(members, loops)


advance = jit_program(advance_members, ("config", "options"))


def _advance_per_device(config: Callable, options: tuple, mesh: Mesh, x, y, arrays: dict, members, loops, end):
    """``advance_members`` on each device of ``mesh`` for its own members (``shard_map``):
    every device runs its members' loops alone, with no collective between devices — under
    a sharded ``vmap`` the loops' joint stopping test would be an all-reduce every epoch,
    across processes a network round trip — and stops when its own members have."""
    members_axis = PartitionSpec("members")
    run = jax.shard_map(
        functools.partial(advance_members, config, options),
        mesh=mesh,
        in_specs=(PartitionSpec(), PartitionSpec(), PartitionSpec(), members_axis, members_axis, PartitionSpec()),
        out_specs=members_axis,
        check_vma=False,
    )
    return run(x, y, arrays, members, loops, end)


advance_per_device = jit_program(_advance_per_device, ("config", "options", "mesh"))


# Moving members' carries between calls: one program per pytree and shapes (one per
# bucket), not one small eager program per leaf, each compiled (or loaded from the
# persistent cache) in every process.


@jax.jit
def take(tree, index):
    """The members ``index`` ([k] ints) of a stacked pytree (carries, params): every leaf's rows ``index``."""
    return jax.tree.map(lambda a: a[index], tree)


@functools.partial(jax.jit, donate_argnums=0)
def _put(loops: Loop, index, part: Loop) -> Loop:
    """``loops`` with the carries of members ``index`` ([k] ints) replaced by ``part``'s,
    in place (``loops`` is donated: the population is never held twice)."""
    return jax.tree.map(lambda old, new: old.at[index].set(new), loops, part)


def zeros(shapes):
    """Zero arrays (PRNG keys of zero key data) of the shapes and dtypes ``shapes``, made
    on the device by one program (a population's storage; a tree to restore into)."""

    def zero(leaf):
        if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
            return jax.random.wrap_key_data(jnp.zeros((*leaf.shape, 2), jnp.uint32))
        return jnp.zeros(leaf.shape, leaf.dtype)

    return jax.jit(lambda: jax.tree.map(zero, shapes))()


class Pending(NamedTuple):
    """A call of :meth:`Population.run` in progress: its members, end epoch, padding, how
    many of its pieces have run (a resumed population runs the rest first), and whether
    it is the first call (its members start from scratch)."""

    which: np.ndarray
    end: int
    compact: bool
    done: int
    first: bool


def place(members: dict, sharding) -> dict:
    """A member table as arrays (hyperparameters float; seeds int32, or uint32 raw key
    data [m, 2] as the LR range test gives every member one key), sharded if asked (over
    every process's devices: ``fnn.multihost.distribute``)."""
    members = {k: host_array(v, _seed_dtype(v) if k == "seed" else float) for k, v in members.items()}
    return jax.device_put(members) if sharding is None else multihost.distribute(members, sharding)


def _seed_dtype(seeds: np.ndarray):
    return np.uint32 if np.ndim(seeds) == 2 else np.int32


def buckets(chunk: int, multiple: int) -> list[int]:
    """The population sizes a call may run: ``chunk`` halved until 1, each rounded up to
    a multiple of ``multiple`` (the devices), largest first, without repeats."""
    sizes, size = [], chunk
    while True:
        rounded = multiple * -(-size // multiple)
        if rounded not in sizes:
            sizes.append(rounded)
        if size == 1:
            return sizes
        size = -(-size // 2)


class Population:
    """Every member's loop carry, and the compiled calls that advance any subset of them.

    Args:
      config: the sweep's configuration (``config(**hyperparameters) -> Trainer``).
      trainer: the configuration at the first member's hyperparameters (concrete).
      x, y: the training data (arrays).
      table: ``{name: [n] array}`` — the members' hyperparameters and ``seed``.
      options: fit's static options, as a sorted tuple of ``(name, value)`` pairs.
      arrays: fit's array options (validation, tol, ...), shared by every member.
      chunk: at most this many members per compiled call.
      devices: as ``sweep``'s ``devices``: each call's members are sharded over them.
    """

    def __init__(self, config: Callable, trainer, x, y, table: dict, options: tuple, arrays: dict, chunk: int, devices):
        self.trainer = trainer
        self.table = table
        self.size = len(table["seed"])
        self.progress = dict(options).get("progress", False)
        self._max_steps = dict(options).get("max_steps")
        self.loops: Loop | None = None
        sharding = member_sharding(devices, min(chunk, self.size))
        self._multiple = sharding.num_devices if sharding is not None else 1
        self._devices = devices
        self.buckets = buckets(min(chunk, self.size), self._multiple)
        self._program = functools.partial(advance, config, options)
        self._per_device = functools.partial(advance_per_device, config, options)
        self._data = (x, y, arrays)
        self.member_epochs = 0  # the compute spent: per call, its padded members x the epochs its loop ran
        self.calls = 0
        self.pending: Pending | None = None  # the call in progress, while its pieces run
        self.after_piece: Callable[[Population], None] | None = None  # e.g. save a checkpoint
        self.rungs: Any = None  # successive halving's position (fnn.sweeps.successive_halving.Rungs), if it runs

    def run(self, which: np.ndarray, end: int, label: str = "", compact: bool = True) -> None:
        """Advance members ``which`` (indices; the first call: every member, in order) to
        epoch ``end``, in pieces of at most one chunk, each padded to the smallest bucket
        that holds it (``compact``) or to a whole chunk (one program for every call);
        their new carries replace the old ones as each piece ends, and ``after_piece``
        (if set) is called then: the population is in a state it can be saved in and
        resumed from (the call in progress is ``pending``). ``label`` prefixes progress lines."""
        which = np.asarray(which, dtype=int)
        first = self.loops is None and self.pending is None
        if first and not np.array_equal(which, np.arange(self.size)):
            raise ValueError("a population's first call starts every member, in order")
        self.pending = Pending(which, end, compact, done=0, first=first)
        self.finish_pending(label)

    def finish_pending(self, label: str = "") -> None:
        """Run the pieces of the call in progress (``pending``) that have not run yet."""
        call = self.pending
        if call is None:
            return
        step = self.buckets[0]
        pieces = [call.which[i : i + step] for i in range(0, call.which.size, step)]
        for i in range(call.done, len(pieces)):
            text = f"{label} chunk {i + 1}/{len(pieces)}".strip() if len(pieces) > 1 else label
            part = self._run_piece(pieces[i], call.end, call.compact, text, call.first)
            self._keep(pieces[i], part, whole=call.first and len(pieces) == 1)
            self.pending = call._replace(done=i + 1) if i + 1 < len(pieces) else None
            if self.after_piece is not None:
                self.after_piece(self)

    def _keep(self, piece: np.ndarray, part: Loop, whole: bool) -> None:
        """Write a finished piece's carries into the population's storage: one device's
        arrays for every member, allocated once (members not run yet hold zeros: epoch 0,
        not stopped) and updated in place, so that a sweep holds its members' carries once
        plus one chunk's working set. A first call in one piece (``whole``) is the
        population as it came (sharded over the devices, if it ran on several)."""
        if whole:
            self.loops = part
            return
        device = jax.local_devices()[0]
        if self.loops is None:
            self.loops = jax.device_put(zeros(self.carry_shapes(self.size)), device)
        self.loops = _put(jax.device_put(self.loops, device), piece, jax.device_put(part, device))

    def carry_shapes(self, members: int) -> Loop:
        """The shapes and dtypes of ``members`` members' carries (abstract: nothing runs)."""
        float_dtype = jax.dtypes.canonicalize_dtype(float)
        table = {
            k: jax.ShapeDtypeStruct((members, *np.shape(v)[1:]), _seed_dtype(v) if k == "seed" else float_dtype)
            for k, v in self.table.items()
        }
        return jax.eval_shape(self._program, *self._data, table, None, np.int32(1))

    def _run_piece(self, piece: np.ndarray, end: int, compact: bool, label: str, first: bool) -> Loop:
        """One compiled call: ``piece``'s members padded to a bucket (from scratch in the
        ``first`` call, else from their carries); their new carries."""
        size = min(b for b in self.buckets if b >= piece.size) if compact else self.buckets[0]
        padded = np.concatenate([piece, np.repeat(piece[-1:], size - piece.size)])
        sharding = member_sharding(self._devices, size)
        members = place({k: v[padded] for k, v in self.table.items()}, sharding)
        loops = None if first else multihost.distribute(take(self.loops, padded), sharding)
        data = multihost.shared(self._data, sharding)
        if self.progress:
            progress_lib.start(members=piece.size, label=label, restart_clock=False)
        # sharded without progress lines (one line for all members needs them in one
        # program), each device runs its members alone
        program = (
            self._program if sharding is None or self.progress else functools.partial(self._per_device, sharding.mesh)
        )
        new = multihost.collect(program(*data, members, loops, np.int32(end)))  # whole on every process
        if self.progress:
            jax.block_until_ready(new)  # its lines before the next call's
        new = take(new, np.arange(piece.size)) if size > piece.size else new
        ran = np.asarray(new.result.train_state.epoch) - self.epochs()[piece]  # until the slowest member stops
        self.member_epochs += size * int(ran.max())
        self.calls += 1
        return new

    @property
    def results(self) -> FitResult:
        """Every member's ``FitResult`` so far (stacked); the population must have run."""
        if self.loops is None:
            raise RuntimeError("the population has not run yet: call run() first")
        return self.loops.result

    def epochs(self) -> np.ndarray:
        """Epochs run by each member so far ([n] ints; 0 before the first call)."""
        if self.loops is None:
            return np.zeros(self.size, dtype=int)
        return np.asarray(self.results.train_state.epoch).astype(int)

    def live(self) -> np.ndarray:
        """Whether each member would train on ([n] bools): not stopped early, not
        diverged, not at fit's ``max_steps``."""
        if self.loops is None:
            return np.ones(self.size, dtype=bool)
        r = self.results
        live = ~(np.asarray(r.stopped_early) | np.asarray(r.diverged))
        return live if self._max_steps is None else live & (np.asarray(r.train_state.step) < self._max_steps)
