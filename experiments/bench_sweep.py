"""Benchmark: many runs as one vmapped program (``fnn.sweep``) against the same runs one
after another with ``fnn.fit``, on one CPU device and on one device per core.

Model: MLP 64-32-10 (ReLU) on scikit-learn's 1,797 digits (8x8, 64 features; a synthetic
stand-in of the same shape when scikit-learn is absent), batch 32, Adam, 50 epochs.
Workloads (the names of issue 12):

* **W2** — one run with ``fnn.fit``;
* **W3** — 32 seeds: ``fnn.sweep`` (one program) against 32 sequential ``fit`` calls;
* **W3b** — 8 learning rates x 32 seeds = 256 members, ``chunk_size=64`` (4 compiled
  calls of the same program), against 256 sequential ``fit`` calls (timed as 32 and
  scaled: every call is the same program); its peak memory is compared with one chunk of
  64 members alone (flat in the number of chunks).

Each workload runs in a fresh subprocess per device setting (``fnn.distributed.
use_cpu_cores(n)`` first: 1 device, and one per core), so that peak memory (resident set)
is per measurement. Times exclude compilation: each call runs once to compile, then a
second call with other seeds is timed; the compile time is the difference. Speed-ups
compare with sequential ``fit`` at its best device setting.

``--memory`` measures instead what a chunked sweep holds (issue 21): 128 members of an
MLP 64-512-512-10 (Adam), one epoch on the digits, with ``chunk_size`` 16 and 128, each in
a fresh process on one CPU device, against one member's run: the peak resident set above
the process before the sweep, the kept results (every member's ``FitResult``), and the
working set above one member's run and the kept results. The two chunk sizes must give
the same histories up to float32 rounding (``rtol=1e-4``: another member count per call
picks other matmul kernels, over 56 Adam steps through 512-wide layers).

Usage: python experiments/bench_sweep.py [--epochs 50] [--seeds 32] [--devices 1 2] [--memory]
"""

from __future__ import annotations

import argparse
import functools
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np

import fnn

