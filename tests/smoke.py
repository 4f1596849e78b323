"""A smoke run of an installed fnn, as a new user would try it (not collected by pytest).

    cd "$(mktemp -d)" && python /path/to/tests/smoke.py

.ci/run installs the built wheel (not the source tree) into a fresh virtual environment
with only fnn's runtime dependencies, on the oldest and the newest Python and JAX that
fnn is tested with, and runs this from a folder outside the source tree. It checks that
``import fnn`` finds the installed package with every subpackage and ``py.typed``, then
trains on a small synthetic problem (two Gaussian blobs per class, no dataset package):
``fit``, ``sweep``, successive halving, ``pbt``, ``lr_range``, a seed ensemble and a
small CNN, each learning, with programs kept in a persistent compilation cache. Exits
non-zero with the failed check's message.
"""

import sys
import tempfile
from pathlib import Path

import jax
import numpy as np

import fnn

SOURCE = Path(__file__).resolve().parents[1]


def check(condition: bool, message: str) -> None:
    if not condition:
        sys.exit(f"smoke: {message}")


def blobs(n: int, features: int, classes: int, seed: int):
    """``n`` examples [n, features] float32 around one random centre per class, labels int32."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, features))
    y = rng.integers(0, classes, n).astype(np.int32)
    return (centres[y] + rng.normal(0, 1, (n, features))).astype(np.float32), y


def installed_package() -> Path:
    """Where fnn was imported from; it must be an installed copy, complete."""
    package = Path(fnn.__file__).resolve().parent
    check(SOURCE not in package.parents, f"imported fnn from the source tree ({package}), not an installed copy")
    source_packages = {p.parent.relative_to(SOURCE) for p in (SOURCE / "fnn").rglob("__init__.py")}
    installed = {p.parent.relative_to(package.parent) for p in package.rglob("__init__.py")}
    check(source_packages <= installed, f"the installed fnn lacks {sorted(map(str, source_packages - installed))}")
    check((package / "py.typed").is_file(), "the installed fnn has no py.typed")
    return package


def main() -> None:
    package = installed_package()
    folder = fnn.programs.use_compilation_cache(tempfile.mkdtemp())
    x, y = blobs(330, 8, 3, seed=0)
    (x, y), (x_val, y_val) = (x[:240], y[:240]), (x[240:], y[240:])

    def config(lr=1e-2, l2=0.0):
        return fnn.Trainer(fnn.mlp([8, 16, 3]), fnn.adam(lr), fnn.cross_entropy, regularizer=fnn.l2(l2))

    options = dict(epochs=6, batch_size=30, devices=1)
    result = fnn.fit(config(), x, y, key=0, epochs=6, batch_size=30, validation=(x_val, y_val))
    loss = np.asarray(result.history["loss"])
    check(loss[-1] < 0.5 * loss[0], f"fit did not learn: loss {loss}")

    table = fnn.sweep(config, x, y, seeds=2, grid={"lr": [3e-3, 1e-2]}, validation=(x_val, y_val), **options)
    check(np.asarray(table.results.history["val_accuracy"]).shape == (4, 6), "sweep's history has the wrong shape")
    check(len(fnn.ensemble(config, table, x_val, y_val)) == 2, "ensemble does not score each grid point")

    halved = fnn.sweep(
        config,
        x,
        y,
        seeds=[0],
        grid={"lr": [1e-3, 3e-3, 1e-2], "l2": [0.0, 1e-4, 1e-3]},
        schedule=fnn.halving(2, eta=3),
        validation=(x_val, y_val),
        **options,
    )
    check(int(halved.rung.max()) == 2, f"halving ran rungs {halved.rung}")

    population = fnn.pbt(
        config, x, y, population={"lr": [1e-3, 3e-3, 1e-2, 3e-2]}, interval=2, hyperparameters=["lr"], **options
    )
    check(population.parents.shape == (3, 4), f"pbt's parents have shape {population.parents.shape}")

    ramp = fnn.lr_range(config, x, y, steps=20, batch_size=30, devices=1)
    check(1e-5 < ramp.suggestion < 1.0, f"lr_range suggests {ramp.suggestion}")

    images = x[:, :, None]  # [n, 8, 1]: 8 steps of one channel
    cnn = fnn.Serial((fnn.Conv1D(1, 4, 3), fnn.Activation("relu"), fnn.GlobalAvgPool(), fnn.Dense(4, 3)))
    trained = fnn.fit(fnn.Trainer(cnn, fnn.adam(3e-2), fnn.cross_entropy), images, y, key=0, epochs=6, batch_size=30)
    cnn_loss = np.asarray(trained.history["loss"])
    check(cnn_loss[-1] < cnn_loss[0], f"the CNN did not learn: loss {cnn_loss}")

    entries = len(list(folder.iterdir()))
    check(entries > 0, f"nothing was written to the compilation cache {folder}")
    print(
        f"smoke: fnn from {package} on Python {sys.version.split()[0]}, jax {jax.__version__}: fit, sweep, ensemble, "
        f"halving, pbt, lr_range and a CNN trained; {entries} programs cached"
    )


if __name__ == "__main__":
    main()
