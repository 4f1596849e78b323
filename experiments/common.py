"""Plumbing shared by the experiment scripts: options, timing, results files, plots.

An experiment script is its options, its experiment and its plot; the rest is here:

* :func:`parser` builds its ``ArgumentParser`` from the script's docstring: ``--out``,
  ``--no-progress``, ``--data-dir`` for the scripts that read MNIST-family files, and the
  options several experiments share (:data:`SHARED_OPTIONS`: ``--epochs``, ``--hidden``,
  ``--lr``, ...) with the script's defaults; the script adds its own options to it.
* :func:`start` parses the command line into a :class:`Run`, which times the phases of the
  run (``with run("train"): ...``, a :class:`Timer`) and, with :meth:`Run.finish`, writes
  ``<out>/<name>.json`` (:func:`write_results`: config, metrics, timings, the JAX version
  and device) and ``<out>/<name>.png`` (:func:`save_figure`) and returns what the script's
  ``main`` returns; the script's plot function starts its figure with :func:`figure`.
* :func:`fashion_data` loads the Fashion-MNIST subset that ``--data-dir``, ``--n-train``
  and ``--n-test`` ask for.

Nothing here touches fnn's internals.
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported anywhere

import jax  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402

EXPERIMENTS = Path(__file__).resolve().parent
DEFAULT_OUT = EXPERIMENTS / "results"


def default_data_dir() -> Path:
    """``$FNN_DATA`` if set, else ``../shared/data`` next to the repository."""
    env = os.environ.get("FNN_DATA")
    return Path(env) if env else EXPERIMENTS.parent.parent / "shared" / "data"


# The options that several experiments share, by destination (``n_train`` is ``--n-train``):
# how each is parsed and what its help says, written once. A script takes those it names,
# with its defaults, in ``parser(__doc__, epochs=20, hidden=[256, 256], ...)``.
SHARED_OPTIONS: dict[str, dict] = {
    "seeds": {"type": int, "help": "number of seeds, trained together in one vmapped program"},
    "epochs": {"type": int, "help": "training epochs"},
    "batch_size": {"type": int, "help": "mini-batch size"},
    "hidden": {"type": int, "nargs": "+", "help": "hidden layer widths"},
    "activation": {"help": "activation function of the hidden layers"},
    "lr": {"type": float, "help": "Adam's initial learning rate (cosine decay to 0)"},
    "dropout": {"type": float, "help": "dropout rate after each hidden layer (0: none)"},
    "l2": {"type": float, "help": "L2 penalty on the weights (l2/2 * sum w^2)"},
    "n_train": {"type": int, "help": "random subset of the 60,000 training images"},
    "n_test": {"type": int, "help": "use only the first N test examples"},
}


def parser(doc: str, *, data: bool = False, helps: dict[str, str] | None = None, **defaults) -> argparse.ArgumentParser:
    """The ``ArgumentParser`` of an experiment script, described by the first paragraph of
    ``doc`` (the script's docstring): ``--out``, ``--no-progress``, ``--data-dir`` when
    ``data``, then the shared options named in ``defaults`` (keys of :data:`SHARED_OPTIONS`),
    in that order, each with its default there; ``helps`` rewords the help of some of them
    for this script. The script adds its own options to the parser it gets."""
    p = argparse.ArgumentParser(
        description=doc.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="folder for the results JSON and the PNG plot")
    p.add_argument("--no-progress", action="store_true", help="no per-epoch progress lines")
    if data:
        p.add_argument(
            "--data-dir",
            type=Path,
            default=default_data_dir(),
            help="folder holding mnist/ and fashion-mnist/ (IDX files); default $FNN_DATA or ../shared/data",
        )
    helps = helps or {}
    unknown = (set(defaults) | set(helps)) - set(SHARED_OPTIONS)
    if unknown:
        raise TypeError(f"no shared option {sorted(unknown)}; the shared ones are {list(SHARED_OPTIONS)}")
    for dest, default in defaults.items():
        spec = SHARED_OPTIONS[dest] | {"default": default}
        if dest in helps:
            spec["help"] = helps[dest]
        p.add_argument("--" + dest.replace("_", "-"), **spec)
    return p


def start(name: str, options: argparse.ArgumentParser, argv=None) -> tuple[Run, argparse.Namespace]:
    """Parse ``argv`` with ``options`` (``argv=None``: the command line's arguments) and
    start the clock of the run of experiment ``name``: ``run, args = start(NAME, parser(), argv)``."""
    run = Run(name, options.parse_args(argv), argv)
    return run, run.args


def training_options(args: argparse.Namespace, validation) -> dict:
    """The ``fnn.fit`` / ``fnn.sweep`` options every script takes from its command line
    (``--epochs``, ``--batch-size``, ``--no-progress``), with its validation pair."""
    return {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "validation": validation,
        "progress": not args.no_progress,
    }


def load_fashion(data_dir: Path):
    """Fashion-MNIST from ``<data_dir>/fashion-mnist`` as (uint8) ``fnn.datasets.Dataset``
    (read and checksummed once per process: the smoke tests run several scripts)."""
    return _load_fashion(Path(data_dir).resolve())


@functools.lru_cache(maxsize=1)
def _load_fashion(data_dir: Path):
    return fnn.datasets.load_fashion_mnist(data_dir / "fashion-mnist")


def fashion_subset(data, n_train: int | None, n_test: int | None = None, *, seed: int = 0):
    """``(x_train, y_train, x_test, y_test)``: pixels scaled to [0, 1] and flattened
    (``fnn.prepare_images``); ``n_train`` training examples drawn at random (fixed
    ``seed``; all, in their order, when ``None``), and the first ``n_test`` test examples
    (all when ``None``)."""
    rng = np.random.default_rng(seed)
    n_train = len(data.y_train) if n_train is None else min(n_train, len(data.y_train))
    idx = np.sort(rng.permutation(len(data.y_train))[:n_train])
    n_test = len(data.y_test) if n_test is None else min(n_test, len(data.y_test))
    x_train = fnn.prepare_images(data.x_train[idx])
    x_test = fnn.prepare_images(data.x_test[:n_test])
    return x_train, np.asarray(data.y_train[idx], np.int32), x_test, np.asarray(data.y_test[:n_test], np.int32)


def fashion_data(run: Run):
    """:func:`fashion_subset` of the Fashion-MNIST in the run's ``--data-dir``, with its
    ``--n-train`` and ``--n-test``, timed as the run's phase ``"data"``."""
    with run("data"):
        data = load_fashion(run.args.data_dir)
        return fashion_subset(data, run.args.n_train, run.args.n_test)


class Timer:
    """Wall-clock time of named phases: ``with timer("train"): ...``; ``timer.times``."""

    def __init__(self):
        self.start = time.perf_counter()
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = round(self.times.get(name, 0.0) + time.perf_counter() - t0, 3)

    def total(self) -> float:
        return round(time.perf_counter() - self.start, 3)


class Run(Timer):
    """One run of an experiment script (made by :func:`start`): its name, its parsed
    options ``args`` and the command's arguments ``argv``, and the times of its phases
    (``with run("train"): ...``; ``run.times``, as a :class:`Timer`)."""

    def __init__(self, name: str, args: argparse.Namespace, argv=None):
        super().__init__()
        self.name, self.args, self.argv = name, args, argv

    def finish(self, *, config: dict, metrics: dict, plot, **extra) -> dict:
        """The end of the run: ``<out>/<name>.json`` (:func:`write_results`: the options
        updated with ``config``, ``metrics``, the phase times and the total, the
        environment, and ``extra`` as further top-level entries), then ``plot()``'s
        figure as ``<out>/<name>.png``; prints the times and the two paths. Returns what an
        experiment's ``main`` returns: ``{"metrics", "timings", "json", "png"}``."""
        timings = self.times | {"total": self.total()}
        config = vars(self.args) | config
        path = write_results(
            self.args.out, self.name, argv=self.argv, config=config, metrics=metrics, timings=timings, **extra
        )
        png = save_figure(plot(), self.args.out, self.name)
        say(f"time: {timings}\nwrote {path} and {png}")
        return {"metrics": metrics, "timings": timings, "json": path, "png": png}


def say(*args):
    """Print and flush (progress lines show up at once, also when piped)."""
    print(*args, flush=True)


def environment() -> dict:
    """The versions and the machine the numbers were measured on."""
    device = jax.devices()[0]
    return {
        "cpu_model": _cpu_model(),
        "jax": jax.__version__,
        "fnn": fnn.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": f"{device.platform}:{device.device_kind}",
        "devices": len(jax.devices()),
        "cpu_count": os.cpu_count(),
        "x64": bool(jax.config.jax_enable_x64),
    }


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _plain(value):
    """JSON-ready copy: arrays to lists, NumPy scalars to Python numbers, NaN/inf to None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (np.ndarray, jax.Array)):
        return _plain(np.asarray(value).tolist())
    if isinstance(value, (np.bool_, bool)):
        return bool(value)
    if isinstance(value, (np.integer, int)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        value = float(value)
        return float(f"{value:.7g}") if math.isfinite(value) else None  # 7 digits: float32 precision, small files
    return value


def write_results(out: Path, name: str, *, argv, config: dict, metrics: dict, timings: dict, **extra) -> Path:
    """Write ``<out>/<name>.json`` with the command (``argv``: the script's arguments,
    ``None`` for the command line's), config, metrics, timings, environment and extras."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    payload = {
        "experiment": name,
        "command": " ".join(["python", f"experiments/{name}.py", *args]),
        "config": config,
        "metrics": metrics,
        "timings_s": timings,
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **extra,
    }
    path = out / f"{name}.json"
    path.write_text(json.dumps(_plain(payload), indent=2) + "\n")
    return path


def figure(title: str, panels: int, **subplots):
    """``fig, axes``: a matplotlib figure titled ``title`` with ``panels`` axes side by side
    (``subplots``: further ``plt.subplots`` arguments: ``figsize``, ``layout``, ...)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, **subplots)
    fig.suptitle(title)
    return fig, axes


def save_figure(fig, out: Path, name: str) -> Path:
    """Save ``fig`` as ``<out>/<name>.png`` (dpi kept low: small files for git)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    fig.savefig(path, dpi=100, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def band(history) -> dict:
    """Per-epoch mean, std, min and max over the member axis of a [members, epochs] array
    (NaN epochs that did not run are ignored)."""
    h = np.asarray(history, dtype=float)
    with np.errstate(invalid="ignore"), _quiet_nan():
        return {
            "mean": np.nanmean(h, axis=0),
            "std": np.nanstd(h, axis=0),
            "min": np.nanmin(h, axis=0),
            "max": np.nanmax(h, axis=0),
        }


@contextmanager
def _quiet_nan():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def mean_std(values) -> dict:
    """``{"mean", "std", "min", "max", "n"}`` of a 1-D sample."""
    v = np.asarray(values, dtype=float).reshape(-1)
    return {
        "mean": float(v.mean()),
        "std": float(v.std()),
        "min": float(v.min()),
        "max": float(v.max()),
        "n": int(v.size),
    }


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A small markdown table; floats formatted with 4 decimals."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
