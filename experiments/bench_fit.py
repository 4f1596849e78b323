"""Benchmark W1: one epoch of ``fit`` against PyTorch eager, a Python loop over a
jit-compiled training step, and the matmul throughput of the same shapes — with one CPU
device and with one device per core.

Model: MLP 784-256-256-10 (ReLU), Adam, batch 128, on Fashion-MNIST's 60,000 training
images. For each CPU device count (a fresh subprocess each, ``fnn.distributed.
use_cpu_cores(n)`` first) it prints, all measured in this run on this machine:

* seconds per epoch of ``fit`` (compile excluded) and its compile time;
* seconds per epoch of a Python for-loop calling ``jax.jit(trainer.train_step)`` on
  mini-batches (two variants: batches gathered on the host from NumPy, as most
  training scripts do, and batches gathered on the device inside the jitted step);
* seconds per epoch of the same MLP trained by PyTorch eager (``torch.nn.Linear``,
  ``torch.optim.Adam``, batches indexed from tensors in memory), where torch is
  installed (``pip install torch``; skipped otherwise);
* seconds per epoch of a **minimal scan**: the same MLP, Adam and cross-entropy written
  in plain JAX (inline equations, an in-graph permutation, the batches scanned), without
  what ``fit`` adds to a step — example weights (padding), the metric sums, the finite
  and divergence checks of the loss and the params, the history;
* achieved GFLOP/s of all of them against a jit-compiled program doing only the forward
  and backward matmuls of the same shapes (scanned over an epoch of batches).

``--precision`` measures instead W1 in float32 against ``compute_dtype=jnp.bfloat16`` and
``jnp.float16`` (``fnn.precision``; float16 with dynamic loss scaling, ``fnn.loss_scaling``),
side by side in one process per CPU device count (``--devices``): seconds per epoch of
``fit`` (compile excluded; the median of 3 interleaved rounds), the
validation accuracy after ``--epochs`` epochs and the steps the loss scale skipped (50,000 training images,
the last 10,000 of the training set held out; the test set is not read).

Usage: python experiments/bench_fit.py [--epochs 3] [--devices 1 2] [--data-dir DIR] [--precision]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import fnn

SIZES = [784, 256, 256, 10]
BATCH = 128


def default_data_dir() -> Path:
    return Path(os.environ.get("FNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


def epoch_flops(n: int) -> float:
    """Matmul FLOPs of one epoch: forward 2·n·Σ(in·out), backward twice that."""
    return 3 * 2 * n * sum(a * b for a, b in zip(SIZES[:-1], SIZES[1:]))


def timed(fn, *args):
    start = time.perf_counter()
    out = jax.block_until_ready(fn(*args))
    return time.perf_counter() - start, out


def repeat(one_epoch, state, epochs: int):
    for _ in range(epochs):
        state = one_epoch(state)
    return state


def bench_fit(trainer, x, y, epochs: int):
    """(seconds per epoch, compile seconds) of fit: a first call compiles, a second is timed."""
    first, _ = timed(lambda: fnn.fit(trainer, x, y, key=0, epochs=epochs, batch_size=BATCH))
    steady, _ = timed(lambda: fnn.fit(trainer, x, y, key=1, epochs=epochs, batch_size=BATCH))
    return steady / epochs, first - steady


def bench_loop_host(trainer, x_host, y_host, epochs: int):
    """Seconds per epoch of a Python loop; batches gathered from NumPy on the host."""
    step = jax.jit(trainer.train_step)
    state = trainer.init(0)
    rng = np.random.default_rng(0)
    n = len(x_host) // BATCH * BATCH

    def one_epoch(state):
        order = rng.permutation(len(x_host))[:n].reshape(-1, BATCH)
        for idx in order:
            state, _ = step(state, (x_host[idx], y_host[idx]))
        return state

    state = jax.block_until_ready(one_epoch(state))  # compile and warm up
    return timed(repeat, one_epoch, state, epochs)[0] / epochs


def bench_loop_device(trainer, x, y, epochs: int):
    """Seconds per epoch of a Python loop; the jitted step gathers its batch on the device."""

    @jax.jit
    def step(state, idx):
        return trainer.train_step(state, (x[idx], y[idx]))[0]

    state = trainer.init(0)
    n = x.shape[0] // BATCH * BATCH

    def one_epoch(state, key):
        order = jax.random.permutation(key, x.shape[0])[:n].reshape(-1, BATCH)
        for idx in order:
            state = step(state, idx)
        return state

    keys = iter(jax.random.split(jax.random.key(0), epochs + 1))
    state = jax.block_until_ready(one_epoch(state, next(keys)))
    return timed(repeat, lambda s: one_epoch(s, next(keys)), state, epochs)[0] / epochs


def bench_minimal_scan(x, y, epochs: int, guard: bool = False):
    """Seconds per epoch of the same training in plain JAX, in one scanned program per epoch:
    He-normal MLP, ReLU, softmax cross-entropy, Adam (Kingma & Ba 2015: lr 1e-3, betas 0.9
    and 0.999, eps 1e-8, bias-corrected), full batches only. With ``guard``, each update
    is kept only if the loss and every new param are finite, as ``fit`` does (its
    divergence guard: a diverging run stops at its step with the last good state)."""
    key = jax.random.key(0)
    params = [
        (jax.random.normal(jax.random.fold_in(key, i), (a, b)) * np.sqrt(2.0 / a), jnp.zeros(b))
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]))
    ]
    steps = x.shape[0] // BATCH

    def loss(params, xb, yb):
        h = xb
        for i, (w, b) in enumerate(params):
            h = h @ w + b
            h = jax.nn.relu(h) if i < len(params) - 1 else h
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(h), yb[:, None], axis=1))

    @jax.jit
    def epoch(carry, key):
        def step(carry, idx):
            params, m, v, t = carry
            value, g = jax.value_and_grad(loss)(params, x[idx], y[idx])
            t = t + 1
            m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
            v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
            m_hat, v_hat = 1 / (1 - 0.9**t), 1 / (1 - 0.999**t)
            new = jax.tree.map(lambda p, m, v: p - 1e-3 * m * m_hat / (jnp.sqrt(v * v_hat) + 1e-8), params, m, v)
            if guard:
                finite = jax.tree.map(lambda a: jnp.all(jnp.isfinite(a)), new)
                ok = jax.tree.reduce(jnp.logical_and, finite, jnp.isfinite(value))
                return jax.tree.map(lambda a, b: jnp.where(ok, a, b), (new, m, v, t), carry), None
            return (new, m, v, t), None

        order = jax.random.permutation(key, x.shape[0])[: steps * BATCH].reshape(steps, BATCH)
        return jax.lax.scan(step, carry, order)[0]

    zeros = jax.tree.map(jnp.zeros_like, params)
    carry = (params, zeros, zeros, jnp.zeros((), jnp.float32))
    keys = iter(jax.random.split(key, epochs + 1))
    carry = jax.block_until_ready(epoch(carry, next(keys)))  # compile and warm up
    return timed(repeat, lambda c: epoch(c, next(keys)), carry, epochs)[0] / epochs


def bench_matmul(n: int):
    """Seconds for the forward and backward matmuls of one epoch, scanned over its batches."""
    key = jax.random.key(0)
    ws = [
        jax.random.normal(jax.random.fold_in(key, i), (a, b)) * 0.01
        for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:]))
    ]
    xs = jax.random.normal(key, (n // BATCH, BATCH, SIZES[0]))

    @jax.jit
    def epoch(ws, xs):
        def body(acc, x):
            hs = [x]
            for w in ws:  # forward: h_{i+1} = h_i @ w_i
                hs.append(hs[-1] @ w)
            g = hs[-1]
            for w, h in zip(reversed(ws), reversed(hs[:-1])):  # backward: dW = h^T g, dh = g w^T
                acc = acc + jnp.sum(h.T @ g)
                g = g @ w.T
            return acc + jnp.sum(g), None

        return jax.lax.scan(body, jnp.zeros(()), xs)[0]

    timed(epoch, ws, xs)
    seconds, _ = timed(epoch, ws, xs)
    return seconds


def bench_torch(x_host, y_host, epochs: int):
    """Seconds per epoch of PyTorch eager training of the same MLP (torch's default threads:
    one per core), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    layers = []
    for i, (a, b) in enumerate(zip(SIZES[:-1], SIZES[1:])):
        layers += [torch.nn.Linear(a, b)] + ([torch.nn.ReLU()] if i < len(SIZES) - 2 else [])
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.from_numpy(np.array(x_host)), torch.from_numpy(y_host.astype(np.int64))
    n = len(x_host) // BATCH * BATCH

    def one_epoch(_):
        for idx in torch.randperm(len(x_host))[:n].reshape(-1, BATCH):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            optimizer.step()

    one_epoch(None)  # warm up
    start = time.perf_counter()
    repeat(one_epoch, None, epochs)
    return (time.perf_counter() - start) / epochs


