"""Plumbing shared by the experiment scripts: options, timing, results files, plots.

An experiment script is its options, its experiment and its plot; the rest is here:

* :func:`parser` builds its ``ArgumentParser`` from the script's docstring: ``--out``,
  ``--no-progress``, ``--tensorboard`` (:meth:`Run.tensorboard`), ``--data-dir`` for the
  scripts that read MNIST-family files, and the options several experiments share
  (:data:`SHARED_OPTIONS`: ``--epochs``, ``--hidden``, ``--lr``, ...) with the script's
  defaults; the script adds its own options to it, and those of a selection run
  (:func:`add_selection_options`, :func:`add_grid_options`, :func:`variant`).
* :func:`start` (:func:`start_on_cores` for a script whose sweeps use every CPU core:
  ``--cpu-devices``) parses the command line into a :class:`Run`, which times the phases of the
  run (``with run("train"): ...``, a :class:`Timer`) and, with :meth:`Run.finish`, writes
  ``<out>/<name>.json`` (:func:`write_results`: config, metrics, timings, the JAX version
  and device) and ``<out>/<name>.png`` (:func:`save_figure`) and returns what the script's
  ``main`` returns; the script's plot function starts its figure with :func:`figure`.
* The protocol every experiment follows (``experiments/README.md``): model selection
  (hyperparameters, the epoch of ``best_params``, early stopping) sees only a validation
  split carved from the training set (:func:`carve_validation`, seeded and stratified for
  classification); the test set is a :class:`TestSet` that hands its data out once, after
  selection, to score the selected models; :func:`protocol` is the JSON record of it (split
  sizes and seeds, the selection rule, which numbers are validation and which test, how
  many times the test set was read). :func:`fashion_splits` gives Fashion-MNIST that way.
  A script that retrains its final models on train + validation finds its setting's
  validation score in its selection run's JSON with :func:`selection_row`; the CNN scripts
  share that whole protocol, select then retrain (:func:`selection_sweeps`,
  :func:`finish_selection`, :func:`retrain`, :func:`retrained_metrics`,
  :func:`finish_retrained`).
* Statistics over seeds: :func:`mean_std` (mean ± std, min–max) and
  :func:`paired_comparison` (a paired t confidence interval for the difference of two
  methods run on the same seeds; :func:`t_quantile` without SciPy).

Nothing here touches fnn's internals.
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import math
import os
import platform
import re
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import matplotlib

matplotlib.use("Agg")  # no display needed; set before pyplot is imported anywhere

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
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
    "weight_decay": {"type": float, "help": "AdamW's decoupled weight decay (x lr)"},
    "label_smoothing": {"type": float, "help": "label smoothing of the cross-entropy"},
    "n_train": {"type": int, "help": "random subset of the 60,000 training images"},
    "n_test": {"type": int, "help": "use only the first N test examples"},
    "n_val": {"type": int, "help": "training examples held out for selection (stratified)"},
    "split_seed": {"type": int, "help": "seed of the validation split"},
    "cache_dir": {"type": Path, "help": "where the generated MNIST-1D .npz is cached"},
    "cpu_devices": {
        "type": int,
        "help": "CPU devices for JAX (fnn.distributed.use_cpu_cores); default one per core (called from Python "
        "after JAX started: the process's devices)",
    },
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
    p.add_argument(
        "--tensorboard",
        type=Path,
        default=None,
        metavar="DIR",
        help="also write TensorBoard event files of every fit, sweep and PBT run, under DIR/<results name>/<phase> "
        "(needs fnn[tensorboard]; view with: tensorboard --logdir DIR)",
    )
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


# What each hyperparameter of a selection grid is, in the help of its ``--grid-<name>`` option.
GRID_WORDS = {
    "lr": "learning rates",
    "dropout": "dropout rates",
    "weight_decay": "weight decays",
    "label_smoothing": "label smoothings",
}


def add_selection_options(
    p: argparse.ArgumentParser, *, seeds: list[int], variants: list[str], variants_help: str
) -> None:
    """Add the options of a script's selection run to its parser: ``--select`` (run the
    grid on the validation split instead), ``--select-seeds`` and ``--select-variants``
    (the settings that change the program, one sweep each; see :func:`variant`).

    Args:
      p: the script's parser.
      seeds: the default seeds of the grid.
      variants: the default variants.
      variants_help: what a variant's tokens set, for ``--select-variants``' help.
    """
    p.add_argument(
        "--select", action="store_true", help="run the selection grid on the validation split (reads no test data)"
    )
    p.add_argument("--select-seeds", type=int, nargs="+", default=seeds, help="seeds of the selection grid")
    p.add_argument("--select-variants", nargs="+", default=variants, help=variants_help)


def add_grid_options(p: argparse.ArgumentParser, **values: list[float]) -> None:
    """Add ``--grid-<name>`` to a script's parser for each traced hyperparameter of its
    selection grid (keys of :data:`GRID_WORDS`), in the order given.

    Args:
      p: the script's parser.
      values: ``{name: default values}``.
    """
    for name, default in values.items():
        flag = "--grid-" + name.replace("_", "-")
        p.add_argument(flag, type=float, nargs="+", default=default, help=f"{GRID_WORDS[name]} of the grid")


def variant(text: str, defaults: dict, tokens: dict[str, str]) -> dict:
    """A setting of a selection grid, from ``--select-variants``: '+'-joined tokens, each a
    letter of ``tokens`` and a whole number (``e60``), or x-joined whole numbers for a
    setting whose default is a list (``c16x32x64``).

    Args:
      text: the variant, e.g. ``"c16x32x64+d0+e15"``.
      defaults: ``{setting: value}``, every setting a variant may change, as it is where
        ``text`` does not change it.
      tokens: ``{letter: setting}``.
    Returns:
      ``defaults`` updated by ``text``'s tokens.
    Raises:
      SystemExit: naming a token that is not a letter of ``tokens`` with its number(s).
    """
    out = dict(defaults)
    for token in text.split("+"):
        key, value = tokens.get(token[:1]), token[1:]
        many = isinstance(defaults.get(key), list)
        if key is None or not (value.replace("x", "") if many else value).isdigit():
            forms = ", ".join(f"{t}<a>x<b>" if isinstance(defaults[k], list) else f"{t}<n>" for t, k in tokens.items())
            raise SystemExit(f"--select-variants: unknown token {token!r} in {text!r} ({forms})")
        out[key] = [int(c) for c in value.split("x")] if many else int(value)
    return out


def start(name: str, options: argparse.ArgumentParser, argv=None) -> tuple[Run, argparse.Namespace]:
    """Parse ``argv`` with ``options`` (``argv=None``: the command line's arguments) and
    start the clock of the run of experiment ``name``: ``run, args = start(NAME, parser(), argv)``."""
    run = Run(name, options.parse_args(argv), argv)
    return run, run.args


def start_on_cores(name: str, options: argparse.ArgumentParser, argv=None) -> tuple[Run, argparse.Namespace]:
    """:func:`start` for a script whose sweeps train on every CPU core: JAX gets its devices
    first (``--cpu-devices``, :func:`use_cores`), before any computation, then the clock starts."""
    use_cores(options.parse_args(argv).cpu_devices)
    return start(name, options, argv)


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


# --- the protocol: validation carved from the training set, the test set read once ------


class TestSet:
    """The test split, sealed: :meth:`read` hands ``(x, y)`` out once, after selection.

    A second read is a ``RuntimeError``: an experiment scores all its selected models with
    the one read (a vmapped evaluation of every seed, every method), and nothing it chose
    (a hyperparameter, an epoch, a stopping point) can have seen the test set. ``reads``
    (0 or 1) goes into the results JSON (:func:`protocol`).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, x, y, description: str = ""):
        self._data = (x, y)
        self.size = int(np.shape(y)[0])
        self.description = description
        self.reads = 0

    def read(self):
        """``(x_test, y_test)``, once; raises ``RuntimeError`` on a second call."""
        if self.reads:
            raise RuntimeError(
                "the test set was read already: score every selected model with that one read, "
                "and select on the validation split"
            )
        self.reads += 1
        return self._data


