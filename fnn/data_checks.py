"""A run's data, checked at the door: against the model and the loss, before any tracing.

Every entry point that reads data — ``fit`` and everything that traces it (sweeps,
halving, PBT, the LR range test), ``Trainer.evaluate``, ``ensemble`` — checks it here,
eagerly, so that a bad array is refused with a ``ValueError`` naming the argument and
what was expected rather than failing inside a compiled program:

- :func:`as_arrays`: x, y and a validation pair are numeric arrays (a non-empty pair);
- :func:`check_data`: x is a non-empty floating array of finite values that the model
  maps to one output row per example; y has as many rows, of the targets the loss
  declares (:func:`fnn.losses.check_targets`), and the loss accepts them;
- :func:`check_run_data`: both of a run's datasets, and its batch size against them
  (and against the trainer's ``accumulate``, which must divide it).

The model is only traced abstractly (``jax.eval_shape``): nothing is computed or
compiled. Value checks (finite values, label ranges) are skipped for traced arrays.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from fnn import losses as losses_lib
from fnn.accumulation import check_batch_size
from fnn.checks import check_finite
from fnn.programs import device_array
from fnn.types import ModelState, Params


def as_arrays(x, y, validation) -> tuple[jax.Array, jax.Array, tuple[jax.Array, jax.Array] | None]:
    """x, y and the validation pair (or None) as JAX arrays.

    Raises:
      ValueError: naming what is not a numeric array, or a validation that is not a pair
        of non-empty arrays.
    """
    if validation is not None:
        if not (isinstance(validation, (tuple, list)) and len(validation) == 2):
            raise ValueError(f"validation must be a pair (x_val, y_val) of arrays; got {type(validation).__name__}")
        validation = tuple(_array(f"validation[{i}]", a) for i, a in enumerate(validation))
        if any(jnp.ndim(a) < 1 or jnp.shape(a)[0] == 0 for a in validation):
            raise ValueError(
                f"validation must hold non-empty arrays [m, ...]; got shapes {[jnp.shape(a) for a in validation]}"
            )
    return _array("x", x), _array("y", y), validation


def _array(name: str, value) -> jax.Array:
    try:
        array = device_array(value)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be an array (NumPy or JAX); got {type(value).__name__}: {error}") from None
    if not (jnp.issubdtype(array.dtype, jnp.number) or array.dtype == jnp.bool_):
        raise ValueError(f"{name} must be a numeric array; got dtype {array.dtype}")
    return array


def check_run_data(
    model,
    loss: Callable,
    params: Params,
    model_state: ModelState,
    x,
    y,
    validation,
    batch_size: int,
    accumulate: int = 1,
) -> None:
    """A run's training data and validation pair (arrays, :func:`as_arrays`) against the
    model and the loss (:func:`check_data`), and ``batch_size`` against the examples and
    the trainer's ``accumulate`` (micro-batches per update, which must divide it:
    :func:`fnn.accumulation.check_batch_size`).

    Raises:
      ValueError: naming the argument and what was expected.
    """
    check_data(model, loss, params, model_state, x, y)
    n = jnp.shape(x)[0]
    if batch_size > n:
        raise ValueError(
            f"batch_size must be <= the number of examples ({n}); got {batch_size}: use a smaller batch_size"
        )
    check_batch_size(batch_size, accumulate)
    if validation is not None:
        xv, yv = validation
        if jnp.shape(xv)[1:] != jnp.shape(x)[1:]:
            raise ValueError(
                f"validation must be (x_val, y_val) with x_val of shape [m, {', '.join(map(str, jnp.shape(x)[1:]))}]; "
                f"got x_val {jnp.shape(xv)} and y_val {jnp.shape(yv)}"
            )
        check_data(model, loss, params, model_state, xv, yv, names=("validation x", "validation y"))


def check_data(
    model,
    loss: Callable,
    params: Params,
    model_state: ModelState,
    x: ArrayLike,
    y: ArrayLike,
    *,
    names: tuple[str, str] = ("x", "y"),
) -> tuple:
    """Eager checks of a dataset against the model and the loss, before any tracing.

    x must be a non-empty floating array [n, ...] of finite values that the model
    accepts, giving one output row per example (checked for 1 and 2 examples; x of
    shape [n] has no feature axis: a model of 1 input takes ``x[:, None]``); y must
    have n rows of the targets the loss declares (:func:`fnn.losses.check_targets`),
    and the loss must accept the model's output with them (abstract evaluation:
    nothing is computed). Value checks are skipped for traced arrays.

    Args:
      model: the model (``model.apply(params, x, state=model_state)``).
      loss: the loss, ``loss(predictions, targets, weights)``.
      params, model_state: the model's parameters and state (their shapes only).
      x, y: [n, ...] inputs and targets.
      names: the names of x and y in messages, e.g. ``("validation x", "validation y")``.
    Returns:
      the model's output shape for one example.
    Raises:
      ValueError: naming the argument and what was expected.
    """
    name_x, name_y = names
    x, y = jnp.asarray(x), jnp.asarray(y)
    if jnp.ndim(x) < 1 or jnp.shape(x)[0] == 0:
        raise ValueError(f"{name_x} must be a non-empty array of examples [n, ...]; got shape {jnp.shape(x)}")
    if jnp.ndim(y) < 1 or jnp.shape(y)[0] != jnp.shape(x)[0]:
        raise ValueError(
            f"{name_x} and {name_y} must have the same number of examples; got {jnp.shape(x)} and {jnp.shape(y)}"
        )
    if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
        raise ValueError(
            f"{name_x} must be floating point (real, not complex); got dtype {jnp.result_type(x)} "
            "(scale integer pixels with fnn.prepare_images)"
        )
    check_finite(name_x, x)
    out = _output(model, params, model_state, x, name_x)
    losses_lib.check_targets(loss, name_y, y, tuple(out.shape[1:]))
    try:
        jax.eval_shape(lambda o, t: loss(o, t, None), out, _rows(y, 1))
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{name_y} of shape {jnp.shape(y)} does not fit the loss for the model's output: {error}"
        ) from None
    return tuple(out.shape[1:])


def _output(model, params: Params, model_state: ModelState, x: jax.Array, name_x: str) -> jax.ShapeDtypeStruct:
    """The model's output for ``x[:1]`` (abstract), once it is known to map [b, ...] to
    [b, ...] for b = 1 and 2; a ValueError names ``name_x``, its shape and, for rank 1,
    the missing feature axis."""
    hint = (
        f"; {name_x} has rank 1 (one number per example, no feature axis): a model of 1 input takes "
        f"{name_x}[:, None], of shape ({jnp.shape(x)[0]}, 1)"
        if jnp.ndim(x) == 1
        else ""
    )

    def apply(rows: int) -> jax.ShapeDtypeStruct:
        return jax.eval_shape(lambda p, s, xb: model.apply(p, xb, state=s), params, model_state, _rows(x, rows))

    try:
        outs = [apply(1), apply(2)]
    except ValueError as error:
        raise ValueError(f"{name_x} of shape {jnp.shape(x)} does not fit the model: {error}{hint}") from None
    one, two = (tuple(out.shape) for out in outs)
    if one[:1] != (1,) or two != (2, *one[1:]):
        raise ValueError(
            f"{name_x} of shape {jnp.shape(x)} does not fit the model: its output must have one row per example "
            f"([batch, ...]); for 1 and 2 examples it has shapes {one} and {two}{hint}"
        )
    return outs[0]


def _rows(a, rows: int) -> jax.ShapeDtypeStruct:
    """The shape and dtype of ``rows`` examples of ``a``, for abstract evaluation (no program runs)."""
    return jax.ShapeDtypeStruct((rows, *jnp.shape(a)[1:]), jnp.result_type(a))
