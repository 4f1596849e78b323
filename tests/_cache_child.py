"""The process that tests/test_programs.py starts twice on one compilation cache.

    python tests/_cache_child.py CACHE_FOLDER [WORKLOAD ...]

turns on fnn's persistent compilation cache at ``CACHE_FOLDER``, then runs a short
``fit``, a ``sweep``, a halving sweep (three rung sizes) and a ``pbt`` run on 200 digits
(or only the named ones),
and prints one JSON line: the cache folder, JAX's cache hits and misses per workload
(its monitoring events), and a digest of each result's numbers (a program loaded from the
cache computes the bits the compiled one did).
"""

import hashlib
import json
import sys

import jax
import numpy as np

import fnn

EVENTS = {"/jax/compilation_cache/cache_hits": "hits", "/jax/compilation_cache/cache_misses": "misses"}


def config(lr=1e-2, dropout=0.0):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=dropout), fnn.adam(lr), fnn.cross_entropy)


def workloads(x, y):
    """``{name: thunk}``: each workload's call, small enough for a test."""
    options = dict(epochs=3, batch_size=50, devices=1)
    validation = (x[150:], y[150:])
    x, y = x[:150], y[:150]
    return {
        "fit": lambda: fnn.fit(config(), x, y, key=0, epochs=3, batch_size=50).train_state.params,
        "sweep": lambda: (
            fnn.sweep(config, x, y, seeds=2, grid={"lr": [1e-2, 3e-2]}, **options).results.train_state.params
        ),
        "halving": lambda: (
            fnn.sweep(
                config,
                x,
                y,
                seeds=[0],
                grid={"lr": [1e-3, 1e-2, 3e-2], "dropout": [0.0, 0.1, 0.2]},
                schedule=fnn.halving(1, eta=3),
                validation=validation,
                **options,
            ).results.train_state.params
        ),
        "pbt": lambda: (
            fnn.pbt(
                config,
                x,
                y,
                population={"lr": [1e-3, 3e-3, 1e-2, 3e-2]},
                interval=1,
                hyperparameters=["lr"],
                fraction=0.25,
                validation=validation,
                **options,
            ).results.train_state.params
        ),
    }


def digest(tree) -> str:
    leaves = [np.asarray(leaf).tobytes() for leaf in jax.tree.leaves(tree)]
    return hashlib.sha256(b"".join(leaves)).hexdigest()


def main(cache: str, *names: str) -> dict:
    """Run ``names`` (default every workload) with the cache at ``cache``; the report."""
    folder = fnn.programs.use_compilation_cache(cache)
    counts: dict[str, int] = {}
    jax.monitoring.register_event_listener(
        lambda event, **_: (
            counts.__setitem__(EVENTS[event], counts.get(EVENTS[event], 0) + 1) if event in EVENTS else None
        )
    )
    x, y = fnn.datasets.load_digits()
    x = (x[:200] / 16.0).astype(np.float32)
    report = {"folder": str(folder)}
    for name, run in workloads(x, y[:200]).items():
        if names and name not in names:
            continue
        counts.clear()
        report[name] = {"digest": digest(jax.block_until_ready(run())), "hits": 0, "misses": 0} | counts
    return report


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:])))
