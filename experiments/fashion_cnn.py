"""A CNN under 100k parameters on the full Fashion-MNIST: selected on a validation split,
the test set read once, with the time per epoch and the learning curves.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test 28x28 grey
images, 10 classes; pixels scaled to [0, 1] (``fnn.prepare_images``) and shaped [n, 28, 28,
1] channels-last. 5,000 of the training images are held out (stratified, seeded) as the
validation split; the networks train on the other 55,000. The network: blocks of
``Conv2D`` 3x3 (SAME) -> ``BatchNorm`` (per channel) -> ReLU -> ``MaxPool2D(2)``
(28 -> 14 -> 7 -> 3), then ``Flatten``, dropout, an optional hidden ``Dense`` + ReLU +
dropout, and ``Dense(.., 10)``; AdamW with a cosine decay to 0. All seeds train as ONE
vmapped ``fnn.sweep`` (one CPU device per core: ``fnn.distributed.use_cpu_cores``); each
seed keeps the params of its epoch with the best validation accuracy, and only those are
scored on the test set, once. Target: test accuracy >= 0.925 (the Fashion-MNIST
benchmark's entry of two convolutions with pooling), the whole script in under 10
minutes on 2 CPU cores.

The defaults (hidden width, learning rate) are what ``--select`` chose: a small grid of
short runs (6 epochs, one other seed) scored on the validation split only (it reads no
test data; results in ``fashion_cnn_select.json``). The number of epochs is not selected:
it is the most that fits the 10-minute budget at the measured time per epoch (about 34 s
for one seed with the 2 cores shared with other jobs); for the same reason the default is
one seed (``--seeds 2`` trains two in one sweep, one per core, in about 1.5x the time).

    python experiments/fashion_cnn.py                 # the selected configuration
    python experiments/fashion_cnn.py --select        # the selection grid (validation only)
    python experiments/fashion_cnn.py --n-train 2000 --epochs 1 --seeds 2

Writes ``<out>/fashion_cnn.json`` and ``.png`` (``fashion_cnn_select.*`` with ``--select``).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402
from fnn.sweep import sweep  # noqa: E402

NAME = "fashion_cnn"
TARGET = 0.925  # Fashion-MNIST benchmark: 2 Conv+pooling (~100k parameters), 0.925
MAX_PARAMS = 100_000
TARGET_SECONDS = 600  # the whole script on 2 CPU cores
SELECTION = (
    "configuration (channels, hidden width, dropout, learning rate, weight decay, epochs, batch size): the grid "
    "point of 'python experiments/fashion_cnn.py --select' with the highest mean validation accuracy over its "
    "seeds, among the networks under 100k parameters whose run fits the 10-minute budget; epoch: each seed keeps "
    "the params of its epoch with the highest validation accuracy (fit's best_params, monitor='val_accuracy'); "
    "the test set is read once, after training, to score those params"
)


def cnn(channels, dense: int, dropout, size: int = 28) -> fnn.Serial:
    """Conv2D 3x3 -> BatchNorm -> ReLU -> MaxPool2D(2) per entry of ``channels``, Flatten,
    dropout, [Dense(dense) -> ReLU -> dropout], Dense(10); input [n, size, size, 1]."""
    layers: list = []
    c_in = 1
    for c in channels:
        layers += [
            fnn.Conv2D(c_in, c, 3, padding="SAME", use_bias=False),  # the batch norm's shift is the bias
            fnn.BatchNorm(c),
            fnn.Activation("relu"),
            fnn.MaxPool2D(2),
        ]
        c_in, size = c, size // 2
    width = size * size * c_in
    layers += [fnn.Flatten(), fnn.Dropout(dropout)]
    if dense:
        layers += [fnn.Dense(width, dense), fnn.Activation("relu"), fnn.Dropout(dropout)]
        width = dense
    layers.append(fnn.Dense(width, 10))
    return fnn.Serial(tuple(layers))


def configuration(channels, dense: int, steps: int, defaults: dict):
    """``config(lr, dropout, weight_decay) -> fnn.Trainer`` for one network: the CNN,
    AdamW with a cosine decay to 0 over ``steps``, cross-entropy."""

    def config(lr=defaults["lr"], dropout=defaults["dropout"], weight_decay=defaults["weight_decay"]):
        optimizer = fnn.adamw(fnn.schedules.cosine_decay(lr, steps), weight_decay=weight_decay)
        return fnn.Trainer(cnn(channels, dense, dropout), optimizer, fnn.cross_entropy)

    return config


def count_params(model) -> int:
    params, _ = model.init(jax.random.key(0))
    return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def parser():
    p = common.parser(
        __doc__,
        data=True,
        seeds=1,
        epochs=14,
        batch_size=256,
        lr=1e-2,
        dropout=0.2,
        n_train=None,
        n_test=None,
        helps={
            "n_train": "use only N of the 55,000 training images left after the validation split",
            "lr": "AdamW's initial learning rate (cosine decay to 0)",
            "dropout": "dropout rate after the flattened features and after the hidden Dense",
        },
    )
    p.add_argument("--channels", type=int, nargs="+", default=[16, 32, 64], help="channels of the conv blocks")
    p.add_argument("--dense", type=int, default=0, help="width of the hidden Dense layer (0: none)")
    p.add_argument("--weight-decay", type=float, default=0.0, help="AdamW's decoupled weight decay (x lr)")
    p.add_argument("--n-val", type=int, default=5000, help="training images held out for selection (stratified)")
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
    p.add_argument("--select-seeds", type=int, nargs="+", default=[100], help="seeds of the grid")
    p.add_argument(
        "--select-variants",
        nargs="+",
        default=["c16x32x64+d96+e6", "c16x32x64+d0+e6"],
        help="networks of the grid, one sweep each: '+'-joined c<a>x<b>... (conv channels), d<n> (hidden "
        "Dense width, 0: none), e<n> (epochs), b<n> (batch size); the rest as --channels, --dense, --epochs, "
        "--batch-size",
    )
    p.add_argument("--grid-lr", type=float, nargs="+", default=[3e-3, 1e-2], help="learning rates of the grid")
    p.add_argument("--grid-dropout", type=float, nargs="+", default=[0.2], help="dropout rates of the grid")
    p.add_argument("--grid-weight-decay", type=float, nargs="+", default=[0.0], help="weight decays of the grid")
    return p


def variant(text: str, args) -> dict:
    """A network of the selection grid: '+'-joined ``c<a>x<b>...``, ``d<n>``, ``e<n>``,
    ``b<n>`` tokens -> ``{"channels", "dense", "epochs", "batch_size"}``."""
    out = {"channels": list(args.channels), "dense": args.dense, "epochs": args.epochs, "batch_size": args.batch_size}
    keys = {"c": "channels", "d": "dense", "e": "epochs", "b": "batch_size"}
    for token in text.split("+"):
        key, value = keys.get(token[:1]), token[1:]
        if key is None or not value.replace("x", "").isdigit():
            raise SystemExit(f"--select-variants: unknown token {token!r} in {text!r} (c<a>x<b>, d<n>, e<n>, b<n>)")
        out[key] = [int(c) for c in value.split("x")] if key == "channels" else int(value)
    return out


def describe(channels, dense: int, n_params: int) -> str:
    blocks = " -> ".join(f"Conv{c} 3x3-BN-ReLU-MaxPool2" for c in channels)
    return (
        f"CNN {blocks} -> Flatten{f' -> Dense({dense})-ReLU' if dense else ''} -> Dense(10) ({n_params:,} parameters)"
    )


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (other users' jobs share the cores)."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (AttributeError, OSError):
        return None


def main(argv=None) -> dict:
    options = parser()
    args = options.parse_args(argv)
    common.use_cores(args.cpu_devices)  # before any JAX computation: every core trains seeds
    run, args = common.start(NAME, options, argv)
    x_train, y_train, x_val, y_val, test, split = common.fashion_splits(run, n_val=args.n_val, n_train=args.n_train)
    x_train, x_val = (np.asarray(x).reshape(-1, 28, 28, 1) for x in (x_train, x_val))
    defaults = {"lr": args.lr, "dropout": args.dropout, "weight_decay": args.weight_decay}
    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    if args.select:
        return select(run, args, x_train, y_train, fit_options, split, defaults)
    steps = args.epochs * -(-len(y_train) // args.batch_size)
    config = configuration(args.channels, args.dense, steps, defaults)
    n_params = count_params(config().model)
    if n_params >= MAX_PARAMS:
        common.say(f"note: {n_params:,} parameters, not under the {MAX_PARAMS:,} of the target")
    described = describe(args.channels, args.dense, n_params)
    # members sharded over the CPU devices, no more devices than seeds (one seed on two
    # devices would train a padding copy of itself on the second)
    devices = min(args.seeds, len(jax.devices()))
    common.say(
        f"Fashion-MNIST: {len(y_train)} train / {len(y_val)} validation / {test.size} test; {described}; dropout "
        f"{args.dropout:g}, AdamW lr {args.lr:g} cosine, weight decay {args.weight_decay:g}, batch {args.batch_size}, "
        f"{args.epochs} epochs; {args.seeds} seed(s) in one vmapped program on {devices} CPU device(s) "
        "(compiling first; per-epoch lines: 'val_' = validation)"
    )
    with run("train (compile + run)"):
        table = sweep(config, x_train, y_train, seeds=args.seeds, devices=devices, **fit_options)
        jax.block_until_ready(table.results.history)
    results, trainer = table.results, config()
    if np.asarray(results.diverged).any():
        raise RuntimeError(f"{int(np.asarray(results.diverged).sum())} of {args.seeds} seeds diverged")
    history = {k: np.asarray(v) for k, v in results.history.items()}
    best = np.asarray(results.best_epoch)
    val_acc = history["val_accuracy"][np.arange(args.seeds), best]
    with run("evaluate"):
        x_test, y_test = test.read()  # once: the selected params of every seed
        x_test = np.asarray(x_test).reshape(-1, 28, 28, 1)
        scores = common.evaluate_members(trainer, results.best_params, results.best_model_state, x_test, y_test)

    train_time = run.times["train (compile + run)"]
    tested = common.mean_std(scores["accuracy"])
    total = run.total()
    metrics = {
        "test_accuracy": tested,
        "test_loss": common.mean_std(scores["loss"]),
        "test_accuracy_per_seed": scores["accuracy"],
        "reaches_target": tested["mean"] >= TARGET,
        "validation_accuracy": common.mean_std(val_acc),
        "validation_accuracy_per_seed": val_acc,
        "selected_epoch": common.mean_std(best + 1),
        "final_train_accuracy_running": common.mean_std(history["accuracy"][:, -1]),
        "parameters": n_params,
        "under_max_parameters": n_params < MAX_PARAMS,
        "target_test_accuracy": TARGET,
        "training_wall_time_s": train_time,
        "seconds_per_epoch_all_seeds": train_time / args.epochs,
        "script_wall_time_s": total,
        "within_time_budget": total < TARGET_SECONDS,
        "load_average": load_average(),
    }
    common.say(table.summary("best_val_accuracy"))
    common.say(
        f"\nvalidation accuracy {common.pm(metrics['validation_accuracy'])} (selected epochs "
        f"{best.min() + 1}–{best.max() + 1})\ntest accuracy       {common.pm(tested)} ({args.seeds} seed(s), test "
        f"set read once); target {TARGET} {'reached' if metrics['reaches_target'] else 'NOT reached'}"
        f"\n{n_params:,} parameters; training wall time {train_time:.1f} s (compile + {args.epochs} epochs of "
        f"{args.seeds} seed(s): {train_time / args.epochs:.1f} s per epoch, compilation included); whole script "
        f"{total:.1f} s so far (budget {TARGET_SECONDS} s); load average {metrics['load_average']}"
    )
    selected = {
        "channels": args.channels,
        "dense": args.dense,
        "dropout": args.dropout,
        "lr": args.lr,
        "weight_decay": args.weight_decay,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    return run.finish(
        config={
            "network": described,
            "parameters": n_params,
            "optimizer": "adamw + cosine decay",
            "steps": steps,
            "sweep_devices": devices,
        },
        metrics=metrics,
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected=selected,
            validation_metrics=["validation_accuracy", "validation_accuracy_per_seed", "selected_epoch"],
            test_metrics=["test_accuracy", "test_loss", "test_accuracy_per_seed", "reaches_target"],
            test=test,
            seeds=list(range(args.seeds)),
        ),
        plot=lambda: plot(history, metrics, described),
        curves={k: common.band(v) for k, v in history.items() if k != "lr"},
    )


def select(run, args, x_train, y_train, fit_options, split, defaults) -> dict:
    """The selection grid: every network of ``--select-variants`` (one vmapped sweep each)
    x learning rate x dropout x weight decay over ``--select-seeds``, scored on the
    validation split. No test data."""
    run.name = NAME + "_select"
    grid = {"lr": args.grid_lr, "dropout": args.grid_dropout, "weight_decay": args.grid_weight_decay}
    seeds = args.select_seeds
    n_points = int(np.prod([len(v) for v in grid.values()]))
    rows, curves = [], {}
    for text in args.select_variants:
        v = variant(text, args)
        steps = v["epochs"] * -(-len(y_train) // v["batch_size"])
        config = configuration(v["channels"], v["dense"], steps, defaults)
        n_params = count_params(config().model)
        common.say(
            f"\n== selection, {text}: {describe(v['channels'], v['dense'], n_params)}, {v['epochs']} epochs, batch "
            f"{v['batch_size']}; {n_points} grid points x {len(seeds)} seeds = {n_points * len(seeds)} runs in one "
            f"vmapped program; {len(y_train)} train / {split['validation']} validation"
        )
        with run(f"select {text}"):
            table = sweep(config, x_train, y_train, seeds=seeds, grid=grid, **fit_options | v_fit(v))
            jax.block_until_ready(table.results.history)
        val = np.asarray(table.results.history["val_accuracy"], dtype=float)
        table_rows = table.rows()
        for a in table.aggregate("best_val_accuracy"):
            members = [i for i, r in enumerate(table_rows) if all(r[k] == a[k] for k in grid)]
            a = {"variant": text, **v, "parameters": n_params, **a}
            a["final_val_accuracy"] = float(np.mean(val[members, -1]))
            a["selected_epoch_mean"] = float(np.mean([table_rows[i]["best_epoch"] + 1 for i in members]))
            a["seconds"] = run.times[f"select {text}"]
            a["seconds_per_epoch"] = a["seconds"] / v["epochs"]
            key = f"{text}, lr {a['lr']:g}, dropout {a['dropout']:g}, wd {a['weight_decay']:g}"
            curves[key] = np.nanmean(val[members], axis=0)
            rows.append(a)
    eligible = [r for r in rows if r["parameters"] < MAX_PARAMS] or rows
    chosen = max(eligible, key=lambda r: r["mean"])
    header = ["network", "params", "lr", "dropout", "weight decay", "validation accuracy (best epoch)", "final epoch"]
    table_md = common.markdown_table(
        header,
        [
            [
                f"**{r['variant']}**" if r is chosen else r["variant"],
                f"{r['parameters']:,}",
                f"{r['lr']:g}",
                f"{r['dropout']:g}",
                f"{r['weight_decay']:g}",
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                r["final_val_accuracy"],
            ]
            for r in rows
        ],
    )
    selected = {k: chosen[k] for k in ("channels", "dense", "epochs", "batch_size", *grid)}
    flags = [
        "--channels",
        *map(str, chosen["channels"]),
        *("--dense", str(chosen["dense"]), "--lr", f"{chosen['lr']:g}", "--dropout", f"{chosen['dropout']:g}"),
        *("--weight-decay", f"{chosen['weight_decay']:g}", "--epochs", str(chosen["epochs"])),
        *("--batch-size", str(chosen["batch_size"])),
    ]
    command = "python experiments/fashion_cnn.py " + " ".join(flags)
    common.say(f"\nmean ± std over {len(seeds)} seeds, validation split only:\n{table_md}\nselected: {selected}")
    common.say(f"run it: {command}")
    return run.finish(
        config={"grid": grid, "variants": args.select_variants, "select_seeds": seeds},
        metrics={"grid": rows, "selected": selected, "run_selected": command, "load_average": load_average()},
        protocol=common.protocol(
            split,
            selection="the grid point (network x lr x dropout x weight decay) with the highest mean validation "
            "accuracy over the selection seeds (each member at its best validation epoch), among networks under "
            "100k parameters; no test data is read",
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


def v_fit(v: dict) -> dict:
    """The ``fit`` options of a selection network (its epochs and batch size)."""
    return {"epochs": v["epochs"], "batch_size": v["batch_size"]}


def plot_selection(rows, chosen, curves):
    fig, (ax0, ax1) = common.figure("Fashion-MNIST CNN selection grid (validation split only)", 2, figsize=(13, 4.5))
    labels = list(curves)
    ax0.barh(range(len(rows)), [r["mean"] for r in rows], xerr=[r["std"] for r in rows], capsize=3)
    ax0.barh([rows.index(chosen)], [chosen["mean"]], color="C3", label="selected")
    ax0.set_yticks(range(len(rows)), labels, fontsize=7)
    ax0.set_xlim(min(r["min"] for r in rows) - 0.005, max(r["max"] for r in rows) + 0.003)
    ax0.set_xlabel("validation accuracy at the best epoch (mean ± std over seeds)")
    ax0.legend(fontsize=8)
    for label, curve in curves.items():
        ax1.plot(np.arange(1, len(curve) + 1), curve, label=label)
    ax1.set(xlabel="epoch", ylabel="validation accuracy (mean over seeds)")
    ax1.set_ylim(max(0.0, min(float(np.nanmax(c)) for c in curves.values()) - 0.05), None)
    ax1.legend(fontsize=6)
    return fig


def plot(history, metrics, described):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    n = history["loss"].shape[0]
    fig, (ax0, ax1) = common.figure(f"Fashion-MNIST, {described}, {n} seed(s)", 2, figsize=(13, 4.2))
    for ax, (train_key, val_key, label) in zip(
        (ax0, ax1), [("loss", "val_loss", "cross-entropy loss"), ("accuracy", "val_accuracy", "accuracy")]
    ):
        for key, color, name in ((train_key, "C0", "train (running, dropout on)"), (val_key, "C2", "validation 5k")):
            b = common.band(history[key])
            ax.plot(epochs, b["mean"], color=color, marker=".", label=f"{name}: mean")
            ax.fill_between(epochs, b["min"], b["max"], color=color, alpha=0.2, label=f"{name}: min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    t = metrics["test_accuracy"]
    ax1.axhline(TARGET, color="k", ls="--", lw=1, label=f"target {TARGET} (test)")
    ax1.errorbar(
        [metrics["selected_epoch"]["mean"]],
        [t["mean"]],
        yerr=[[t["mean"] - t["min"]], [t["max"] - t["mean"]]],
        fmt="r*",
        ms=12,
        capsize=3,
        label=f"test, selected epoch (read once): {t['mean']:.4f}",
    )
    ax1.set_ylim(0.8, None)
    ax0.legend(fontsize=8)
    ax1.legend(fontsize=8, loc="lower right")
    return fig


if __name__ == "__main__":
    main()
