"""Gradient accumulation: one update from ``k`` micro-batches, with the memory of one.

``fnn.Trainer(..., accumulate=k)`` splits every mini-batch of ``B = k * b`` examples
(``fit``'s ``batch_size`` is ``B``, the effective batch) into ``k`` micro-batches of
``b`` and ``lax.scan``-s the gradient over them, so the activations of one micro-batch
are live at a time; then the optimizer takes ONE update. Its step count, and so the
learning-rate schedules, ``TrainState.step``, ``max_steps`` and the dropout key of each
update, count updates, not micro-batches.

The accumulated gradient is the gradient of the whole mini-batch's weighted mean loss,
to float rounding. With example weights ``w_j`` (1 for an example, 0 for a padded row of
the last mini-batch) and the per-example losses ``l_j``::

    L    = sum_j w_j l_j / W,            W   = sum_j w_j        (the mini-batch's loss)
    L_i  = sum_{j in i} w_j l_j / W_i,   W_i = sum_{j in i} w_j (micro-batch i's, as fnn.losses computes it)
    grad L = sum_i W_i grad L_i / W

A padded row counts in neither sum, and a micro-batch of padded rows alone adds nothing.
The regularizer's gradient, which reads no data, is added once, after the division.

Which rows, which key: micro-batch ``i`` holds the rows ``i, i + k, i + 2k, ...`` of the
mini-batch (strided, so that under a batch sharding each micro-batch spreads over every
device), and its dropout key is ``fold_in(key, i)`` of the update's key
(``fnn.train.dropout_key``). Batch normalization computes its statistics over each
micro-batch of ``b`` rows, not over the ``B`` rows of the mini-batch, and updates its
running statistics ``k`` times per update, once per micro-batch in order (as PyTorch and
Keras do when they accumulate); with ``k = 1`` nothing changes.

The step's reported loss and metrics are those of the whole mini-batch (the micro-batches'
predictions are put back in row order). With DP-SGD (``fnn.privacy``) the micro-batches
sum clipped per-example gradients instead, and the noise is added once per update.

References:
  optax's ``MultiSteps``; Keras' ``gradient_accumulation_steps`` (``keras.optimizers.Optimizer``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from fnn.types import ModelState, Params, PyTree


class Sums(NamedTuple):
    """Example-weighted sums over some rows: the gradient sum (params-shaped), the weight
    ``W = sum_j w_j`` and the loss sum ``sum_j w_j l_j``."""

    grads: PyTree
    weight: jax.Array
    loss: jax.Array


def check_batch_size(batch_size: int, accumulate: int) -> None:
    """Raise ``ValueError`` unless ``accumulate`` divides ``batch_size`` (the effective batch).

    Args:
      batch_size: examples per update (``fit``'s ``batch_size``).
      accumulate: micro-batches per update (``Trainer(accumulate=...)``).
    """
    if batch_size % accumulate:
        raise ValueError(
            f"batch_size must be divisible by the trainer's accumulate (batch_size is the effective batch, "
            f"accumulate micro-batches of batch_size / accumulate examples each); got batch_size={batch_size} "
            f"and accumulate={accumulate}: use batch_size={max(1, batch_size // accumulate) * accumulate}"
        )


def micro_batch(a: jax.Array, k: int, i) -> jax.Array:
    """Micro-batch ``i`` (traced) of ``k`` of the mini-batch ``a`` ``[k * b, ...]``: its rows
    ``i, i + k, i + 2k, ...``, ``[b, ...]`` (a strided slice: the mini-batch is not copied)."""
    return jax.lax.dynamic_index_in_dim(a.reshape(a.shape[0] // k, k, *a.shape[1:]), i, axis=1, keepdims=False)


def join(a: jax.Array) -> jax.Array:
    """The micro-batches' rows back in the mini-batch's order: ``[k, b, ...]`` (micro-batch ``i``
    holding the rows ``i, i + k, ...``, :func:`micro_batch`) -> ``[k * b, ...]``."""
    return jnp.swapaxes(a, 0, 1).reshape(a.shape[0] * a.shape[1], *a.shape[2:])


def batch_sums(
    data_loss: Callable, params: Params, model_state: ModelState, x, y, weights, index, key
) -> tuple[Sums, ModelState, jax.Array]:
    """The sums of one micro-batch from the gradient of its weighted mean loss: ``W_i grad L_i``,
    ``W_i`` and ``W_i L_i`` (``index``, the rows' numbers in the mini-batch, is not read).

    Args:
      data_loss: ``data_loss(params, model_state, x, y, weights, key) -> (loss, (new_model_state,
        predictions))``, the loss without the regularizer (``fnn.Trainer.data_loss``).
      params, model_state: the model's.
      x, y, weights: the micro-batch, ``[b, ...]``.
      key: its dropout key.
    Returns:
      ``(sums, new_model_state, predictions)``.
    """
    grad_fn = jax.value_and_grad(data_loss, has_aux=True)
    (loss, (model_state, predictions)), grads = grad_fn(params, model_state, x, y, weights, key)
    weight = jnp.sum(weights)
    grads = jax.tree.map(lambda g: g * weight.astype(g.dtype), grads)
    return Sums(grads, weight, loss * weight.astype(loss.dtype)), model_state, predictions


def accumulate(
    sums: Callable, k: int, model_state: ModelState, x, y, weights, key
) -> tuple[Sums, ModelState, jax.Array]:
    """Scan ``sums`` over the ``k`` micro-batches of a mini-batch and add up what it returns.

    Args:
      sums: ``sums(model_state, x, y, weights, index, key) -> (Sums, new_model_state, predictions)``
        for one micro-batch (:func:`batch_sums`, or DP-SGD's ``fnn.privacy.DPSGD.batch_sums``);
        ``index`` holds the micro-batch's row numbers in the mini-batch, ``key`` is
        ``fold_in(key, i)`` for micro-batch ``i``.
      k: micro-batches (static); 1 calls ``sums`` once on the whole mini-batch with ``key``.
      model_state: the model's state before the first micro-batch; it threads through them.
      x, y: the mini-batch, ``[k * b, ...]``.
      weights: ``[k * b]`` example weights, or ``None`` (every row weighs 1).
      key: the update's key (``None``: no dropout key for the micro-batches).
    Returns:
      ``(total, new_model_state, predictions)``: the sums over the mini-batch, the state
      after the last micro-batch, the predictions ``[k * b, ...]`` in row order.
    Raises:
      ValueError: when ``k`` does not divide the mini-batch's rows.
    """
    n = x.shape[0]
    check_batch_size(n, k)
    if weights is None:
        weights = jnp.ones((n,), jnp.float32)  # the dtype epoch_batches gives
    index = jnp.arange(n, dtype=jnp.int32)
    if k == 1:
        return sums(model_state, x, y, weights, index, key)
    batch = (x, y, weights, index)

    def micro(state, i):  # micro-batch i: its rows, its key
        rows = [micro_batch(a, k, i) for a in batch]
        return sums(state, *rows, None if key is None else jax.random.fold_in(key, i))

    shapes, _, _ = jax.eval_shape(micro, model_state, jnp.int32(0))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def body(carry, i):
        total, state = carry
        new, state, predictions = micro(state, i)
        return (jax.tree.map(jnp.add, total, new), state), predictions

    steps = jnp.arange(k, dtype=jnp.int32)
    (total, model_state), predictions = jax.lax.scan(body, (zeros, model_state), steps)
    return total, model_state, join(predictions)


def mean(total: Sums, noise: PyTree | None = None) -> tuple[PyTree, jax.Array]:
    """The mini-batch's gradient and loss from its sums: ``(grads + noise) / W`` and ``loss / W``
    (0 when every weight is 0, as ``fnn.losses.weighted_mean``).

    Args:
      total: the sums over the mini-batch.
      noise: a params-shaped pytree added to the gradient sum before the division (DP-SGD's), or ``None``.
    """
    weight = jnp.where(total.weight > 0, total.weight, 1)
    grads = total.grads if noise is None else jax.tree.map(jnp.add, total.grads, noise)
    grads = jax.tree.map(lambda g: g / weight.astype(g.dtype), grads)
    return grads, total.loss / weight.astype(total.loss.dtype)
