"""Regularization on a small Fashion-MNIST training set: none / L2 / L1 / dropout /
dropout+L2 / batch norm, strengths selected on a validation split, compared over seeds.

The MLP 784-256-256-10 (ReLU; Adam with a learning rate decayed to 0 by a cosine,
mini-batches of 128, 40 epochs) is trained on a stratified random subset of 5,000
Fashion-MNIST training images, small enough that the unregularized network fits it
(almost) perfectly and overfits. 5,000 other training images (stratified) are the
validation split; the test set is the 10,000 test images. The settings without batch
norm share one structure (a Dropout layer after each hidden layer and an ``l1_l2``
penalty, whose rates and strengths are traced numbers, 0 where unused), so a whole grid
of them runs as ONE vmapped ``fnn.sweep`` over a zipped grid; batch norm changes the
structure and runs as its own sweep.

1. Selection: the strength of each method (L2, L1, dropout, dropout+L2) from a small
   grid over ``--select-seeds``, by the highest mean final validation accuracy.
2. Comparison: none, the four selected settings and batch norm over ``--seeds`` seeds
   (the same seeds 0..n-1 for every setting). Then the test set is read, once, to score
   the final params of all of them (no early stopping: every run trains its 40 epochs).
   Reported per setting (mean ± std and min–max over seeds): training accuracy of the
   final params in evaluation mode on the training subset, validation and test accuracy,
   the train–test gap, the test loss; and for each setting against none a paired 95% t
   interval for the mean per-seed difference in test accuracy.

    python experiments/regularization.py
    python experiments/regularization.py --n-train 500 --epochs 1 --seeds 2 --settings none batchnorm

Writes ``<out>/regularization.json`` and ``<out>/regularization.png``.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402

NAME = "regularization"
SETTINGS = ["none", "l2", "l1", "dropout", "dropout+l2", "batchnorm"]
SELECTION = (
    "strength of each method (L2, L1, dropout, dropout+L2): the grid value with the highest mean final "
    "validation accuracy over the selection seeds; none and batch norm have nothing to select; no epoch "
    "selection (final params after --epochs epochs); the test set is read once, after the comparison runs, "
    "to score their final params"
)


def parser():
    p = common.parser(
        __doc__,
        n_val=5000,
        split_seed=0,
        data=True,
        n_train=5000,
        n_test=None,
        epochs=40,
        batch_size=128,
        hidden=[256, 256],
        lr=1e-3,
        seeds=8,
        helps={
            "n_train": "training images (a stratified subset of the 55,000 left after the validation split)",
            "n_test": "use only the first N test images",
            "seeds": "seeds of the comparison runs (the same for every setting)",
            "split_seed": "seed of the validation split and the subset",
        },
    )
    p.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS, help="which settings to run")
    p.add_argument("--grid-l2", type=float, nargs="+", default=[1e-4, 5e-4, 2e-3], help="L2 strengths (l2/2 sum w^2)")
    p.add_argument("--grid-l1", type=float, nargs="+", default=[1e-5, 3e-5, 1e-4], help="L1 strengths (l1 sum |w|)")
    p.add_argument("--grid-dropout", type=float, nargs="+", default=[0.2, 0.35, 0.5], help="dropout rates")
    p.add_argument(
        "--grid-dropout-l2",
        type=float,
        nargs="+",
        default=[0.35, 5e-4, 0.5, 5e-4, 0.35, 2e-3, 0.5, 2e-3],
        help="dropout+L2 pairs, flattened: rate strength rate strength ...",
    )
    p.add_argument("--select-seeds", type=int, nargs="+", default=[100, 101], help="seeds of the strength grid")
    return p


def candidates(args) -> dict[str, list[tuple[float, float, float]]]:
    """The selection grid of each method that has a strength: ``(l1, l2, dropout)`` triples."""
    pairs = args.grid_dropout_l2
    if len(pairs) % 2:
        raise SystemExit("--grid-dropout-l2 takes pairs: rate strength rate strength ...")
    grid = {
        "l2": [(0.0, v, 0.0) for v in args.grid_l2],
        "l1": [(v, 0.0, 0.0) for v in args.grid_l1],
        "dropout": [(0.0, 0.0, v) for v in args.grid_dropout],
        "dropout+l2": [(0.0, pairs[i + 1], pairs[i]) for i in range(0, len(pairs), 2)],
    }
    return {k: v for k, v in grid.items() if k in args.settings}


def label(key: str, values: tuple[float, float, float]) -> str:
    l1, l2, dropout = values
    return {
        "none": "none",
        "l2": f"L2 {l2:g}",
        "l1": f"L1 {l1:g}",
        "dropout": f"dropout {dropout:g}",
        "dropout+l2": f"dropout {dropout:g} + L2 {l2:g}",
        "batchnorm": "batch norm",
    }[key]


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    x_train, y_train, x_val, y_val, test, split = common.fashion_splits(
        run, n_val=args.n_val, n_train=args.n_train, split_seed=args.split_seed
    )
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps = args.epochs * -(-len(y_train) // args.batch_size)

    def optimizer():
        return fnn.adam(fnn.schedules.cosine_decay(args.lr, steps))

    def config(l1=0.0, l2=0.0, dropout=0.0):
        return fnn.Trainer(
            fnn.mlp(sizes, dropout=dropout), optimizer(), fnn.cross_entropy, regularizer=fnn.l1_l2(l1, l2)
        )

    def config_bn():
        return fnn.Trainer(fnn.mlp(sizes, batchnorm=True), optimizer(), fnn.cross_entropy)

    fit_options = common.training_options(args, (x_val, y_val))
    seeds = list(range(args.seeds))
    common.say(
        f"Fashion-MNIST: {len(y_train)} train / {len(y_val)} validation / {test.size} test; MLP "
        f"{'-'.join(map(str, sizes))} ReLU, Adam lr {args.lr:g} cosine, batch {args.batch_size}, {args.epochs} epochs"
    )

    # 1. selection of the strengths, validation split only
    grid = candidates(args)
    selected: dict[str, tuple[float, float, float]] = {}
    selection_rows = []
    if grid:
        points = [(k, v) for k, vs in grid.items() for v in vs]
        n = len(args.select_seeds)
        common.say(
            f"\n== selection: {len(points)} strengths x seeds {args.select_seeds} = {len(points) * n} runs in one "
            "vmapped program"
        )
        with run("select (sweep)"):
            table = fnn.sweep(
                config,
                x_train,
                y_train,
                seeds=args.select_seeds,
                grid=zipped(points),
                product=False,
                tensorboard=run.tensorboard("select"),
                **fit_options,
            )
            jax.block_until_ready(table.results.history)
        val = np.asarray(table.results.history["val_accuracy"], dtype=float)[:, -1].reshape(len(points), n)
        for (key, values), scores in zip(points, val):
            selection_rows.append(
                {
                    "method": key,
                    "setting": label(key, values),
                    "l1": values[0],
                    "l2": values[1],
                    "dropout": values[2],
                    "final_val_accuracy": common.mean_std(scores),
                }
            )
        for key in grid:
            rows = [r for r in selection_rows if r["method"] == key]
            best = max(rows, key=lambda r: r["final_val_accuracy"]["mean"])
            best["selected"] = True
            selected[key] = (best["l1"], best["l2"], best["dropout"])
        common.say(
            common.markdown_table(
                ["setting", "final validation accuracy", "selected"],
                [
                    [r["setting"], common.pm(r["final_val_accuracy"]), "yes" if r.get("selected") else ""]
                    for r in selection_rows
                ],
            )
        )

    # 2. comparison over seeds, then the test set, once
    compared = ([("none", (0.0, 0.0, 0.0))] if "none" in args.settings else []) + list(selected.items())
    names = [label(k, v) for k, v in compared]
    sweeps = {}
    if compared:
        common.say(f"\n== comparison: {', '.join(names)}: {len(compared)} x {args.seeds} seeds in one vmapped program")
        with run("compare (sweep)"):
            log = run.tensorboard("compare")
            table = fnn.sweep(
                config,
                x_train,
                y_train,
                seeds=seeds,
                grid=zipped(compared),
                product=False,
                tensorboard=log,
                **fit_options,
            )
            jax.block_until_ready(table.results.history)
        sweeps["penalties and dropout"] = (config(), table, names)
    if "batchnorm" in args.settings:
        common.say(f"\n== comparison: batch norm: {args.seeds} seeds in one vmapped program")
        with run("compare batch norm (sweep)"):
            log = run.tensorboard("compare batch norm")
            table_bn = fnn.sweep(config_bn, x_train, y_train, seeds=seeds, tensorboard=log, **fit_options)
            jax.block_until_ready(table_bn.results.history)
        sweeps["batch norm"] = (config_bn(), table_bn, ["batch norm"])
    results = {}
    with run("evaluate"):
        x_test, y_test = test.read()  # once: the final params of every setting and seed
        for trainer, table, labels in sweeps.values():
            for i, name in enumerate(labels):
                members = slice(i * args.seeds, (i + 1) * args.seeds)
                results[name] = describe(trainer, table, members, x_train, y_train, x_test, y_test)

    pairs = {}
    if args.seeds >= 2:
        for b, a in itertools.combinations(results, 2):  # later - earlier: "<setting> - none"
            pairs[f"{a} - {b}"] = common.paired_comparison(
                results[a]["test_per_seed"], results[b]["test_per_seed"], names=(a, b)
            )
    header = ["setting", "train accuracy", "validation accuracy", "test accuracy", "gap", "test loss"]
    rows = [
        [
            name,
            common.pm(r["train_accuracy"]),
            common.pm(r["validation_accuracy"]),
            common.pm(r["test_accuracy"]),
            f"{r['gap']:.4f}",
            f"{r['test_loss']['mean']:.4f} ± {r['test_loss']['std']:.4f}",
        ]
        for name, r in results.items()
    ]
    table_md = common.markdown_table(header, rows)
    against_none = {k: v for k, v in pairs.items() if k.endswith(" - none")}
    pair_md = common.markdown_table(
        ["setting - none", "test accuracy: mean diff [95% CI]", "verdict"],
        [[k.removesuffix(" - none"), common.ci_text(v), v["verdict"]] for k, v in against_none.items()],
    )
    common.say(
        f"\nmean ± std (min–max) over {args.seeds} seeds; final params; train accuracy in evaluation mode:\n{table_md}"
        f"\n\npaired test-accuracy differences against none (same seeds), 95% t intervals:\n{pair_md}"
    )
    described = {label(k, v): dict(zip(("l1", "l2", "dropout"), v)) for k, v in compared} | (
        {"batch norm": {"batchnorm": True}} if "batchnorm" in args.settings else {}
    )
    return run.finish(
        config={"sizes": sizes, "setting_values": described, "grid": grid},
        metrics={
            "settings": {name: {k: v for k, v in r.items() if k != "curve"} for name, r in results.items()},
            "paired_test_accuracy": pairs,
            "selection": selection_rows,
        },
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected={k: label(k, v) for k, v in selected.items()},
            validation_metrics=["selection", "settings.*.validation_accuracy"],
            test_metrics=["settings.*.test_accuracy", "settings.*.test_loss", "settings.*.gap", "paired_test_accuracy"],
            test=test,
            seeds=seeds,
        ),
        plot=lambda: plot(results, args),
        table=table_md,
        paired_table=pair_md,
        curves={name: r["curve"] for name, r in results.items()},
    )


def zipped(points) -> dict[str, list[float]]:
    """A zipped sweep grid ``{"l1": [...], "l2": [...], "dropout": [...]}`` of ``(key, (l1, l2, dropout))`` points."""
    return {name: [values[i] for _, values in points] for i, name in enumerate(("l1", "l2", "dropout"))}


def describe(trainer, table, members, x_train, y_train, x_test, y_test) -> dict:
    """The comparison runs of one setting (``members`` of ``table``): accuracy of the final
    params on the training subset (evaluation mode), the validation split and the test set."""
    r = jax.tree.map(lambda a: a[members], table.results)
    history = {k: np.asarray(v, dtype=float) for k, v in r.history.items()}
    params, state = r.train_state.params, r.train_state.model_state
    train = common.evaluate_members(trainer, params, state, x_train, y_train)
    test = common.evaluate_members(trainer, params, state, x_test, y_test)
    train_acc, test_acc = common.mean_std(train["accuracy"]), common.mean_std(test["accuracy"])
    return {
        "train_accuracy": train_acc,
        "validation_accuracy": common.mean_std(history["val_accuracy"][:, -1]),
        "test_accuracy": test_acc,
        "test_per_seed": test["accuracy"],
        "gap": train_acc["mean"] - test_acc["mean"],
        "test_loss": common.mean_std(test["loss"]),
        "diverged": int(np.asarray(r.diverged).sum()),
        "curve": {
            "validation_accuracy": np.nanmean(history["val_accuracy"], axis=0),
            "train_loss": np.nanmean(history["loss"], axis=0),
        },
    }


def plot(results, args):
    names = list(results)
    title = (
        f"Regularization: Fashion-MNIST, {args.n_train} training images, MLP "
        f"{'-'.join(map(str, [784, *args.hidden, 10]))}, {args.seeds} seeds"
    )
    fig, (ax0, ax1) = common.figure(title, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    pos = np.arange(len(names))
    for offset, key, name in (
        (-0.2, "train_accuracy", "train (eval mode)"),
        (0.2, "test_accuracy", "test (read once)"),
    ):
        means = [results[n][key]["mean"] for n in names]
        stds = [results[n][key]["std"] for n in names]
        ax0.bar(pos + offset, means, 0.4, yerr=stds, capsize=3, label=name)
    for p, n in zip(pos, names):
        ax0.text(
            p + 0.2,
            results[n]["test_accuracy"]["mean"] + 0.005,
            f"{results[n]['test_accuracy']['mean']:.3f}",
            ha="center",
            fontsize=7,
        )
    ax0.set_xticks(pos, names, rotation=20, ha="right", fontsize=8)
    lows = [results[n]["test_accuracy"]["mean"] for n in names]
    ax0.set_ylim(max(0.0, min(lows) - 0.1), 1.01)
    ax0.set_ylabel("accuracy (mean ± std over seeds)")
    ax0.legend(fontsize=8)
    for i, n in enumerate(names):
        curve = results[n]["curve"]["validation_accuracy"]
        ax1.plot(np.arange(1, len(curve) + 1), curve, color=f"C{i}", label=n)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("validation accuracy (mean over seeds)")
    ax1.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    fnn.distributed.use_cpu_cores()  # one CPU device per core: the sweeps train members on all of them
    main()
