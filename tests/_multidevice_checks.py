"""Checks that need several devices or processes; tests/test_distributed.py runs them in
subprocesses so that the main test session keeps its single device.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 JAX_PLATFORMS=cpu \\
        python tests/_multidevice_checks.py devices
    JAX_PLATFORMS=cpu JAX_COORDINATOR_ADDRESS=127.0.0.1:PORT JAX_NUM_PROCESSES=2 JAX_PROCESS_ID=i \\
        python tests/_multidevice_checks.py processes        # once per process i = 0, 1
    JAX_PLATFORMS=cpu python tests/_multidevice_checks.py cores   # use_cpu_cores(3) first

Each check prints one JSON line ``{"check": name, "ok": bool, ...}``: a failed check
carries its traceback, a passed one what it measured (largest differences seen).
"""

import json
import os
import sys
import time
import traceback
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils

import fnn
from fnn.datasets import load_digits
from fnn.distributed import (
    UnusedCoresWarning,
    check_batch_divisible,
    data_parallel,
    initialize,
    member_sharding,
    shard_for_process,
    use_cpu_cores,
)
from fnn.sweeps import sweep

jax.config.update("jax_enable_x64", True)  # as the main test session (tests/conftest.py)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

OPTIONS = dict(epochs=3, batch_size=48)  # 48: a multiple of 4 devices (and of 2 processes)
RTOL, ATOL = 1e-5, 1e-6


def config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 16, 10]), fnn.adam(lr), fnn.cross_entropy)


def digits():
    x, y = load_digits()
    return (x[:288] / 16.0).astype(np.float32), y[:288]


def local(a):
    """The numbers of a (possibly multi-process, replicated) array, as NumPy."""
    return np.asarray(a.addressable_data(0) if isinstance(a, jax.Array) and not a.is_fully_addressable else a)


def compare(a, b) -> dict:
    """Assert two FitResults agree on params and histories (allclose); return the largest
    absolute and relative differences and whether they are bit-identical."""
    leaves = [jax.tree.leaves((r.train_state.params, r.history)) for r in (a, b)]
    pairs = [(local(u), local(v)) for u, v in zip(*leaves)]
    for u, v in pairs:
        np.testing.assert_allclose(u, v, rtol=RTOL, atol=ATOL)
    assert np.array_equal(local(a.stop_epoch), local(b.stop_epoch))
    diff = [np.nan_to_num(np.abs(u.astype(float) - v)) for u, v in pairs]
    relative = [d[np.abs(v) >= 1e-3] / np.abs(v[np.abs(v) >= 1e-3]) for d, (_, v) in zip(diff, pairs)]
    return {
        "max_abs_diff": max(float(d.max()) for d in diff),
        "max_rel_diff_where_abs_ge_1e-3": max(float(r.max(initial=0.0)) for r in relative),
        "bitwise_equal": all(np.array_equal(u, v, equal_nan=True) for u, v in pairs),
    }


# ---------------------------------------------------------------------------- use_cpu_cores


STARTED: dict = {}  # what main's first call of use_cpu_cores returned


def forced_count_kept():
    """use_cpu_cores() where XLA_FLAGS forces 4 devices keeps those 4."""
    assert STARTED["count"] == 4 == len(jax.devices()), (STARTED, jax.devices())


def three_devices(count):
    assert count == 3 and len(jax.devices()) == 3 and jax.devices()[0].platform == "cpu", (count, jax.devices())


def sweep_on_every_core(count):
    """A 3-member sweep shards one member per device, warns nothing, equals one device."""
    x, y = digits()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        every = sweep(config, x, y, seeds=3, **OPTIONS)
    assert not [w for w in caught if w.category is UnusedCoresWarning], [str(w.message) for w in caught]
    leaf = every.results.train_state.params[0]["w"]
    assert len(leaf.sharding.device_set) == 3, leaf.sharding
    single = sweep(config, x, y, seeds=3, devices=1, **OPTIONS)
    return compare(every.results, single.results)


def late_call_refused(count):
    assert use_cpu_cores(3) == 3  # the count it has: fine
    try:
        use_cpu_cores(2)
    except RuntimeError as error:
        assert "first thing in the script" in str(error), error
    else:
        raise AssertionError("use_cpu_cores(2) after the backend started with 3 devices was accepted")


# ---------------------------------------------------------------------------- 4 devices, one process


