"""A CNN under 100k parameters on the full Fashion-MNIST: selected on a validation split,
retrained on the whole training set, the test set read once; with the time per epoch and
the learning curves.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test 28x28 grey
images, 10 classes; pixels scaled to [0, 1] (``fnn.prepare_images``) and shaped [n, 28, 28,
1] channels-last. The network: blocks of ``Conv2D`` 3x3 (SAME) -> ``BatchNorm`` (per
channel) -> ReLU -> ``MaxPool2D(2)`` (28 -> 14 -> 7 -> 3), then ``Flatten``, dropout, an
optional hidden ``Dense`` + ReLU + dropout, and ``Dense(.., 10)``; AdamW with a cosine
decay to 0, cross-entropy with label smoothing.

Protocol (selection on validation, then retraining on all the training data):

1. ``--select``: 5,000 of the training images are held out (stratified, seeded) as the
   validation split; a grid of networks (channels, hidden width, epochs, batch size) x
   learning rate x dropout x label smoothing x weight decay trains on the other 55,000
   over seeds 100-101, and the point with the highest mean validation accuracy at the
   LAST epoch of its fixed schedule wins, among the networks under 100k parameters whose
   final run fits the 10-minute budget on 2 CPU cores. It reads no test data; results in
   ``fashion_cnn_select.json``. Its choice is this script's defaults.
2. The default run retrains that setting, for its fixed number of epochs, on ALL 60,000
   training images (the 55,000 + the 5,000 validation images) as one ``fnn.sweep`` (one
   CPU device per core: ``fnn.distributed.use_cpu_cores``) and keeps the params of the
   last epoch. Only then is the test set read, once, to score them. The setting's
   validation score (from step 1) goes into the JSON beside it.

Target: test accuracy >= 0.925 (the Fashion-MNIST benchmark's entry of two convolutions
with pooling), the whole script in under 10 minutes on 2 CPU cores.

    python experiments/fashion_cnn.py                 # the selected configuration, retrained on 60,000
    python experiments/fashion_cnn.py --select        # the selection grid (validation only; hours on CPU)
    python experiments/fashion_cnn.py --n-train 2000 --epochs 1 --seeds 2

Writes ``<out>/fashion_cnn.json`` and ``.png`` (``fashion_cnn_select.*`` with ``--select``).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402

NAME = "fashion_cnn"
TARGET = 0.925  # Fashion-MNIST benchmark: 2 Conv+pooling (~100k parameters), 0.925
MAX_PARAMS = 100_000
TARGET_SECONDS = 600  # the whole script on 2 CPU cores
HYPERPARAMETERS = ("lr", "dropout", "weight_decay", "label_smoothing")  # traced: one sweep grid
SELECTION = (
    "configuration (channels, hidden width, epochs, batch size, learning rate, dropout, label smoothing, weight "
    "decay): the grid point of 'python experiments/fashion_cnn.py --select' with the highest mean validation "
    "accuracy at the last epoch of its fixed schedule over its seeds (trained on the training images left after "
    "carving out the validation split), among the networks under 100k parameters whose final run fits the "
    "10-minute budget; the final model(s) then train with that setting, for its number of epochs, on all the "
    "training images (train + validation) and keep the params of their last epoch (no epoch is chosen); the test "
    "set is read once, after training, to score them"
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
    """``config(lr, dropout, weight_decay, label_smoothing) -> fnn.Trainer`` for one
    network: the CNN under ``common.cosine_adamw`` (AdamW, cosine decay to 0 over
    ``steps``, cross-entropy with label smoothing)."""
    return common.cosine_adamw(lambda dropout: cnn(channels, dense, dropout), steps, defaults)


def parser():
    p = common.parser(
        __doc__,
        n_val=5000,
        split_seed=0,
        cpu_devices=None,
        data=True,
        seeds=1,
        epochs=15,
        batch_size=256,
        lr=1e-2,
        dropout=0.4,
        n_train=None,
        n_test=None,
        weight_decay=0.0,
        label_smoothing=0.0,
        helps={
            "n_train": "use only N of the 55,000 training images left after the validation split",
            "lr": "AdamW's initial learning rate (cosine decay to 0)",
            "dropout": "dropout rate after the flattened features and after the hidden Dense",
            "n_val": "training images held out for selection (stratified); the final models train on them too",
        },
    )
    p.add_argument("--channels", type=int, nargs="+", default=[24, 48, 64], help="channels of the conv blocks")
    p.add_argument("--dense", type=int, default=0, help="width of the hidden Dense layer (0: none)")
    common.add_selection_options(
        p,
        seeds=[100, 101],
        variants=["c16x32x64+d0+e15", "c16x32x64+d0+e30", "c32x32x64+d0+e15", "c16x32x64+d64+e15", "c24x48x64+d0+e15"],
        variants_help="networks of the grid, one sweep each: '+'-joined c<a>x<b>... (conv channels), d<n> (hidden "
        "Dense width, 0: none), e<n> (epochs), b<n> (batch size); the rest as --channels, --dense, --epochs, "
        "--batch-size",
    )
    p.add_argument(
        "--eligible-variants",
        nargs="+",
        default=["c16x32x64+d0+e15", "c16x32x64+d64+e15", "c32x32x64+d0+e15", "c24x48x64+d0+e15"],
        help="the networks of the grid that may be chosen: those whose final run (60,000 images, one seed) fits "
        "the 10-minute budget on 2 CPU cores at the measured time per epoch; the others are trained for "
        "information ('all': every network)",
    )
    common.add_grid_options(
        p, lr=[5e-3, 1e-2, 2e-2], dropout=[0.2, 0.4], label_smoothing=[0.0, 0.1], weight_decay=[0.0]
    )
    return p


def variant(text: str, args) -> dict:
    """A network of the selection grid: '+'-joined ``c<a>x<b>...``, ``d<n>``, ``e<n>``,
    ``b<n>`` tokens -> ``{"channels", "dense", "epochs", "batch_size"}`` (``common.variant``)."""
    defaults = {
        "channels": list(args.channels),
        "dense": args.dense,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
    }
    return common.variant(text, defaults, {"c": "channels", "d": "dense", "e": "epochs", "b": "batch_size"})


def describe(channels, dense: int, n_params: int) -> str:
    blocks = " -> ".join(f"Conv{c} 3x3-BN-ReLU-MaxPool2" for c in channels)
    return (
        f"CNN {blocks} -> Flatten{f' -> Dense({dense})-ReLU' if dense else ''} -> Dense(10) ({n_params:,} parameters)"
    )


def main(argv=None) -> dict:
    run, args = common.start_on_cores(NAME, parser(), argv)  # every core trains seeds
    x_train, y_train, x_val, y_val, test, split = common.fashion_splits(run, n_val=args.n_val, n_train=args.n_train)
    x_train, x_val = (np.asarray(x).reshape(-1, 28, 28, 1) for x in (x_train, x_val))
    defaults = {k: getattr(args, k) for k in HYPERPARAMETERS}
    if args.select:
        return select(run, args, x_train, y_train, (x_val, y_val), split, defaults)

    # the final model(s): the selected setting retrained on train + validation, last epoch kept
    x_all = np.concatenate([x_train, x_val])
    y_all = np.concatenate([np.asarray(y_train), np.asarray(y_val)])
    split["final_train"] = len(y_all)
    steps = common.updates(args.epochs, len(y_all), args.batch_size)
    config = configuration(args.channels, args.dense, steps, defaults)
    n_params = common.count_params(config().model)
    if n_params >= MAX_PARAMS:
        common.say(f"note: {n_params:,} parameters, not under the {MAX_PARAMS:,} of the target")
    described = describe(args.channels, args.dense, n_params)
    # members sharded over the CPU devices, no more devices than seeds (one seed on two
    # devices would train a padding copy of itself on the second)
    devices = min(args.seeds, len(jax.devices()))
    common.say(
        f"Fashion-MNIST: the final model(s) train on all {len(y_all)} training images ({len(y_train)} train + "
        f"{len(y_val)} validation of the selection), test {test.size}; {described}; dropout {args.dropout:g}, "
        f"label smoothing {args.label_smoothing:g}, AdamW lr {args.lr:g} cosine, weight decay {args.weight_decay:g}, "
        f"batch {args.batch_size}, {args.epochs} epochs; {args.seeds} seed(s) in one vmapped program on {devices} "
        "CPU device(s) (compiling first)"
    )
    table, history = common.retrain(run, config, x_all, y_all, devices=devices)
    final = table.results.train_state  # the last epoch's params (and batch-norm statistics): nothing is chosen
    evaluator = config(label_smoothing=0.0)  # scores with the plain cross-entropy
    with run("evaluate"):
        x_test, y_test = test.read()  # once: the final params of every seed
        x_test = np.asarray(x_test).reshape(-1, 28, 28, 1)
        scores = common.evaluate_members(evaluator, final.params, final.model_state, x_test, y_test)

    selected = {
        "channels": list(args.channels),
        "dense": args.dense,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        **{k: float(v) for k, v in defaults.items()},
    }
    validated = common.selection_score(args.out, NAME, selected)
    metrics = common.retrained_metrics(scores, validated, target_key="reaches_target", target=TARGET) | {
        "final_train_accuracy_running": common.mean_std(history["accuracy"][:, -1]),
        "parameters": n_params,
        "under_max_parameters": n_params < MAX_PARAMS,
        "target_test_accuracy": TARGET,
        **common.budget_metrics(run, TARGET_SECONDS),
    }
    train_time, total = metrics["training_wall_time_s"], metrics["script_wall_time_s"]
    common.say(table.summary("final_accuracy"))
    val_text = (
        "not found (run --select with the same --out first)"
        if validated is None
        else f"{common.pm(validated)} over {validated['seeds']} selection seeds, trained on {split['train']}"
    )
    common.say(
        f"\nvalidation accuracy of this setting in the selection run (last epoch): {val_text}"
        f"\ntest accuracy       {common.pm(metrics['test_accuracy'])} ({args.seeds} seed(s), last epoch, test set read "
        f"once); target {TARGET} {'reached' if metrics['reaches_target'] else 'NOT reached'}"
        f"\n{n_params:,} parameters; training wall time {train_time:.1f} s (compile + {args.epochs} epochs of "
        f"{args.seeds} seed(s): {train_time / args.epochs:.1f} s per epoch, compilation included); whole script "
        f"{total:.1f} s so far (budget {TARGET_SECONDS} s); load average {metrics['load_average']}"
    )
    return common.finish_retrained(
        run,
        split,
        config={
            "network": described,
            "parameters": n_params,
            "optimizer": "adamw + cosine decay",
            "loss": f"cross-entropy, label smoothing {args.label_smoothing:g}",
            "steps": steps,
            "sweep_devices": devices,
            "trained_on": f"all {len(y_all)} training images (train + validation)",
        },
        metrics=metrics,
        rule=SELECTION,
        selected=selected,
        test=test,
        target_key="reaches_target",
        history=history,
        plot=lambda: plot(history, metrics, described),
    )


def select(run, args, x_train, y_train, validation, split, defaults) -> dict:
    """The selection grid: every network of ``--select-variants`` (one vmapped sweep each)
    x learning rate x dropout x weight decay x label smoothing over ``--select-seeds``,
    each member scored by its validation accuracy at the last epoch. No test data."""
    run.name = NAME + "_select"
    grid = {k: getattr(args, f"grid_{k}") for k in HYPERPARAMETERS}  # --grid-lr, ...

    def network(text: str) -> common.Variant:
        v = variant(text, args)
        steps = common.updates(v["epochs"], len(y_train), v["batch_size"])
        config = configuration(v["channels"], v["dense"], steps, defaults)
        n_params = common.count_params(config().model)
        eligible = "all" in args.eligible_variants or text in args.eligible_variants
        about = {"parameters": n_params, "eligible": eligible}
        return common.Variant(text, v, config, about, describe(v["channels"], v["dense"], n_params))

    found = common.selection_sweeps(run, map(network, args.select_variants), x_train, y_train, validation, grid)
    rows = [r | {"seconds_per_epoch": r["seconds"] / r["epochs"]} for r in found.rows]
    eligible = [r for r in rows if r["parameters"] < MAX_PARAMS and r["eligible"]] or rows
    chosen = max(eligible, key=lambda r: r["mean"])
    header = [
        "network",
        "params",
        *(k.replace("_", " ") for k in grid),
        "validation accuracy (last epoch)",
        "best epoch (biased)",
    ]
    table_md = common.markdown_table(
        header,
        [
            [
                f"**{r['variant']}**" if r is chosen else r["variant"] + ("" if r["eligible"] else " (over budget)"),
                f"{r['parameters']:,}",
                *(f"{r[k]:g}" for k in grid),
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                r["best_epoch_val_accuracy"],
            ]
            for r in rows
        ],
    )
    flags = [
        "--channels",
        *map(str, chosen["channels"]),
        *("--dense", str(chosen["dense"]), "--lr", f"{chosen['lr']:g}", "--dropout", f"{chosen['dropout']:g}"),
        *("--weight-decay", f"{chosen['weight_decay']:g}", "--label-smoothing", f"{chosen['label_smoothing']:g}"),
        *("--epochs", str(chosen["epochs"]), "--batch-size", str(chosen["batch_size"])),
    ]
    rule = (
        "the grid point (network x lr x dropout x weight decay x label smoothing) with the highest mean validation "
        "accuracy at the last epoch over the selection seeds, among networks under 100k parameters whose final run "
        f"fits the 10-minute budget on 2 CPU cores (--eligible-variants: {' '.join(args.eligible_variants)}); no test "
        "data is read"
    )
    return common.finish_selection(
        run,
        split,
        found._replace(rows=rows),
        chosen,
        table=table_md,
        command="python experiments/fashion_cnn.py " + " ".join(flags),
        rule=rule,
        plot_title="Fashion-MNIST CNN selection grid (validation split only)",
        margins=(0.005, 0.003),
    )


def plot(history, metrics, described):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    n = history["loss"].shape[0]
    title = f"Fashion-MNIST, {described}, {n} seed(s), retrained on all 60,000 training images"
    fig, (ax0, ax1) = common.figure(title, 2, figsize=(13, 4.2))
    for ax, (key, label) in zip(
        (ax0, ax1), [("loss", "training loss (running, dropout and label smoothing on)"), ("accuracy", "accuracy")]
    ):
        b = common.band(history[key])
        ax.plot(epochs, b["mean"], color="C0", marker=".", label="train (running, dropout on): mean")
        if n > 1:
            ax.fill_between(epochs, b["min"], b["max"], color="C0", alpha=0.2, label="train (running): min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    t = metrics["test_accuracy"]
    ax1.axhline(TARGET, color="k", ls="--", lw=1, label=f"target {TARGET} (test)")
    common.plot_spread(ax1, epochs[-1], t, label=f"test, last epoch (read once): {t['mean']:.4f}")
    v = metrics["selection_validation_accuracy"]
    if v is not None:
        label = f"validation, selection run (55k train): {v['mean']:.4f}"
        common.plot_spread(ax1, epochs[-1] - 0.3, v, label=label, fmt="gs", ms=6)
    ax1.set_ylim(0.8, None)
    ax0.legend(fontsize=8)
    ax1.legend(fontsize=8, loc="lower right")
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    main()