def carve_validation(x, y, n_val: int, *, seed: int, stratify: bool = True):
    """Split a training set into training and validation parts for model selection.

    Args:
      x, y: the training set, ``[n, ...]`` (NumPy or JAX arrays).
      n_val: examples in the validation part, ``0 < n_val < n``.
      seed: the split's seed (``fnn.train_test_split(jax.random.key(seed), ...)``).
      stratify: keep each class's share in both parts (``stratify=y``; classification);
        ``False`` for a plain random split (regression).

    Returns:
      ``(x_train, y_train, x_val, y_val), record`` where ``record`` (for :func:`protocol`)
      holds the sizes, the seed and whether the split is stratified.
    """
    n = int(np.shape(y)[0])
    if not 0 < n_val < n:
        raise ValueError(f"n_val must lie in (0, {n}): the validation part is carved from {n} examples; got {n_val}")
    split = fnn.train_test_split(jax.random.key(seed), x, y, n_val / n, stratify=y if stratify else None)
    record = {"train": n - n_val, "validation": n_val, "split_seed": seed, "stratified": stratify}
    return tuple(split), record


def fashion_splits(run: Run, *, n_val: int, n_train: int | None = None, split_seed: int = 0):
    """Fashion-MNIST under the protocol, timed as the run's phase ``"data"``.

    Pixels scaled to [0, 1] and flattened (``fnn.prepare_images``). ``n_val`` of the 60,000
    training images form the validation split (stratified, ``split_seed``); of the rest,
    ``n_train`` images (all when ``None``) are the training set (a stratified random subset,
    seed ``split_seed + 1``). The test set is the 10,000 test images (the first
    ``run.args.n_test`` when that option is set), sealed in a :class:`TestSet`.

    Returns:
      ``x_train, y_train, x_val, y_val, test, split`` with ``split`` the record of
      :func:`carve_validation` plus the training subset and the test size.
    """
    with run("data"):
        data = load_fashion(run.args.data_dir)
        x = fnn.prepare_images(data.x_train)
        y = np.asarray(data.y_train, np.int32)
        (x_pool, y_pool, x_val, y_val), split = carve_validation(x, y, n_val, seed=split_seed)
        split["source"] = f"Fashion-MNIST training set ({len(y)} images)"
        if n_train is not None and n_train < len(y_pool):
            subset = fnn.train_test_split(
                jax.random.key(split_seed + 1), x_pool, y_pool, n_train / len(y_pool), stratify=y_pool
            )
            x_train, y_train = subset.x_test, subset.y_test  # the drawn part is the training subset
            split["train"] = len(y_train)
            split["train_subset"] = (
                f"{len(y_train)} of the {len(y_pool)} images left after the validation split "
                f"(stratified, seed {split_seed + 1})"
            )
        else:
            x_train, y_train = x_pool, y_pool
        n_test = len(data.y_test) if getattr(run.args, "n_test", None) is None else run.args.n_test
        x_test = fnn.prepare_images(data.x_test[:n_test])
        test = TestSet(x_test, np.asarray(data.y_test[:n_test], np.int32), "Fashion-MNIST test set")
        split["test"] = test.size
        return x_train, y_train, x_val, y_val, test, split