def sweep_parallel():
    """2 lr × 4 seeds sharded over 4 devices (2 members each) == the one-device sweep."""
    assert len(jax.devices()) == 4, jax.devices()
    x, y = digits()
    grid = {"lr": [1e-2, 3e-3]}
    sharded = sweep(config, x, y, seeds=4, grid=grid, **OPTIONS)
    leaf = sharded.results.train_state.params[0]["w"]
    assert leaf.sharding.spec == jax.sharding.PartitionSpec("members"), leaf.sharding
    shards = {shard.device: shard.data.shape[0] for shard in leaf.addressable_shards}
    assert sorted(shards.values()) == [2] * 4 and set(shards) == set(jax.devices()), shards
    single = sweep(config, x, y, seeds=4, grid=grid, devices=[jax.devices()[0]], **OPTIONS)
    assert single.results.train_state.params[0]["w"].devices() == {jax.devices()[0]}
    return compare(sharded.results, single.results) | {"members_per_device": sorted(shards.values())}


def halving_and_compaction_sharded():
    """Successive halving (rungs of 8, 2 members over 4 devices: buckets 8, 4) and a
    compacted sweep with early stopping, sharded over 4 devices == on one device."""
    x, y = digits()
    grid = {"lr": [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 2e-2, 3e-2]}
    options = OPTIONS | dict(epochs=4, validation=(x[:96], y[:96]))
    halving = fnn.halving(rung_epochs=1, eta=4)
    sharded = fnn.sweep(config, x, y, grid=grid, schedule=halving, **options)
    single = fnn.sweep(config, x, y, grid=grid, schedule=halving, devices=1, **options)
    assert sharded.rung.tolist() == single.rung.tolist() and sharded.rung.max() == 2, sharded.rung
    stopping = options | dict(epochs=5, patience=1, tol=0.2)  # the slow learners stop early
    compact = fnn.sweep(config, x, y, grid=grid, compact_every=1, **stopping)
    whole = fnn.sweep(config, x, y, grid=grid, devices=1, **stopping)
    stops = local(whole.results.stop_epoch)
    assert stops.min() < 6 and compact.member_epochs < whole.member_epochs, (stops, compact.member_epochs)
    return {"halving": compare(sharded.results, single.results), "compaction": compare(compact.results, whole.results)}


def pbt_sharded():
    """PBT with 8 members over 4 devices == on one device (the exploit gathers cross devices)."""
    x, y = digits()
    arguments = dict(population={"lr": np.logspace(-4, -1, 8)}, interval=1, hyperparameters=["lr"])
    options = OPTIONS | dict(validation=(x[:96], y[:96]))
    sharded = fnn.pbt(config, x, y, **arguments, **options)
    single = fnn.pbt(config, x, y, **arguments, devices=1, **options)
    assert np.array_equal(sharded.parents, single.parents), (sharded.parents, single.parents)
    np.testing.assert_allclose(sharded.scores, single.scores, rtol=RTOL)
    return compare(sharded.results, single.results)


def data_parallel_fit():
    """fit with each mini-batch split over 4 devices == fit on one device, up to float
    reassociation; the program carries the batch sharding and params stay replicated.
    Reports the one-device run as ``reference`` for the two-process check."""
    x, y = digits()
    sharding = data_parallel()
    assert sharding.mesh.shape == {"data": 4} and sharding.spec == jax.sharding.PartitionSpec("data")
    single = fnn.fit(config(), x, y, key=0, **OPTIONS)
    parallel = fnn.fit(config(), x, y, key=0, batch_sharding=sharding, **OPTIONS)
    leaf = parallel.train_state.params[0]["w"]
    assert len(leaf.sharding.device_set) == 4 and leaf.sharding.is_fully_replicated, leaf.sharding
    lowered = jax.jit(
        lambda k: fnn.fit(config(), x, y, key=k, batch_sharding=sharding, **OPTIONS).train_state.params
    ).lower(0)
    assert '{"data"}' in lowered.as_text(), "no sharding over the data axis in the lowered program"
    return compare(parallel, single) | {"reference": numbers(single)}


def numbers(result) -> list:
    """A FitResult's final params and training-loss history, as JSON-ready lists."""
    return [local(leaf).tolist() for leaf in jax.tree.leaves((result.train_state.params, result.history["loss"]))]


def raises(call, *fragments):
    """Assert that ``call()`` raises a ValueError whose message holds every fragment."""
    try:
        call()
    except ValueError as error:
        assert all(f in str(error) for f in fragments), str(error)
    else:
        raise AssertionError(f"no ValueError; expected one saying {fragments}")


def too_many_devices():
    """Asking for more devices than exist, or a batch that does not split evenly: errors."""
    x, y = digits()
    raises(lambda: member_sharding(5, 8), "devices=5", "4 available")
    raises(lambda: data_parallel(5), "devices=5", "4 available")
    raises(lambda: sweep(config, x, y, seeds=8, devices=5, **OPTIONS), "devices=5", "4 available")
    check_batch_divisible(48, data_parallel())
    check_batch_divisible(50, data_parallel(2))
    raises(lambda: check_batch_divisible(50, data_parallel()), "batch_size must be a multiple of the 4 devices")


