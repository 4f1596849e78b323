"""fnn.checks, the hyperparameter checks every constructor shares: accepted kinds, refused
kinds (ValueError naming the argument, the accepted kinds and the value with its type),
intervals, values not read when traced; and layers, which get the kind checks for free."""

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import fnn
from fnn import checks, schedules
from fnn.pytree import pytree_dataclass, static_field

ACCEPTED = {
    "int": 1,
    "float": 0.5,
    "np.float32": np.float32(0.5),
    "np.int64": np.int64(1),
    "np.uint8": np.uint8(1),
    "np.array": np.array([0.25, 0.5]),
    "jax.Array": jnp.asarray(0.5),
    "bfloat16": jnp.asarray([0.5], jnp.bfloat16),
}

REFUSED = {
    "str": "0.5",
    "None": None,
    "bool": True,
    "np.bool_": np.bool_(True),
    "bool array": np.array([True, False]),
    "jax bool": jnp.asarray(False),
    "complex": 0.5 + 0j,
    "list": [0.5],
    "object": object(),
    "callable": lambda step: 0.5,
}


@pytest.mark.parametrize("value", ACCEPTED.values(), ids=ACCEPTED.keys())
def test_numeric_kinds_are_accepted(value):
    checks.check_in_range("rate", value, 0, 1)
    checks.check_positive("rate", value)
    result = checks.hyperparameter("rate", value, 0, 1)
    if isinstance(value, (int, float)):
        assert type(result) is float and result == value
    else:
        assert result is value


@pytest.mark.parametrize(
    "check",
    [
        lambda v: checks.check_in_range("rate", v, 0, 1),
        lambda v: checks.check_positive("rate", v),
        lambda v: checks.check_nonnegative("rate", v),
        lambda v: checks.hyperparameter("rate", v, 0),
    ],
    ids=["check_in_range", "check_positive", "check_nonnegative", "hyperparameter"],
)
@pytest.mark.parametrize("value", REFUSED.values(), ids=REFUSED.keys())
def test_other_kinds_are_refused_naming_the_argument_and_the_value(check, value):
    message = f"rate must be a number or a numeric array; got {value!r} ({type(value).__name__}"
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        check(value)


def test_the_message_gives_the_dtype_of_an_array():
    with pytest.raises(ValueError, match=re.escape("(ndarray of bool)")):
        checks.check_in_range("rate", np.array([True]))


@pytest.mark.parametrize("value", ["0.1", None, False], ids=["str", "None", "bool"])
def test_a_schedule_argument_says_so_and_accepts_callables(value):
    with pytest.raises(
        ValueError, match="^" + re.escape(f"lr must be a number, a numeric array or a schedule; got {value!r}")
    ):
        checks.hyperparameter("lr", value, 0, schedule=True)
    schedule = schedules.constant(0.1)
    assert checks.hyperparameter("lr", schedule, 0, schedule=True) is schedule


@pytest.mark.parametrize(
    "value, message",
    [
        (-0.1, "rate must lie in [0, 1); got -0.1"),
        (1.0, "rate must lie in [0, 1); got 1.0"),
        (float("nan"), "rate must lie in [0, 1); got nan"),
        (np.array([0.5, 2.0]), "rate must lie in [0, 1)"),
        (jnp.asarray([0.5, -1.0]), "rate must lie in [0, 1)"),
    ],
)
def test_concrete_values_outside_the_interval_are_refused(value, message):
    with pytest.raises(ValueError, match="^" + re.escape(message)):
        checks.check_in_range("rate", value, 0, 1, high_open=True)


def test_traced_values_are_not_read_but_their_kind_is_checked():
    jax.jit(lambda r: checks.check_in_range("rate", r, 0, 1))(-5.0)  # out of range, but traced: not read
    with pytest.raises(ValueError, match=r"^rate must be a number or a numeric array; got .*Tracer.* of bool\)"):
        jax.jit(lambda r: checks.check_in_range("rate", r, 0, 1))(jnp.asarray(True))


def test_hyperparameter_stores_python_numbers_as_floats_and_arrays_as_they_are():
    assert type(checks.hyperparameter("lr", 1, 0)) is float
    array = np.float32(0.5)
    assert checks.hyperparameter("lr", array, 0) is array


@pytest.mark.parametrize("value", [True, False, np.bool_(True)])
def test_check_bool_accepts_bools(value):
    assert checks.check_bool("flag", value) is bool(value)