def protocol(
    split: dict,
    *,
    selection: str,
    validation_metrics: list[str],
    test_metrics: list[str],
    test: TestSet | None,
    selected: dict | None = None,
    seeds=None,
) -> dict:
    """The JSON record of how a run follows the protocol.

    Args:
      split: sizes and seeds of the splits (:func:`carve_validation`'s record, plus ``test``).
      selection: the selection rule in words: what was chosen, on which split, by what.
      validation_metrics, test_metrics: the keys of ``metrics`` that hold validation
        numbers and those that hold test numbers (the two lists must not overlap).
      test: the run's :class:`TestSet` (``None`` where a run has no test data, a
        selection run: then no test numbers are allowed).
      selected: the values selection settled on (hyperparameters, epochs).
      seeds: the training seeds of the reported models.

    Returns:
      ``{"split", "selection", "selected", "seeds", "validation_metrics",
      "test_metrics", "test_reads"}``.
    """
    overlap = set(validation_metrics) & set(test_metrics)
    if overlap:
        raise ValueError(f"metrics {sorted(overlap)} are listed as both validation and test numbers")
    reads = 0 if test is None else test.reads
    if test_metrics and reads != 1:
        raise ValueError(f"test metrics {test_metrics} reported, but the test set was read {reads} times (must be 1)")
    return {
        "split": split,
        "selection": selection,
        "selected": selected or {},
        "seeds": seeds,
        "validation_metrics": list(validation_metrics),
        "test_metrics": list(test_metrics),
        "test_reads": reads,
    }