def fit_checks_batch_divisible():
    """fit refuses, before compiling, a batch_size that does not split over the devices."""
    x, y = digits()
    raises(
        lambda: fnn.fit(config(), x, y, key=0, epochs=1, batch_size=50, batch_sharding=data_parallel()), "batch_size"
    )


# ---------------------------------------------------------------------------- 2 processes, 1 device each


def processes_initialized(info):
    assert tuple(info) == (jax.process_index(), jax.process_count()) and info.count == 2, (info, jax.devices())
    assert len(jax.local_devices()) == 1 and len(jax.devices()) == 2, jax.devices()
    return {"index": info.index, "count": info.count}


def allgather_shards(info):
    """Each process sums its shard of 0..10; gathered, the shards cover every example once."""
    mine = shard_for_process(np.arange(11.0))
    gathered = multihost_utils.process_allgather(np.array([mine.sum(), mine.size]))
    assert gathered.shape == (2, 2) and list(gathered.sum(0)) == [55.0, 11.0], gathered
    return {"shard_sizes": [int(n) for n in gathered[:, 1]]}


def global_mesh_sum(info):
    """Equal shards assembled into one array over both processes' devices; a jitted sum
    reduces across processes."""
    sharding = data_parallel()
    mine = shard_for_process(np.arange(11.0), drop_remainder=True)
    array = jax.make_array_from_process_local_data(sharding, mine)
    assert array.shape == (10,) and not array.is_fully_addressable
    total = local(jax.jit(jnp.sum)(array))
    assert float(total) == 45.0, total


def data_parallel_fit_over_processes(info):
    """fit with mini-batches split over the two processes; the test compares ``numbers``
    with the one-device run of the 4-device check (the same fit)."""
    x, y = digits()
    parallel = fnn.fit(config(), x, y, key=0, batch_sharding=data_parallel(), **OPTIONS)
    assert len(parallel.train_state.params[0]["w"].sharding.device_set) == 2
    return {"numbers": numbers(parallel)}


# ---------------------------------------------------------------------------- members over every process


GRID = {"lr": [1e-4, 3e-4, 1e-3, 2e-3, 3e-3, 1e-2, 2e-2, 3e-2]}
SWEEP = dict(epochs=3, batch_size=48, grid=GRID)  # one set of options: the sweeps share compiled programs
EVERY_RUN = ("sweep", "chunked", "halving", "compaction", "pbt", "lr_range")


def member_runs(devices=None, names=EVERY_RUN) -> dict:
    """Member-running entry points on ``devices`` (default every process's), as
    ``{name: summary}`` (see :func:`summary`): a sweep of 8 members, the same in chunks of
    3 (3 calls, the last padded), successive halving (rungs of 8, 2 and 1), compaction
    with early stopping, PBT (4 members, exploiting across processes) and the LR range
    test. The test compares each process's summaries with one run on one device."""
    x, y = digits()
    options = SWEEP | dict(validation=(x[:96], y[:96]), devices=devices)
    calls = {
        "sweep": lambda: fnn.sweep(config, x, y, **options),
        "chunked": lambda: fnn.sweep(config, x, y, chunk_size=3, **options),
        "halving": lambda: fnn.sweep(config, x, y, schedule=fnn.halving(rung_epochs=1, eta=4), **options),
        "compaction": lambda: fnn.sweep(config, x, y, compact_every=1, patience=1, tol=0.2, **options),
        "pbt": lambda: fnn.pbt(
            config,
            x,
            y,
            population={"lr": GRID["lr"][2:6]},
            interval=1,
            hyperparameters=["lr"],
            **{k: v for k, v in options.items() if k != "grid"},
        ),
        "lr_range": lambda: fnn.lr_range(
            config, x, y, lrs=np.logspace(-4, -1, 6), steps=7, batch_size=48, devices=devices
        ),
    }
    return {name: summary(calls[name]()) for name in names}


def summary(run) -> dict:
    """What a sweep or PBT run computed, as JSON-ready lists: every member's final params
    and histories, stop and best epochs, and the rungs (halving) or parents (PBT). Asserts
    that the whole result is on this process."""
    if isinstance(run, fnn.LRRangeResult):
        return {"losses": run.losses.tolist()}
    results = run.results
    assert all(not isinstance(leaf, jax.Array) or leaf.is_fully_addressable for leaf in jax.tree.leaves(results))
    out = {
        "params": [np.asarray(leaf).tolist() for leaf in jax.tree.leaves(results.train_state.params)],
        "history": {k: np.nan_to_num(np.asarray(v), nan=-1.0).tolist() for k, v in results.history.items()},
        "stop_epoch": np.asarray(results.stop_epoch).tolist(),
        "best_epoch": np.asarray(results.best_epoch).tolist(),
    }
    extra = {"rung": getattr(run, "rung", None), "parents": getattr(run, "parents", None)}
    return out | {k: np.asarray(v).tolist() for k, v in extra.items() if v is not None}