def measure(args) -> dict:
    """Every variant in this process (after ``use_cpu_cores``): seconds per epoch."""
    data = fnn.datasets.load_fashion_mnist(args.data_dir / "fashion-mnist")
    x_host = np.asarray(fnn.prepare_images(data.x_train[: args.examples]))
    y_host = data.y_train[: args.examples].astype(np.int32)
    x, y = jnp.asarray(x_host), jnp.asarray(y_host)
    trainer = fnn.Trainer(fnn.mlp(SIZES, init="he_normal"), fnn.adam(1e-3), fnn.cross_entropy)
    fit_epoch, fit_compile = bench_fit(trainer, x, y, args.epochs)
    return {
        "devices": len(jax.devices()),
        "examples": len(x_host),
        "fit (one compiled program)": fit_epoch,
        "minimal scan (plain JAX, same model and Adam)": bench_minimal_scan(x, y, args.epochs),
        "minimal scan + fit's divergence guard": bench_minimal_scan(x, y, args.epochs, guard=True),
        "Python loop, host-gathered batches": bench_loop_host(trainer, x_host, y_host, args.epochs),
        "Python loop, device-gathered batches": bench_loop_device(trainer, x, y, args.epochs),
        "matmuls only (same shapes, scanned)": bench_matmul(len(x_host)),
        "compile": fit_compile,
    }


