"""Tolerances for comparing float32 results with another implementation (NumPy, PyTorch,
a Python loop, another XLA program): the rule is in tests/README.md, "Comparing float32
results". Tests import it as a sibling module, ``from tolerances import ...``: pytest's
default ("prepend") import mode puts tests/, which has no __init__.py, on sys.path, and a
script run as ``python tests/name.py`` has it as sys.path[0].

A float32 sum of n terms (a dot product, a mean), in any order and with or without fused
multiply-adds, is within gamma_n * sum(|terms|) of the exact sum, gamma_n = n u / (1 - n u)
~ n u with u = EPS32 / 2 the unit roundoff (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., eq. 3.5); two such evaluations are within about n * EPS32 *
sum(|terms|) of each other. The bound is absolute: next to a cancellation (a result much
smaller than its terms) no relative tolerance holds.
"""

from __future__ import annotations

import jax
import numpy as np

EPS32 = float(np.finfo(np.float32).eps)  # 2**-23 ~ 1.19e-7: the spacing of float32 at 1.0


def matmul_scale(a, b, bias=None) -> np.ndarray:
    """``|a| @ |b| (+ |bias|)`` in float64: for each element of ``a @ b + bias``, the sum of the
    absolute values of its terms, the scale its rounding error is proportional to."""
    scale = np.abs(np.asarray(a, np.float64)) @ np.abs(np.asarray(b, np.float64))
    return scale if bias is None else scale + np.abs(np.asarray(bias, np.float64))


def matmul_atol(a, b, bias=None, *, k: float | None = None) -> np.ndarray:
    """Elementwise absolute tolerance for two float32 evaluations of ``a @ b (+ bias)``:
    ``k * EPS32 * matmul_scale(a, b, bias)``.

    ``k`` defaults to the number of terms of each sum, n = ``a.shape[-1]`` (+1 with a bias):
    the worst case of any summation order (Higham's bound, both sides rounded), which holds
    on every CPU. Pass a larger ``k`` where the inputs themselves carry rounding from earlier
    float32 steps, and say why in the test.
    """
    n = np.shape(a)[-1] + (bias is not None)
    return (n if k is None else k) * EPS32 * matmul_scale(a, b, bias)


def assert_close_f32(actual, expected, *, atol, rtol: float = 0.0, err_msg: str = "") -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise, with ``atol`` an
    array broadcast against the values (e.g. :func:`matmul_atol`) or a scalar. Equal values
    (infinities included) and NaN in both places pass. The message names the worst element
    and its bound."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"shapes differ: {actual.shape} != {expected.shape}. {err_msg}"
    with np.errstate(invalid="ignore"):  # inf - inf and 0 * inf: decided by actual == expected
        bound = np.broadcast_to(np.asarray(atol, np.float64) + rtol * np.abs(expected), expected.shape)
        error = np.abs(actual - expected)
        ok = (actual == expected) | (error <= bound) | (np.isnan(actual) & np.isnan(expected))
    if not np.all(ok):
        bad = np.flatnonzero(~ok)
        ratio = np.where(np.isnan(error.flat[bad]), np.inf, error.flat[bad] / np.maximum(bound.flat[bad], 1e-300))
        worst = tuple(int(i) for i in np.unravel_index(bad[int(np.argmax(ratio))], expected.shape))
        raise AssertionError(
            f"{bad.size} of {expected.size} elements differ by more than their float32 bound; worst at "
            f"{worst}: actual {float(actual[worst])!r}, expected {float(expected[worst])!r}, |difference| {error[worst]:.3g} "
            f"> bound {bound[worst]:.3g} (atol + rtol * |expected|). {err_msg}"
        )


def assert_trees_close_f32(actual, expected, *, k: float) -> None:
    """Normwise, leaf by leaf: ``|actual - expected| <= k * EPS32 * max|expected leaf|``.

    For whole models and other compositions compared between two programs (jit and op by
    op, vmapped and alone), where the magnitudes of each sum's terms are not at hand: the
    largest value of a leaf stands for them, and ``k`` counts the roundings on the way (the
    terms of the sums, the layers); the test says how it got ``k``. Structures must match.
    """
    flat, structure = jax.tree_util.tree_flatten_with_path(expected)
    assert jax.tree.structure(actual) == structure, f"the trees differ: {jax.tree.structure(actual)} != {structure}"
    for (path, e), a in zip(flat, jax.tree.leaves(actual), strict=True):
        scale = float(np.max(np.abs(np.asarray(e, np.float64)), initial=0.0))
        assert_close_f32(a, e, atol=k * EPS32 * scale, err_msg=f"leaf {jax.tree_util.keystr(path)}")
