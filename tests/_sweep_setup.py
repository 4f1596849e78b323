"""What the sweep tests share (test_sweep, test_halving, test_pbt, test_sweep_resume,
test_ensemble, test_ema): the configuration they sweep over the ``digits_300`` fixture,
their fit options, a stand-in that fails a test when a compiled program runs, and a
counter of compilations.

One configuration (test_sweep, test_halving, test_pbt) and one batch size keep the
compiled programs' shapes the same, so a program one file compiles serves the others run
in the same process. Tests import this as a sibling module, ``from _sweep_setup import
...``, like ``tolerances``.
"""

from __future__ import annotations

import contextlib

import jax

import fnn

BATCH = 50  # 300 training digits: 6 updates an epoch


def config(lr=1e-2, l2=0.0) -> fnn.Trainer:
    """The swept configuration: MLP 64-16-10, Adam, cross-entropy, an L2 penalty (0: none).

    Args:
      lr: Adam's learning rate.
      l2: the L2 penalty's strength.
    Returns:
      the ``fnn.Trainer``.
    """
    return fnn.Trainer(fnn.mlp([64, 16, 10]), fnn.adam(lr), fnn.cross_entropy, regularizer=fnn.l2(l2))


def sweep_options(digits, epochs: int, **more) -> dict:
    """The options of a sweep (or pbt) on ``digits``.

    Args:
      digits: ``x, y, x_val, y_val`` (the ``digits_300`` fixture).
      epochs: the epochs of every member.
      more: further options, after the shared ones.
    Returns:
      ``{"epochs", "batch_size": 50, "validation": (x_val, y_val), "devices": 1, **more}``.
    """
    return dict(epochs=epochs, batch_size=BATCH, validation=digits[2:], devices=1, **more)


def forbid(monkeypatch, owner, name: str, what: str) -> None:
    """Replace the compiled program ``owner.name`` (for this test) by one that fails it.

    Args:
      monkeypatch: the test's ``monkeypatch`` fixture.
      owner: the module that holds the program.
      name: the program's name in ``owner``.
      what: the program in words: the failure says ``"<what> ran"``.
    """

    def never(*args, **kwargs):
        raise AssertionError(f"{what} ran")

    monkeypatch.setattr(owner, name, never)


@contextlib.contextmanager
def count_compiles():
    """Counts XLA compilations inside the block (``jax.monitoring``): yields a list."""
    events = []

    def listen(event, duration, **kwargs):
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(listen)
    try:
        yield events
    finally:
        jax.monitoring.unregister_event_duration_listener(listen)
