"""Seed ensembles: the members of each grid point of a sweep, averaged into one model.

The members of a grid point (same hyperparameters, different seeds) are combined by
averaging what they predict — probabilities for classification, outputs otherwise
(Lakshminarayanan, Pritzel & Blundell 2017, "Simple and Scalable Predictive Uncertainty
Estimation using Deep Ensembles", eq. 2) — and the ensemble is scored with the trainer's
own loss and metrics, next to the mean of the members' own scores.

What is averaged follows from the loss, recognized by its function (also through
``functools.partial``, e.g. with label smoothing, and through a ``fnn.losses.Loss`` that
redeclares it):

    fnn.cross_entropy          mean of softmax(z_m)   ensemble logits log(mean_m softmax(z_m))
    fnn.binary_cross_entropy   mean of sigmoid(z_m)   ensemble logits logit(mean_m sigmoid(z_m))
    any other loss (mse, ...)  mean of the outputs    ensemble outputs mean_m y_m

The ensemble's output stays in the model's output space (logits whose softmax or sigmoid
is the averaged probability), so its cross-entropy is the negative log-likelihood of the
averaged probabilities and its accuracy is that of their arg-max. A user's own loss is
averaged in output space: declare a classification loss on top of ``fnn.cross_entropy``
(``functools.partial`` or ``Loss(fnn.cross_entropy.fn, ...)``) to average probabilities.

Members are evaluated in evaluation mode (no dropout; batch-norm running statistics) by
``Trainer.evaluate`` itself: the ensemble is a model (:class:`Average`) whose params are
the members' params stacked on a leading axis.

Members that diverged are left out: their run did not finish (its ``best_params`` are
its initial params when it diverged in its first epoch, its ``train_state`` the last
good state before the divergence). Each row counts them (``diverged``); a grid point
whose members all diverged has no ensemble, and its scores are NaN.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import losses as losses_lib
from fnn.checks import check_int
from fnn.data_checks import check_data
from fnn.layers import Layer, check_params
from fnn.layers.base import NoInitializer
from fnn.programs import device_array, jit_program
from fnn.pytree import pytree_dataclass, static_field
from fnn.sweeps.members import check_configurations
from fnn.sweeps.population import take
from fnn.train import Trainer

_LINKS = {losses_lib.cross_entropy.fn: "softmax", losses_lib.binary_cross_entropy.fn: "sigmoid"}


@runtime_checkable
class Table(Protocol):
    """What an ensemble reads of a sweep's table: ``fnn.SweepResult`` has it. (That class
    offers ``SweepResult.ensemble``, so it builds on this module and is not imported here.)"""

    @property
    def hyperparameters(self) -> dict[str, np.ndarray]:
        """``{name: [members] array}``: each member's hyperparameters and ``seed``."""
        ...

    @property
    def results(self) -> Any:
        """The members' stacked ``FitResult``."""
        ...

    def groups(self) -> list[tuple[dict[str, float], list[int]]]:
        """``(grid point, member indices)`` per grid point."""
        ...


def ensemble(
    config: Callable[..., Trainer],
    table: Table,
    x: ArrayLike,
    y: ArrayLike,
    *,
    params: str = "best",
    batch_size: int = 1024,
) -> list[dict[str, Any]]:
    """Score the ensemble of each grid point's members on (x, y), next to the members' mean.

    Args:
      config: the sweep's configuration (``config(**hyperparameters) -> Trainer``).
      table: the ``SweepResult`` of ``fnn.sweep(config, ...)``.
      x, y: [n, ...] the data to score on.
      params: ``"best"`` (each member's ``best_params`` / ``best_model_state``) or
        ``"final"`` (its ``train_state``'s).
      batch_size: examples per forward pass.
    Returns:
      one dict per grid point, in the order of ``SweepResult.aggregate``: the grid
      point's hyperparameters, ``members`` (the seeds averaged: those that did not
      diverge), ``diverged`` (the seeds left out), the ensemble's ``loss`` and metrics
      (e.g. ``accuracy``), and the members' mean of each (``member_mean_loss``,
      ``member_mean_accuracy``, ...); NaN scores where every member diverged.
    Raises:
      ValueError: before anything is compiled, for an unknown ``params``, a table that
        is not a SweepResult (has not what :class:`Table` lists) or whose params do not
        fit the configuration's model, and data the trainer refuses (shapes, dtypes,
        label ranges, finite values).
    """
    if params not in ("best", "final"):
        raise ValueError(f"params must be 'best' (each member's best_params) or 'final'; got {params!r}")
    if not isinstance(table, Table):
        raise ValueError(f"table must be the SweepResult of fnn.sweep; got {type(table).__name__}")
    batch_size = check_int("batch_size", batch_size)
    check_configurations(config, table.hyperparameters)
    r = table.results
    stacked = (
        (r.best_params, r.best_model_state) if params == "best" else (r.train_state.params, r.train_state.model_state)
    )
    points = table.groups()
    _check_members(config(**points[0][0]), stacked)
    x, y = device_array(x), device_array(y)
    diverged = np.asarray(r.diverged)
    return [_score(config(**point), point, which, diverged, stacked, x, y, batch_size) for point, which in points]


