"""fit's options are declared once (fnn.options): fit's signature, the run's static
settings and traced data, a sweep's split of its options and the resume rules follow
that declaration."""

import dataclasses
import inspect

import jax
import numpy as np
import pytest

import fnn
from fnn import options as options_lib
from fnn.loop import RunData, Settings
from fnn.sweeps.grid_sweep import split_options


def test_fit_takes_exactly_the_declared_options_in_order_with_their_defaults():
    parameters = [p for p in inspect.signature(fnn.fit).parameters.values() if p.kind is p.KEYWORD_ONLY]
    assert [(p.name, p.default) for p in parameters] == [(k, o.default) for k, o in options_lib.OPTIONS.items()]


def test_the_run_settings_and_data_are_the_declared_static_and_traced_options():
    static = set(options_lib.names(options_lib.STATIC)) - {"epochs"}  # epochs shapes the histories, not Settings
    assert {f.name for f in dataclasses.fields(Settings)} == static | {"maximize"}  # maximize: the monitor's direction
    scalars = options_lib.names(options_lib.TRACED, scalar=True)
    assert set(scalars) <= set(options_lib.names(options_lib.TRACED))
    assert set(RunData._fields) == {"x", "y", "validation", *scalars}


def test_a_sweep_splits_its_options_by_their_declared_role():
    x = np.zeros((4, 2), np.float32)
    kwargs = dict(epochs=3, batch_size=2, validation=(x, x), tol=0.1, divergence_threshold=None, progress=False)
    static, traced = split_options(kwargs)
    assert dict(static) == dict(epochs=3, batch_size=2, divergence_threshold=None, progress=False)
    assert set(traced) == {"validation", "tol"}
    assert traced["tol"].dtype == jax.dtypes.canonicalize_dtype(
        float
    )  # fit's float dtype: one program for 0.1 and np.array(0.1)


@pytest.mark.parametrize(
    "options, match",
    [
        (dict(epochs=2), r"needs fit's option\(s\) \['batch_size'\]"),
        (dict(epochs=2, batch_size=2, learning_rate=0.1), r"unknown fit option\(s\) \['learning_rate'\]"),
    ],
)
def test_unknown_and_missing_options_are_named(options, match):
    with pytest.raises(ValueError, match=match):
        options_lib.complete(options)


def test_each_option_with_a_check_of_its_own_refuses_a_bad_value_by_name():
    bad = dict(
        epochs=0,
        batch_size=1.5,
        drop_last="yes",
        tol=-1.0,
        patience=0,
        divergence_threshold=0.0,
        eval_batch_size=0,
        progress=1,
        checkpoint_every=0,
        resume="no",
    )
    for name, value in bad.items():
        options = options_lib.complete(dict(epochs=2, batch_size=2) | {name: value})
        with pytest.raises(ValueError, match=name):
            options_lib.checked(options)
