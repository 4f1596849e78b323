"""fit's options, declared once.

``fnn.fit(trainer, x, y, **options)`` takes the options of :data:`OPTIONS`, in its order
and with its defaults (a test holds ``fit``'s signature to this table). Each option says:

- its *role* in the compiled run —
  :data:`STATIC`: the program's structure (hashable; part of the compiled program's key,
  so a new value compiles anew, and a sweep shares it between its members);
  :data:`TRACED`: arrays the program reads (a new value reuses the compiled program; a
  sweep passes one value to every member);
  :data:`PER_RUN`: where a run starts (its key or train state; a sweep's members take
  their keys from seeds, so a sweep refuses these);
  :data:`HOST`: what the host does between compiled calls (checkpoints);
- whether a resumed run must match it (:data:`SAME`), may have a larger value
  (:data:`LARGER`: a run extended to more epochs) or may differ (:data:`ANY`: it does
  not decide the numbers, e.g. ``progress``);
- its check, where it can be checked on its own (``check(name, value) -> value``; the
  options that are checked together — the key, train state, params and data — are
  checked by :func:`fnn.fit.check_run`);
- for traced options, whether the value is a real scalar passed in the default float
  dtype (so that ``0.1`` and ``np.array(0.1)`` share a compiled program).

Everything else derives from this table: ``fit``'s checks (:mod:`fnn.fit`), the split of a
sweep's options into static and traced ones and its refusal of per-run ones
(:mod:`fnn.sweeps.grid_sweep`), and what a resumed sweep compares
(:mod:`fnn.sweeps.resume`).
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import numpy as np

from fnn.checks import check_bool, check_int, check_nonnegative, check_positive

STATIC = "static"
TRACED = "traced"
PER_RUN = "per run"
HOST = "host"

SAME = "same"
LARGER = "larger"
ANY = "any"

REQUIRED = inspect.Parameter.empty
"""The default of an option that has none (``epochs``, ``batch_size``)."""


class Option(NamedTuple):
    """One of fit's options: its default, role, resume rule, check and whether it is a traced scalar."""

    default: Any
    role: str
    on_resume: str = SAME
    check: Callable[[str, Any], Any] | None = None
    scalar: bool = False


def _optional(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """``check``, letting ``None`` through."""
    return lambda name, value: None if value is None else check(name, value)


def _real_scalar(check: Callable[[str, Any], Any]) -> Callable[[str, Any], Any]:
    """A check of a real scalar (a Python, NumPy or JAX number; traced values pass): then ``check``."""

    def checked(name: str, value: Any) -> Any:
        if isinstance(value, (str, bool)) or value is None or np.ndim(value) != 0:
            raise ValueError(f"{name} must be a real scalar; got {value!r}")
        check(name, value)
        return value

    return checked


def _folder(name: str, value: Any) -> Any:
    """A folder path (str or ``os.PathLike``); it is created when written to."""
    if not isinstance(value, (str, os.PathLike)) or not os.fspath(value):
        raise ValueError(f"{name} must be a folder path (str or os.PathLike) or None; got {value!r}")
    return value


OPTIONS: dict[str, Option] = {
    "key": Option(None, PER_RUN),
    "epochs": Option(REQUIRED, STATIC, LARGER, check_int),
    "batch_size": Option(REQUIRED, STATIC, SAME, check_int),
    "validation": Option(None, TRACED),
    "drop_last": Option(False, STATIC, SAME, check_bool),
    "max_steps": Option(None, STATIC, SAME, _optional(check_int)),
    "train_state": Option(None, PER_RUN),
    "params": Option(None, TRACED),
    "model_state": Option(None, TRACED),
    "tol": Option(0.0, TRACED, SAME, _real_scalar(check_nonnegative), scalar=True),
    "patience": Option(None, STATIC, SAME, _optional(check_int)),
    "monitor": Option(None, STATIC),  # a history entry: resolved against the trainer (fnn.fit.resolve_monitor)
    "divergence_threshold": Option(None, TRACED, SAME, _optional(_real_scalar(check_positive)), scalar=True),
    "eval_batch_size": Option(1024, STATIC, SAME, check_int),
    "progress": Option(False, STATIC, ANY, check_bool),
    "checkpoint": Option(None, HOST, ANY),  # a path: checked with checkpoint_every and resume
    "checkpoint_every": Option(None, HOST, ANY, _optional(check_int)),
    "resume": Option(False, HOST, ANY, check_bool),
    "tensorboard": Option(None, HOST, ANY, _optional(_folder)),
    "batch_sharding": Option(None, STATIC),  # checked against batch_size (fnn.distributed)
}


def names(role: str | None = None, on_resume: str | None = None, scalar: bool | None = None) -> tuple[str, ...]:
    """The options with the given role, resume rule and scalar flag (``None``: any), in fit's order."""
    return tuple(
        name
        for name, option in OPTIONS.items()
        if role in (None, option.role) and on_resume in (None, option.on_resume) and scalar in (None, option.scalar)
    )


def complete(options: Mapping[str, Any], entry: str = "fit") -> dict[str, Any]:
    """Every option of fit, the given values over the defaults.

    Args:
      options: ``{name: value}``: some of fit's options.
      entry: the caller's name in messages.
    Returns:
      ``{name: value}`` for every option of :data:`OPTIONS`, in its order.
    Raises:
      ValueError: an option fit does not take, or a required one missing.
    """
    unknown = sorted(set(options) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown fit option(s) {unknown} in {entry}; fit takes {list(OPTIONS)}")
    missing = [name for name, option in OPTIONS.items() if option.default is REQUIRED and name not in options]
    if missing:
        raise ValueError(f"{entry} needs fit's option(s) {missing}")
    return {name: options.get(name, option.default) for name, option in OPTIONS.items()}


def checked(options: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` (every option, see :func:`complete`) with each option's own check
    applied: ints and bools as Python values, scalars checked.

    Raises:
      ValueError: naming the first option whose value is refused.
    """
    return {name: _checked(name, value) for name, value in options.items()}


def checked_host(name: str, value: Any) -> Any:
    """One host option, checked as fit checks it (for entry points that take it
    themselves: a sweep's and PBT's ``tensorboard``)."""
    return _checked(name, value)


def _checked(name: str, value: Any) -> Any:
    check = OPTIONS[name].check
    return value if check is None else check(name, value)
