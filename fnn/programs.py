"""How fnn compiles its programs: one ``jax.jit`` per program, with fnn's compiler options.

fnn compiles a few programs, each once per static configuration and cached by ``jax.jit``:
the whole run (``fnn.loop.run_epochs``), a sweep's chunk (``fnn.sweep``) and a run's
initial state (``fnn.fit``). :func:`jit_program` makes them, with :func:`compiler_options`.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

import jax


def compiler_options() -> dict[str, Any]:
    """XLA options of fnn's whole-run programs (``run_epochs`` and the sweep's program).

    On CPU, LLVM optimizes the generated loops at level 1 instead of XLA's default 3
    (``xla_backend_optimization_level``), unless ``XLA_FLAGS`` sets a level: the matrix
    products run in libraries either way and the elementwise loops come out as fast,
    while the programs compile in about half the time (measured in
    ``experiments/bench_sweep.py``; see README, Performance). Training is bit-identical
    to level 3; sums in the evaluation may be added up in another order (the last bits
    of ``val_loss``; tests/test_fit.py). Other platforms keep XLA's defaults.
    """
    if jax.default_backend() != "cpu" or "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {"xla_backend_optimization_level": 1}


def jit_program(fn: Callable, static_argnames: tuple[str, ...]) -> Callable:
    """``jax.jit(fn, static_argnames=...)`` with :func:`compiler_options` where they can go.

    The options are read at the first call (then the backend is known; importing fnn
    does not start it, so that ``fnn.distributed.use_cpu_cores`` can still set the number
    of CPU devices). JAX takes compiler options only on a top-level ``jit``: called inside
    another trace (a user's ``jit`` or ``vmap`` of ``fit``), where some argument is a
    tracer, the program is a plain ``jit`` and the outer program's options apply.
    """
    plain = jax.jit(fn, static_argnames=static_argnames)
    tuned = functools.cache(lambda: jax.jit(fn, static_argnames=static_argnames, compiler_options=compiler_options()))

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nested = any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs)))
        return (plain if nested else tuned())(*args, **kwargs)

    call._cache_size = lambda: plain._cache_size() + tuned()._cache_size()  # type: ignore[attr-defined]  # as jit's
    return call
