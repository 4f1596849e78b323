"""Mixed precision: the forward and backward passes in a lower float dtype, the rest in float32.

``fnn.Trainer(..., compute_dtype=jnp.bfloat16)`` (static; or ``jnp.float16``) runs each training step's
forward pass, and so its backward pass, in bfloat16, while everything that accumulates
stays in the params' own dtype (float32)::

    params (float32 master copy) --cast--> bfloat16 --model--> predictions --cast--> float32 --> loss
    x                            --cast--> bfloat16

The params and the optimizer's state are never stored in bfloat16: the gradient of the
cast carries each gradient back to float32 (``jax.grad`` of ``astype``), and the update,
the optimizer's moments, the loss, the metrics and every mean over examples are computed
in float32. Batch norm's running statistics stay in their float32 state (the layer casts
each batch's statistics to it), and evaluation (validation, ``Trainer.evaluate``) runs in
the params' dtype. Every cast is explicit: nothing relies on JAX's dtype promotion.

bfloat16 keeps float32's exponent range, so gradients neither underflow nor overflow
and no loss scaling is needed (Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep
Learning Training"). float16 (``compute_dtype=jnp.float16``) keeps 3 more significant
bits but a narrow exponent range (6.0e-8 to 65504): its small gradients flush to zero
unless the loss is scaled, so a float16 trainer scales it dynamically
(Micikevicius et al. 2018, "Mixed Precision Training"; :mod:`fnn.loss_scaling`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from fnn.types import PyTree


def check_compute_dtype(value) -> np.dtype | None:
    """``value`` as a NumPy dtype (``jnp.bfloat16``, ``"bfloat16"``, ``jnp.float32``, ...), or ``None``.

    Raises:
      ValueError: naming ``compute_dtype``, for a value that is not a floating dtype.
    """
    if value is None:
        return None
    try:
        dtype = np.dtype(value)
    except TypeError:
        raise ValueError(
            f"compute_dtype must be a floating dtype such as jnp.bfloat16, or None; got {value!r}"
        ) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"compute_dtype must be a floating dtype such as jnp.bfloat16, or None; got {dtype}")
    return dtype


def cast(tree: PyTree, dtype) -> PyTree:
    """Every floating leaf of ``tree`` as ``dtype`` (others unchanged): the way into the compute dtype."""
    return jax.tree.map(lambda a: a.astype(dtype) if jnp.issubdtype(jnp.result_type(a), jnp.floating) else a, tree)


def output_dtype(x: jax.Array) -> np.dtype:
    """The dtype predictions are cast back to before the loss: the input's floating dtype
    (float32, or float64 under x64), float32 for integer input."""
    dtype = jnp.result_type(x)
    return dtype if jnp.issubdtype(dtype, jnp.floating) else np.dtype(np.float32)
