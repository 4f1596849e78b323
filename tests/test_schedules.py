"""Learning-rate schedules against their formulas computed in NumPy; jit, vmap, validation
(the same for a class built directly as for its factory)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fnn import schedules as sch

STEPS = np.array([0, 1, 2, 3, 4, 5, 7, 9, 10, 11, 15, 100])


def np_cosine(t, init, decay_steps, alpha=0.0):
    return init * ((1 - alpha) * 0.5 * (1 + np.cos(np.pi * np.minimum(t, decay_steps) / decay_steps)) + alpha)


# id: (schedule, the same formula in NumPy as a function of an integer step array)
CASES = {
    "constant": (sch.constant(0.3), lambda t: np.full(t.shape, 0.3)),
    "piecewise": (
        sch.piecewise_constant([3, 10], [1.0, 0.5, 0.1]),
        lambda t: np.where(t < 3, 1.0, np.where(t < 10, 0.5, 0.1)),
    ),
    "step_decay": (sch.step_decay(0.2, 0.5, 4), lambda t: 0.2 * 0.5 ** (t // 4)),
    "exponential": (sch.exponential_decay(0.1, 0.3, 7), lambda t: 0.1 * 0.3 ** (t / 7)),
    "exponential_staircase": (sch.exponential_decay(0.1, 0.3, 7, staircase=True), lambda t: 0.1 * 0.3 ** (t // 7)),
    "inverse_time": (sch.inverse_time_decay(0.1, 0.5, 3), lambda t: 0.1 / (1 + 0.5 * t / 3)),
    "inverse_time_staircase": (
        sch.inverse_time_decay(0.1, 0.5, 3, staircase=True),
        lambda t: 0.1 / (1 + 0.5 * (t // 3)),
    ),
    "cosine": (sch.cosine_decay(0.1, 10), lambda t: np_cosine(t, 0.1, 10)),
    "cosine_alpha": (sch.cosine_decay(0.1, 10, alpha=0.2), lambda t: np_cosine(t, 0.1, 10, 0.2)),
    "warmup_cosine": (
        sch.warmup(sch.cosine_decay(0.1, 10), 5, init_value=0.01),
        lambda t: np.where(t < 5, 0.01 + (0.1 - 0.01) * t / 5, np_cosine(t - 5, 0.1, 10)),
    ),
    "warmup_constant": (sch.warmup(0.5, 4), lambda t: np.where(t < 4, 0.5 * t / 4, 0.5)),
    "python_function": (sch.as_schedule(lambda t: 1.0 / (1.0 + t)), lambda t: 1.0 / (1.0 + t)),
}


@pytest.mark.parametrize("case", CASES)
def test_values_match_formula(case):
    schedule, formula = CASES[case]
    expected = formula(STEPS)
    scalar = np.array([float(schedule(int(t))) for t in STEPS])
    np.testing.assert_allclose(scalar, expected, rtol=1e-13, atol=1e-15)
    as_array = schedule(jnp.asarray(STEPS, jnp.int32))  # elementwise in step
    assert as_array.dtype == jnp.float64
    np.testing.assert_allclose(as_array, expected, rtol=1e-13, atol=1e-15)


@pytest.mark.parametrize("case", CASES)
def test_jit_and_vmap_over_steps(case):
    schedule, formula = CASES[case]
    steps = jnp.asarray(STEPS, jnp.int32)
    np.testing.assert_allclose(jax.jit(jax.vmap(schedule))(steps), formula(STEPS), rtol=1e-13, atol=1e-15)


def test_piecewise_boundaries_are_half_open():
    schedule = sch.piecewise_constant([2, 5], [3.0, 2.0, 1.0])
    assert [float(schedule(t)) for t in range(7)] == [3.0, 3.0, 2.0, 2.0, 2.0, 1.0, 1.0]


def test_warmup_is_continuous_and_shifts_the_schedule():
    inner = sch.exponential_decay(0.2, 0.5, 3)
    schedule = sch.warmup(inner, 6, init_value=0.05)
    assert float(schedule(0)) == pytest.approx(0.05)
    assert float(schedule(3)) == pytest.approx(0.125)
    assert float(schedule(6)) == pytest.approx(0.2)
    assert float(schedule(6 + 7)) == pytest.approx(float(inner(7)), rel=1e-14)


# id: (factory of one traced value, 8 values, NumPy formula at step STEP of one value)
STEP = 11
VMAP_CASES = {
    "exponential_decay_rate": (
        lambda x: sch.exponential_decay(0.1, x, 7),
        np.linspace(0.1, 0.9, 8),
        lambda x: 0.1 * x ** (STEP / 7),
    ),
    "inverse_time_decay_steps": (
        lambda x: sch.inverse_time_decay(0.1, 0.5, x),
        np.arange(1.0, 9.0),
        lambda x: 0.1 / (1 + 0.5 * STEP / x),
    ),
    "cosine_init_value": (
        lambda x: sch.cosine_decay(x, 20, alpha=0.1),
        np.linspace(0.01, 0.08, 8),
        lambda x: np_cosine(STEP, x, 20, 0.1),
    ),
    "step_decay_every": (
        lambda x: sch.step_decay(0.1, 0.5, x),
        np.arange(1.0, 9.0),
        lambda x: 0.1 * 0.5 ** (STEP // x),
    ),
    "warmup_steps": (
        lambda x: sch.warmup(0.1, x),
        np.arange(9.0, 17.0),
        lambda x: np.where(STEP < x, 0.1 * STEP / x, 0.1),
    ),
    "piecewise_values": (
        lambda x: sch.piecewise_constant([5, 10], jnp.stack([x, x / 2, x / 4])),
        np.linspace(0.1, 0.8, 8),
        lambda x: x / 4,
    ),
}


@pytest.mark.parametrize("case", VMAP_CASES)
def test_vmap_over_a_schedule_parameter(case):
    build, values, formula = VMAP_CASES[case]
    got = jax.jit(jax.vmap(lambda x: build(x)(STEP)))(jnp.asarray(values))
    np.testing.assert_allclose(got, [formula(v) for v in values], rtol=1e-13)


@pytest.mark.parametrize("case", VMAP_CASES)
def test_float32_values_are_cast_to_the_default_float(case):
    """A swept value may arrive as a float32 array: the schedule casts it and computes in
    float64 (x64) like for any other value, with no implicit promotion (strict here)."""
    build, values, formula = VMAP_CASES[case]
    values = np.asarray(values, np.float32)
    got = jax.jit(jax.vmap(lambda x: build(x)(STEP)))(jnp.asarray(values))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(got, [formula(float(v)) for v in values], rtol=1e-13)


def test_new_values_do_not_recompile():
    evaluate = jax.jit(lambda schedule, step: schedule(step))
    first = evaluate(sch.exponential_decay(0.1, 0.3, 7), 5)
    second = evaluate(sch.exponential_decay(0.2, 0.5, 3), 5)
    evaluate(sch.exponential_decay(1, 1, 1), 6)  # Python ints are stored as floats: same program
    assert evaluate._cache_size() == 1
    assert float(first) == pytest.approx(0.1 * 0.3 ** (5 / 7)) and float(second) == pytest.approx(0.2 * 0.5 ** (5 / 3))
    evaluate(sch.exponential_decay(0.1, 0.3, 7, staircase=True), 5)  # a structural change does recompile
    assert evaluate._cache_size() == 2


def test_traced_arguments_skip_the_eager_checks():
    value = jax.jit(lambda rate: sch.exponential_decay(0.1, rate, 7)(7))(0.5)
    assert float(value) == pytest.approx(0.05)


def test_as_schedule():
    schedule = sch.cosine_decay(0.1, 10)
    assert sch.as_schedule(schedule) is schedule
    assert isinstance(sch.as_schedule(0.1), sch.Constant) and float(sch.as_schedule(0.1)(99)) == 0.1
    assert isinstance(sch.as_schedule(jnp.asarray(0.2)), sch.Constant)
    wrapped = sch.as_schedule(lambda step: 0.5 * step)
    assert isinstance(wrapped, sch.FunctionSchedule) and float(wrapped(3)) == 1.5
    assert jax.tree.leaves(wrapped) == []  # the function is static metadata


BAD = [
    (lambda: sch.constant(-0.1), "value"),
    (lambda: sch.as_schedule(-0.1), "lr"),
    (lambda: sch.as_schedule(-0.1, "rate"), "rate"),
    (lambda: sch.piecewise_constant([3, 3], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: sch.piecewise_constant([5, 3], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: sch.piecewise_constant([[1, 2]], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: sch.piecewise_constant([3], [1.0]), "values"),
    (lambda: sch.piecewise_constant([3], [1.0, 0.5, 0.1]), "values"),
    (lambda: sch.piecewise_constant([3], [1.0, -0.5]), "values"),
    (lambda: sch.step_decay(-0.1, 0.5, 2), "init_value"),
    (lambda: sch.step_decay(0.1, -0.5, 2), "factor"),
    (lambda: sch.step_decay(0.1, 0.5, 0), "every"),
    (lambda: sch.exponential_decay(-1.0, 0.5, 10), "init_value"),
    (lambda: sch.exponential_decay(0.1, -0.5, 10), "decay_rate"),
    (lambda: sch.exponential_decay(0.1, 0.5, 0), "decay_steps"),
    (lambda: sch.inverse_time_decay(0.1, -0.5, 10), "decay_rate"),
    (lambda: sch.inverse_time_decay(0.1, 0.5, -10), "decay_steps"),
    (lambda: sch.cosine_decay(-0.1, 10), "init_value"),
    (lambda: sch.cosine_decay(0.1, 0), "decay_steps"),
    (lambda: sch.cosine_decay(0.1, 10, alpha=1.5), "alpha"),
    (lambda: sch.warmup(sch.cosine_decay(0.1, 10), 0), "warmup_steps"),
    (lambda: sch.warmup(sch.cosine_decay(0.1, 10), 5, init_value=-0.1), "init_value"),
    (lambda: sch.warmup(-0.1, 5), "schedule"),
    (lambda: sch.piecewise_constant("12", [1.0]), "boundaries"),
    (lambda: sch.piecewise_constant([1], None), "values"),
    (lambda: sch.piecewise_constant([1], [True, False]), "values"),
    (lambda: sch.exponential_decay(0.1, 0.5, 10, staircase="yes"), "staircase"),
    # classes built directly are checked alike
    (lambda: sch.Constant(-0.1), "value"),
    (lambda: sch.PiecewiseConstant([5, 3], [1.0, 0.5, 0.1]), "boundaries"),
    (lambda: sch.ExponentialDecay(0.1, 0.5, 0), "decay_steps"),
    (lambda: sch.InverseTimeDecay(-0.1, 0.5, 3), "init_value"),
    (lambda: sch.StepDecay(0.1, 0.5, 0), "every"),
    (lambda: sch.CosineDecay(0.1, 10, 1.5), "alpha"),
    (lambda: sch.Warmup(sch.constant(0.1), 0, 0.0), "warmup_steps"),
    (lambda: sch.Warmup("0.1", 5, 0.0), "schedule"),
    (lambda: sch.FunctionSchedule(0.1), "fn"),
]


@pytest.mark.parametrize("build, name", BAD, ids=[f"{i}-{n}" for i, (_, n) in enumerate(BAD)])
def test_bad_arguments_name_the_argument(build, name):
    with pytest.raises(ValueError, match=rf"^{name} must"):
        build()


# every numeric argument of every factory, with valid values for the others
ARGUMENTS = {
    sch.constant: dict(value=0.1),
    sch.step_decay: dict(init_value=0.1, factor=0.5, every=2),
    sch.exponential_decay: dict(init_value=0.1, decay_rate=0.5, decay_steps=2),
    sch.inverse_time_decay: dict(init_value=0.1, decay_rate=0.5, decay_steps=2),
    sch.cosine_decay: dict(init_value=0.1, decay_steps=10, alpha=0.1),
    sch.warmup: dict(schedule=0.1, warmup_steps=5, init_value=0.0),
}
TYPE_CASES = [
    (factory, name, bad)
    for factory, kwargs in ARGUMENTS.items()
    for name in kwargs
    for bad in ["1", None, True, np.array([True])]
]


@pytest.mark.parametrize(
    "factory, name, bad", TYPE_CASES, ids=[f"{f.__name__}-{n}-{type(b).__name__}" for f, n, b in TYPE_CASES]
)
def test_non_numeric_arguments_are_refused(factory, name, bad):
    kinds = "a number, a numeric array or a schedule" if name == "schedule" else "a number or a numeric array"
    with pytest.raises(ValueError, match="^" + re.escape(f"{name} must be {kinds}; got {bad!r} ({type(bad).__name__}")):
        factory(**{**ARGUMENTS[factory], name: bad})


@pytest.mark.parametrize("factory", ARGUMENTS, ids=lambda f: f.__name__)
def test_class_built_directly_equals_the_factorys(factory):
    made = factory(**ARGUMENTS[factory])
    assert type(made) is factory  # the lowercase name is the class itself
    assert all(type(leaf) is float for leaf in jax.tree.leaves(made))  # Python ints are stored as floats


def test_step_decay_is_a_staircase_named_by_its_arguments():
    schedule = sch.step_decay(1.0, 0.5, 3)
    assert isinstance(schedule, sch.StepDecay) and (schedule.factor, schedule.every) == (0.5, 3.0)
    assert [float(schedule(t)) for t in (0, 2, 3, 5, 6)] == [1.0, 1.0, 0.5, 0.5, 0.25]