def members_over_processes(info, names=EVERY_RUN):
    """Member-running entry points over every process's devices: each process's summaries
    (the test compares them with one device's)."""
    sharding = member_sharding(None, 8)
    processes = sorted({d.process_index for d in sharding.device_set})
    assert processes == list(range(info.count)), (processes, info)  # the mesh spans every process
    return {"runs": member_runs(names=names)}


def members_over_more_processes(info):
    """A sweep, halving and PBT (the rest runs in the 2-process run)."""
    return members_over_processes(info, ("sweep", "halving", "pbt"))


def different_data_refused(info):
    """A process that passes other data than process 0's is refused, on every process."""
    x, y = digits()
    mine = x if info.index == 0 else x + np.float32(1.0)
    try:
        fnn.sweep(config, mine, y, seeds=2, **SWEEP)
    except ValueError as error:
        assert "differ between processes" in str(error) and "[1]" in str(error), error
    else:
        raise AssertionError("a sweep whose processes passed different data was accepted")


def checkpoints_from_process_zero(info):
    """A sweep and a data-parallel fit save their checkpoints (process 0 writes, the others
    wait at a barrier); a resume on every process reads them back to the same results."""
    x, y = digits()
    folder = os.environ["FNN_TEST_SHARED_DIR"]
    path = os.path.join(folder, "sweep.ckpt")
    kwargs = SWEEP | dict(validation=(x[:96], y[:96]), checkpoint=path)
    first = fnn.sweep(config, x, y, **kwargs)
    again = fnn.sweep(config, x, y, resume=True, **kwargs)
    assert again.calls == first.calls, (again.calls, first.calls)  # nothing ran again
    fit_path = os.path.join(folder, "fit.ckpt")
    options = OPTIONS | dict(key=0, batch_sharding=data_parallel(), checkpoint=fit_path)
    fitted = fnn.fit(config(), x, y, checkpoint_every=1, **options)
    resumed = fnn.fit(config(), x, y, resume=True, **options)
    return {"sweep": compare(again.results, first.results), "fit": compare(resumed, fitted)}


FAULT_EPOCHS = 60  # 60 compiled calls of one epoch, a save after each: time to kill a process mid-sweep


def fault_reference() -> dict:
    """``sweep_with_checkpoints``'s sweep on one device, uninterrupted, without saving."""
    x, y = digits()
    options = SWEEP | dict(epochs=FAULT_EPOCHS, validation=(x[:96], y[:96]), devices=1)
    return summary(fnn.sweep(config, x, y, **options))


def sweep_with_checkpoints(info):
    """A sweep saving after every epoch, resumed from its checkpoint when one exists: the
    test kills one process mid-sweep, then starts both again."""
    x, y = digits()
    path = os.path.join(os.environ["FNN_TEST_SHARED_DIR"], "killed.ckpt")
    options = SWEEP | dict(epochs=FAULT_EPOCHS, validation=(x[:96], y[:96]), checkpoint=path, checkpoint_every=1)
    return {"runs": {"sweep": summary(fnn.sweep(config, x, y, resume=True, **options))}}


CHECKS = {
    "devices": [
        sweep_parallel,
        halving_and_compaction_sharded,
        pbt_sharded,
        data_parallel_fit,
        too_many_devices,
        fit_checks_batch_divisible,
        forced_count_kept,
    ],
    "processes": [
        processes_initialized,
        allgather_shards,
        global_mesh_sum,
        data_parallel_fit_over_processes,
        members_over_processes,
        different_data_refused,
        checkpoints_from_process_zero,
    ],
    "processes4": [members_over_more_processes],  # 4 processes, 1 device each
    "processes2x2": [members_over_more_processes],  # 2 processes, 2 devices each
    "fault": [sweep_with_checkpoints],  # 2 processes, one killed by the test
    "cores": [three_devices, sweep_on_every_core, late_call_refused],
}


def main(mode: str):
    args = ()
    if mode.startswith("processes") or mode == "fault":
        args = (
            initialize(heartbeat_timeout=int(os.environ.get("FNN_TEST_HEARTBEAT", "30"))),
        )  # before any computation
    if mode == "cores":
        args = (use_cpu_cores(3),)
    if mode == "devices":
        STARTED["count"] = use_cpu_cores()  # keeps the 4 devices XLA_FLAGS forces
    for check in CHECKS[mode]:
        start = time.perf_counter()
        try:
            report = {"check": check.__name__, "ok": True} | (check(*args) or {})
        except Exception:  # noqa: BLE001 - reported to the test, which fails with it
            report = {"check": check.__name__, "ok": False, "error": traceback.format_exc()}
        print(json.dumps(report | {"seconds": round(time.perf_counter() - start, 2)}), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
