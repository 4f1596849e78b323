"""L1/L2 penalties: values against NumPy, default and custom selection, gradients, traced strengths."""

import re

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import regularizers as reg


def make_params(dtype=np.float64):
    rng = np.random.default_rng(0)

    def leaf(*shape):
        return jnp.asarray(rng.normal(size=shape), dtype)

    return {
        "dense": {"w": leaf(3, 4), "b": leaf(4)},
        "norm": {"scale": leaf(4), "offset": leaf(4)},
        "out": [{"w": leaf(4, 2), "b": leaf(2)}],
    }


def kernels(params):
    return [np.asarray(params["dense"]["w"]), np.asarray(params["out"][0]["w"])]


@pytest.mark.parametrize(
    "build, formula",
    [
        (lambda: reg.l2(0.3), lambda ws: 0.3 / 2 * sum(np.sum(w**2) for w in ws)),
        (lambda: reg.l1(0.3), lambda ws: 0.3 * sum(np.sum(np.abs(w)) for w in ws)),
        (
            lambda: reg.l1_l2(0.2, 0.7),
            lambda ws: 0.2 * sum(np.sum(np.abs(w)) for w in ws) + 0.7 / 2 * sum(np.sum(w**2) for w in ws),
        ),
    ],
    ids=["l2", "l1", "l1_l2"],
)
def test_value_against_numpy_on_kernels_only(build, formula):
    params = make_params()
    penalty = build()
    np.testing.assert_allclose(penalty(params), formula(kernels(params)), rtol=1e-13)
    # biases and 1-D norm scales/offsets are not penalised by default
    moved = jax.tree.map(lambda x: x + 5.0 if x.ndim < 2 else x, params)
    np.testing.assert_allclose(penalty(moved), penalty(params), rtol=1e-15)


def test_is_weight_selects_two_or_more_dimensions():
    assert reg.is_weight((), jnp.zeros((3, 4))) and reg.is_weight((), jnp.zeros((3, 3, 2, 4)))
    assert not reg.is_weight((), jnp.zeros(4)) and not reg.is_weight((), jnp.zeros(()))


def test_custom_select_by_name():
    params = make_params()
    only_biases = reg.l2(2.0, select=lambda path, leaf: jax.tree_util.keystr(path).endswith("['b']"))
    biases = [params["dense"]["b"], params["out"][0]["b"]]
    np.testing.assert_allclose(only_biases(params), sum(np.sum(np.square(b)) for b in biases), rtol=1e-13)
    assert float(reg.l1(1.0, select=lambda path, leaf: False)(params)) == 0.0


@pytest.mark.parametrize("strength", [0.0, 0.25])
def test_grad_of_l2_is_strength_times_selected_weights(strength):
    params = make_params()
    grads = jax.grad(reg.l2(strength))(params)
    want = jax.tree.map(lambda p: strength * p if p.ndim >= 2 else jnp.zeros_like(p), params)
    chex.assert_trees_all_close(grads, want, rtol=1e-15, atol=0)  # a failure names the leaf's path


def test_vmap_and_jit_over_traced_strength():
    params = make_params()
    strengths = jnp.linspace(0.0, 0.7, 8)
    base = reg.l2(1.0)(params)
    got = jax.jit(jax.vmap(lambda s: reg.l1_l2(0.0, s)(params)))(strengths)
    np.testing.assert_allclose(got, strengths * base, rtol=1e-13)
    penalty = jax.jit(lambda r, p: r(p))
    penalty(reg.l2(0.1), params)
    penalty(reg.l2(0.2), params)
    assert penalty._cache_size() == 1


def test_float32_params_give_a_float32_penalty():
    params = make_params(np.float32)
    for penalty in [reg.l2(0.1), reg.l1(jnp.float64(0.1)), reg.l1_l2(0.1, 0.2)]:
        assert penalty(params).dtype == jnp.float32


BAD = [
    (lambda: reg.l2(-0.1), "strength"),
    (lambda: reg.l1(float("nan")), "strength"),
    (lambda: reg.l1_l2(-0.1, 0.1), "l1_strength"),
    (lambda: reg.l1_l2(0.1, -0.1), "l2_strength"),
    (lambda: reg.l2(0.1, select="w"), "select"),
    # classes built directly are checked alike
    (lambda: reg.L2(-0.1), "strength"),
    (lambda: reg.L1(0.1, select=None), "select"),
    (lambda: reg.L1L2(0.1, -1.0), "l2_strength"),
    # not numbers
    *[
        (lambda bad=bad, build=build: build(bad), "strength")
        for build in (reg.l1, reg.l2, reg.L2)
        for bad in ["1e-4", None, True, np.array([True]), [0.1]]
    ],
    (lambda: reg.l1_l2("0.1", 0.1), "l1_strength"),
    (lambda: reg.L1L2(0.1, None), "l2_strength"),
]


@pytest.mark.parametrize("build, name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        build()


def test_the_kind_message_names_the_value_and_its_type():
    with pytest.raises(ValueError, match=re.escape("strength must be a number or a numeric array; got '1e-4' (str)")):
        reg.l2("1e-4")


@pytest.mark.parametrize(
    "cls, factory, args", [(reg.L2, reg.l2, (1,)), (reg.L1, reg.l1, (1,)), (reg.L1L2, reg.l1_l2, (1, 0))]
)
def test_class_built_directly_equals_the_factorys(cls, factory, args):
    made = factory(*args)
    assert factory is cls and cls(*args) == made  # the lowercase name is the class itself
    assert all(type(leaf) is float for leaf in jax.tree.leaves(made))  # Python ints are stored as floats


def test_strengths_are_not_read_when_traced():
    params = make_params()
    got = jax.vmap(lambda s: reg.L2(s)(params))(jnp.array([-1.0, 1.0]))  # a negative traced strength is not refused
    np.testing.assert_allclose(got, [-1.0, 1.0] * np.asarray(reg.l2(1.0)(params)), rtol=1e-13)