def compare_precision(args, rounds: int = 3) -> dict:
    """W1 in float32, bfloat16 and float16 (with dynamic loss scaling): ``{dtype: (seconds per
    epoch, validation accuracy, steps skipped by the loss scale)}``; the seconds are the
    median of ``rounds`` timed fits per dtype, the dtypes interleaved in each round so that
    the machine's drift falls on all three."""
    data = fnn.datasets.load_fashion_mnist(args.data_dir / "fashion-mnist")
    x_all = np.asarray(fnn.prepare_images(data.x_train))
    y_all = data.y_train.astype(np.int32)
    x, y, validation = x_all[:-10000], y_all[:-10000], (x_all[-10000:], y_all[-10000:])
    options = dict(epochs=args.epochs, batch_size=BATCH, validation=validation)
    trainers = {
        name: fnn.Trainer(fnn.mlp(SIZES, init="he_normal"), fnn.adam(1e-3), fnn.cross_entropy, compute_dtype=dtype)
        for name, dtype in (("float32", None), ("bfloat16", jnp.bfloat16), ("float16", jnp.float16))
    }
    for trainer in trainers.values():
        fnn.fit(trainer, x, y, key=1, **options)  # compiles
    seconds: dict[str, list[float]] = {name: [] for name in trainers}
    results = {}
    for _ in range(rounds):
        for name, trainer in trainers.items():
            elapsed, results[name] = timed(lambda trainer=trainer: fnn.fit(trainer, x, y, key=0, **options))
            seconds[name].append(elapsed / args.epochs)
    table = {}
    for name, result in results.items():
        scale = result.train_state.loss_scale
        skipped = "-" if scale is None else int(scale.skipped)
        table[name] = (float(np.median(seconds[name])), float(result.history["val_accuracy"][-1]), skipped)
    return table


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    parser.add_argument("--examples", type=int, default=60000, help="training examples (60,000: all)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    parser.add_argument(
        "--devices", type=int, nargs="+", default=None, help="CPU device counts (default: 1 and one per core)"
    )
    parser.add_argument("--precision", action="store_true", help="W1 in float32, bfloat16 and float16, side by side")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.torch_worker:  # a process of its own: JAX's idle compute threads would compete with torch's
        data = fnn.datasets.load_fashion_mnist(args.data_dir / "fashion-mnist")
        x_host = np.asarray(fnn.prepare_images(data.x_train[: args.examples]))
        print(json.dumps({"PyTorch eager": bench_torch(x_host, data.y_train[: args.examples], args.epochs)}))
        return None
    if args.worker:
        fnn.distributed.use_cpu_cores(args.worker)
        print(json.dumps(compare_precision(args) if args.precision else measure(args)))
        return None

    counts = args.devices or sorted({1, fnn.distributed.cpu_cores()})
    common = ["--epochs", str(args.epochs), "--examples", str(args.examples), "--data-dir", str(args.data_dir)]

    def worker(*flags):
        out = subprocess.run([sys.executable, __file__, *common, *flags], check=True, capture_output=True, text=True)
        return json.loads(out.stdout.strip().splitlines()[-1])

    if args.precision:
        tables = {n: worker("--worker", str(n), "--precision") for n in counts}
        print(f"W1 (MLP {'-'.join(map(str, SIZES))}, Adam, batch {BATCH}), {args.epochs} epochs, 50,000 images")
        print(
            "\n| CPU devices | compute dtype | s / epoch | vs float32 | validation accuracy | steps skipped (loss scale) |"
        )
        print("|---|---|---|---|---|---|")
        for n, table in tables.items():
            for name, (seconds, accuracy, skipped) in table.items():
                ratio = seconds / table["float32"][0]
                print(f"| {n} | {name} | {seconds:.3f} | {ratio:.2f}x | {accuracy:.4f} | {skipped} |")
        return tables
    torch_epoch = worker("--torch-worker")["PyTorch eager"]
    runs = [worker("--worker", str(n)) | {"PyTorch eager (its own process)": torch_epoch} for n in counts]
    gflop = epoch_flops(runs[0]["examples"]) / 1e9
    print(
        f"fnn bench_fit: MLP {'-'.join(map(str, SIZES))}, Adam, batch {BATCH}, {runs[0]['examples']} examples, "
        f"{args.epochs} timed epochs, jax {jax.__version__}, {fnn.distributed.cpu_cores()} CPU cores"
    )
    print("\n| CPU devices | variant | s / epoch | GFLOP/s | fit speed-up | share of matmul throughput |")
    print("|---|---|---|---|---|---|")
    for run in runs:
        fit_epoch, matmul_epoch = run["fit (one compiled program)"], run["matmuls only (same shapes, scanned)"]
        for name, seconds in run.items():
            if name in ("devices", "examples", "compile") or seconds is None:
                continue
            print(
                f"| {run['devices']} | {name} | {seconds:.3f} | {gflop / seconds:.1f} | {seconds / fit_epoch:.2f}x "
                f"| {matmul_epoch / seconds:.0%} |"
            )
    for run in runs:
        print(f"\n{run['devices']} CPU device(s): fit compile time {run['compile']:.2f} s", end="")
    print(f"; matmul FLOPs per epoch: {gflop:.1f} GFLOP")
    return runs


if __name__ == "__main__":
    main()
