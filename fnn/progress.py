"""Progress reports from inside a compiled run.

``report`` is called while tracing the epoch loop; it plants a ``jax.debug.callback``
that, when the compiled program runs, prints one line per epoch on the host::

    epoch   3/20  loss 0.4521  accuracy 0.8512  val_loss 0.4710  val_accuracy 0.8400  lr 1.00e-03  [2.3 s]

The printing function is a module-level function (not a fresh closure), so enabling
progress does not defeat the jit cache. Elapsed time counts from the last ``start()``
(``fit`` calls it). Under ``vmap`` each member calls back in turn; only the first call
for an epoch is printed.
"""

from __future__ import annotations

import sys
import time

import jax

_last = {"epoch": None, "start": 0.0}


def start():
    """Start the clock of a new run."""
    _last.update(epoch=None, start=time.perf_counter())


def report(epoch, epochs: int, values: dict):
    """Print ``values`` (scalars) for ``epoch`` (0-based, traced) of ``epochs`` at run time."""
    jax.debug.callback(_print_line, epoch, epochs, values)


def _print_line(epoch, epochs, values):
    epoch = int(epoch)
    if epoch == _last["epoch"]:
        return
    _last["epoch"] = epoch
    fields = "  ".join(f"{k} {float(v):.3e}" if k == "lr" else f"{k} {float(v):.4f}" for k, v in values.items())
    width = len(str(epochs))
    elapsed = time.perf_counter() - _last["start"]
    print(f"epoch {epoch + 1:>{width}}/{epochs}  {fields}  [{elapsed:.1f} s]", file=sys.stdout, flush=True)
