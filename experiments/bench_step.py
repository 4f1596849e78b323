"""Benchmark: one training step's time and memory, plain against accumulation, DP-SGD and mixed precision.

The step of ``fnn.Trainer.train_step`` for the MLP 784-256-256-10 (ReLU, Adam,
cross-entropy) on a mini-batch of 128 random MNIST-shaped examples, compiled once per
variant:

* **plain** — ``jax.grad`` of the mini-batch's loss (the default step);
* **accumulate=4** — the same gradient summed over 4 micro-batches of 32 in a
  ``lax.scan`` (``fnn.accumulation``);
* **DP-SGD** — per-example gradients (``vmap`` of ``grad``), clipped, summed, noised
  (``Trainer(privacy=fnn.dp_sgd(1.0, 1.0))``, ``fnn.privacy``);
* **DP-SGD, accumulate=4** — the per-example gradients of 32 examples at a time;
* **bfloat16** — mixed precision, ``Trainer(compute_dtype=jnp.bfloat16)``
  (``fnn.precision``): the forward and backward passes in bfloat16 (fast on GPUs and
  TPUs; a CPU without bfloat16 arithmetic emulates it);
* **float16 + loss scaling** — ``compute_dtype=jnp.float16`` with its dynamic loss scale
  (``fnn.loss_scaling``): the scaled loss, the unscaled gradient, the finiteness test and
  the masked update that skips a non-finite step.

For each: the mean time of a step (after a warm-up call; ``--steps`` calls, each waited
for), XLA's memory analysis of the compiled step (``temp``: the working memory the step
allocates besides its arguments and outputs) and fnn's own estimate of the step's peak
(``fnn.memory.peak_bytes`` of its jaxpr, which ``chunk_size="auto"`` uses). Runs in
seconds on a CPU.

Usage: python experiments/bench_step.py [--batch 128] [--steps 20] [--variants NAME ...]
(e.g. ``--batch 4096 --variants accumulate=4``: where activations outweigh the params,
accumulation's memory; plain always runs, as the baseline).
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

import fnn
from fnn.memory import peak_bytes

SIZES = [784, 256, 256, 10]


def variants() -> dict[str, dict]:
    """The Trainer options of each variant, by name."""
    private = fnn.dp_sgd(clip_norm=1.0, noise_multiplier=1.0)
    return {
        "plain": {},
        "accumulate=4": {"accumulate": 4},
        "DP-SGD": {"privacy": private},
        "DP-SGD, accumulate=4": {"privacy": private, "accumulate": 4},
        "bfloat16": {"compute_dtype": jnp.bfloat16},
        "float16 + loss scaling": {"compute_dtype": jnp.float16},
    }


def measure(options: dict, batch: tuple, steps: int) -> dict:
    """Time and memory of one variant's compiled step."""
    trainer = fnn.Trainer(fnn.mlp(SIZES), fnn.adam(1e-3), fnn.cross_entropy, **options)
    state = trainer.init(0)
    step = jax.jit(trainer.train_step)
    compiled = step.lower(state, batch).compile()
    analysis = compiled.memory_analysis()
    temp = None if analysis is None else analysis.temp_size_in_bytes
    estimate = peak_bytes(jax.make_jaxpr(trainer.train_step)(state, batch).jaxpr)
    state, _ = step(state, batch)  # warm-up
    jax.block_until_ready(state)
    start = time.perf_counter()
    for _ in range(steps):
        state, metrics = step(state, batch)
        jax.block_until_ready((state, metrics))
    return {"ms": 1e3 * (time.perf_counter() - start) / steps, "temp": temp, "estimate": estimate}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128, help="examples per update (a multiple of 4)")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per variant")
    parser.add_argument("--variants", nargs="+", default=list(variants()), help="the variants to run, by name")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, SIZES[0]), dtype=np.float32)
    y = rng.integers(0, SIZES[-1], args.batch).astype(np.int32)
    batch = (jax.device_put(x), jax.device_put(y), jax.device_put(np.ones(args.batch, np.float32)))
    print(f"{jax.devices()[0].device_kind}: MLP {'-'.join(map(str, SIZES))}, Adam, batch {args.batch}")
    print(f"{'step':<22} {'ms/step':>8} {'x plain':>8} {'XLA temp MiB':>13} {'fnn peak MiB':>13}")
    results = {}
    for name in ["plain", *(v for v in args.variants if v != "plain")]:
        results[name] = r = measure(variants()[name], batch, args.steps)
        ratio = r["ms"] / results["plain"]["ms"]
        temp = "n/a" if r["temp"] is None else f"{r['temp'] / 2**20:.2f}"
        print(f"{name:<22} {r['ms']:>8.2f} {ratio:>8.2f} {temp:>13} {r['estimate'] / 2**20:>13.2f}")
    return results


if __name__ == "__main__":
    main()
