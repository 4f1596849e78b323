"""The main job: an MLP on MNIST-1D trained over 32 seeds in one vmapped program.

MNIST-1D (Greydanus & Kobak 2024) is generated locally by the ``mnist1d`` package
(4,000 training / 1,000 test signals of length 40, 10 classes; no download). 400 of the
training signals are held out (stratified, seeded) as the validation split; the network
trains on the other 3,600, with the inputs standardized by their statistics. ``fnn.sweep``
trains all seeds as one compiled, ``jax.vmap``-ed run of ``fnn.fit``; each seed keeps the
params of its epoch with the best validation accuracy. Only then is the test set read,
once, to score those params; the script reports the test accuracy as mean ± std and
min–max over seeds next to the published MLP baseline of the MNIST-1D README (68%), and,
from the same read, the accuracy of the seeds' ensemble (``SweepResult.ensemble``: the
mean of the members' softmax probabilities).

The defaults (activation, learning rate, L2, dropout) are what ``--select`` chose: a grid
(GELU; learning rate {3e-3, 1e-2, 3e-2} x L2 {0, 1e-3, 1e-2} x dropout {0, 0.1, 0.3}, the
grid of ``experiments/halving.py``) trained over 8 other seeds and scored on the
validation split only (it reads no test data; results in ``mnist1d_seeds_select.json``).

    python experiments/mnist1d_seeds.py              # the defaults: 32 seeds, 60 epochs
    python experiments/mnist1d_seeds.py --select     # the selection grid (validation only)
    python experiments/mnist1d_seeds.py --seeds 4 --epochs 5

Writes ``<out>/mnist1d_seeds.json`` and ``.png`` (``mnist1d_seeds_select.*`` with ``--select``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402

NAME = "mnist1d_seeds"
PUBLISHED_MLP = 0.68  # MNIST-1D README table (Greydanus & Kobak): MLP test accuracy 68%
SELECTION = (
    "hyperparameters: the grid point with the highest mean validation accuracy over the selection seeds "
    "(each member scored at its best validation epoch); epoch: each seed keeps the params of its epoch with the "
    "highest validation accuracy (fit's best_params, monitor='val_accuracy'); the test set is read once, "
    "after training, to score those params"
)


def parser():
    p = common.parser(
        __doc__,
        cache_dir=None,
        n_val=400,
        split_seed=0,
        seeds=32,
        epochs=60,
        batch_size=100,
        hidden=[100, 100],
        activation="gelu",
        lr=3e-2,
        dropout=0.1,
        l2=1e-3,
        n_train=None,
        n_test=None,
        helps={
            "n_train": "use only the first N training signals (before the validation split)",
        },
    )
    p.add_argument(
        "--select", action="store_true", help="run the selection grid on the validation split (reads no test data)"
    )
    p.add_argument("--select-seeds", type=int, nargs="+", default=list(range(100, 108)), help="seeds of the grid")
    p.add_argument("--grid-activation", nargs="+", default=["gelu"], help="activations of the grid")
    p.add_argument("--grid-lr", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2], help="learning rates of the grid")
    p.add_argument("--grid-l2", type=float, nargs="+", default=[0.0, 1e-3, 1e-2], help="L2 strengths of the grid")
    p.add_argument("--grid-dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="dropout rates of the grid")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    with run("data"):
        data = fnn.datasets.load_mnist1d(args.cache_dir)
        x_all, y_all = data.x_train[: args.n_train], data.y_train[: args.n_train]
        (x_train, y_train, x_val, y_val), split = common.carve_validation(
            x_all, y_all, args.n_val, seed=args.split_seed
        )
        (x_train, x_val), (mean, std) = fnn.standardize(x_train, x_val)
        test = common.TestSet(data.x_test[: args.n_test], data.y_test[: args.n_test], "MNIST-1D test set")
        split |= {"source": f"MNIST-1D training set ({len(y_all)} signals)", "test": test.size}
    n_in, steps = x_train.shape[1], args.epochs * -(-len(y_train) // args.batch_size)
    sizes = [n_in, *args.hidden, 10]

    def configuration(activation):
        def config(lr=args.lr, dropout=args.dropout, l2=args.l2):
            model = fnn.mlp(sizes, activation=activation, dropout=dropout)
            optimizer = fnn.adam(fnn.schedules.cosine_decay(lr, steps))
            return fnn.Trainer(model, optimizer, fnn.cross_entropy, regularizer=fnn.l2(l2))

        return config

    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    if args.select:
        return select(run, args, configuration, x_train, y_train, fit_options, split, sizes)

    common.say(
        f"MNIST-1D: {len(y_train)} train / {len(y_val)} validation / {test.size} test; MLP "
        f"{'-'.join(map(str, sizes))} {args.activation}, dropout {args.dropout}, Adam lr {args.lr:g} cosine, "
        f"batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds in one vmapped program "
        "(compiling first; each per-epoch line summarizes the members)"
    )
    config = configuration(args.activation)
    with run("train (compile + run)"):
        table = fnn.sweep(
            config, x_train, y_train, seeds=args.seeds, tensorboard=run.tensorboard("train"), **fit_options
        )
        jax.block_until_ready(table.results.history)
    results, trainer = table.results, config()
    history = {k: np.asarray(v) for k, v in results.history.items()}
    best = np.asarray(results.best_epoch)
    val_acc = history["val_accuracy"][np.arange(args.seeds), best]
    with run("evaluate"):
        train_acc = common.evaluate_members(trainer, results.best_params, results.best_model_state, x_train, y_train)
        x_test, y_test = test.read()  # once: the selected params of every seed
        x_test = (jnp.asarray(x_test, mean.dtype) - mean) / std  # standardized with the training statistics
        scores = common.evaluate_members(trainer, results.best_params, results.best_model_state, x_test, y_test)
        [ensemble_test] = table.ensemble(config, x_test, y_test)  # the same read: the seeds' averaged probabilities
        [ensemble_val] = table.ensemble(config, x_val, y_val)
    test_acc = scores["accuracy"]

    tested, validated = common.mean_std(test_acc), common.mean_std(val_acc)
    common.say("\nValidation accuracy at each seed's selected epoch (SweepResult.summary):")
    common.say(table.summary("best_val_accuracy"))
    common.say(
        f"\nvalidation accuracy {common.pm(validated)}; selected epochs {best.min() + 1}–{best.max() + 1}"
        f"\ntest accuracy       {common.pm(tested)}  ({args.seeds} seeds, test set read once)"
        f"   published MLP baseline (MNIST-1D README): {PUBLISHED_MLP:.2f}"
        f"\nensemble of the {args.seeds} seeds (mean of their softmax probabilities): test accuracy "
        f"{ensemble_test['accuracy']:.4f}, validation accuracy {ensemble_val['accuracy']:.4f}"
    )
    metrics = {
        "test_accuracy": tested,
        "test_loss": common.mean_std(scores["loss"]),
        "test_accuracy_per_seed": test_acc,
        "validation_accuracy": validated,
        "validation_accuracy_per_seed": val_acc,
        "selected_epoch": common.mean_std(best + 1),
        "train_accuracy": common.mean_std(train_acc["accuracy"]),
        "published_mlp_accuracy": PUBLISHED_MLP,
        "ensemble_test_accuracy": ensemble_test["accuracy"],
        "ensemble_test_loss": ensemble_test["loss"],
        "ensemble_validation_accuracy": ensemble_val["accuracy"],
    }
    common.say(f"train accuracy (evaluation mode, selected params) {common.pm(metrics['train_accuracy'])}")
    return run.finish(
        config={"sizes": sizes, "optimizer": "adam + cosine decay", "steps": steps},
        metrics=metrics,
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected={"activation": args.activation, "lr": args.lr, "dropout": args.dropout, "epochs": args.epochs},
            validation_metrics=[
                "validation_accuracy",
                "validation_accuracy_per_seed",
                "selected_epoch",
                "ensemble_validation_accuracy",
            ],
            test_metrics=[
                "test_accuracy",
                "test_loss",
                "test_accuracy_per_seed",
                "ensemble_test_accuracy",
                "ensemble_test_loss",
            ],
            test=test,
            seeds=list(range(args.seeds)),
        ),
        plot=lambda: plot(history, test_acc, args),
        summary=table.summary("best_val_accuracy"),
        curves={k: common.band(v) for k, v in history.items() if k != "lr"},
    )


def select(run, args, configuration, x_train, y_train, fit_options, split, sizes) -> dict:
    """The selection grid: activation x learning rate x L2 x dropout over ``--select-seeds``,
    scored on the validation split; one vmapped sweep per activation. No test data."""
    run.name = NAME + "_select"
    grid = {"lr": args.grid_lr, "l2": args.grid_l2, "dropout": args.grid_dropout}
    seeds = args.select_seeds
    points = len(args.grid_lr) * len(args.grid_l2) * len(args.grid_dropout)
    rows = []
    for activation in args.grid_activation:
        common.say(
            f"\n== selection, {activation}: {points} grid points x {len(seeds)} seeds = {points * len(seeds)} runs "
            f"in one vmapped program; {len(y_train)} train / {split['validation']} validation"
        )
        with run(f"select {activation}"):
            log = run.tensorboard(f"select {activation}")
            table = fnn.sweep(
                configuration(activation), x_train, y_train, seeds=seeds, grid=grid, tensorboard=log, **fit_options
            )
            jax.block_until_ready(table.results.history)
        table_rows = table.rows()  # once: it builds a dict per member
        for (_, indices), a in zip(table.groups(), table.aggregate("best_val_accuracy")):
            a = {"activation": activation} | a
            members = [table_rows[i] for i in indices]
            a["final_val_accuracy"] = float(np.mean([r["final_val_accuracy"] for r in members]))
            a["selected_epoch_mean"] = float(np.mean([r["best_epoch"] + 1 for r in members]))
            rows.append(a)
    chosen = max(rows, key=lambda r: r["mean"])
    header = ["activation", "lr", "l2", "dropout", "validation accuracy (best epoch)", "min–max", "final-epoch val acc"]
    table_md = common.markdown_table(
        header,
        [
            [
                ("**" + r["activation"] + "**") if r is chosen else r["activation"],
                f"{r['lr']:g}",
                f"{r['l2']:g}",
                f"{r['dropout']:g}",
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                f"{r['min']:.4f}–{r['max']:.4f}",
                r["final_val_accuracy"],
            ]
            for r in rows
        ],
    )
    selected = {k: chosen[k] for k in ("activation", "lr", "l2", "dropout")}
    command = (
        f"python experiments/mnist1d_seeds.py --activation {chosen['activation']} --lr {chosen['lr']:g} "
        f"--l2 {chosen['l2']:g} --dropout {chosen['dropout']:g}"
    )
    common.say(f"\nmean ± std over {len(seeds)} seeds, validation split only:\n{table_md}\nselected: {selected}")
    common.say(f"run it: {command}")
    return run.finish(
        config={"sizes": sizes, "grid": {"activation": args.grid_activation, **grid}, "select_seeds": seeds},
        metrics={"grid": rows, "selected": selected, "run_selected": command},
        protocol=common.protocol(
            split,
            selection="the grid point with the highest mean validation accuracy over the selection seeds "
            "(each member at its best validation epoch); no test data is read",
            selected=selected,
            validation_metrics=["grid"],
            test_metrics=[],
            test=None,
            seeds=list(seeds),
        ),
        plot=lambda: plot_selection(rows, chosen),
        table=table_md,
    )


def plot_selection(rows, chosen):
    fig, axes = common.figure("MNIST-1D selection grid (validation accuracy, mean ± std over seeds)", 1, figsize=(8, 4))
    keys = sorted({(r["activation"], r["l2"], r["dropout"]) for r in rows})
    for i, (activation, l2, dropout) in enumerate(keys):
        line = sorted(
            (r for r in rows if (r["activation"], r["l2"], r["dropout"]) == (activation, l2, dropout)),
            key=lambda r: r["lr"],
        )
        axes.errorbar(
            [r["lr"] for r in line],
            [r["mean"] for r in line],
            yerr=[r["std"] for r in line],
            marker="o",
            capsize=3,
            color=f"C{i}",
            label=f"{activation}, l2 {l2:g}, dropout {dropout:g}",
        )
    axes.plot([chosen["lr"]], [chosen["mean"]], "k*", ms=14, label="selected")
    axes.set(xscale="log", xlabel="learning rate (cosine decay to 0)", ylabel="validation accuracy")
    axes.legend(fontsize=7)
    return fig


def plot(history, test_acc, args):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    title = f"MNIST-1D, MLP {'-'.join(map(str, [40, *args.hidden, 10]))}, {len(test_acc)} seeds in one vmapped run"
    fig, axes = common.figure(title, 3, figsize=(15, 4.2))
    panels = [("loss", "val_loss", "cross-entropy loss"), ("accuracy", "val_accuracy", "accuracy")]
    for ax, (train_key, val_key, label) in zip(axes, panels):
        for key, color, name in ((train_key, "C0", "train (running, dropout on)"), (val_key, "C2", "validation")):
            b = common.band(history[key])
            ax.plot(epochs, b["mean"], color=color, label=f"{name}: mean")
            ax.fill_between(epochs, b["min"], b["max"], color=color, alpha=0.2, label=f"{name}: min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[1].axhline(PUBLISHED_MLP, color="k", ls="--", lw=1, label="published MLP (68%, test)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    axes[2].hist(test_acc, bins=min(12, max(3, len(test_acc) // 2)), color="C1", alpha=0.8)
    axes[2].axvline(PUBLISHED_MLP, color="k", ls="--", lw=1, label="published MLP")
    axes[2].axvline(float(np.mean(test_acc)), color="C3", lw=1.5, label="mean over seeds")
    axes[2].set_xlabel("test accuracy (selected epoch; test read once)")
    axes[2].set_ylabel("seeds")
    axes[2].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    fnn.distributed.use_cpu_cores()  # one CPU device per core: the sweeps train members on all of them
    main()
