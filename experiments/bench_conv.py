"""Benchmark: the MNIST-1D CNN over 32 seeds as one vmapped program (``fnn.sweep``),
as 32 sequential ``fnn.fit`` calls, and in PyTorch eager, on one CPU device and on one
device per core.

Model: the MNIST-1D paper's CNN of ``experiments/mnist1d_cnn.py`` (three ``Conv1D`` of 25
channels, kernels 5/3/3, strides 2, padding 1, ReLU, ``Flatten``, ``Dense(125, 10)``;
5,210 parameters), Adam 1e-2, cross-entropy, one epoch of the 4,000 MNIST-1D training
signals in mini-batches of 100 (40 steps), no validation. Workloads:

* **sweep** — ``fnn.sweep(config, x, y, seeds=32, epochs=1, batch_size=100)``: 32 members,
  one compiled program (members sharded over the CPU devices);
* **sequential fit** — 32 calls of ``fnn.fit(..., key=s)``, one after another (the same
  compiled program every call);
* **PyTorch eager** — the same CNN (``nn.Conv1d`` channels-first, PyTorch's default init),
  ``torch.optim.Adam(lr=1e-2)``, 40 steps of ``zero_grad / forward / backward / step`` over
  a shuffled epoch, 32 runs one after another; ``torch.set_num_threads`` = the JAX setting's
  device count (1, or one per core). Skipped with a note where torch is not installed.

Each device setting runs in a fresh subprocess that calls
``fnn.distributed.use_cpu_cores(n)`` before anything else (n = 1, and one per core), as
``experiments/bench_sweep.py`` does. Times exclude compilation: each workload first runs
to compile (the sweep with all its members; ``fit`` and PyTorch, which warms up, one
run), then twice in full with other seeds, and the faster of the two is reported; the
compile (warm-up) time is the first call's time minus its share of that.

Targets (issue 13): the sweep at least 3x faster than sequential ``fit``; ``fit`` at least
as fast as PyTorch eager per run.

Usage: python experiments/bench_conv.py [--seeds 32] [--epochs 1] [--devices 1 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

import fnn

BATCH = 100
LR = 1e-2
CHANNELS = 25


def load():
    """The 4,000 MNIST-1D training signals as [4000, 40, 1] float32 and int32 labels."""
    data = fnn.datasets.load_mnist1d()
    return np.asarray(data.x_train[:, :, None], np.float32), np.asarray(data.y_train, np.int32)


def config(lr=LR):
    c = CHANNELS
    model = fnn.Serial(
        (
            fnn.Conv1D(1, c, 5, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Conv1D(c, c, 3, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Conv1D(c, c, 3, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Flatten(),
            fnn.Dense(5 * c, 10),
        )
    )
    return fnn.Trainer(model, fnn.adam(lr), fnn.cross_entropy)


def timed(fn) -> tuple[float, object]:
    import jax

    start = time.perf_counter()
    out = jax.block_until_ready(fn())
    return time.perf_counter() - start, out


def workload(name: str, epochs: int):
    """``run(offset, runs)`` for a workload: ``runs`` runs with seeds ``offset, offset + 1,
    ...``; returns something whose last training loss can be read (:func:`final_loss`)."""
    x, y = load()
    options = dict(epochs=epochs, batch_size=BATCH)
    if name == "sweep":
        return lambda offset, runs: fnn.sweep(config, x, y, seeds=np.arange(runs) + offset, **options).results.history
    if name == "sequential fit":
        return lambda offset, runs: [fnn.fit(config(), x, y, key=s + offset, **options).history for s in range(runs)]
    if name == "PyTorch eager":
        return torch_workload(x, y, epochs)
    raise ValueError(f"unknown workload {name!r}")


def torch_workload(x, y, epochs: int):
    import torch
    from torch import nn

    torch.set_num_threads(int(os.environ.get("BENCH_THREADS", "1")))
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))  # [n, 1, 40]: channels-first
    yt = torch.from_numpy(y.astype(np.int64))
    c = CHANNELS

    def one_run(seed: int) -> float:
        torch.manual_seed(seed)
        model = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(5 * c, 10),
        )
        optimizer = torch.optim.Adam(model.parameters(), lr=LR)
        loss_fn = nn.CrossEntropyLoss()
        epoch_losses: list[torch.Tensor] = []
        for _ in range(epochs):
            order = torch.randperm(len(yt))
            epoch_losses = []
            for start in range(0, len(yt), BATCH):
                idx = order[start : start + BATCH]
                optimizer.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                optimizer.step()
                epoch_losses.append(loss.detach())
        return float(torch.stack(epoch_losses).mean())  # the last epoch's mean mini-batch loss, as fit's history

    return lambda offset, runs: [one_run(s + offset) for s in range(runs)]


def final_loss(name: str, out) -> float:
    """The mean over runs of the last epoch's training loss (the mean of its mini-batch
    losses): a check that every workload trains (the seeds, so the initial weights and data
    orders, are fnn's and PyTorch's own)."""
    if name == "sweep":
        return float(np.mean(np.asarray(out["loss"])[:, -1]))
    if name == "sequential fit":
        return float(np.mean([np.asarray(h["loss"])[-1] for h in out]))
    return float(np.mean(out))


def measure(name: str, seeds: int, epochs: int) -> dict:
    """Time one workload in this process (after ``use_cpu_cores``)."""
    import jax

    run = workload(name, epochs)
    # the first call compiles (PyTorch: warms up); a sweep compiles for its member count, the
    # sequential workloads once for all their runs, so they warm up with one run
    warm_runs = seeds if name == "sweep" else 1
    first, _ = timed(lambda: run(0, warm_runs))
    repeats = [timed(lambda offset=offset: run(offset, seeds)) for offset in (1000, 2000)]
    steady, out = min(r[0] for r in repeats), repeats[0][1]  # the loss of seeds 1000.. in every workload
    return {
        "workload": name,
        "devices": len(jax.devices()),
        "seconds": steady,
        "compile": max(first - steady * warm_runs / seeds, 0.0),
        "final_loss": final_loss(name, out),
        "load_average": [round(v, 2) for v in os.getloadavg()],
    }


def run_worker(name: str, devices: int, args) -> dict | None:
    command = [sys.executable, __file__, "--epochs", str(args.epochs), "--seeds", str(args.seeds)]
    env = os.environ | {"BENCH_THREADS": str(devices)}
    out = subprocess.run(
        [*command, "--worker", name, str(devices)], capture_output=True, text=True, env=env, check=False
    )
    if out.returncode:
        raise RuntimeError(f"worker {name} on {devices} device(s) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return torch.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of every run")
    parser.add_argument("--seeds", type=int, default=32, help="runs per workload (sweep members, fit calls)")
    parser.add_argument(
        "--devices", type=int, nargs="+", default=None, help="CPU device counts (default: 1 and one per core)"
    )
    parser.add_argument("--json", default=None, help="also write the rows and ratios to this JSON file")
    parser.add_argument("--worker", nargs=2, metavar=("WORKLOAD", "DEVICES"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        fnn.distributed.use_cpu_cores(int(args.worker[1]))  # before anything else touches JAX
        print(json.dumps(measure(args.worker[0], args.seeds, args.epochs)))
        return None

    counts = args.devices or sorted({1, fnn.distributed.cpu_cores()})
    torch = torch_version()
    names = ["sweep", "sequential fit"] + (["PyTorch eager"] if torch else [])
    load_before = [round(v, 2) for v in os.getloadavg()]
    rows = {(name, n): run_worker(name, n, args) for n in counts for name in names}
    import jax  # only now: the workers chose their device counts themselves

    seq_best = min(rows["sequential fit", n]["seconds"] for n in counts)
    print(
        f"fnn bench_conv: MNIST-1D CNN (3 x Conv1D({CHANNELS}), Dense(125, 10)), Adam {LR:g}, batch {BATCH}, "
        f"{args.epochs} epoch(s) of 4,000 signals, {args.seeds} runs per workload; jax {jax.__version__}, "
        f"torch {torch or 'not installed'}; {fnn.distributed.cpu_cores()} CPU cores; load average before "
        f"{load_before}, after {[round(v, 2) for v in os.getloadavg()]}\n"
    )
    print(
        "| workload | CPU devices (torch threads) | seconds | s / run | vs sequential fit (same devices) "
        "| vs sequential fit (best) | compile (warm-up) s | final loss |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (name, n), r in rows.items():
        seq = rows["sequential fit", n]["seconds"]
        print(
            f"| {name} | {r['devices']} | {r['seconds']:.3f} | {r['seconds'] / args.seeds:.4f} | "
            f"{seq / r['seconds']:.2f}x | {seq_best / r['seconds']:.2f}x | {r['compile']:.2f} | {r['final_loss']:.3f} |"
        )
    ratios = {}
    for n in counts:
        fit_s = rows["sequential fit", n]["seconds"]
        ratios[f"sweep speed-up over sequential fit, {n} device(s)"] = fit_s / rows["sweep", n]["seconds"]
        if torch:
            ratios[f"PyTorch eager time / fit time per run, {n} device(s)"] = (
                rows["PyTorch eager", n]["seconds"] / fit_s
            )
    best_sweep = min(rows["sweep", n]["seconds"] for n in counts)
    ratios["best sweep over best sequential fit"] = seq_best / best_sweep
    if torch:
        ratios["best PyTorch eager / best fit"] = min(rows["PyTorch eager", n]["seconds"] for n in counts) / seq_best
    print()
    for key, value in ratios.items():
        print(f"{key}: {value:.2f}x")
    if not torch:
        print("PyTorch is not installed: its row is skipped (pip install torch to compare).")
    print(
        "\nTargets: sweep >= 3x faster than sequential fit; PyTorch eager time / fit time >= 1 (fit at least as "
        "fast per run). Compile excluded: each workload ran once first."
    )
    if args.json:
        record = {
            "rows": [r | {"workload": name} for (name, _), r in rows.items()],
            "ratios": ratios,
            "seeds": args.seeds,
            "epochs": args.epochs,
            "jax": jax.__version__,
            "torch": torch,
            "cpu_cores": fnn.distributed.cpu_cores(),
            "load_average_before": load_before,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=2)
    return rows


if __name__ == "__main__":
    main()