SIZES = [64, 32, 10]
BATCH = 32
LRS = [1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
CHUNK = 64
MEMORY_SIZES = [64, 512, 512, 10]
MEMORY_MEMBERS = 128


def load():
    try:
        x, y = fnn.datasets.load_digits()
        return (x / 16.0).astype(np.float32), y, "scikit-learn digits"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.random((1797, 64), np.float32), rng.integers(0, 10, 1797).astype(np.int32), "synthetic stand-in"


def config(lr=1e-3):
    return fnn.Trainer(fnn.mlp(SIZES), fnn.adam(lr), fnn.cross_entropy)


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def workload(name: str, seeds: int, epochs: int):
    """``run(offset)`` for a workload: the same work with seeds shifted by ``offset``."""
    x, y, _ = load()
    options = dict(epochs=epochs, batch_size=BATCH)
    if name == "W2":
        return lambda offset: fnn.fit(config(), x, y, key=offset, **options)
    if name == "W3":
        return lambda offset: fnn.sweep(config, x, y, seeds=np.arange(seeds) + offset, **options).results
    if name in ("W3b", "W3b one chunk"):
        lrs = LRS if name == "W3b" else LRS[: CHUNK // seeds]
        grid = {"lr": lrs}
        return lambda offset: (
            fnn.sweep(config, x, y, seeds=np.arange(seeds) + offset, grid=grid, chunk_size=CHUNK, **options).results
        )
    if name == "sequential":
        return lambda offset: [fnn.fit(config(), x, y, key=s + offset, **options) for s in range(seeds)]
    raise ValueError(f"unknown workload {name!r}")


def measure(name: str, devices: int, seeds: int, epochs: int) -> dict:
    """Time one workload in this process (after ``use_cpu_cores(devices)``)."""
    run = workload(name, seeds, epochs)
    first = timed(lambda: run(0))
    steady = min(timed(functools.partial(run, 1000 * (i + 1))) for i in range(2))
    return {
        "workload": name,
        "devices": len(jax.devices()),
        "seconds": steady,
        "compile": max(first - steady, 0.0),
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "data": load()[2],
    }


def memory(members: int, chunk: int) -> dict:
    """Peak resident set of a one-epoch sweep of ``members`` MLPs ``MEMORY_SIZES`` in
    chunks of ``chunk`` (this process, after ``use_cpu_cores(1)``), and what it keeps."""
    x, y, _ = load()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    config = lambda: fnn.Trainer(fnn.mlp(MEMORY_SIZES), fnn.adam(1e-3), fnn.cross_entropy)  # noqa: E731
    result = fnn.sweep(config, x, y, seeds=members, epochs=1, batch_size=BATCH, chunk_size=chunk, devices=1)
    jax.block_until_ready(result.results)
    return {
        "members": members,
        "chunk": chunk,
        "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before,
        "kept_mib": sum(leaf.nbytes for leaf in jax.tree.leaves(result.results)) / 2**20,
        "loss": np.asarray(result.results.history["loss"]).ravel().tolist(),
    }


def memory_table() -> None:
    """``--memory``: one member, then 128 in chunks of 16 and of 128, each in a fresh process."""
    runs = [(1, 1), (MEMORY_MEMBERS, 16), (MEMORY_MEMBERS, MEMORY_MEMBERS)]
    rows = [
        json.loads(
            subprocess.run(
                [sys.executable, __file__, "--memory-worker", str(m), str(c)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout.splitlines()[-1]
        )
        for m, c in runs
    ]
    one = rows[0]["peak_mib"]
    print(
        f"fnn bench_sweep --memory: MLP {'-'.join(map(str, MEMORY_SIZES))}, Adam, 1 epoch, batch {BATCH}, 1 CPU device\n"
    )
    print(
        "| members | chunk_size | peak MiB above the process before | kept results MiB | above one member's run and the results |"
    )
    print("|---|---|---|---|---|")
    for r in rows:
        above = "(the baseline)" if r is rows[0] else f"{r['peak_mib'] - one - r['kept_mib']:.0f}"
        print(f"| {r['members']} | {r['chunk']} | {r['peak_mib']:.0f} | {r['kept_mib']:.0f} | {above} |")
    difference = np.max(np.abs(np.subtract(rows[1]["loss"], rows[2]["loss"])))
    print(f"\nchunk 16 against chunk 128: largest difference of the members' loss {difference:.2g} (float32 rounding)")
    # one epoch of 56 Adam steps through 512-wide layers, kernels chosen by the member count
    assert np.allclose(rows[1]["loss"], rows[2]["loss"], rtol=1e-4), "chunk sizes gave different results"


def run_worker(name: str, devices: int, args) -> dict:
    command = [sys.executable, __file__, "--epochs", str(args.epochs), "--seeds", str(args.seeds)]
    out = subprocess.run([*command, "--worker", name, str(devices)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--seeds", type=int, default=32, help="seeds of W3 (and per learning rate in W3b)")
    parser.add_argument(
        "--devices", type=int, nargs="+", default=None, help="CPU device counts (default: 1 and one per core)"
    )
    parser.add_argument("--memory", action="store_true", help="measure a chunked sweep's memory instead (issue 21)")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "DEVICES"), help=argparse.SUPPRESS)
    parser.add_argument("--memory-worker", nargs=2, type=int, metavar=("MEMBERS", "CHUNK"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_worker:
        fnn.distributed.use_cpu_cores(1)
        print(json.dumps(memory(*args.memory_worker)))
        return None
    if args.memory:
        return memory_table()
    if args.worker:
        fnn.distributed.use_cpu_cores(int(args.worker[1]))
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.seeds, args.epochs)))
        return None

    counts = args.devices or sorted({1, fnn.distributed.cpu_cores()})
    names = ["W2", "sequential", "W3", "W3b", "W3b one chunk"]
    rows = {(name, n): run_worker(name, n, args) for n in counts for name in names}
    per_run = min(rows["sequential", n]["seconds"] for n in counts) / args.seeds  # sequential fit, best setting
    members = {"W2": 1, "sequential": args.seeds, "W3": args.seeds, "W3b": len(LRS) * args.seeds}
    members["W3b one chunk"] = CHUNK
    print(
        f"fnn bench_sweep: MLP {'-'.join(map(str, SIZES))}, Adam, batch {BATCH}, {args.epochs} epochs, "
        f"{rows['W2', counts[0]]['data']}; {fnn.distributed.cpu_cores()} CPU cores\n"
    )
    print("| workload | members | CPU devices | seconds | s / member | vs sequential fit | compile s | peak MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, _), r in rows.items():
        m = members[name]
        speedup = per_run * m / r["seconds"]
        print(
            f"| {name} | {m} | {r['devices']} | {r['seconds']:.3f} | {r['seconds'] / m:.4f} | {speedup:.2f}x "
            f"| {r['compile']:.2f} | {r['peak_mib']:.0f} |"
        )
    print(
        f"\nvs sequential fit: time of {args.seeds} sequential fit calls at their best device setting "
        f"({per_run:.4f} s per run), scaled to the workload's members, over the workload's time."
    )
    return rows


if __name__ == "__main__":
    main()
