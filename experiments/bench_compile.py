"""Benchmark: what a re-run pays for compilation, without and with the persistent cache.

A research script is run again and again; without a persistent compilation cache each
process compiles its programs again. This benchmark starts fresh processes one after the
other, all on one empty cache folder (``fnn.programs.use_compilation_cache``):

* **cold** — the first process: nothing cached, every program compiled (and written);
* **warm** — the second process: the same programs, loaded from the cache.

Each process times, per workload, the **first call** (tracing, compiling or loading, and
the run) and then the same call once more with other seeds (**run**: the programs are in
memory by then), so **first − run** is what the process paid to get its programs (what
``bench_sweep.py`` calls compile time; the target of issue 20 is 0.5 s warm). It also
counts the cache's hits and misses (JAX's monitoring events): a warm process has no miss. Workloads, on scikit-learn's
1,797 digits (MLP 64-32-10, ReLU, Adam, batch 32; a synthetic stand-in of the same shape
without scikit-learn), as in ``bench_sweep.py``:

* **W2** — one ``fnn.fit``, 50 epochs;
* **W3** — ``fnn.sweep`` of 32 seeds, 50 epochs;
* **halving** — a 27-point grid (learning rate × L2 × dropout, one seed each) under
  ``fnn.halving(5, eta=3)``, 20 epochs: rungs of 27, 9, 3 and 1 members, each rung's
  size its own program; validation on 300 held-out digits;
* **full sweep** — the same 27 points trained all 20 epochs (one program): the baseline of
  halving's cold-start ratio.

Every workload runs with one CPU device and with one per core (``use_cpu_cores(n)``
first), each workload and device setting on a cache of its own (a cold process compiles
all of its programs).

Usage: python experiments/bench_compile.py [--devices 1 2] [--cache DIR]
"""

from __future__ import annotations

import argparse
import functools
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_sweep import load  # noqa: E402  (the digits, or a synthetic stand-in)

import fnn  # noqa: E402

SIZES = [64, 32, 10]
BATCH = 32
EPOCHS = 50
GRID = {"lr": [1e-3, 3e-3, 1e-2], "l2": [0.0, 1e-4, 1e-3], "dropout": [0.0, 0.1, 0.2]}
HALVING_EPOCHS = 20
WORKLOADS = ("W2", "W3", "halving", "full sweep")
EVENTS = ("/jax/compilation_cache/cache_hits", "/jax/compilation_cache/cache_misses")


def config(lr=1e-3, l2=0.0, dropout=0.0):
    model = fnn.mlp(SIZES, dropout=dropout)
    return fnn.Trainer(model, fnn.adam(lr), fnn.cross_entropy, regularizer=fnn.l2(l2))


def workload(name: str):
    """``run(offset)`` for a workload: the same work with seeds shifted by ``offset``."""
    x, y, _ = load()
    options = dict(batch_size=BATCH)
    if name == "W2":
        return lambda offset: fnn.fit(config(), x, y, key=offset, epochs=EPOCHS, **options)
    if name == "W3":
        return lambda offset: fnn.sweep(config, x, y, seeds=np.arange(32) + offset, epochs=EPOCHS, **options).results
    grid = dict(grid=GRID, epochs=HALVING_EPOCHS, validation=(x[-300:], y[-300:]), **options)
    schedule = {"halving": dict(schedule=fnn.halving(5, eta=3)), "full sweep": {}}[name]
    return lambda offset: fnn.sweep(config, x[:-300], y[:-300], seeds=[offset], **grid, **schedule).results


def timed(fn) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def measure(name: str) -> dict:
    """Time one workload in this process: its first call, then a second one; cache events."""
    counts = dict.fromkeys(EVENTS, 0)
    jax.monitoring.register_event_listener(
        lambda event, **_: counts.__setitem__(event, counts[event] + 1) if event in counts else None
    )
    run = workload(name)
    first = timed(functools.partial(run, 0))
    again = timed(functools.partial(run, 1000))
    hits, misses = (counts[e] for e in EVENTS)
    return {
        "workload": name,
        "devices": len(jax.devices()),
        "first": first,
        "run": again,
        "hits": hits,
        "misses": misses,
    }


def run_worker(name: str, devices: int, cache: Path) -> dict:
    command = [sys.executable, __file__, "--worker", name, str(devices), "--cache", str(cache)]
    out = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--devices", type=int, nargs="+", default=None, help="CPU device counts (default: 1 and one per core)"
    )
    parser.add_argument("--cache", type=Path, default=None, help="cache folder (default: a new temporary one)")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fnn.distributed.use_cpu_cores(int(args.worker[1]))
        fnn.programs.use_compilation_cache(args.cache)
        print(json.dumps(measure(args.worker[0])))
        return None

    counts = args.devices or sorted({1, fnn.distributed.cpu_cores()})
    with tempfile.TemporaryDirectory() as scratch:
        root = args.cache or Path(scratch)
        rows = {
            (name, n, start): run_worker(name, n, root / f"{name.replace(' ', '-')}-{n}")
            for n in counts
            for name in WORKLOADS
            for start in ("cold", "warm")
        }
    print(f"fnn bench_compile: {load()[2]}; {fnn.distributed.cpu_cores()} CPU cores; jax {jax.__version__}\n")
    print("| workload | CPU devices | process | first call s | run s | first − run s | cache hits | misses |")
    print("|---|---|---|---|---|---|---|---|")
    for (name, n, start), r in rows.items():
        print(
            f"| {name} | {n} | {start} | {r['first']:.3f} | {r['run']:.3f} | {r['first'] - r['run']:.3f} "
            f"| {r['hits']} | {r['misses']} |"
        )
    print("\nhalving's first call over the full sweep's (cold start, as experiments/halving.py times it):")
    for n in counts:
        for start in ("cold", "warm"):
            ratio = rows["halving", n, start]["first"] / rows["full sweep", n, start]["first"]
            print(f"- {n} CPU device(s), {start} cache: {ratio:.2f}")
    return rows


if __name__ == "__main__":
    main()
