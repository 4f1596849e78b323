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

Usage: python experiments/bench_sweep.py [--epochs 50] [--seeds 32] [--devices 1 2]
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
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
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
