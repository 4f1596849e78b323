"""Mini-batches drawn inside the compiled program.

An epoch visits every training example once in a fresh random order: the order is a
permutation drawn from the epoch's key, cut into ``steps`` mini-batches of
``batch_size`` indices. The data stay where they are (on the device); a training step
gathers its rows with ``x[indices]``.

When ``batch_size`` does not divide the number of examples the last batch is partial.
With ``drop_last=True`` it is dropped (a different subset each epoch). Otherwise it is
filled up to ``batch_size`` with the first indices of the permutation and those extra
rows get weight 0, so that every example counts exactly once per epoch and every batch
has the same shape (one compiled step). Note that batch normalization still sees the
filler rows in its batch statistics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def num_steps(num_examples: int, batch_size: int, drop_last: bool) -> int:
    """Mini-batches per epoch: floor(n / b) with ``drop_last``, else ceil(n / b)."""
    return num_examples // batch_size if drop_last else -(-num_examples // batch_size)


def permutation(key, n: int):
    """A uniformly random permutation of ``range(n)`` (int32 [n]), drawn in-graph.

    Method: random sort keys, as in ``jax.random.permutation``, but each key packs
    (32 - b) random bits above the b = ceil(log2 n) bits of the element's position into
    one uint32, so that a round is a plain sort of integers — several times faster on
    CPU than the key-value sort ``jax.random.permutation`` runs (docs/performance.md).
    Equal random parts (ties) would be broken by position; ``rounds`` independent rounds
    make the result uniform to the same standard as ``jax.random.permutation``'s:
    rounds = ceil(3 ln n / ((32 - b) ln 2)).
    For n >= 2^24 it falls back to ``jax.random.permutation``.
    """
    bits = max(1, math.ceil(math.log2(n))) if n > 1 else 1
    if bits > 24:
        return jax.random.permutation(key, n).astype(jnp.int32)
    rounds = max(1, math.ceil(3 * math.log(n) / ((32 - bits) * math.log(2)))) if n > 1 else 1
    low = jnp.uint32((1 << bits) - 1)
    positions = jnp.arange(n, dtype=jnp.uint32)
    order = jnp.arange(n, dtype=jnp.int32)
    for r in range(rounds):
        random = jax.random.bits(jax.random.fold_in(key, r), (n,), jnp.uint32)
        packed = jnp.sort((random & ~low) | positions)
        order = order[(packed & low).astype(jnp.int32)]
    return order


def epoch_batches(key, num_examples: int, batch_size: int, drop_last: bool = False):
    """Indices and per-example weights of one epoch's mini-batches.

    Args:
      key: the epoch's PRNG key (the permutation is drawn from it).
      num_examples: n, static.
      batch_size: b, static, 1 <= b <= n.
      drop_last: drop the last partial batch instead of padding it.
    Returns:
      ``(indices, weights)``, int32 [steps, b] and float32 [steps, b]; weights are 1
      for real examples and 0 for filler rows of the padded last batch.
    """
    order = permutation(key, num_examples)
    steps = num_steps(num_examples, batch_size, drop_last)
    return _cut(order, steps, batch_size)


def eval_batches(num_examples: int, batch_size: int):
    """Indices and weights that cover ``range(num_examples)`` in order, in fixed-size
    batches (the last padded with weight-0 rows): int32 [steps, b], float32 [steps, b]."""
    order = jnp.arange(num_examples, dtype=jnp.int32)
    return _cut(order, num_steps(num_examples, batch_size, False), batch_size)


def _cut(order, steps: int, batch_size: int):
    total = steps * batch_size
    n = order.shape[0]
    if total <= n:
        return order[:total].reshape(steps, batch_size), jnp.ones((steps, batch_size), jnp.float32)
    filler = jnp.resize(order, total - n)  # wraps around when the padding exceeds n
    padded = jnp.concatenate([order, filler])
    weights = (jnp.arange(total) < n).astype(jnp.float32)
    return padded.reshape(steps, batch_size), weights.reshape(steps, batch_size)
