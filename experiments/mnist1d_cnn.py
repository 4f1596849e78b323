"""The MNIST-1D paper's CNN trained over 32 seeds in one vmapped program.

MNIST-1D (Greydanus & Kobak 2024; 4,000 training / 1,000 test signals of length 40, 10
classes) is generated locally by the ``mnist1d`` package (no download); the signals are
used as they come (already about zero mean, unit variance), as [n, 40, 1] channels-last.
The network is the paper's ``ConvBase`` (MNIST-1D repository, ``notebooks/models.py``):
three ``Conv1D`` layers of 25 channels (kernel 5 stride 2, then kernel 3 stride 2 twice,
padding 1; lengths 40 -> 19 -> 10 -> 5), ReLU after each, ``Flatten`` and ``Dense(125,
10)``: 5,210 parameters; the only addition is dropout on the flattened features before
the ``Dense`` (no parameters; rate 0 gives the paper's network exactly). The paper trains
it with Adam, learning rate 1e-2, batches of 100, 6,000 steps, and reports 94% test
accuracy (MNIST-1D README).

Protocol (selection on validation, then retraining on all the training data):

1. ``--select``: 400 of the 4,000 training signals are held out (stratified, seeded) as
   the validation split; a grid of settings (epochs, batch size, learning rate, weight
   decay, label smoothing, dropout; AdamW with a cosine decay to 0) trains on the other
   3,600 over seeds 100-107, and the setting with the highest mean validation accuracy
   at the LAST epoch of its fixed schedule wins (no best epoch is picked: the final
   models below keep their last epoch too). It reads no test data; results in
   ``mnist1d_cnn_select.json``. Its choice is this script's defaults.
2. The default run retrains that setting, for its fixed number of epochs, on ALL 4,000
   training signals (the 3,600 + the 400 validation signals), seeds 0-31 as one
   compiled, ``jax.vmap``-ed ``fnn.sweep`` (one CPU device per core:
   ``fnn.distributed.use_cpu_cores``), and keeps the params of the last epoch. Only then
   is the test set read, once, to score the 32 models: test accuracy mean ± std and
   min–max over seeds. The validation score of the setting (from step 1) goes into the
   JSON beside it.

Target: mean test accuracy >= 0.94 with the whole script under 3 minutes on 2 CPU cores,
compilation included.

    python experiments/mnist1d_cnn.py              # the defaults: 32 seeds, retrained on 4,000
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

NAME = "mnist1d_cnn"
PUBLISHED_CNN = 0.94  # MNIST-1D README table (Greydanus & Kobak): CNN test accuracy 94%
PUBLISHED_MLP = 0.68  # same table, for scale
TARGET_SECONDS = 180  # the whole script on 2 CPU cores, compilation included
HYPERPARAMETERS = ("lr", "weight_decay", "label_smoothing", "dropout")  # traced: one sweep grid
SELECTION = (
    "hyperparameters (epochs, batch size, learning rate, weight decay, label smoothing, dropout): the setting of "
    "'python experiments/mnist1d_cnn.py --select' with the highest mean validation accuracy at the last epoch of "
    "its fixed schedule over the selection seeds (trained on the training signals left after carving out the "
    "validation split); the final models then train with that setting, for its number of epochs, on all the "
    "training signals (train + validation) and keep the params of their last epoch (no epoch is chosen); the "
    "test set is read once, after training, to score them"
)


def cnn(channels: int, length: int = 40, dropout=0.0) -> fnn.Serial:
    """MNIST-1D's ``ConvBase``, channels-last: [n, length, 1] -> [n, 10] logits, with
    dropout (rate ``dropout``, no parameters) on the flattened features."""
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
            fnn.Dropout(dropout),
            fnn.Dense(length * c, 10),
        )
    )


def configuration(channels: int, length: int, steps: int, defaults: dict):
    """``config(lr, dropout, weight_decay, label_smoothing) -> fnn.Trainer``: the CNN under
    ``common.cosine_adamw`` (AdamW with the learning rate decayed from ``lr`` to 0 by a
    cosine over ``steps``, cross-entropy with label smoothing)."""
    return common.cosine_adamw(lambda dropout: cnn(channels, length, dropout), steps, defaults)


def parser():
    p = common.parser(
        __doc__,
        cache_dir=None,
        n_val=400,
        split_seed=0,
        cpu_devices=None,
        seeds=32,
        epochs=80,
        batch_size=100,
        lr=2e-2,
        dropout=0.2,
        n_train=None,
        n_test=None,
        weight_decay=0.1,
        label_smoothing=0.1,
        helps={
            "n_train": "use only the first N training signals (before the validation split)",
            "lr": "AdamW's initial learning rate (cosine decay to 0)",
            "dropout": "dropout rate on the flattened features, before the Dense layer (0: the paper's network)",
            "n_val": "training signals held out for selection (stratified); the final models train on them too",
        },
    )
    p.add_argument("--channels", type=int, default=25, help="channels of each convolution (the paper: 25)")
    common.add_selection_options(
        p,
        seeds=list(range(100, 108)),
        variants=["e60", "e80"],
        variants_help="settings of the grid, one sweep each: '+'-joined e<n> (epochs), b<n> (batch size); "
        "the rest as --epochs, --batch-size",
    )
    common.add_grid_options(
        p, lr=[0.02, 0.03], weight_decay=[0.05, 0.1], label_smoothing=[0.1, 0.2], dropout=[0.2, 0.4]
    )
    return p


def variant(text: str, args) -> dict:
    """A setting of the selection grid: '+'-joined ``e<n>`` (epochs) and ``b<n>`` (batch
    size) tokens -> ``{"epochs", "batch_size"}`` (``common.variant``)."""
    defaults = {"epochs": args.epochs, "batch_size": args.batch_size}
    return common.variant(text, defaults, {"e": "epochs", "b": "batch_size"})


def main(argv=None) -> dict:
    run, args = common.start_on_cores(NAME, parser(), argv)  # every core trains seeds
    with run("data"):
        data = fnn.datasets.load_mnist1d(args.cache_dir)
        x_all = data.x_train[: args.n_train, :, None]  # [n, 40, 1]: channels-last
        y_all = data.y_train[: args.n_train]
        (x_train, y_train, x_val, y_val), split = common.carve_validation(
            x_all, y_all, args.n_val, seed=args.split_seed
        )
        test = common.TestSet(data.x_test[: args.n_test, :, None], data.y_test[: args.n_test], "MNIST-1D test set")
        split |= {
            "source": f"MNIST-1D training set ({len(y_all)} signals)",
            "final_train": len(y_all),  # the final models train on train + validation
            "test": test.size,
        }
    length = x_train.shape[1]
    defaults = {k: getattr(args, k) for k in HYPERPARAMETERS}
    if args.select:
        return select(run, args, x_train, y_train, (x_val, y_val), split, defaults, length)

    # the final models: the selected setting retrained on ALL training signals, last epoch kept
    steps = common.updates(args.epochs, len(y_all), args.batch_size)
    config = configuration(args.channels, length, steps, defaults)
    n_params = common.count_params(config().model)
    common.say(
        f"MNIST-1D: the final models train on all {len(y_all)} training signals ({len(y_train)} train + "
        f"{len(y_val)} validation of the selection), test {test.size}; CNN 3 x Conv1D({args.channels}) + dropout "
        f"{args.dropout:g} + Dense ({n_params} parameters), AdamW lr {args.lr:g} cosine, weight decay "
        f"{args.weight_decay:g}, label smoothing {args.label_smoothing:g}, batch {args.batch_size}, {args.epochs} "
        f"epochs, {args.seeds} seeds in one vmapped program on {len(jax.devices())} CPU device(s) (compiling first; "
        "each per-epoch line summarizes the members)"
    )
    table, history = common.retrain(run, config, x_all, y_all)
    final = table.results.train_state  # the last epoch's params of every seed: nothing is chosen
    evaluator = config(label_smoothing=0.0)  # scores with the plain cross-entropy
    with run("evaluate"):
        train_scores = common.evaluate_members(evaluator, final.params, final.model_state, x_all, y_all)
        x_test, y_test = test.read()  # once: the final params of every seed
        scores = common.evaluate_members(evaluator, final.params, final.model_state, x_test, y_test)
    test_acc = scores["accuracy"]

    selected = {
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        **{k: float(v) for k, v in defaults.items()},
    }
    validated = common.selection_score(args.out, NAME, selected)
    metrics = common.retrained_metrics(scores, validated, target_key="reaches_target_accuracy", target=PUBLISHED_CNN)
    metrics |= {
        "train_accuracy": common.mean_std(train_scores["accuracy"]),
        "parameters": n_params,
        "published_cnn_accuracy": PUBLISHED_CNN,
        "published_mlp_accuracy": PUBLISHED_MLP,
        **common.budget_metrics(run, TARGET_SECONDS),
    }
    common.say("\nRunning training accuracy of the last epoch (SweepResult.summary):")
    common.say(table.summary("final_accuracy"))
    val_text = (
        "not found (run --select with the same --out first)"
        if validated is None
        else f"{common.pm(validated)} over selection seeds, trained on {len(y_train)}"
    )
    common.say(
        f"\nvalidation accuracy of this setting in the selection run (last epoch): {val_text}"
        f"\ntest accuracy       {common.pm(metrics['test_accuracy'])}  ({args.seeds} seeds, last epoch, test set read "
        f"once); published CNN {PUBLISHED_CNN:.2f}: {'reached' if metrics['reaches_target_accuracy'] else 'NOT reached'}"
        f"\ntrain accuracy (evaluation mode, all {len(y_all)} signals) {common.pm(metrics['train_accuracy'])}"
        f"\nwall time {metrics['script_wall_time_s']:.1f} s so far (training, compilation included: "
        f"{metrics['training_wall_time_s']:.1f} s; budget {TARGET_SECONDS} s); load average {metrics['load_average']}"
    )
    return common.finish_retrained(
        run,
        split,
        config={
            "network": describe(args.channels, args.dropout),
            "optimizer": "adamw + cosine decay",
            "loss": f"cross-entropy, label smoothing {args.label_smoothing:g}",
            "steps": steps,
            "trained_on": f"all {len(y_all)} training signals (train + validation)",
        },
        metrics=metrics,
        rule=SELECTION,
        selected=selected,
        test=test,
        target_key="reaches_target_accuracy",
        history=history,
        plot=lambda: plot(history, test_acc, args),
        summary=table.summary("final_accuracy"),
    )


def describe(channels: int, dropout: float) -> str:
    return (
        f"Conv1D(1, {channels}, 5, stride 2, pad 1) ReLU, Conv1D({channels}, {channels}, 3, stride 2, pad 1) ReLU, "
        f"Conv1D({channels}, {channels}, 3, stride 2, pad 1) ReLU, Flatten, Dropout({dropout:g}), "
        f"Dense({5 * channels}, 10)"
    )


def select(run, args, x_train, y_train, validation, split, defaults, length) -> dict:
    """The selection grid: every setting of ``--select-variants`` (epochs, batch size; one
    vmapped sweep each) x learning rate x weight decay x label smoothing x dropout over
    ``--select-seeds``, each member scored by its validation accuracy at the last epoch.
    No test data."""
    run.name = NAME + "_select"
    grid = {k: getattr(args, f"grid_{k}") for k in HYPERPARAMETERS}  # --grid-lr, ...

    def setting(text: str) -> common.Variant:
        v = variant(text, args)
        steps = common.updates(v["epochs"], len(y_train), v["batch_size"])
        return common.Variant(text, v, configuration(args.channels, length, steps, defaults), about={})

    found = common.selection_sweeps(run, map(setting, args.select_variants), x_train, y_train, validation, grid)
    chosen = max(found.rows, key=lambda r: r["mean"])
    header = [
        "setting",
        "lr",
        "weight decay",
        "label smoothing",
        "dropout",
        "validation accuracy (last epoch)",
        "min–max",
        "best epoch (biased)",
    ]
    table_md = common.markdown_table(
        header,
        [
            [
                f"**{r['variant']}**" if r is chosen else r["variant"],
                *(f"{r[k]:g}" for k in grid),
                f"{r['mean']:.4f} ± {r['std']:.4f}",
                f"{r['min']:.4f}–{r['max']:.4f}",
                r["best_epoch_val_accuracy"],
            ]
            for r in found.rows
        ],
    )
    command = (
        f"python experiments/mnist1d_cnn.py --epochs {chosen['epochs']} --batch-size {chosen['batch_size']} "
        f"--lr {chosen['lr']:g} --weight-decay {chosen['weight_decay']:g} "
        f"--label-smoothing {chosen['label_smoothing']:g} --dropout {chosen['dropout']:g}"
    )
    rule = (
        "the grid point (epochs and batch size x lr x weight decay x label smoothing x dropout) with the highest mean "
        "validation accuracy at the last epoch over the selection seeds; no test data is read"
    )
    title = "MNIST-1D CNN selection grid (validation split only)"
    return common.finish_selection(
        run, split, found, chosen, table=table_md, command=command, rule=rule, plot_title=title
    )


def plot(history, test_acc, args):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    title = (
        f"MNIST-1D, the paper's CNN ({args.channels} channels), {len(test_acc)} seeds in one vmapped run, "
        "retrained on all 4,000 training signals"
    )
    fig, axes = common.figure(title, 3, figsize=(15, 4.2))
    panels = [("loss", "training loss (running, label smoothing and dropout on)"), ("accuracy", "accuracy")]
    for ax, (key, label) in zip(axes, panels):
        b = common.band(history[key])
        ax.plot(epochs, b["mean"], color="C0", label="train (running): mean")
        ax.fill_between(epochs, b["min"], b["max"], color="C0", alpha=0.2, label="train (running): min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[0].set_yscale("log")
    t = common.mean_std(test_acc)
    common.plot_spread(axes[1], epochs[-1], t, label=f"test, last epoch (read once): {t['mean']:.4f}", ms=10)
    axes[1].axhline(PUBLISHED_CNN, color="k", ls="--", lw=1, label="published CNN (94%, test)")
    axes[1].set_ylim(0.5, 1.0)
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    axes[2].hist(test_acc, bins=min(12, max(3, len(test_acc) // 2)), color="C1", alpha=0.8)
    axes[2].axvline(PUBLISHED_CNN, color="k", ls="--", lw=1, label="published CNN")
    axes[2].axvline(float(np.mean(test_acc)), color="C3", lw=1.5, label="mean over seeds")
    axes[2].set_xlabel("test accuracy (last epoch; test read once)")
    axes[2].set_ylabel("seeds")
    axes[2].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    main()