def selection_row(out: Path, name: str, selected: dict) -> dict | None:
    """The row of ``<out>/<name>_select.json``'s ``metrics["grid"]`` whose values equal
    ``selected`` (numbers to float32 precision): the validation score, in the selection
    run, of the setting a final run retrained with. ``None`` where the file or the row is
    missing (the final run then records no validation number of its own)."""

    def same(a, b):
        if isinstance(a, (int, float)) and isinstance(b, (int, float)):
            return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-12)
        return a == b

    try:
        grid = json.loads((Path(out) / f"{name}_select.json").read_text())["metrics"]["grid"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return next((row for row in grid if all(same(row.get(k), v) for k, v in selected.items())), None)


def evaluate_members(trainer, params, model_state, x, y) -> dict[str, np.ndarray]:
    """``trainer.evaluate`` of every member of a sweep (params and state with a leading
    member axis) on ``(x, y)``, as one vmapped program: ``{"loss": [members], ...}``."""
    xs, ys = jnp.asarray(x), jnp.asarray(y)  # evaluate indexes with traced batches: JAX arrays
    scores = jax.jit(jax.vmap(lambda p, s: trainer.evaluate(p, s, xs, ys)))(params, model_state)
    return {k: np.asarray(v) for k, v in scores.items()}


# --- select, then retrain: the protocol of the CNN scripts --------------------------------
#
# ``--select`` sweeps a grid on the validation split (:func:`selection_sweeps`, one sweep per
# variant; :func:`finish_selection`); the default run retrains the chosen setting on all the
# training data for its fixed epochs (:func:`retrain`), keeps the last epoch, reads the test
# set once and reports the setting's validation score from the selection run's JSON
# (:func:`selection_score`, :func:`retrained_metrics`, :func:`finish_retrained`).


def count_params(model) -> int:
    """The number of parameters of ``model`` (an ``fnn`` layer), from its initial params."""
    params, _ = model.init(jax.random.key(0))
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def updates(epochs: int, examples: int, batch_size: int) -> int:
    """The training steps of ``epochs`` epochs over ``examples`` examples (a partial last
    batch is a step): what a learning-rate schedule decays over."""
    return epochs * -(-examples // batch_size)


def cosine_adamw(network, steps: int, defaults: dict):
    """``config(lr, dropout, weight_decay, label_smoothing) -> fnn.Trainer``: the model
    ``network(dropout)``, AdamW with the learning rate decayed from ``lr`` to 0 by a cosine
    over ``steps``, cross-entropy with label smoothing (every one of them may be traced: a
    sweep grid).

    Args:
      network: ``network(dropout) -> fnn`` model.
      steps: the training steps the schedule decays over (:func:`updates`).
      defaults: each of the four hyperparameters' default.
    Returns:
      the configuration function.
    """

    def config(
        lr=defaults["lr"],
        dropout=defaults["dropout"],
        weight_decay=defaults["weight_decay"],
        label_smoothing=defaults["label_smoothing"],
    ):
        optimizer = fnn.adamw(fnn.schedules.cosine_decay(lr, steps), weight_decay=weight_decay)
        loss = functools.partial(fnn.cross_entropy, label_smoothing=label_smoothing)
        return fnn.Trainer(network(dropout), optimizer, loss)

    return config


class Variant(NamedTuple):
    """One sweep of a selection grid: a setting that changes the compiled program.

    Attributes:
      name: its ``--select-variants`` text.
      settings: what it sets, ``epochs`` and ``batch_size`` among them (:func:`variant`).
      config: its configuration, the grid's hyperparameters its arguments.
      about: further entries of its rows, after ``settings`` (the parameter count, ...).
      network: its network in words, for the announcement of its sweep ("": not named).
    """

    name: str
    settings: dict
    config: Callable
    about: dict
    network: str = ""


class Grid(NamedTuple):
    """A selection grid swept (:func:`selection_sweeps`).

    Attributes:
      settings: the names of what a variant sets (its ``settings``' keys).
      values: the traced hyperparameters' values, ``{name: [values]}``.
      rows: one per variant and grid point: ``variant`` (its name), its ``settings`` and
        ``about``, its ``SweepResult.aggregate`` of the last epoch's validation accuracy
        over seeds (the grid point, ``seeds``, ``mean``, ``std``, ``min``, ``max``, ...),
        ``best_epoch_val_accuracy`` (the mean over seeds of each one's best epoch: biased,
        for information) and the variant's sweep ``seconds``.
      curves: each row's mean validation accuracy per epoch, labelled
        ``"<variant>, <name> <value>, ..."``.
    """

    settings: tuple[str, ...]
    values: dict
    rows: list[dict]
    curves: dict


def selection_sweeps(run: Run, variants, x, y, validation, values: dict) -> Grid:
    """Sweep the selection grid: for each variant, the hyperparameters' ``values`` over the
    seeds ``--select-seeds`` as one sweep on ``(x, y)``, announced and timed as the run's
    phase ``"select <variant>"`` (and logged there with ``--tensorboard``), each member
    scored on ``validation`` at its last epoch.

    Args:
      run: the selection run.
      variants: the :class:`Variant` s, in order.
      x, y: the training split; ``validation``: the validation pair.
      values: ``{hyperparameter: [values]}``, every combination a grid point.
    Returns:
      the :class:`Grid`.
    """
    seeds, points = run.args.select_seeds, math.prod(len(v) for v in values.values())
    settings, rows, curves = (), [], {}
    for v in variants:
        settings = tuple(v.settings)
        epochs, batch_size = v.settings["epochs"], v.settings["batch_size"]
        network = f"{v.network}, " if v.network else ""
        say(
            f"\n== selection, {v.name}: {network}{epochs} epochs, batch {batch_size}; {points} grid points x "
            f"{len(seeds)} seeds = {points * len(seeds)} runs in one vmapped program; {len(y)} train / "
            f"{len(validation[1])} validation"
        )
        with run(f"select {v.name}"):
            table = fnn.sweep(
                v.config,
                x,
                y,
                seeds=seeds,
                grid=values,
                validation=validation,
                progress=not run.args.no_progress,
                epochs=epochs,
                batch_size=batch_size,
                tensorboard=run.tensorboard(f"select {v.name}"),
            )
            jax.block_until_ready(table.results.history)
        val = np.asarray(table.results.history["val_accuracy"], dtype=float)
        for (_, members), a in zip(table.groups(), table.aggregate("final_val_accuracy")):
            a = {"variant": v.name, **v.settings, **v.about, **a}
            a["best_epoch_val_accuracy"] = float(np.mean(np.nanmax(val[members], axis=1)))
            a["seconds"] = run.times[f"select {v.name}"]
            curves[", ".join([v.name, *(f"{k} {a[k]:g}" for k in values)])] = np.nanmean(val[members], axis=0)
            rows.append(a)
    return Grid(settings, values, rows, curves)


def finish_selection(
    run: Run,
    split: dict,
    grid: Grid,
    chosen: dict,
    *,
    table: str,
    command: str,
    rule: str,
    plot_title: str,
    margins=(0.01, 0.005),
) -> dict:
    """The end of a selection run: prints ``table`` (the grid's markdown table), the setting
    of the ``chosen`` row (its variant's settings and grid point) and the ``command`` that
    retrains it, then :meth:`Run.finish` with the grid's rows, the :func:`protocol` of a run
    that reads no test data (``rule``: the selection rule in words), and
    :func:`plot_selection_grid`'s figure (``plot_title``, ``margins``). Returns what the
    script's ``main`` returns."""
    seeds = run.args.select_seeds
    selected = {k: chosen[k] for k in (*grid.settings, *grid.values)}
    say(f"\nmean ± std over {len(seeds)} seeds, validation split only:\n{table}\nselected: {selected}")
    say(f"run it: {command}")
    return run.finish(
        config={"grid": grid.values, "variants": run.args.select_variants, "select_seeds": seeds},
        metrics={"grid": grid.rows, "selected": selected, "run_selected": command, "load_average": load_average()},
        protocol=protocol(
            split,
            selection=rule,
            selected=selected,
            validation_metrics=["grid"],
            test_metrics=[],
            test=None,
            seeds=list(seeds),
        ),
        plot=lambda: plot_selection_grid(plot_title, grid.rows, chosen, grid.curves, margins),
        table=table,
        curves=grid.curves,
    )


def retrain(run: Run, config, x, y, **options):
    """The final models: seeds ``0..--seeds - 1`` of ``config`` trained on all of ``(x, y)``
    (train + validation) as one sweep with no validation, timed as the run's phase
    ``"train (compile + run)"`` (and logged there with ``--tensorboard``).

    Args:
      run: the script's run (its options give seeds, epochs, batch size, progress).
      config: the selected setting's configuration.
      x, y: the training data.
      options: further ``fnn.sweep`` options (``devices``).
    Returns:
      ``(table, history)``: the ``SweepResult`` and its history as NumPy arrays.
    Raises:
      RuntimeError: where a seed diverged.
    """
    args = run.args
    with run("train (compile + run)"):
        log = run.tensorboard("train")
        table = fnn.sweep(config, x, y, seeds=args.seeds, **training_options(args, None), tensorboard=log, **options)
        jax.block_until_ready(table.results.history)
    diverged = np.asarray(table.results.diverged)
    if diverged.any():
        raise RuntimeError(f"{int(diverged.sum())} of {args.seeds} seeds diverged")
    return table, {k: np.asarray(v) for k, v in table.results.history.items()}


def selection_score(out: Path, name: str, selected: dict) -> dict | None:
    """The validation accuracy that the ``selected`` setting scored in the selection run
    (:func:`selection_row`): its ``mean``, ``std``, ``min``, ``max`` and ``seeds``, or
    ``None`` where that run's JSON or the row is missing."""
    row = selection_row(out, name, selected)
    return None if row is None else {k: row[k] for k in ("mean", "std", "min", "max", "seeds")}


def retrained_metrics(scores: dict, validated: dict | None, *, target_key: str, target: float) -> dict:
    """The first metrics of a retrained run: ``test_accuracy`` and ``test_loss`` over seeds
    (:func:`mean_std`), ``test_accuracy_per_seed``, ``target_key`` (whether the mean test
    accuracy reaches ``target``) and ``selection_validation_accuracy`` (``validated``, from
    :func:`selection_score`); ``scores``: :func:`evaluate_members` on the test set."""
    tested = mean_std(scores["accuracy"])
    return {
        "test_accuracy": tested,
        "test_loss": mean_std(scores["loss"]),
        "test_accuracy_per_seed": scores["accuracy"],
        target_key: tested["mean"] >= target,
        "selection_validation_accuracy": validated,
    }


def budget_metrics(run: Run, budget_s: float) -> dict:
    """The last metrics of a retrained run: the training time (compilation included), per
    epoch (all seeds together), the script's time so far, whether it is within
    ``budget_s`` seconds, and the load average."""
    train, total = run.times["train (compile + run)"], run.total()
    return {
        "training_wall_time_s": train,
        "seconds_per_epoch_all_seeds": train / run.args.epochs,
        "script_wall_time_s": total,
        "within_time_budget": total < budget_s,
        "load_average": load_average(),
    }


def finish_retrained(
    run: Run,
    split: dict,
    *,
    config: dict,
    metrics: dict,
    rule: str,
    selected: dict,
    test: TestSet,
    target_key: str,
    history: dict,
    plot,
    **extra,
) -> dict:
    """The end of a retrained run: :meth:`Run.finish` with its ``config`` and ``metrics``
    (:func:`retrained_metrics` first), the :func:`protocol` (``rule``: the selection rule
    in words; ``selected``: the setting, trained on a cosine schedule and kept at its last
    epoch; ``test`` read once for the test numbers), ``plot``, ``extra`` entries and the
    learning curves (``history``'s bands over seeds). Returns what ``main`` returns."""
    return run.finish(
        config=config,
        metrics=metrics,
        protocol=protocol(
            split,
            selection=rule,
            selected=selected | {"schedule": "cosine decay to 0", "epoch": "the last"},
            validation_metrics=["selection_validation_accuracy"],
            test_metrics=["test_accuracy", "test_loss", "test_accuracy_per_seed", target_key],
            test=test,
            seeds=list(range(run.args.seeds)),
        ),
        plot=plot,
        **extra,
        curves={k: band(v) for k, v in history.items() if k != "lr"},
    )


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
        self.script = name  # experiments/<script>.py; ``name`` names the results files
        self.logged: set[Path] = set()
        if getattr(args, "tensorboard", None) is not None and importlib.util.find_spec("tensorboardX") is None:
            raise SystemExit("--tensorboard writes with tensorboardX: pip install 'fnn[tensorboard]'")

    def tensorboard(self, phase: str) -> Path | None:
        """The folder of a phase's TensorBoard runs, for ``fnn.fit`` / ``fnn.sweep`` /
        ``fnn.pbt``'s ``tensorboard=``: ``<--tensorboard>/<name>/<phase>`` (the phase in
        lower case, each run of other characters than letters, digits, ``.``, ``=``, ``_``
        a ``-``), or ``None`` without ``--tensorboard``.

        Raises:
          SystemExit: when the folder is not empty (a run written before would mix with
            this one's in TensorBoard) or was handed out already in this run (a phase
            repeated: a value given twice on the command line).
        """
        if getattr(self.args, "tensorboard", None) is None:
            return None
        slug = re.sub(r"[^a-z0-9.=_]+", "-", phase.lower()).strip("-")
        folder = self.args.tensorboard / self.name / slug
        if folder in self.logged:
            raise SystemExit(
                f"--tensorboard: this run has two phases named like {phase!r} (a value given twice on the command "
                f"line?); their runs would mix in {folder}"
            )
        if folder.is_dir() and any(folder.iterdir()):
            raise SystemExit(
                f"--tensorboard: {folder} holds runs already; pass another folder, or remove it, so that "
                "TensorBoard does not mix two runs' events"
            )
        self.logged.add(folder)
        return folder

    def finish(self, *, config: dict, metrics: dict, plot, protocol: dict, **extra) -> dict:
        """The end of the run: ``<out>/<name>.json`` (:func:`write_results`: the options
        updated with ``config``, ``metrics``, the :func:`protocol` record, the phase times
        and the total, the environment, and ``extra`` as further top-level entries), then
        ``plot()``'s figure as ``<out>/<name>.png``; prints the times and the two paths.
        Returns what an experiment's ``main`` returns: ``{"metrics", "timings", "json",
        "png"}``."""
        timings = self.times | {"total": self.total()}
        config = vars(self.args) | config
        path = write_results(
            self.args.out,
            self.name,
            argv=self.argv,
            config=config,
            metrics=metrics,
            timings=timings,
            script=self.script,
            protocol=protocol,
            **extra,
        )
        png = save_figure(plot(), self.args.out, self.name)
        say(f"time: {timings}\nwrote {path} and {png}")
        return {"metrics": metrics, "timings": timings, "json": path, "png": png}


def use_cores(n: int | None) -> None:
    """``fnn.distributed.use_cpu_cores(n)``, then ``fnn.distributed.initialize()`` (a
    multi-process run where one is set up: the sweeps then span every process); where ``n``
    is not given and JAX already runs in this process (``main`` called from Python, e.g. by
    the tests), its devices are kept."""
    try:
        fnn.distributed.use_cpu_cores(n)
    except RuntimeError:
        if n is not None:
            raise
    try:
        fnn.distributed.initialize()
    except RuntimeError:  # JAX runs already: main called from Python joins no run, unless one was asked for
        if os.environ.get(fnn.distributed.ENV_COORDINATOR):
            raise


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (how busy the cores were during the run), or
    ``None`` where the platform has none."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


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


def write_results(
    out: Path, name: str, *, argv, config: dict, metrics: dict, timings: dict, script: str | None = None, **extra
) -> Path:
    """Write ``<out>/<name>.json`` with the command (``experiments/<script>.py``, default
    ``<name>.py``; ``argv``: the script's arguments, ``None`` for the command line's),
    config, metrics, timings, environment and extras."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    args = sys.argv[1:] if argv is None else [str(a) for a in argv]
    payload = {
        "experiment": name,
        "command": " ".join(["python", f"experiments/{script or name}.py", *args]),
        "config": config,
        "metrics": metrics,
        "timings_s": timings,
        "environment": environment(),
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        **extra,
    }
    path = out / f"{name}.json"
    with fnn.multihost.process_zero_writes(f"results {name}") as writing:  # one writer in a multi-process run
        if writing:
            path.write_text(json.dumps(_plain(payload), indent=2) + "\n")
    return path


def figure(title: str, panels: int, **subplots):
    """``fig, axes``: a matplotlib figure titled ``title`` with ``panels`` axes side by side
    (``subplots``: further ``plt.subplots`` arguments: ``figsize``, ``layout``, ...)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, panels, **subplots)
    fig.suptitle(title)
    return fig, axes


def plot_selection_grid(title: str, rows: list[dict], chosen: dict, curves: dict, margins=(0.01, 0.005)):
    """A selection grid's figure: each point's validation score at the last epoch (mean ±
    std over seeds, the selected one in red; ``rows`` hold mean/std/min/max, in the order
    of ``curves``) and every point's validation curve (``curves``: {label: [epochs]},
    the selected one highlighted). ``margins``: x-axis room below the lowest min and above
    the highest max."""
    fig, (ax0, ax1) = figure(title, 2, figsize=(13, max(4.5, 0.15 * len(rows))))
    labels = list(curves)
    ax0.barh(range(len(rows)), [r["mean"] for r in rows], xerr=[r["std"] for r in rows], capsize=2)
    ax0.barh([rows.index(chosen)], [chosen["mean"]], color="C3", label="selected")
    ax0.set_yticks(range(len(rows)), labels, fontsize=6)
    ax0.set_xlim(min(r["min"] for r in rows) - margins[0], max(r["max"] for r in rows) + margins[1])
    ax0.set_xlabel("validation accuracy at the last epoch (mean ± std over seeds)")
    ax0.legend(fontsize=8)
    chosen_label = labels[rows.index(chosen)]
    for label, curve in curves.items():
        if label != chosen_label:
            ax1.plot(np.arange(1, len(curve) + 1), curve, color="0.7", lw=0.7)
    curve = curves[chosen_label]
    ax1.plot(np.arange(1, len(curve) + 1), curve, color="C3", lw=2, label=f"selected: {chosen_label}")
    ax1.plot([], [], color="0.7", lw=0.7, label="the other grid points")
    ax1.set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)")
    ax1.set_ylim(max(0.0, min(float(np.nanmax(c)) for c in curves.values()) - 0.05), None)
    ax1.legend(fontsize=7, loc="lower right")
    return fig


