"""Benchmark: many seeds as one vmapped program (``fnn.sweep``) against the same runs
one after another with ``fnn.fit``.

Model: MLP 64-32-10 (ReLU) on scikit-learn's 1,797 digits (8x8, 64 features; a synthetic
stand-in of the same shape when scikit-learn is absent), batch 32, Adam, 50 epochs.
For each member count (1, 8, 32, 128 seeds by default), in a fresh subprocess each so
that peak memory is per measurement, it prints: total time and time per member of the
vmapped sweep and of the sequential runs (compile time excluded from both: each is run
once to compile, then timed), the speed-up per member, the compile time, and the peak
resident memory of the process.

Usage: python experiments/bench_sweep.py [--members 1 8 32 128] [--epochs 50]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import jax
import numpy as np

import fnn
from fnn.sweep import sweep

SIZES = [64, 32, 10]
BATCH = 32


def load():
    try:
        x, y = fnn.datasets.load_digits()
        return (x / 16.0).astype(np.float32), y, "scikit-learn digits"
    except ImportError:
        rng = np.random.default_rng(0)
        return rng.random((1797, 64), np.float32), rng.integers(0, 10, 1797).astype(np.int32), "synthetic stand-in"


def config(lr=1e-3):
    return fnn.Trainer(fnn.mlp(SIZES), fnn.adam(lr), fnn.cross_entropy)


def timed(fn):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(mode: str, members: int, epochs: int) -> dict:
    """Time one mode in this process: first call (compile + run), then a timed call."""
    x, y, source = load()
    if mode == "sweep":

        def run(offset):
            return sweep(config, x, y, seeds=np.arange(members) + offset, epochs=epochs, batch_size=BATCH).results
    else:

        def run(offset):
            return [
                fnn.fit(config(), x, y, key=int(s) + offset, epochs=epochs, batch_size=BATCH) for s in range(members)
            ]

    first = timed(lambda: run(0))
    steady = timed(lambda: run(members))
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "mode": mode,
        "members": members,
        "seconds": steady,
        "compile": first - steady,
        "peak_mib": peak_mib,
        "data": source,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, nargs="+", default=[1, 8, 32, 128])
    parser.add_argument("--epochs", type=int, default=50)
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "MEMBERS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(measure(args.worker[0], int(args.worker[1]), args.epochs)))
        return None

    print(
        f"fnn bench_sweep: MLP {'-'.join(map(str, SIZES))}, Adam, batch {BATCH}, {args.epochs} epochs, "
        f"jax {jax.__version__} on {jax.devices()[0].device_kind}"
    )
    results = []
    for members in args.members:
        pair = {}
        for mode in ("sweep", "sequential"):
            out = subprocess.run(
                [sys.executable, __file__, "--epochs", str(args.epochs), "--worker", mode, str(members)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            pair[mode] = json.loads(out.strip().splitlines()[-1])
        results.append(pair)
    print(f"data: {results[0]['sweep']['data']}\n")
    print(
        "| members | sweep total s | sweep s/member | sequential total s | sequential s/member | speed-up per member "
        "| sweep compile s | sweep peak MiB | sequential peak MiB |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for pair in results:
        s, q = pair["sweep"], pair["sequential"]
        m = s["members"]
        print(
            f"| {m} | {s['seconds']:.2f} | {s['seconds'] / m:.3f} | {q['seconds']:.2f} | {q['seconds'] / m:.3f} "
            f"| {q['seconds'] / s['seconds']:.1f}x | {s['compile']:.1f} | {s['peak_mib']:.0f} | {q['peak_mib']:.0f} |"
        )
    return results


if __name__ == "__main__":
    main()