def _score(
    trainer: Trainer, point: dict, which: list[int], diverged: np.ndarray, stacked: tuple, x, y, batch_size: int
) -> dict[str, Any]:
    """One grid point's row: its members (``which``) that did not diverge, scored
    together and alone (NaN scores when none is left)."""
    link = output_link(trainer.loss)
    params, model_state = take(stacked, np.asarray(which))
    averaged = _averaged(trainer, link)
    check_data(averaged.model, averaged.loss, params, model_state, x, y)
    kept = [i for i in which if not diverged[i]]
    names = ["loss", *(name for name, _ in trainer.metrics)]
    row = point | {"members": len(kept), "diverged": len(which) - len(kept)}
    if not kept:
        return row | dict.fromkeys([*names, *(f"member_mean_{k}" for k in names)], float("nan"))
    together, alone = _scores(trainer, link, *take(stacked, np.asarray(kept)), x, y, batch_size)
    row |= {k: float(together[k]) for k in names}
    return row | {f"member_mean_{k}": float(np.mean(alone[k])) for k in names}


def output_link(loss: Callable) -> str:
    """What the ensemble averages for ``loss``: ``"softmax"`` (probabilities of
    ``fnn.cross_entropy``), ``"sigmoid"`` (of ``fnn.binary_cross_entropy``) or
    ``"identity"`` (outputs, any other loss). Recognized by the loss's function, through
    ``functools.partial`` and ``fnn.losses.Loss`` declarations."""
    while isinstance(loss, (functools.partial, losses_lib.Loss)):
        loss = loss.func if isinstance(loss, functools.partial) else loss.fn
    return _LINKS.get(loss, "identity")


def average(outputs: jax.Array, link: str) -> jax.Array:
    """The ensemble's output from the members' outputs [m, batch, ...].

    ``"softmax"``: ``log(mean_m softmax(z_m))`` (= logsumexp_m log_softmax(z_m) - log m),
    logits whose softmax is the mean probability. ``"sigmoid"``: ``logit(mean_m sigmoid(z_m))``
    = logsumexp_m log_sigmoid(z_m) - logsumexp_m log_sigmoid(-z_m) (log p - log(1 - p),
    the log m cancels), stable for |z| = 1e4. ``"identity"``: ``mean_m y_m``.
    """
    if link == "softmax":
        log_m = jnp.log(jnp.asarray(outputs.shape[0], outputs.dtype))
        return jax.nn.logsumexp(jax.nn.log_softmax(outputs, axis=-1), axis=0) - log_m
    if link == "sigmoid":
        log_p = jax.nn.logsumexp(jax.nn.log_sigmoid(outputs), axis=0)
        return log_p - jax.nn.logsumexp(jax.nn.log_sigmoid(-outputs), axis=0)
    return jnp.mean(outputs, axis=0)


@pytree_dataclass
class Average(Layer):
    """The members of ``model`` as one model: params and state carry a leading member
    axis, and the output is their average (:func:`average` with ``link``), each member
    applied in evaluation mode. It has no initializer: its params are the members'."""

    model: Layer
    link: str = static_field(default="identity")

    def init(self, key: ArrayLike) -> tuple[Any, Any]:
        raise NoInitializer("an ensemble's params are its members' params, stacked")

    def forward(
        self, params: Any, state: Any, x: ArrayLike, *, key: ArrayLike | None = None, train: bool = False
    ) -> tuple[jax.Array, Any]:
        outputs = jax.vmap(lambda p, s: self.model.apply(p, x, state=s))(params, state)
        return average(outputs, self.link), state


def _check_members(trainer: Trainer, stacked: tuple) -> None:
    """Refuse a table whose members' params or model state do not fit ``trainer``'s model."""
    first = jax.tree.map(lambda a: a[0], stacked)
    try:
        check_params(trainer.model, *first, names=("table params", "table model_state"))
    except ValueError as error:
        raise ValueError(
            f"table's members do not fit the configuration's model (is it the sweep of another configuration?): {error}"
        ) from None


def _averaged(trainer: Trainer, link: str) -> Trainer:
    """``trainer`` with its model replaced by the members' :class:`Average`."""
    return dataclasses.replace(trainer, model=Average(trainer.model, link))


def _evaluate(trainer: Trainer, link: str, params, model_state, x, y, batch_size: int):
    """The ensemble's scores and each member's ([m] arrays), in evaluation mode."""
    together = _averaged(trainer, link).evaluate(params, model_state, x, y, batch_size)
    alone = jax.vmap(lambda p, s: trainer.evaluate(p, s, x, y, batch_size))(params, model_state)
    return together, alone


_scores = jit_program(_evaluate, ("link", "batch_size"))
