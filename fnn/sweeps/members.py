"""A sweep's members: the grid of hyperparameters × seeds, and the checks of the
configuration at every grid point (with concrete values, before anything is traced)."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from fnn.checks import check_int
from fnn.train import Trainer


def grid_points(
    config: Callable[..., Any], grid: dict[str, Any], product: bool = True, argument: str = "grid"
) -> dict[str, np.ndarray]:
    """Expand ``grid`` into one array per hyperparameter, one entry per grid point.

    Args:
      config: the configuration function; every grid key must be one of its parameters.
      grid: ``{name: values}``; 1-D sequences of numbers.
      product: Cartesian product of the value lists (default), or zip them (equal lengths).
      argument: the name of ``grid`` in messages: ``"grid"`` (a sweep's, where zipping
        is ``product=False``) or e.g. ``"population"`` (PBT's, always zipped).
    Returns:
      ``{name: [points] float array}``.
    Raises:
      ValueError: naming ``argument``, for a non-dict, an unknown key, an empty or
        non-numeric list, or (zipped) lists of unequal lengths.
    """
    if not isinstance(grid, Mapping):
        raise ValueError(f"{argument} must be a dict {{hyperparameter: values}}; got {type(grid).__name__}: {grid!r}")
    parameters = inspect.signature(config).parameters
    for name in grid:
        if name not in parameters:
            raise ValueError(
                f"{argument} key {name!r} is not a hyperparameter of the configuration; it takes {list(parameters)}"
            )
    values = {k: _grid_values(f"{argument}[{k!r}]", v) for k, v in grid.items()}
    if not values:
        return {}
    if product:
        combos = list(itertools.product(*values.values()))
        return {k: np.array([c[i] for c in combos]) for i, k in enumerate(values)}
    lengths = {k: v.size for k, v in values.items()}
    if len(set(lengths.values())) > 1:
        zipped = "when product=False (zip)" if argument == "grid" else "(one value per member)"
        raise ValueError(f"{argument} arrays must have equal lengths {zipped}; got {lengths}")
    return values


def _grid_values(where: str, values) -> np.ndarray:
    """One grid entry (``where``: its name in messages) as a 1-D float array: numbers
    only, finite, at least one."""
    try:
        v = np.asarray(values, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"{where} must be a sequence of numbers; got {values!r}") from None
    if v.size == 0:
        raise ValueError(f"{where} must list at least one value")
    if not np.all(np.isfinite(v)):
        raise ValueError(f"{where} must hold finite numbers; got {v.tolist()}")
    return v


def check_configurations(config: Callable[..., Trainer], table: dict[str, np.ndarray]) -> Trainer:
    """Build the configuration once at every grid point of ``table``, with concrete values.

    Under the sweep's ``vmap`` the configuration is built from traced values, which skip
    the constructors' range checks; building it here first makes those checks run. It is
    then traced once abstractly (``jax.eval_shape``), as the sweep will call it, so that a
    configuration that needs its hyperparameters as Python values is refused here.

    Returns:
      the Trainer of the first member (for the data checks).
    Raises:
      ValueError: naming the grid point (every key and value) that the configuration
        refuses, and why; a configuration that does not return an fnn.Trainer; or one
        that uses hyperparameters as Python values (``int(h)``, ``if lr < 1``).
    """
    names = [k for k in table if k != "seed"]
    points = dict.fromkeys(tuple(float(table[k][i]) for k in names) for i in range(len(table["seed"])))
    trainers = [build(config, dict(zip(names, point))) for point in points]
    _check_traceable(config, dict(zip(names, next(iter(points)))))
    return trainers[0]


def _check_traceable(config: Callable, first: dict) -> None:
    """Trace ``config`` with the hyperparameters as abstract float scalars, as the sweep does.

    ``first`` is a grid point (``{name: float}``); when the trace fails, each hyperparameter
    is traced alone (the others at ``first``) to name the ones used as Python values.
    """
    if not first:
        return
    failure = _trace_error(config, first, list(first))
    if failure is None:
        return
    culprits = [k for k in first if _trace_error(config, first, [k]) is not None] or list(first)
    if isinstance(failure, (jax.errors.JAXTypeError, jax.errors.JAXIndexError)):
        reason = "as Python values (int(), float(), if, range(), NumPy, ...)"
    else:
        reason = "in a way that fails when they are traced"
    detail = str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
    raise ValueError(
        f"the configuration uses hyperparameter(s) {culprits} {reason}: a sweep passes them as traced "
        f"float scalars (one compiled program for every member); sweep only numeric hyperparameters "
        f"(learning rates, l2, dropout, ...) and set the others in the configuration (grid keys: {list(first)}). "
        f"{type(failure).__name__}: {detail}"
    ) from None


def _trace_error(config: Callable, point: dict, traced: list) -> Exception | None:
    """The error tracing ``config`` at ``point`` with the ``traced`` names abstract, or None."""
    fixed = {k: v for k, v in point.items() if k not in traced}
    abstract = {k: jax.ShapeDtypeStruct((), jnp.result_type(float)) for k in traced}
    try:
        jax.eval_shape(lambda h: config(**fixed, **h), abstract)
    except (jax.errors.JAXTypeError, jax.errors.JAXIndexError, TypeError, ValueError) as error:
        return error
    return None


def build(config: Callable, hyperparameters: dict, where: str | None = None) -> Trainer:
    """``config(**hyperparameters)``, checked to be a Trainer.

    Args:
      config: the configuration.
      hyperparameters: ``{name: value}``, concrete.
      where: what the values are, for messages; default ``"grid point {...}"``.
    Returns:
      the Trainer.
    Raises:
      ValueError: naming ``where``, when the configuration refuses the values or does
        not return an fnn.Trainer.
    """
    where = f"grid point {hyperparameters}" if where is None else where
    try:
        trainer = config(**hyperparameters)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where} is refused by the configuration: {error}") from None
    if not isinstance(trainer, Trainer):
        raise ValueError(f"config must return an fnn.Trainer; at {where} it returned {type(trainer).__name__}")
    return trainer


def members(
    config: Callable[..., Trainer], grid: dict[str, Any], seeds: int | Sequence[int], product: bool = True
) -> dict[str, np.ndarray]:
    """The sweep's members: grid points × seeds, as ``{name: [members]}`` plus ``seed``."""
    seed_values = (
        np.arange(check_int("seeds", seeds)) if isinstance(seeds, (int, np.integer)) else np.asarray(seeds).reshape(-1)
    )
    if seed_values.size == 0 or not np.issubdtype(seed_values.dtype, np.integer):
        raise ValueError(f"seeds must be a count >= 1 or a non-empty sequence of int seeds; got {seeds!r}")
    points = grid_points(config, grid, product)
    n_points = len(next(iter(points.values()))) if points else 1
    table = {k: np.repeat(v, seed_values.size) for k, v in points.items()}
    table["seed"] = np.tile(seed_values, n_points)
    return table
