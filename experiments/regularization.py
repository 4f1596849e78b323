"""Regularization on a small Fashion-MNIST training set: none / L2 / L1 / dropout /
batch norm / dropout+L2, over several seeds.

The MLP 784-256-256-10 (ReLU; Adam with a learning rate decayed to 0 by a cosine,
mini-batches of 128, 40 epochs) is trained on a random subset of 5,000 Fashion-MNIST
training images, small enough that the unregularized network fits it (almost) perfectly
and overfits; the test set is the full 10,000 test images. Five of the settings share
one structure (an MLP with a Dropout layer after each hidden layer and an ``l1_l2``
penalty, whose rates and strengths are traced numbers, 0 where unused), so they and
their seeds run as ONE vmapped ``fnn.sweep`` over a zipped grid; batch norm changes the
structure and runs as a second sweep.

Reported per setting (mean ± std over seeds): training accuracy of the final params in
evaluation mode on the whole training subset, test accuracy after the last epoch, and
the gap. No early stopping and no selection on the test set.

    python experiments/regularization.py
    python experiments/regularization.py --n-train 500 --epochs 1 --seeds 2 --settings none batchnorm

Writes ``<out>/regularization.json`` and ``<out>/regularization.png``.
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
from fnn.sweep import sweep  # noqa: E402

NAME = "regularization"
SETTINGS = ["none", "l2", "l1", "dropout", "batchnorm", "dropout+l2"]


def parser():
    p = common.parser(
        __doc__,
        data=True,
        n_train=5000,
        n_test=10000,
        epochs=40,
        batch_size=128,
        hidden=[256, 256],
        lr=1e-3,
        seeds=3,
        l2=5e-4,
        dropout=0.3,
    )
    p.add_argument("--l1", type=float, default=2e-5, help="L1 strength (penalty l1 * sum |w|)")
    p.add_argument("--settings", nargs="+", default=SETTINGS, choices=SETTINGS, help="which settings to run")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    x_train, y_train, x_test, y_test = common.fashion_data(run)
    sizes = [x_train.shape[1], *args.hidden, 10]
    every = {  # key: (label, l1, l2, dropout)
        "none": ("none", 0.0, 0.0, 0.0),
        "l2": (f"L2 {args.l2:g}", 0.0, args.l2, 0.0),
        "l1": (f"L1 {args.l1:g}", args.l1, 0.0, 0.0),
        "dropout": (f"dropout {args.dropout:g}", 0.0, 0.0, args.dropout),
        "dropout+l2": (f"dropout {args.dropout:g} + L2 {args.l2:g}", 0.0, args.l2, args.dropout),
    }
    settings = {every[k][0]: every[k][1:] for k in every if k in args.settings}  # label: (l1, l2, dropout)
    with_bn = "batchnorm" in args.settings
    bn_name = "batch norm"
    steps = args.epochs * -(-len(y_train) // args.batch_size)

    def optimizer():
        return fnn.adam(fnn.schedules.cosine_decay(args.lr, steps))

    def config(l1=0.0, l2=0.0, dropout=0.0):
        return fnn.Trainer(
            fnn.mlp(sizes, dropout=dropout), optimizer(), fnn.cross_entropy, regularizer=fnn.l1_l2(l1, l2)
        )

    def config_bn():
        return fnn.Trainer(fnn.mlp(sizes, batchnorm=True), optimizer(), fnn.cross_entropy)

    fit_options = common.training_options(args, (x_test, y_test))
    common.say(
        f"Fashion-MNIST subset: {len(y_train)} train / {len(y_test)} test; MLP {'-'.join(map(str, sizes))} ReLU, "
        f"Adam lr {args.lr:g} cosine, batch {args.batch_size}, {args.epochs} epochs, {args.seeds} seeds per setting"
    )
    phases = int(bool(settings)) + int(with_bn)
    xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)
    n, results = args.seeds, {}
    if settings:
        grid = {k: [v[i] for v in settings.values()] for i, k in enumerate(("l1", "l2", "dropout"))}
        common.say(f"\n== phase 1/{phases}: {', '.join(settings)}: {len(settings) * n} runs in one vmapped program")
        with run("sweep: penalties and dropout"):
            table = sweep(config, x_train, y_train, seeds=n, grid=grid, product=False, **fit_options)
            jax.block_until_ready(table.results.history)
        with run("evaluate"):
            train_acc = train_accuracy(config(), table, xs, ys)
        for i, name in enumerate(settings):
            results[name] = describe(table, slice(i * n, (i + 1) * n), train_acc)
    if with_bn:
        common.say(f"\n== phase {phases}/{phases}: {bn_name}: {n} runs in one vmapped program")
        with run("sweep: batch norm"):
            table_bn = sweep(config_bn, x_train, y_train, seeds=n, **fit_options)
            jax.block_until_ready(table_bn.results.history)
        with run("evaluate"):
            results[bn_name] = describe(table_bn, slice(0, n), train_accuracy(config_bn(), table_bn, xs, ys))

    header = ["setting", "train accuracy", "test accuracy", "gap", "test loss", "best-epoch test acc (optimistic)"]
    rows = [
        [
            name,
            pm(r["train_accuracy"]),
            pm(r["test_accuracy"]),
            f"{r['gap']:.4f}",
            f"{r['test_loss']['mean']:.4f}",
            f"{r['max_test_accuracy']['mean']:.4f}",
        ]
        for name, r in results.items()
    ]
    table_md = common.markdown_table(header, rows)
    common.say(f"\nmean ± std over {n} seeds; train accuracy of the final params in evaluation mode:\n{table_md}")
    described = {k: dict(zip(("l1", "l2", "dropout"), v)) for k, v in settings.items()} | (
        {bn_name: {"batchnorm": True}} if with_bn else {}
    )
    return run.finish(
        config={"sizes": sizes, "setting_values": described, "n_train": len(y_train), "n_test": len(y_test)},
        metrics={name: {k: v for k, v in r.items() if k != "curve"} for name, r in results.items()},
        plot=lambda: plot(results, args),
        table=table_md,
        curves={name: r["curve"] for name, r in results.items()},
    )


def train_accuracy(trainer, table, x, y):
    """Accuracy of every member's final params on (x, y), evaluation mode (no dropout,
    batch norm with running statistics)."""
    final = table.results.train_state
    scores = jax.jit(jax.vmap(lambda p, s: trainer.evaluate(p, s, x, y)))(final.params, final.model_state)
    return np.asarray(scores["accuracy"])


def describe(table, members, train_acc) -> dict:
    history = {k: np.asarray(v[members], dtype=float) for k, v in table.results.history.items()}
    train = common.mean_std(train_acc[members])
    test = common.mean_std(history["val_accuracy"][:, -1])
    return {
        "train_accuracy": train,
        "test_accuracy": test,
        "gap": train["mean"] - test["mean"],
        "test_loss": common.mean_std(history["val_loss"][:, -1]),
        "max_test_accuracy": common.mean_std(np.nanmax(history["val_accuracy"], axis=1)),
        "diverged": int(np.asarray(table.results.diverged[members]).sum()),
        "curve": {
            "test_accuracy": np.nanmean(history["val_accuracy"], axis=0),
            "train_loss": np.nanmean(history["loss"], axis=0),
        },
    }


def pm(s: dict) -> str:
    return f"{s['mean']:.4f} ± {s['std']:.4f}"


def plot(results, args):
    names = list(results)
    title = (
        f"Regularization: Fashion-MNIST, {args.n_train} training images, MLP "
        f"{'-'.join(map(str, [784, *args.hidden, 10]))}, {args.seeds} seeds"
    )
    fig, (ax0, ax1) = common.figure(title, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1.2, 1]})
    pos = np.arange(len(names))
    for offset, key, label in ((-0.2, "train_accuracy", "train (eval mode)"), (0.2, "test_accuracy", "test")):
        means = [results[n][key]["mean"] for n in names]
        stds = [results[n][key]["std"] for n in names]
        ax0.bar(pos + offset, means, 0.4, yerr=stds, capsize=3, label=label)
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
        curve = results[n]["curve"]["test_accuracy"]
        ax1.plot(np.arange(1, len(curve) + 1), curve, color=f"C{i}", label=n)
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("test accuracy (mean over seeds)")
    ax1.legend(fontsize=7)
    return fig


if __name__ == "__main__":
    main()