@pytest.mark.parametrize("value", ["yes", None, 1, 0.0, np.array(True)], ids=["str", "None", "int", "float", "array"])
def test_check_bool_refuses_other_values(value):
    with pytest.raises(ValueError, match="^" + re.escape(f"flag must be a bool (True or False); got {value!r}")):
        checks.check_bool("flag", value)


@pytree_dataclass
class _Config:
    rate: Any
    scale: Any = 1.0
    flag: bool = static_field(False)

    def __post_init__(self):
        checks.check_fields(self, ("flag",), rate=checks.FRACTION, scale=checks.POSITIVE)


def test_check_fields_checks_and_normalizes_each_field():
    config = _Config(0, 2, np.bool_(True))
    assert (config.rate, config.scale, config.flag) == (0.0, 2.0, True)
    assert [type(v) for v in (config.rate, config.scale, config.flag)] == [float, float, bool]
    for kwargs, name in [
        (dict(rate=1.0), "rate"),
        (dict(rate=0.5, scale=0), "scale"),
        (dict(rate="0.5"), "rate"),
        (dict(rate=0.5, flag="no"), "flag"),
    ]:
        with pytest.raises(ValueError, match=f"^{name} must"):
            _Config(**kwargs)


# The examples across modules, and layers (fnn.layers calls check_in_range / check_positive)
EXAMPLES = [
    (lambda: fnn.sgd("0.1"), "lr must be a number, a numeric array or a schedule; got '0.1' (str)"),
    (lambda: fnn.adam(None), "lr must be a number, a numeric array or a schedule; got None (NoneType)"),
    (lambda: fnn.l2("1e-4"), "strength must be a number or a numeric array; got '1e-4' (str)"),
    (lambda: schedules.cosine_decay("1", 10), "init_value must be a number or a numeric array; got '1' (str)"),
    (lambda: fnn.Dropout(None), "rate must be a number or a numeric array; got None (NoneType)"),
    (lambda: fnn.Dropout("0.5"), "rate must be a number or a numeric array; got '0.5' (str)"),
    (lambda: fnn.Dropout(True), "rate must be a number or a numeric array; got True (bool)"),
    (lambda: fnn.BatchNorm(4, momentum="0.9"), "momentum must be a number or a numeric array; got '0.9' (str)"),
    (lambda: fnn.BatchNorm(4, eps=None), "eps must be a number or a numeric array; got None (NoneType)"),
    (lambda: fnn.LayerNorm(4, eps="1e-5"), "eps must be a number or a numeric array; got '1e-5' (str)"),
    (lambda: fnn.mlp([3, 4, 2], dropout="0.1"), "rate must be a number or a numeric array; got '0.1' (str)"),
]


@pytest.mark.parametrize("build, message", EXAMPLES, ids=[m.split(";")[0] for _, m in EXAMPLES])
def test_examples_raise_value_error_with_the_documented_message(build, message):
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        build()


def test_check_whole_takes_whole_floats_as_ints():
    """A byte budget of 2e9 is a count: a whole float passes as an int; a fraction, inf,
    NaN, a bool or a string does not, and the message names the argument."""
    for value, expected in ((2e9, 2_000_000_000), (np.float32(4.0), 4), (np.int64(5), 5), (7, 7)):
        got = checks.check_whole("memory_budget", value)
        assert type(got) is int and got == expected
    for value in (2.5, float("inf"), float("nan"), True, np.bool_(True), "2e9", None, np.array([2.0])):
        with pytest.raises(ValueError, match="^memory_budget must be a whole number"):
            checks.check_whole("memory_budget", value)
    with pytest.raises(ValueError, match="memory_budget must be >= 1; got 0.0"):
        checks.check_whole("memory_budget", 0.0)


def test_check_number_takes_numpy_scalars_as_python_floats():
    """np.float32(0.25) is 0.25 as np.float64(0.25) is (the latter subclasses float, the
    former does not); arrays and bools are refused, the interval is checked."""
    for value in (0.25, np.float32(0.25), np.float64(0.25), np.float16(0.25)):
        got = checks.check_number("fraction", value, 0, 0.5, low_open=True)
        assert type(got) is float and got == 0.25
    assert checks.check_number("fraction", np.int8(0), 0, 0.5) == 0.0
    for value in (np.array(0.25), jnp.asarray(0.25), True, "0.25", None):
        with pytest.raises(ValueError, match="^fraction must be a real number"):
            checks.check_number("fraction", value, 0, 0.5)
    with pytest.raises(ValueError, match=re.escape("fraction must lie in (0, 0.5]; got 0.75")):
        checks.check_number("fraction", np.float32(0.75), 0, 0.5, low_open=True)
