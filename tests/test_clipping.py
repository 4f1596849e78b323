"""Gradient wrappers: clipping against NumPy, composition (clip of clip), the optimizer protocol
without being optimizers, and argument checks. Multi-step runs of a wrapped optimizer against the
NumPy references are in test_optimizers.py (its ``clip_*`` cases)."""

import operator
import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32

import fnn
from fnn import clipping, schedules
from fnn import optimizers as opt

PARAMS = {"w": jnp.array([[1.0, -2.0], [0.5, 0.0]]), "b": jnp.array([0.25, -0.75])}
GRADS = {"w": jnp.array([[3.0, -4.0], [0.5, 12.0]]), "b": jnp.array([-0.2, 1.5])}  # global norm ~13.55


def step(wrapper, grads=GRADS, params=PARAMS):
    """One update; with ``sgd(1.0)`` inside, ``params - new_params`` is the gradient the optimizer got."""
    new, _ = wrapper.update(grads, wrapper.init(params), params)
    return jax.tree.map(lambda p, q: np.asarray(p - q), params, new)


def np_leaves(tree):
    return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_global_norm_against_numpy():
    want = np.sqrt(sum(np.sum(g**2) for g in np_leaves(GRADS)))
    assert float(clipping.global_norm(GRADS)) == pytest.approx(want, rel=1e-14)


@pytest.mark.parametrize("max_norm", [1.0, 5.0, 20.0])  # 20 is above the norm: no change
def test_clip_by_global_norm_keeps_the_direction_and_caps_the_norm(max_norm):
    got = step(fnn.clip_by_global_norm(fnn.sgd(1.0), max_norm))
    norm = np.sqrt(sum(np.sum(g**2) for g in np_leaves(GRADS)))
    chex.assert_trees_all_close(got, jax.tree.map(lambda g: g * min(1.0, max_norm / norm), GRADS), rtol=1e-13)
    assert float(clipping.global_norm(got)) == pytest.approx(min(norm, max_norm), rel=1e-13)


@pytest.mark.parametrize("wrap", [fnn.clip_by_global_norm, fnn.clip_by_value])
def test_a_swept_float64_limit_clips_float32_gradients_in_float32(wrap):
    """A limit swept with vmap is a float64 array (x64); float32 gradients stay float32, with
    the numbers of a Python-number limit (and no implicit promotion: strict in the tests)."""
    params, grads = jax.tree.map(lambda a: a.astype(jnp.float32), (PARAMS, GRADS))
    limits = [1.0, 20.0]

    def update(limit):
        wrapper = wrap(fnn.sgd(1.0), limit)
        return wrapper.update(grads, wrapper.init(params), params)[0]

    swept = jax.vmap(update)(jnp.asarray(limits))
    chex.assert_type(jax.tree.leaves(swept), jnp.float32)
    norm = float(clipping.global_norm(GRADS))  # float64
    for i, limit in enumerate(limits):
        # p - c g with c from the global norm (a sum of 6 squares, a sqrt, a divide; c = 1 for
        # clip_by_value): two float32 programs differ by at most 10 eps times |p| + |c g|
        c = min(1.0, limit / norm) if wrap is fnn.clip_by_global_norm else 1.0
        member, alone = jax.tree.map(operator.itemgetter(i), swept), update(limit)
        for a, b, p, g in zip(*map(np_leaves, (member, alone, params, grads)), strict=True):
            assert_close_f32(a, b, atol=10 * EPS32 * (np.abs(p) + c * np.abs(g)))


def test_clip_by_value_clips_each_coordinate():
    got = step(fnn.clip_by_value(fnn.sgd(1.0), 1.0))
    chex.assert_trees_all_close(got, jax.tree.map(lambda g: jnp.clip(g, -1.0, 1.0), GRADS), rtol=1e-15)


def test_clip_of_clip_applies_the_outer_transform_first():
    value_then_norm = step(fnn.clip_by_value(fnn.clip_by_global_norm(fnn.sgd(1.0), 1.0), 0.5))
    norm_then_value = step(fnn.clip_by_global_norm(fnn.clip_by_value(fnn.sgd(1.0), 0.5), 1.0))
    clipped = jax.tree.map(lambda g: np.clip(np.asarray(g), -0.5, 0.5), GRADS)
    norm = np.sqrt(sum(np.sum(g**2) for g in jax.tree.leaves(clipped)))
    # the norm of the clipped gradient is > 1
    chex.assert_trees_all_close(value_then_norm, jax.tree.map(lambda g: g / norm, clipped), rtol=1e-13)
    grads_norm = np.sqrt(sum(np.sum(h**2) for h in np_leaves(GRADS)))
    scaled = jax.tree.map(lambda g: np.clip(np.asarray(g) / grads_norm, -0.5, 0.5), GRADS)
    chex.assert_trees_all_close(norm_then_value, scaled, rtol=1e-13)
    assert not np.allclose(np_leaves(value_then_norm)[1], np_leaves(norm_then_value)[1])  # order matters here