def plot_spread(ax, x: float, s: dict, *, label: str, fmt: str = "r*", ms: float = 12) -> None:
    """Mark a :func:`mean_std` summary ``s`` (a score over seeds) at ``x`` on ``ax``: its
    mean as a point (``fmt``, size ``ms``), a bar from its min to its max, and ``label``."""
    ax.errorbar(
        [x], [s["mean"]], yerr=[[s["mean"] - s["min"]], [s["max"] - s["mean"]]], fmt=fmt, ms=ms, capsize=3, label=label
    )


def save_figure(fig, out: Path, name: str) -> Path:
    """Save ``fig`` as ``<out>/<name>.png`` (dpi kept low: small files for git)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{name}.png"
    with fnn.multihost.process_zero_writes(f"figure {name}") as writing:  # one writer in a multi-process run
        if writing:
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


def pm(s: dict, digits: int = 4) -> str:
    """A :func:`mean_std` summary as ``mean ± std (min–max)``."""
    return f"{s['mean']:.{digits}f} ± {s['std']:.{digits}f} ({s['min']:.{digits}f}–{s['max']:.{digits}f})"


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t distribution with ``df`` degrees of freedom
    (``t_quantile(0.975, 9) = 2.2622``), by bisection on the CDF, which is the regularized
    incomplete beta function: no SciPy needed. Accurate to ~1e-10."""
    if not 0 < p < 1:
        raise ValueError(f"p must lie in (0, 1); got {p}")
    if not df > 0:
        raise ValueError(f"df must be > 0; got {df}")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while _t_cdf(hi, df) < p:
        lo, hi = hi, 2 * hi
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if _t_cdf(mid, df) < p else (lo, mid)
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))  # P(T > |t|)
    return 1 - tail if t > 0 else tail


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta function I_x(a, b) (continued fraction, Lentz's method;
    Numerical Recipes 6.4)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _beta_fraction(a, b, x) / a
    return 1 - front * _beta_fraction(b, a, 1 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    tiny = 1e-300
    c, d = 1.0, 1 - (a + b) * x / (a + 1)
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        for aa in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-15:
            break
    return h


def paired_comparison(a, b, *, names: tuple[str, str] = ("a", "b"), confidence: float = 0.95) -> dict:
    """Compare two methods run on the same seeds: a paired t confidence interval for the
    mean of the per-seed differences ``a - b``.

    Args:
      a, b: ``[seeds]`` scores of the two methods, seed by seed (same order).
      names: the two methods' names, for the verdict.
      confidence: the interval's coverage (0.95: a 95% interval).

    Returns:
      ``{"a", "b", "n", "mean_difference", "std_difference" (sample std, ddof 1), "ci":
      [low, high], "confidence", "t_quantile", "verdict"}``; the verdict is "no difference
      detected" where the interval covers 0, else which method scores higher.
    """
    a, b = np.asarray(a, dtype=float).reshape(-1), np.asarray(b, dtype=float).reshape(-1)
    if a.shape != b.shape or a.size < 2:
        raise ValueError(f"a and b must hold the same number (>= 2) of paired scores; got {a.size} and {b.size}")
    d = a - b
    n, mean, sd = d.size, float(d.mean()), float(d.std(ddof=1))
    t = t_quantile(0.5 + confidence / 2, n - 1)
    low, high = mean - t * sd / math.sqrt(n), mean + t * sd / math.sqrt(n)
    if low <= 0 <= high:
        verdict = "no difference detected"
    else:
        verdict = f"{names[0]} higher" if mean > 0 else f"{names[1]} higher"
    return {
        "a": names[0],
        "b": names[1],
        "n": n,
        "mean_difference": mean,
        "std_difference": sd,
        "ci": [low, high],
        "confidence": confidence,
        "t_quantile": t,
        "verdict": verdict,
    }


def ci_text(c: dict, digits: int = 4) -> str:
    """A :func:`paired_comparison` as ``+0.0012 [-0.0003, +0.0027]``."""
    low, high = c["ci"]
    return f"{c['mean_difference']:+.{digits}f} [{low:+.{digits}f}, {high:+.{digits}f}]"


def markdown_table(header: list[str], rows: list[list]) -> str:
    """A small markdown table; floats formatted with 4 decimals."""

    def cell(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)
