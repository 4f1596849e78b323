"""How fnn compiles its programs: one ``jax.jit`` per program, with fnn's compiler options,
and where compiled programs are kept between processes.

fnn compiles a few programs, each once per static configuration and cached by ``jax.jit``:
the whole run (``fnn.loop.run_epochs``), a sweep's chunk (``fnn.sweep``) and a run's
initial state (``fnn.fit``). :func:`jit_program` makes them, with :func:`compiler_options`.
``jax.jit``'s cache lives as long as the process; :func:`use_compilation_cache` keeps the
compiled programs on disk (JAX's persistent compilation cache), so that the next process
that runs the same script on this machine loads them instead of compiling them again.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.compilation_cache import compilation_cache

CACHE_ENV = "FNN_COMPILATION_CACHE"


def compiler_options() -> dict[str, Any]:
    """XLA options of fnn's whole-run programs (``run_epochs`` and the sweep's program).

    On CPU, LLVM optimizes the generated loops at level 1 instead of XLA's default 3
    (``xla_backend_optimization_level``), unless ``XLA_FLAGS`` sets a level: the matrix
    products run in libraries either way and the elementwise loops come out as fast,
    while the programs compile markedly faster (docs/performance.md). Training is
    bit-identical to level 3; sums in the evaluation may be added up in another order (the
    last bits of ``val_loss``; tests/test_fit.py). Other platforms keep XLA's defaults.
    """
    if jax.default_backend() != "cpu" or "--xla_backend_optimization_level" in os.environ.get("XLA_FLAGS", ""):
        return {}
    return {"xla_backend_optimization_level": 1}


def jit_program(fn: Callable, static_argnames: tuple[str, ...]) -> Callable:
    """``jax.jit(fn, static_argnames=...)`` with :func:`compiler_options` where they can go.

    The options are read at the first call (then the backend is known; importing fnn
    does not start it, so that ``fnn.distributed.use_cpu_cores`` can still set the number
    of CPU devices). JAX takes compiler options only on a top-level ``jit``: called inside
    another trace (a user's ``jit`` or ``vmap`` of ``fit``, a sweep's program), where some
    argument is a tracer, ``fn`` is traced into the outer program and its options apply: a
    nested ``jit`` would be traced alone and then batched, twice the tracing of every run
    a sweep compiles (tracing, not XLA, is most of what a process pays for a program that
    the persistent cache holds).
    """
    tuned = functools.cache(lambda: jax.jit(fn, static_argnames=static_argnames, compiler_options=compiler_options()))

    @functools.wraps(fn)
    def call(*args, **kwargs):
        if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves((args, kwargs))):
            return fn(*args, **kwargs)  # traced into the outer program once (a nested jit is traced, then batched)
        return tuned()(*args, **kwargs)

    call._cache_size = lambda: tuned()._cache_size()  # type: ignore[attr-defined]  # as jit's
    return call


def host_array(value, dtype=None):
    """``jnp.asarray(value, dtype)``, without a compiled program for a value on the host.

    JAX makes a device array from a NumPy array or a Python number with a small program
    of its own per shape and dtype (``stage``, ``convert_element_type``), which every
    process compiles or loads from the cache. A host value is converted by NumPy instead
    and enters fnn's programs as an argument; JAX arrays and tracers go to ``jnp.asarray``.

    Args:
      value: an array, a number, or a nested list of numbers.
      dtype: the dtype (canonicalized as JAX does: float64 is float32 unless x64 is on).
    Returns:
      a NumPy array for a host value, else a JAX array (or tracer).
    """
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return jnp.asarray(value, dtype)
    array = np.asarray(value, dtype)
    return array.astype(jax.dtypes.canonicalize_dtype(array.dtype), copy=False)


def device_array(value) -> jax.Array:
    """``jnp.asarray(value)`` as a device array, without a compiled program for a value on
    the host (see :func:`host_array`): a host value is transferred (``jax.device_put``)."""
    if isinstance(value, (jax.Array, jax.core.Tracer)):
        return jnp.asarray(value)
    return jax.device_put(host_array(value))


def default_cache_dir() -> Path:
    """The folder :func:`use_compilation_cache` uses when given none: ``$FNN_COMPILATION_CACHE``
    if set, else ``$XDG_CACHE_HOME/fnn/compilation`` (``~/.cache/fnn/compilation``)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "fnn" / "compilation"


def use_compilation_cache(path: str | os.PathLike | None = None) -> Path:
    """Keep every program this process compiles on disk, and load it from there next time.

    Turns on JAX's persistent compilation cache for every program, however small or quick
    to compile (``jax_persistent_cache_min_compile_time_secs=0``,
    ``jax_persistent_cache_min_entry_size_bytes=-1``): a second process that compiles the
    same program — the same computation, shapes, devices, compiler options (fnn's
    :func:`compiler_options` included), ``XLA_FLAGS`` and CPU — loads it instead. Call it
    first thing in a script; a call later on applies to the programs compiled after it.

    Entries go to a sub-folder named by the JAX and jaxlib versions, so a cache written by
    another JAX is never read (JAX's own key also holds the jaxlib version). Programs with a
    host callback (``fit(..., progress=True)``) are compiled every time: JAX does not
    persist them. Clear the cache by deleting the folder (``rm -r ~/.cache/fnn/compilation``).

    Args:
      path: the cache folder; default :func:`default_cache_dir` (``$FNN_COMPILATION_CACHE``,
        else ``~/.cache/fnn/compilation``). Created if missing.

    Returns:
      The folder the entries go to: ``path / "jax-<version>-jaxlib-<version>"``.

    Raises:
      ValueError: the folder cannot be created or written (it names the folder).
    """
    versions = f"jax-{jax.__version__}-jaxlib-{importlib.metadata.version('jaxlib')}"
    folder = (Path(path).expanduser() if path is not None else default_cache_dir()) / versions
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise ValueError(
            f"use_compilation_cache: cannot write the compilation cache folder {folder} ({err.strerror or err}); "
            f"pass path= a writable folder or set {CACHE_ENV}"
        ) from err
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    compilation_cache.reset_cache()  # the next compile opens the cache at ``folder``
    return folder
