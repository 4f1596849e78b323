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

``start`` also takes host-side settings for the run, read by the callback when the
program runs (not when it is traced), so one compiled program serves runs with different
settings: ``start(members=k, label="chunk 2/3")`` summarizes only the FIRST ``k`` members
of the batch (the others are padding: a sweep pads its last chunk, and a chunk sharded
over devices, with copies of real members at the end) and prefixes every line with the
label; the count then reads ``running/k``::

    chunk 2/3  epoch  3/20  loss 0.4521 [0.4102–0.4876]  lr 1.000e-03  3/4 running  [9.1 s]

``fit`` calls ``start()`` with the defaults (every member, no label); ``finish()``
restores them. The settings are global to the process: a caller that changes them must
wait for its program to finish (``jax.block_until_ready``) before it changes them again.
"""

from __future__ import annotations

import functools
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

_run: dict = {"start": 0.0, "members": None, "label": ""}  # read by the host callback


def start(members: int | None = None, label: str = "", *, restart_clock: bool = True) -> None:
    """Start a new run: restart the clock and set how its progress lines read.

    Args:
      members: summarize only the first ``members`` members of a vmapped batch (the rest
        are padding); ``None``: all of them.
      label: printed at the start of every line (e.g. ``"chunk 2/3"``); ``""``: none.
      restart_clock: ``False`` keeps counting the elapsed time from the previous
        ``start`` (a sweep's later chunks).
    """
    if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
        raise ValueError(f"members must be an int >= 1 or None; got {members!r}")
    if restart_clock:
        _run["start"] = time.perf_counter()
    _run.update(members=members, label=str(label))


def finish() -> None:
    """Restore the default settings (every member, no label); the clock keeps running."""
    _run.update(members=None, label="")


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
    real = running.size if _run["members"] is None else min(_run["members"], running.size)
    active = running.reshape(-1)[:real]  # padding members sit at the end of the batch
    if not active.any():
        return zeros
    index = int(epoch.reshape(-1)[:real][active][0])
    fields = "  ".join(_field(k, np.asarray(v).reshape(-1)[:real][active]) for k, v in zip(names, values))
    count = f"  {int(active.sum())}/{real} running" if running.size > 1 or _run["members"] is not None else ""
    elapsed = time.perf_counter() - _run["start"]
    epochs = int(np.ravel(epochs)[0])  # under vmap every argument gains a member axis
    width = len(str(epochs))
    label = f"{_run['label']}  " if _run["label"] else ""
    line = f"{label}epoch {index + 1:>{width}}/{epochs}  {fields}{count}  [{elapsed:.1f} s]"
    print(line, file=sys.stdout, flush=True)
    return zeros


def _field(name: str, values: np.ndarray) -> str:
    """``name mean`` for one member or equal values, else ``name mean [min–max]``."""
    number = "{:.3e}" if name == "lr" else "{:.4f}"
    text = f"{name} {number.format(float(np.mean(values)))}"
    if values.size > 1 and np.ptp(values) > 0:
        text += f" [{number.format(float(np.min(values)))}–{number.format(float(np.max(values)))}]"
    return text
