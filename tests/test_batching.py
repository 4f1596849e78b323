"""Mini-batches drawn in-graph: every example once per epoch, padding weighted 0."""

import jax
import numpy as np
import pytest

from fnn.batching import epoch_batches, eval_batches, num_steps, permutation


@pytest.mark.parametrize("n", [1, 2, 7, 1797, 70000])
def test_permutation_is_a_permutation(n):
    order = np.asarray(permutation(jax.random.key(n), n))
    assert order.dtype == np.int32 and np.array_equal(np.sort(order), np.arange(n))


def test_permutation_is_uniform_and_keyed():
    """Each of 5 elements lands in each of 5 places with frequency 1/5 (4-sigma band)."""
    orders = np.asarray(jax.vmap(lambda k: permutation(k, 5))(jax.random.split(jax.random.key(0), 20000)))
    counts = np.stack([np.bincount(orders[:, place], minlength=5) for place in range(5)])
    sigma = np.sqrt(20000 * 0.2 * 0.8)
    assert np.all(np.abs(counts - 4000) < 4 * sigma)
    a, b = permutation(jax.random.key(1), 100), permutation(jax.random.key(2), 100)
    assert np.array_equal(a, permutation(jax.random.key(1), 100)) and not np.array_equal(a, b)


@pytest.mark.parametrize(
    "n, batch, drop_last, steps", [(10, 5, False, 2), (10, 3, False, 4), (10, 3, True, 3), (5, 5, True, 1)]
)
def test_epoch_batches_cover_every_example_once(n, batch, drop_last, steps):
    indices, weights = epoch_batches(jax.random.key(0), n, batch, drop_last)
    indices, weights = np.asarray(indices), np.asarray(weights)
    assert indices.shape == weights.shape == (steps, batch) == (num_steps(n, batch, drop_last), batch)
    counted = indices[weights > 0]
    if drop_last:
        assert len(counted) == steps * batch and len(set(counted)) == len(counted)
    else:
        assert np.array_equal(np.sort(counted), np.arange(n))  # each example exactly once
    assert set(np.unique(weights)) <= {0.0, 1.0}


def test_eval_batches_pad_in_order_with_zero_weights():
    indices, weights = eval_batches(5, 4)
    assert np.asarray(indices).tolist() == [[0, 1, 2, 3], [4, 0, 1, 2]]
    assert np.asarray(weights).tolist() == [[1, 1, 1, 1], [1, 0, 0, 0]]
