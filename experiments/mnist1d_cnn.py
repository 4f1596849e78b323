"""The MNIST-1D paper's CNN trained over 32 seeds in one vmapped program.

MNIST-1D (Greydanus & Kobak 2024; 4,000 training / 1,000 test signals of length 40, 10
classes) is generated locally by the ``mnist1d`` package (no download); the signals are
used as they come (already about zero mean, unit variance), as [n, 40, 1] channels-last.
The network is the paper's ``ConvBase`` (MNIST-1D repository, ``notebooks/models.py``):
three ``Conv1D`` layers of 25 channels (kernel 5 stride 2, then kernel 3 stride 2 twice,
padding 1; lengths 40 -> 19 -> 10 -> 5), ReLU after each, ``Flatten`` and ``Dense(125,
10)``: 5,210 parameters. The paper trains it with Adam, learning rate 1e-2, batches of
100, 6,000 steps, and reports 94% test accuracy (MNIST-1D README).

Protocol: 400 of the 4,000 training signals are held out (stratified, seeded) as the
validation split; the networks train on the other 3,600. ``fnn.sweep`` trains all seeds
as one compiled, ``jax.vmap``-ed run of ``fnn.fit`` (one CPU device per core:
``fnn.distributed.use_cpu_cores``); each seed keeps the params of its epoch with the best
validation accuracy. Only then is the test set read, once, to score those params; the
script reports test accuracy mean ± std and min–max over seeds. The defaults (learning
rate, weight decay, epochs, batch size; AdamW with a cosine decay to 0) are what
``--select`` chose on the validation split over 4 other seeds (it reads no test data;
results in ``mnist1d_cnn_select.json``). Target: mean test accuracy >= 0.94 with the
whole script under 3 minutes on 2 CPU cores, compilation included.

    python experiments/mnist1d_cnn.py              # the defaults: 32 seeds
    python experiments/mnist1d_cnn.py --select     # the selection grid (validation only)
    python experiments/mnist1d_cnn.py --seeds 4 --epochs 5

Writes ``<out>/mnist1d_cnn.json`` and ``.png`` (``mnist1d_cnn_select.*`` with ``--select``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from fnn.sweep import sweep  # noqa: E402

NAME = "mnist1d_cnn"
PUBLISHED_CNN = 0.94  # MNIST-1D README table (Greydanus & Kobak): CNN test accuracy 94%
PUBLISHED_MLP = 0.68  # same table, for scale
TARGET_SECONDS = 180  # the whole script on 2 CPU cores, compilation included
SELECTION = (
    "hyperparameters (learning rate, weight decay, epochs, batch size): the setting of "
    "'python experiments/mnist1d_cnn.py --select' with the highest mean validation accuracy over its seeds "
    "(each member scored at its best validation epoch) among those whose 32-seed run fits the 3-minute budget; "
    "epoch: each seed keeps the params of its epoch with the highest validation accuracy (fit's best_params, "
    "monitor='val_accuracy'); the test set is read once, after training, to score those params"
)


def cnn(channels: int, length: int = 40) -> fnn.Serial:
    """MNIST-1D's ``ConvBase``, channels-last: [n, length, 1] -> [n, 10] logits."""
    for kernel in (5, 3, 3):
        length = (length + 2 - kernel) // 2 + 1  # stride 2, padding 1 on both sides
    c = channels
    return fnn.Serial(
        (
            fnn.Conv1D(1, c, 5, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Conv1D(c, c, 3, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Conv1D(c, c, 3, strides=2, padding=1),
            fnn.Activation("relu"),
            fnn.Flatten(),
            fnn.Dense(length * c, 10),
        )
    )


def configuration(channels: int, length: int, steps: int, defaults: dict):
    """``config(lr, weight_decay) -> fnn.Trainer``: the CNN, AdamW with the learning rate
    decayed from ``lr`` to 0 by a cosine over ``steps``, cross-entropy."""

    def config(lr=defaults["lr"], weight_decay=defaults["weight_decay"]):
        optimizer = fnn.adamw(fnn.schedules.cosine_decay(lr, steps), weight_decay=weight_decay)
        return fnn.Trainer(cnn(channels, length), optimizer, fnn.cross_entropy)

    return config


def parser():
    p = common.parser(
        __doc__,
        seeds=32,
        epochs=80,
        batch_size=100,
        lr=2e-2,
        n_train=None,
        n_test=None,
        helps={
            "n_train": "use only the first N training signals (before the validation split)",
            "lr": "AdamW's initial learning rate (cosine decay to 0)",
        },
    )
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW's decoupled weight decay (x lr)")
    p.add_argument("--channels", type=int, default=25, help="channels of each convolution (the paper: 25)")
    p.add_argument("--cache-dir", type=Path, default=None, help="where the generated MNIST-1D .npz is cached")
    p.add_argument("--n-val", type=int, default=400, help="training signals held out for selection (stratified)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")
    p.add_argument(
        "--cpu-devices",
        type=int,
        default=None,
        help="CPU devices for JAX (fnn.distributed.use_cpu_cores); default one per core (called from "
        "Python after JAX started: the process's devices)",
    )
    p.add_argument(
        "--select", action="store_true", help="run the selection grid on the validation split (reads no test data)"
    )
    p.add_argument("--select-seeds", type=int, nargs="+", default=[100, 101, 102, 103], help="seeds of the grid")
    p.add_argument(
        "--select-variants",
        nargs="+",
        default=["e60", "e80", "e60+b50"],
        help="settings of the grid, one sweep each: '+'-joined e<n> (epochs), b<n> (batch size); "
        "the rest as --epochs, --batch-size",
    )
    p.add_argument("--grid-lr", type=float, nargs="+", default=[0.02, 0.03, 0.05], help="learning rates of the grid")
    p.add_argument(
        "--grid-weight-decay", type=float, nargs="+", default=[0.1, 0.3], help="AdamW weight decays of the grid"
    )
    return p


def variant(text: str, epochs: int, batch_size: int) -> dict:
    """A setting of the selection grid: '+'-joined ``e<n>`` (epochs) and ``b<n>`` (batch
    size) tokens -> ``{"epochs", "batch_size"}``."""
    out = {"epochs": epochs, "batch_size": batch_size}
    for token in text.split("+"):
        if token[:1] == "e" and token[1:].isdigit():
            out["epochs"] = int(token[1:])
        elif token[:1] == "b" and token[1:].isdigit():
            out["batch_size"] = int(token[1:])
        else:
            raise SystemExit(f"--select-variants: unknown token {token!r} in {text!r} (e<n>, b<n>)")
    return out


def main(argv=None) -> dict:
    options = parser()
    args = options.parse_args(argv)
    common.use_cores(args.cpu_devices)  # before any JAX computation: every core trains seeds
    run, args = common.start(NAME, options, argv)
    with run("data"):
        data = fnn.datasets.load_mnist1d(args.cache_dir)
        x_all = data.x_train[: args.n_train, :, None]  # [n, 40, 1]: channels-last
        y_all = data.y_train[: args.n_train]
        (x_train, y_train, x_val, y_val), split = common.carve_validation(
            x_all, y_all, args.n_val, seed=args.split_seed
        )
        test = common.TestSet(data.x_test[: args.n_test, :, None], data.y_test[: args.n_test], "MNIST-1D test set")
        split |= {"source": f"MNIST-1D training set ({len(y_all)} signals)", "test": test.size}
    length = x_train.shape[1]
    defaults = {"lr": args.lr, "weight_decay": args.weight_decay}
    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    if args.select:
        return select(run, args, x_train, y_train, fit_options, split, defaults, length)

    steps = args.epochs * -(-len(y_train) // args.batch_size)
    config = configuration(args.channels, length, steps, defaults)
    n_params = count_params(config())
    common.say(
        f"MNIST-1D: {len(y_train)} train / {len(y_val)} validation / {test.size} test; CNN 3 x Conv1D({args.channels}) "
        f"+ Dense ({n_params} parameters), AdamW lr {args.lr:g} cosine, weight decay {args.weight_decay:g}, batch "
        f"{args.batch_size}, {args.epochs} epochs, {args.seeds} seeds in one vmapped program on "
        f"{len(jax.devices())} CPU device(s) (compiling first; each per-epoch line summarizes the members)"
    )
    with run("train (compile + run)"):
        table = sweep(config, x_train, y_train, seeds=args.seeds, **fit_options)
        jax.block_until_ready(table.results.history)
    results, trainer = table.results, config()
    if np.asarray(results.diverged).any():
        raise RuntimeError(f"{int(np.asarray(results.diverged).sum())} of {args.seeds} seeds diverged")
    history = {k: np.asarray(v) for k, v in results.history.items()}
    best = np.asarray(results.best_epoch)
    val_acc = history["val_accuracy"][np.arange(args.seeds), best]
    with run("evaluate"):
        train_acc = common.evaluate_members(trainer, results.best_params, results.best_model_state, x_train, y_train)
        x_test, y_test = test.read()  # once: the selected params of every seed
        scores = common.evaluate_members(trainer, results.best_params, results.best_model_state, x_test, y_test)
    test_acc = scores["accuracy"]

    tested, validated = common.mean_std(test_acc), common.mean_std(val_acc)
    total = run.total()
    metrics = {
        "test_accuracy": tested,
        "test_loss": common.mean_std(scores["loss"]),
        "test_accuracy_per_seed": test_acc,
        "reaches_target_accuracy": tested["mean"] >= PUBLISHED_CNN,
        "validation_accuracy": validated,
        "validation_accuracy_per_seed": val_acc,
        "selected_epoch": common.mean_std(best + 1),
        "train_accuracy": common.mean_std(train_acc["accuracy"]),
        "parameters": n_params,
        "published_cnn_accuracy": PUBLISHED_CNN,
        "published_mlp_accuracy": PUBLISHED_MLP,
        "training_wall_time_s": run.times["train (compile + run)"],
        "seconds_per_epoch_all_seeds": run.times["train (compile + run)"] / args.epochs,
        "script_wall_time_s": total,
        "within_time_budget": total < TARGET_SECONDS,
        "load_average": load_average(),
    }
    common.say("\nValidation accuracy at each seed's selected epoch (SweepResult.summary):")
    common.say(table.summary("best_val_accuracy"))
    common.say(
        f"\nvalidation accuracy {common.pm(validated)}; selected epochs {best.min() + 1}–{best.max() + 1}"
        f"\ntest accuracy       {common.pm(tested)}  ({args.seeds} seeds, test set read once); published CNN "
        f"{PUBLISHED_CNN:.2f}: {'reached' if metrics['reaches_target_accuracy'] else 'NOT reached'}"
        f"\ntrain accuracy (evaluation mode, selected params) {common.pm(metrics['train_accuracy'])}"
        f"\nwall time {total:.1f} s so far (training, compilation included: {metrics['training_wall_time_s']:.1f} s; "
        f"budget {TARGET_SECONDS} s); load average {metrics['load_average']}"
    )
    selected = {
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "schedule": "cosine decay to 0",
    }
    return run.finish(
        config={"network": describe(args.channels), "optimizer": "adamw + cosine decay", "steps": steps},
        metrics=metrics,
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected=selected,
            validation_metrics=["validation_accuracy", "validation_accuracy_per_seed", "selected_epoch"],
            test_metrics=["test_accuracy", "test_loss", "test_accuracy_per_seed", "reaches_target_accuracy"],
            test=test,
            seeds=list(range(args.seeds)),
        ),
        plot=lambda: plot(history, test_acc, args),
        summary=table.summary("best_val_accuracy"),
        curves={k: common.band(v) for k, v in history.items() if k != "lr"},
    )


def describe(channels: int) -> str:
    return (
        f"Conv1D(1, {channels}, 5, stride 2, pad 1) ReLU, Conv1D({channels}, {channels}, 3, stride 2, pad 1) ReLU, "
        f"Conv1D({channels}, {channels}, 3, stride 2, pad 1) ReLU, Flatten, Dense({5 * channels}, 10)"
    )


def count_params(trainer) -> int:
    params, _ = trainer.model.init(jax.random.key(0))
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other users' jobs share the cores)."""
    try:
        import os

        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def select(run, args, x_train, y_train, fit_options, split, defaults, length) -> dict:
    """The selection grid: every setting of ``--select-variants`` (epochs, batch size; one
    vmapped sweep each) x learning rate x weight decay over ``--select-seeds``, scored on
    the validation split. No test data."""
    run.name = NAME + "_select"
    grid = {"lr": args.grid_lr, "weight_decay": args.grid_weight_decay}
    seeds = args.select_seeds
    n_points = len(args.grid_lr) * len(args.grid_weight_decay)
    rows, curves = [], {}
    for text in args.select_variants:
        v = variant(text, args.epochs, args.batch_size)
        steps = v["epochs"] * -(-len(y_train) // v["batch_size"])
        config = configuration(args.channels, length, steps, defaults)
        common.say(
            f"\n== selection, {text}: {v['epochs']} epochs, batch {v['batch_size']}; {n_points} grid points x "
            f"{len(seeds)} seeds = {n_points * len(seeds)} runs in one vmapped program; {len(y_train)} train / "
            f"{split['validation']} validation"
        )
        with run(f"select {text}"):
            table = sweep(config, x_train, y_train, seeds=seeds, grid=grid, **fit_options | v)
            jax.block_until_ready(table.results.history)
        val = np.asarray(table.results.history["val_accuracy"], dtype=float)
        table_rows = table.rows()
        for a in table.aggregate("best_val_accuracy"):
            members = [i for i, r in enumerate(table_rows) if all(r[k] == a[k] for k in grid)]
            a = {"variant": text, **v, **a}
            a["final_val_accuracy"] = float(np.mean(val[members, -1]))
            a["selected_epoch_mean"] = float(np.mean([table_rows[i]["best_epoch"] + 1 for i in members]))
            a["seconds"] = run.times[f"select {text}"]
            curves[f"{text}, lr {a['lr']:g}, wd {a['weight_decay']:g}"] = np.nanmean(val[members], axis=0)
            rows.append(a)
    chosen = max(rows, key=lambda r: r["mean"])
    header = ["setting", "lr", "weight decay", "validation accuracy (best epoch)", "min–max", "final epoch"]
    table_md = common.markdown_table(
        header,
        [
            [
                f"**{r['variant']}**" if r is chosen else r["variant"],
                f"{r['lr']:g}",
                f"{r['weight_decay']:g}",
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                f"{r['min']:.4f}–{r['max']:.4f}",
                r["final_val_accuracy"],
            ]
            for r in rows
        ],
    )
    selected = {k: chosen[k] for k in ("lr", "weight_decay", "epochs", "batch_size")}
    command = (
        f"python experiments/mnist1d_cnn.py --lr {chosen['lr']:g} --weight-decay {chosen['weight_decay']:g} "
        f"--epochs {chosen['epochs']} --batch-size {chosen['batch_size']}"
    )
    common.say(f"\nmean ± std over {len(seeds)} seeds, validation split only:\n{table_md}\nselected: {selected}")
    common.say(f"run it: {command}")
    return run.finish(
        config={"grid": grid, "variants": args.select_variants, "select_seeds": seeds},
        metrics={"grid": rows, "selected": selected, "run_selected": command, "load_average": load_average()},
        protocol=common.protocol(
            split,
            selection="the grid point (epochs and batch size x lr x weight decay) with the highest mean validation "
            "accuracy over the selection seeds (each member at its best validation epoch); no test data is read",
            selected=selected,
            validation_metrics=["grid"],
            test_metrics=[],
            test=None,
            seeds=list(seeds),
        ),
        plot=lambda: plot_selection(rows, chosen, curves),
        table=table_md,
        curves=curves,
    )


def plot_selection(rows, chosen, curves):
    fig, (ax0, ax1) = common.figure("MNIST-1D CNN selection grid (validation split only)", 2, figsize=(13, 4.5))
    labels = list(curves)
    ax0.barh(range(len(rows)), [r["mean"] for r in rows], xerr=[r["std"] for r in rows], capsize=3)
    ax0.barh([rows.index(chosen)], [chosen["mean"]], color="C3", label="selected")
    ax0.set_yticks(range(len(rows)), labels, fontsize=7)
    ax0.set_xlim(min(r["min"] for r in rows) - 0.01, max(r["max"] for r in rows) + 0.005)
    ax0.set_xlabel("validation accuracy at the best epoch (mean ± std over seeds)")
    ax0.legend(fontsize=8)
    for label, curve in curves.items():
        ax1.plot(np.arange(1, len(curve) + 1), curve, label=label)
    ax1.set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)")
    ax1.set_ylim(max(0.0, min(float(np.nanmax(c)) for c in curves.values()) - 0.15), None)
    ax1.legend(fontsize=6)
    return fig


def plot(history, test_acc, args):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    title = f"MNIST-1D, the paper's CNN ({args.channels} channels), {len(test_acc)} seeds in one vmapped run"
    fig, axes = common.figure(title, 3, figsize=(15, 4.2))
    panels = [("loss", "val_loss", "cross-entropy loss"), ("accuracy", "val_accuracy", "accuracy")]
    for ax, (train_key, val_key, label) in zip(axes, panels):
        for key, color, name in ((train_key, "C0", "train (running)"), (val_key, "C2", "validation")):
            b = common.band(history[key])
            ax.plot(epochs, b["mean"], color=color, label=f"{name}: mean")
            ax.fill_between(epochs, b["min"], b["max"], color=color, alpha=0.2, label=f"{name}: min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    axes[1].axhline(PUBLISHED_CNN, color="k", ls="--", lw=1, label="published CNN (94%, test)")
    axes[1].set_ylim(0.5, 1.0)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    axes[2].hist(test_acc, bins=min(12, max(3, len(test_acc) // 2)), color="C1", alpha=0.8)
    axes[2].axvline(PUBLISHED_CNN, color="k", ls="--", lw=1, label="published CNN")
    axes[2].axvline(float(np.mean(test_acc)), color="C3", lw=1.5, label="mean over seeds")
    axes[2].set_xlabel("test accuracy (selected epoch; test read once)")
    axes[2].set_ylabel("seeds")
    axes[2].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
