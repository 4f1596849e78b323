"""Benchmark: ``fit`` (one compiled program per run) against a Python loop over a
jit-compiled training step, and against the matmul throughput of the same shapes.

Model: MLP 784-256-256-10 (ReLU), Adam, batch 128, on Fashion-MNIST's 60,000 training
images. Prints, all measured in this run on this machine:

* seconds per epoch of ``fit`` (compile excluded) and its compile time;
* seconds per epoch of a Python for-loop calling ``jax.jit(trainer.train_step)`` on
  mini-batches (two variants: batches gathered on the host from NumPy, as most
  training scripts do, and batches gathered on the device inside the jitted step);
* achieved GFLOP/s of both against a jit-compiled program doing only the forward and
  backward matmuls of the same shapes (scanned over an epoch of batches).

Usage: python experiments/bench_fit.py [--epochs 3] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import os
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


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per measurement")
    parser.add_argument("--examples", type=int, default=60000, help="training examples (60,000: all)")
    parser.add_argument("--data-dir", type=Path, default=default_data_dir())
    args = parser.parse_args(argv)

    data = fnn.datasets.load_fashion_mnist(args.data_dir / "fashion-mnist")
    x_host = np.asarray(fnn.prepare_images(data.x_train[: args.examples]))
    y_host = data.y_train[: args.examples].astype(np.int32)
    x, y = jnp.asarray(x_host), jnp.asarray(y_host)
    n = len(x_host)
    trainer = fnn.Trainer(fnn.mlp(SIZES, init="he_normal"), fnn.adam(1e-3), fnn.cross_entropy)

    print(
        f"fnn bench_fit: MLP {'-'.join(map(str, SIZES))}, Adam, batch {BATCH}, {n} examples, "
        f"{args.epochs} timed epochs, device {jax.devices()[0].device_kind}, jax {jax.__version__}"
    )
    fit_epoch, fit_compile = bench_fit(trainer, x, y, args.epochs)
    host_epoch = bench_loop_host(trainer, x_host, y_host, args.epochs)
    device_epoch = bench_loop_device(trainer, x, y, args.epochs)
    matmul_epoch = bench_matmul(n)
    gflop = epoch_flops(n) / 1e9
    rows = [
        ("fit (one compiled program)", fit_epoch),
        ("Python loop, host-gathered batches", host_epoch),
        ("Python loop, device-gathered batches", device_epoch),
        ("matmuls only (same shapes, scanned)", matmul_epoch),
    ]
    print("\n| variant | s / epoch | GFLOP/s | fit speed-up | share of matmul throughput |\n|---|---|---|---|---|")
    for name, seconds in rows:
        print(
            f"| {name} | {seconds:.3f} | {gflop / seconds:.1f} | {seconds / fit_epoch:.2f}x | {matmul_epoch / seconds:.0%} |"
        )
    print(f"\nfit compile time: {fit_compile:.2f} s; matmul FLOPs per epoch: {gflop:.1f} GFLOP")
    return {name: seconds for name, seconds in rows} | {"compile": fit_compile}


if __name__ == "__main__":
    main()
