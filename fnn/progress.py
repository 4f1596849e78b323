"""Progress reports from inside a compiled run: one line per epoch.

``report`` is called while tracing the epoch loop; it plants a host callback that, when
the compiled program runs, prints one line per epoch::

    epoch  3/20  loss 0.4521  accuracy 0.8512  val_loss 0.4710  lr 1.000e-03  [2.3 s]

Under ``vmap`` (a sweep, or ``fit`` vmapped by hand) the callback is batched with
``vmap_method="expand_dims"``: it receives every member's values at once and prints ONE
line for the epoch that summarizes the members still running — the mean of each value
and its min–max range — and how many they are::

    epoch  3/20  loss 0.4521 [0.4102–0.4876]  val_loss 0.4710 [0.4433–0.5012]  lr 1.000e-03  32/32 running  [2.3 s]

Members that stopped (early or by divergence) still ride the batched loop; they are
left out of the summary. The callback is traced into the program when it compiles, so
progress costs no recompilation once a run is cached. Elapsed time counts from the last
``start()`` (``fit`` and ``sweep`` call it).
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_clock = {"start": 0.0}


def start():
    """Start the clock of a new run."""
    _clock["start"] = time.perf_counter()


def report(epoch, epochs: int, values: dict, running) -> jax.Array:
    """Print ``values`` of ``epoch`` (0-based, traced) of ``epochs`` when the program runs.

    Args:
      epoch: int32 scalar, the epoch just run.
      epochs: the run's number of epochs (static).
      values: ``{name: scalar}``, the epoch's history entries.
      running: bool scalar, whether this run (member) was still running this epoch.

    Returns:
      an int32 zero: add it to something the loop carries, so that the compiler keeps
      the callback (a pure callback whose result is unused is removed).
    """
    names = tuple(values)  # the order to print in (a dict argument would be sorted by key)
    return jax.pure_callback(
        functools.partial(_print_line, names),
        jax.ShapeDtypeStruct(jnp.shape(epoch), jnp.int32),
        epoch,
        epochs,
        [values[k] for k in names],
        running,
        vmap_method="expand_dims",
    )


def _print_line(names, epoch, epochs, values, running):
    """Host side: print one line for the epoch over the running members; return zeros."""
    epoch, running = np.asarray(epoch), np.asarray(running, bool)
    zeros = np.zeros(epoch.shape, np.int32)
    active = running.reshape(-1)
    if not active.any():
        return zeros
    members = active.size
    index = int(epoch.reshape(-1)[active][0])
    fields = "  ".join(_field(k, np.asarray(v).reshape(-1)[active]) for k, v in zip(names, values))
    count = f"  {int(active.sum())}/{members} running" if members > 1 else ""
    elapsed = time.perf_counter() - _clock["start"]
    epochs = int(np.ravel(epochs)[0])  # under vmap every argument gains a member axis
    width = len(str(epochs))
    print(f"epoch {index + 1:>{width}}/{epochs}  {fields}{count}  [{elapsed:.1f} s]", file=sys.stdout, flush=True)
    return zeros


def _field(name: str, values: np.ndarray) -> str:
    """``name mean`` for one member or equal values, else ``name mean [min–max]``."""
    number = "{:.3e}" if name == "lr" else "{:.4f}"
    text = f"{name} {number.format(float(np.mean(values)))}"
    if values.size > 1 and np.ptp(values) > 0:
        text += f" [{number.format(float(np.min(values)))}–{number.format(float(np.max(values)))}]"
    return text
