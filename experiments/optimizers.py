"""Optimizer comparison on Fashion-MNIST, after Kingma & Ba (2015), section 6.2, with a
learning rate selected on a validation split and a paired comparison over seeds.

Kingma & Ba compare optimizers by the training cost of a multilayer network (two hidden
layers of 1,000 ReLU units, MNIST, mini-batches of 128) against iterations. Here: an MLP
784-256-256-10 (ReLU, no dropout, so the training loss is the plain objective) on a
random stratified subset of the Fashion-MNIST training set (10,000 images by default, to
keep the run to minutes on 2 CPU cores), mini-batches of 128, a constant learning rate,
and four optimizers: SGD with Nesterov momentum 0.9, AdaGrad, RMSprop (decay 0.9) and
Adam (0.9, 0.999). 5,000 other training images (stratified) are the validation split.

1. Selection: each optimizer runs its learning-rate grid over ``--select-seeds`` as one
   vmapped ``fnn.sweep``; every run keeps the params of its epoch with the best
   validation accuracy (with a constant learning rate the last epoch's accuracy is noisy),
   and the optimizer's rate is the one with the highest mean of those accuracies.
2. Comparison: each optimizer runs at its selected rate over ``--seeds`` seeds (0..n-1,
   the same seeds for every optimizer: same initial weights, same data order) as one
   vmapped sweep (10 seeds: as many members as the selection's 5 rates x 2 seeds, so the
   sweep can reuse the selection's compiled program). Then the test set is read, once, to
   score every run's params of its best validation epoch. Reported: mean ± std and
   min–max of the final training loss (the objective), the validation and the test
   accuracy, and for every pair of optimizers a paired 95% t interval for the mean
   per-seed difference ("no difference detected" where it covers 0).

    python experiments/optimizers.py
    python experiments/optimizers.py --n-train 1000 --epochs 1 --seeds 2 --optimizers Adam SGD+Nesterov

Writes ``<out>/optimizers.json`` and ``<out>/optimizers.png``.
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

NAME = "optimizers"

OPTIMIZERS = {
    "SGD+Nesterov": (lambda lr: fnn.sgd(lr, momentum=0.9, nesterov=True), [0.003, 0.01, 0.03, 0.1, 0.3]),
    "AdaGrad": (lambda lr: fnn.adagrad(lr), [0.001, 0.003, 0.01, 0.03, 0.1]),
    "RMSprop": (lambda lr: fnn.rmsprop(lr, decay=0.9), [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
    "Adam": (lambda lr: fnn.adam(lr), [1e-4, 3e-4, 1e-3, 3e-3, 1e-2]),
}
SETTINGS = {
    "SGD+Nesterov": "momentum 0.9, Nesterov",
    "AdaGrad": "initial accumulator 0, eps 1e-10",
    "RMSprop": "decay 0.9, eps 1e-8 outside the sqrt",
    "Adam": "b1 0.9, b2 0.999, eps 1e-8",
}
SELECTION = (
    "learning rate of each optimizer: the grid value with the highest mean validation accuracy over the "
    "selection seeds, each member scored at its best validation epoch; epoch: each comparison run keeps the "
    "params of its epoch with the highest validation accuracy (fit's best_params, monitor='val_accuracy'); the "
    "test set is read once, after every optimizer's comparison runs, to score those params. The training loss "
    "is compared at the last epoch (the objective's trajectory, as in Kingma & Ba)"
)


def parser():
    p = common.parser(
        __doc__,
        n_val=5000,
        split_seed=0,
        data=True,
        n_train=10000,
        n_test=None,
        epochs=10,
        batch_size=128,
        hidden=[256, 256],
        seeds=10,
        helps={
            "n_train": "training images (a stratified subset of the 55,000 left after the validation split)",
            "n_test": "use only the first N test images",
            "seeds": "seeds of the comparison runs (the same for every optimizer)",
            "split_seed": "seed of the validation split and the subset",
        },
    )
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--lrs", type=int, default=None, help="use only the first N learning rates of each grid")
    p.add_argument("--select-seeds", type=int, nargs="+", default=[100, 101], help="seeds of the learning-rate grid")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    x_train, y_train, x_val, y_val, test, split = common.fashion_splits(
        run, n_val=args.n_val, n_train=args.n_train, split_seed=args.split_seed
    )
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps_per_epoch = -(-len(y_train) // args.batch_size)
    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    seeds = list(range(args.seeds))
    common.say(
        f"Fashion-MNIST: {len(y_train)} train / {len(y_val)} validation / {test.size} test; MLP "
        f"{'-'.join(map(str, sizes))} ReLU; batch {args.batch_size}, {args.epochs} epochs ({steps_per_epoch} "
        f"iterations each); learning rate selected over seeds {args.select_seeds}, compared over {args.seeds} seeds"
    )
    grids, selected, runs = {}, {}, {}
    for name in args.optimizers:
        make, lrs = OPTIMIZERS[name]
        grids[name] = lrs[: args.lrs] if args.lrs else lrs

        def config(lr=grids[name][0], make=make):
            return fnn.Trainer(fnn.mlp(sizes), make(lr), fnn.cross_entropy)

        common.say(f"\n== {name}: selection, learning rates {grids[name]} x seeds {args.select_seeds}")
        with run(f"{name}: select"):
            log = run.tensorboard(f"{name} select")
            table = fnn.sweep(
                config,
                x_train,
                y_train,
                seeds=args.select_seeds,
                grid={"lr": grids[name]},
                tensorboard=log,
                **fit_options,
            )
            jax.block_until_ready(table.results.history)
        grid_rows = summarize_grid(table, grids[name])
        ok = [r for r in grid_rows if not r["diverged"]]
        chosen = max(ok, key=lambda r: r["val_accuracy"]) if ok else grid_rows[0]
        selected[name] = {"lr": chosen["lr"], "grid": grid_rows}
        common.say(table.summary("best_val_accuracy"))
        common.say(f"   selected lr {chosen['lr']:g}; comparison over {args.seeds} seeds in one vmapped program")
        with run(f"{name}: compare"):
            log = run.tensorboard(f"{name} compare")
            grid = {"lr": [chosen["lr"]]}
            compared = fnn.sweep(config, x_train, y_train, seeds=seeds, grid=grid, tensorboard=log, **fit_options)
            jax.block_until_ready(compared.results.history)
        runs[name] = (config(chosen["lr"]), compared)

    with run("evaluate"):
        x_test, y_test = test.read()  # once: the selected params of every optimizer and seed
        results = {name: describe(trainer, table, x_test, y_test) for name, (trainer, table) in runs.items()}
    pairs = {}
    for a, b in itertools.combinations(args.optimizers, 2):
        if args.seeds >= 2:
            pairs[f"{a} - {b}"] = {
                metric: common.paired_comparison(results[a][key], results[b][key], names=(a, b))
                for metric, key in (("test_accuracy", "test_per_seed"), ("final_train_loss", "loss_per_seed"))
            }

    header = [
        "optimizer",
        "selected lr",
        "final train loss",
        "validation accuracy",
        "test accuracy",
        "diverged",
        "time select + compare (s)",
    ]
    rows = [
        [
            n,
            f"{selected[n]['lr']:g}",
            common.pm(r["final_train_loss"]),
            common.pm(r["validation_accuracy"]),
            common.pm(r["test_accuracy"]),
            r["diverged"],
            f"{run.times[n + ': select']:.0f} + {run.times[n + ': compare']:.0f}",
        ]
        for n, r in results.items()
    ]
    table_md = common.markdown_table(header, rows)
    pair_md = common.markdown_table(
        ["pair (a - b)", "test accuracy: mean diff [95% CI]", "verdict", "train loss: mean diff [95% CI]", "verdict"],
        [
            [
                k,
                common.ci_text(v["test_accuracy"]),
                v["test_accuracy"]["verdict"],
                common.ci_text(v["final_train_loss"]),
                v["final_train_loss"]["verdict"],
            ]
            for k, v in pairs.items()
        ],
    )
    common.say(
        f"\nmean ± std (min–max) over {args.seeds} seeds; training loss after {args.epochs} epochs, accuracies of "
        f"the best validation epoch:\n{table_md}"
        f"\n\npaired comparisons (same seeds), 95% t intervals:\n{pair_md}"
    )
    metrics = {
        name: {k: v for k, v in r.items() if k not in ("curve",)} | {"selected_lr": selected[name]["lr"]}
        for name, r in results.items()
    }
    return run.finish(
        config={
            "sizes": sizes,
            "steps_per_epoch": steps_per_epoch,
            "grids": grids,
            "settings": {n: SETTINGS[n] for n in args.optimizers},
        },
        metrics={"optimizers": metrics, "paired": pairs, "selection": selected},
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected={n: s["lr"] for n, s in selected.items()},
            validation_metrics=["selection", "optimizers.*.validation_accuracy"],
            test_metrics=["optimizers.*.test_accuracy", "optimizers.*.test_per_seed", "paired.*.test_accuracy"],
            test=test,
            seeds=seeds,
        ),
        plot=lambda: plot(results, selected, steps_per_epoch, args),
        table=table_md,
        paired_table=pair_md,
        curves={n: r["curve"] for n, r in results.items()},
    )


def summarize_grid(table, lrs) -> list[dict]:
    """One dict per learning rate of the selection grid: means over the seeds of the
    validation accuracy at each run's best epoch (the selection score), of the final
    validation accuracy and of the final training loss."""
    history = {k: np.asarray(v, dtype=float) for k, v in table.results.history.items()}
    diverged = np.asarray(table.results.diverged)
    best = np.asarray(table.results.best_epoch)
    at_best = history["val_accuracy"][np.arange(len(best)), best]
    lr_of_member = np.asarray(table.hyperparameters["lr"])
    out = []
    for lr in lrs:
        members = np.isclose(lr_of_member, lr)
        out.append(
            {
                "lr": float(lr),
                "diverged": bool(diverged[members].any()),
                "val_accuracy": float(np.mean(at_best[members])),
                "final_val_accuracy": float(np.nanmean(history["val_accuracy"][members][:, -1])),
                "final_train_loss": float(np.nanmean(history["loss"][members][:, -1])),
            }
        )
    return out


def describe(trainer, table, x_test, y_test) -> dict:
    """The comparison runs of one optimizer: per-seed final training loss, and validation
    and test accuracy of the params of the best validation epoch, with their mean ± std,
    and the loss curves."""
    r = table.results
    history = {k: np.asarray(v, dtype=float) for k, v in r.history.items()}
    test = common.evaluate_members(trainer, r.best_params, r.best_model_state, x_test, y_test)
    best = np.asarray(r.best_epoch)
    loss, val = history["loss"][:, -1], history["val_accuracy"][np.arange(len(best)), best]
    return {
        "final_train_loss": common.mean_std(loss),
        "validation_accuracy": common.mean_std(val),
        "selected_epoch": common.mean_std(best + 1),
        "test_accuracy": common.mean_std(test["accuracy"]),
        "loss_per_seed": loss,
        "val_per_seed": val,
        "test_per_seed": test["accuracy"],
        "diverged": int(np.asarray(r.diverged).sum()),
        "curve": common.band(history["loss"]),
    }


def plot(results, selected, steps_per_epoch, args):
    title = f"Fashion-MNIST ({args.n_train} training images), MLP {'-'.join(map(str, [784, *args.hidden, 10]))}"
    fig, (ax0, ax1, ax2) = common.figure(title, 3, figsize=(17, 4.3), layout="constrained")
    for i, (name, r) in enumerate(results.items()):
        b = r["curve"]
        iterations = steps_per_epoch * np.arange(1, len(b["mean"]) + 1)
        ax0.plot(iterations, b["mean"], "o-", ms=3, color=f"C{i}", label=f"{name} (lr {selected[name]['lr']:g})")
        ax0.fill_between(iterations, b["min"], b["max"], color=f"C{i}", alpha=0.2)
        grid = selected[name]["grid"]
        ax1.plot([g["lr"] for g in grid], [g["val_accuracy"] for g in grid], "o-", color=f"C{i}", label=name)
        ax2.scatter(
            np.full(args.seeds, i) + np.linspace(-0.15, 0.15, args.seeds), r["test_per_seed"], color=f"C{i}", s=12
        )
        t = r["test_accuracy"]
        ax2.errorbar(i + 0.3, t["mean"], yerr=t["std"], fmt="D", color=f"C{i}", capsize=3)
    ax0.set_yscale("log")
    ax0.set_xlabel(f"iterations (mini-batches of {args.batch_size})")
    ax0.set_ylabel("training loss (epoch mean)")
    ax0.set_title(f"selected learning rate, {args.seeds} seeds (mean, min–max)")
    ax1.set_xscale("log")
    ax1.set_xlabel("learning rate")
    ax1.set_ylabel("validation accuracy, best epoch (mean over seeds)")
    ax1.set_title("selection (validation split)")
    ax2.set_xticks(range(len(results)), list(results), fontsize=8)
    ax2.set_ylabel("test accuracy (dots: seeds; diamond: mean ± std)")
    ax2.set_title("comparison (test set, read once)")
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    fnn.distributed.use_cpu_cores()  # one CPU device per core: the sweeps train members on all of them
    main()