def test_a_wrapper_is_not_an_optimizer_but_speaks_its_protocol():
    wrapped = fnn.clip_by_global_norm(fnn.clip_by_value(fnn.adam(0.1), 0.5), 1.0)
    for cls in (clipping.ClipByGlobalNorm, clipping.ClipByValue):
        assert not issubclass(cls, opt.Optimizer)
    assert not isinstance(wrapped, opt.Optimizer)
    assert all(hasattr(wrapped, name) for name in ("init", "update", "learning_rate", "lr"))
    state = wrapped.init(PARAMS)
    assert type(state) is opt.AdamState  # the innermost optimizer's state is the state


def test_wrappers_report_the_inner_learning_rate():
    schedule = schedules.exponential_decay(0.1, 0.5, 2)
    wrapped = fnn.clip_by_value(fnn.clip_by_global_norm(fnn.adam(schedule), 1.0), 0.5)
    state = wrapped.init({"w": jnp.zeros(2)})._replace(count=jnp.int32(3))
    assert wrapped.lr is schedule
    assert float(wrapped.learning_rate(state)) == pytest.approx(0.1 * 0.5**1.5, rel=1e-14)


class HalfStep:
    """A user's optimizer, not an fnn one: ``p - lr * g / 2`` with a plain ``count`` state."""

    lr = schedules.constant(1.0)

    def init(self, params):
        return jnp.zeros([], jnp.int32)

    def learning_rate(self, state):
        return self.lr(state)

    def update(self, grads, state, params):
        return jax.tree.map(lambda p, g: p - self.lr(state) * g / 2, params, grads), state + 1


def test_a_wrapper_takes_any_object_with_the_protocol():
    got = step(fnn.clip_by_value(HalfStep(), 1.0))
    chex.assert_trees_all_close(got, jax.tree.map(lambda g: jnp.clip(g, -1.0, 1.0) / 2, GRADS), rtol=1e-15)


def test_trainer_takes_a_wrapper():
    model = fnn.mlp([3, 4, 2])
    x, y = jnp.ones((8, 3), jnp.float32), jnp.zeros(8, jnp.int32)  # x in the model's dtype
    trainer = fnn.Trainer(model, fnn.clip_by_global_norm(fnn.sgd(0.5), 1e-3), fnn.cross_entropy)
    state = trainer.init(0)
    new, metrics = jax.jit(trainer.train_step)(state, (x, y))
    moved = jax.tree.map(lambda a, b: b - a, state.params, new.params)
    assert float(metrics["lr"]) == 0.5
    assert float(clipping.global_norm(moved)) == pytest.approx(0.5 * 1e-3, rel=1e-5)  # lr times the clipped norm


# (class, keyword arguments, the argument the error must name, a phrase of the message); tried on class and factory
FACTORIES = {clipping.ClipByGlobalNorm: clipping.clip_by_global_norm, clipping.ClipByValue: clipping.clip_by_value}
LIMIT = {clipping.ClipByGlobalNorm: "max_norm", clipping.ClipByValue: "max_value"}
NOT_OPTIMIZERS = [lambda g: g, None, "adam", opt.Adam, fnn.adam, 0.1]
BAD = [
    *[
        (cls, dict(optimizer=bad, **{LIMIT[cls]: 1.0}), "optimizer", "must be an fnn optimizer or gradient wrapper")
        for cls in FACTORIES
        for bad in NOT_OPTIMIZERS
    ],
    *[
        (cls, dict(optimizer=fnn.sgd(0.1), **{LIMIT[cls]: bad}), LIMIT[cls], phrase)
        for cls in FACTORIES
        for bad, phrase in [
            (0.0, "must lie in (0, inf)"),
            (-1.0, "must lie in (0, inf)"),
            ("1", "must be a number"),
            (None, "must be a number"),
            (True, "must be a number"),
            (lambda: 1.0, "must be a number"),
        ]
    ],
]


def test_public_names_are_the_classes():
    assert all(factory is cls for cls, factory in FACTORIES.items())
    assert (fnn.clip_by_global_norm, fnn.clip_by_value) == tuple(FACTORIES.values())


@pytest.mark.parametrize("build", ["class", "factory"])
@pytest.mark.parametrize(
    "cls, kwargs, name, phrase", BAD, ids=[f"{c.__name__}-{n}-{i}" for i, (c, _, n, _) in enumerate(BAD)]
)
def test_bad_arguments_raise_value_error_naming_them(cls, kwargs, name, phrase, build):
    with pytest.raises(ValueError, match="^" + re.escape(f"{name} {phrase}")):
        (cls if build == "class" else FACTORIES[cls])(**kwargs)


def test_limits_are_stored_as_floats_and_checked_only_when_concrete():
    assert type(clipping.ClipByValue(fnn.sgd(0.1), 1).max_value) is float
    got = jax.vmap(
        lambda m: clipping.clip_by_value(fnn.sgd(1.0), m).update(GRADS, fnn.sgd(1.0).init(PARAMS), PARAMS)[0]["b"]
    )(jnp.array([-1.0, 1.0]))  # a traced limit, negative for one member: not read at construction
    np.testing.assert_allclose(got[1], PARAMS["b"] - np.clip(GRADS["b"], -1.0, 1.0), rtol=1e-15)
