"""Memory of a sweep: the live-memory estimate against XLA's own analysis, the chunk it
picks for a budget, and a sweep with ``chunk_size="auto"`` equal to one call."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import memory
from fnn.datasets import load_digits


@pytest.fixture(scope="module")
def digits():
    x, y = load_digits()
    return (x[:256] / 16.0).astype(np.float32), y[:256]


def config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([64, 32, 10]), fnn.adam(lr), fnn.cross_entropy)


def test_nbytes_counts_arrays_shapes_and_keys():
    tree = {"w": jnp.zeros((3, 4), jnp.float32), "s": jax.ShapeDtypeStruct((5,), jnp.int64), "k": jax.random.key(0)}
    assert memory.nbytes(tree) == 3 * 4 * 4 + 5 * 8 + 8  # a threefry key holds 2 uint32


def test_peak_bytes_follows_liveness():
    """a -> b -> c elementwise: at most two [1000] float32 arrays live at once (a and b,
    then b and c), not the three a sum of every value would count."""
    jaxpr = jax.make_jaxpr(lambda a: jnp.sin(jnp.cos(a)))(jnp.zeros(1000, jnp.float32)).jaxpr
    assert memory.peak_bytes(jaxpr) == 2 * 4000


@pytest.mark.parametrize("sizes, batch_size", [([64, 32, 10], 32), ([64, 128, 128, 10], 64)])
def test_member_estimate_is_close_above_xla(digits, sizes, batch_size):
    """The estimate per member lies between XLA's temporaries + outputs per member of the
    compiled vmapped run and twice that (it errs high, never low)."""
    x, y = digits
    trainer = fnn.Trainer(fnn.mlp(sizes, dropout=0.1), fnn.adam(1e-3), fnn.cross_entropy)
    members = 4
    run = jax.vmap(lambda k: fnn.fit(trainer, x, y, key=k, epochs=3, batch_size=batch_size))
    analysis = jax.jit(run).lower(jnp.arange(members)).compile().memory_analysis()
    measured = (analysis.temp_size_in_bytes + analysis.output_size_in_bytes) / members
    estimate = memory.member_bytes(trainer, x, y, batch_size=batch_size, epochs=3, history_entries=3)
    assert measured <= estimate <= 2 * measured, (estimate, measured)


def test_chunk_for_budget():
    cpu = jax.devices("cpu")[:1]
    assert memory.chunk_for_budget(100, 50, 1050, members=64, devices=cpu) == 10
    assert memory.chunk_for_budget(100, 50, 10**9, members=64, devices=cpu) == 64  # never more than the members
    with pytest.raises(ValueError, match="more than the memory budget"):
        memory.chunk_for_budget(100, 50, 120, members=64, devices=cpu)


def test_chunk_for_budget_rounds_to_the_devices():
    """Several (fake) devices: a multiple of their number where the budget allows that many."""

    class Device:
        platform = "cpu"

    four = [Device()] * 4
    assert memory.chunk_for_budget(100, 0, 1100, members=64, devices=four) == 8
    assert memory.chunk_for_budget(100, 0, 300, members=64, devices=four) == 3


def test_free_memory_is_positive():
    assert memory.free_memory(jax.devices()[0]) > 0


def test_auto_chunks_give_the_results_of_one_call(digits):
    """A budget of about three members: 8 members run in chunks of 3 and equal the
    single-call sweep (the same program, vmapped over another number of members)."""
    x, y = digits
    options = dict(seeds=8, epochs=2, batch_size=32)
    per = memory.member_bytes(config(), x, y, batch_size=32, epochs=2, history_entries=3)
    shared = memory.nbytes((jnp.asarray(x), jnp.asarray(y)))
    chunked = fnn.sweep(config, x, y, chunk_size="auto", memory_budget=3 * per + shared + 1, **options)
    whole = fnn.sweep(config, x, y, **options)
    as_float = fnn.sweep(config, x, y, chunk_size="auto", memory_budget=float(3 * per + shared + 1), **options)
    assert chunked.chunk_size == as_float.chunk_size == 3 and whole.chunk_size == 8  # 2e9 reads as a byte count
    assert "8 members in 3 compiled call(s) of up to 3 members" in chunked.summary()
    chex.assert_trees_all_close(chunked.results.history, whole.results.history, rtol=1e-5, atol=1e-6)


def test_auto_without_budget_uses_free_memory(digits):
    x, y = digits
    result = fnn.sweep(config, x, y, seeds=3, epochs=1, batch_size=32, chunk_size="auto")
    assert result.chunk_size == 3  # a few hundred KiB each: all fit
