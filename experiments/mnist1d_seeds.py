"""The main job: an MLP on MNIST-1D trained over 32 seeds in one vmapped program.

MNIST-1D (Greydanus & Kobak 2024) is generated locally by the ``mnist1d`` package
(4,000 training / 1,000 test signals of length 40, 10 classes; no download). The inputs
are standardized with the training split's statistics. ``fnn.sweep`` trains all seeds as
one compiled, ``jax.vmap``-ed run of ``fnn.fit`` with the test set as validation data,
and the script reports the final test accuracy as mean ± std over seeds next to the
published MLP baseline of the MNIST-1D README (68%).

    python experiments/mnist1d_seeds.py              # the defaults: 32 seeds, 60 epochs
    python experiments/mnist1d_seeds.py --seeds 4 --epochs 5

Writes ``<out>/mnist1d_seeds.json`` and ``<out>/mnist1d_seeds.png``.
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

NAME = "mnist1d_seeds"
PUBLISHED_MLP = 0.68  # MNIST-1D README table (Greydanus & Kobak): MLP test accuracy 68%


def parser():
    p = common.parser(
        __doc__,
        seeds=32,
        epochs=60,
        batch_size=100,
        hidden=[100, 100],
        activation="gelu",
        lr=1e-2,
        dropout=0.2,
        l2=0.0,
        n_train=None,
        n_test=None,
        helps={"n_train": "use only the first N training examples"},
    )
    p.add_argument("--cache-dir", type=Path, default=None, help="where the generated MNIST-1D .npz is cached")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    with run("data"):
        data = fnn.datasets.load_mnist1d(args.cache_dir)
        x_train, y_train = data.x_train[: args.n_train], data.y_train[: args.n_train]
        x_test, y_test = data.x_test[: args.n_test], data.y_test[: args.n_test]
        (x_train, x_test), _ = fnn.standardize(x_train, x_test)
    n_in, steps = x_train.shape[1], args.epochs * -(-len(y_train) // args.batch_size)
    sizes = [n_in, *args.hidden, 10]

    def config(lr=args.lr, dropout=args.dropout, l2=args.l2):
        model = fnn.mlp(sizes, activation=args.activation, dropout=dropout if args.dropout > 0 else None)
        optimizer = fnn.adam(fnn.schedules.cosine_decay(lr, steps))
        return fnn.Trainer(model, optimizer, fnn.cross_entropy, regularizer=fnn.l2(l2) if args.l2 > 0 else None)

    common.say(
        f"MNIST-1D: {len(y_train)} train / {len(y_test)} test; MLP {'-'.join(map(str, sizes))} {args.activation}, "
        f"dropout {args.dropout}, Adam lr {args.lr:g} cosine, batch {args.batch_size}, {args.epochs} epochs, "
        f"{args.seeds} seeds in one vmapped program (compiling first; each per-epoch line summarizes the members)"
    )
    with run("train (compile + run)"):
        table = sweep(
            config,
            x_train,
            y_train,
            seeds=args.seeds,
            **common.training_options(args, (x_test, y_test)),
        )
        jax.block_until_ready(table.results.history)
    with run("evaluate"):
        trainer = config()
        final = table.results.train_state
        xs, ys = jnp.asarray(x_train), jnp.asarray(y_train)  # evaluate indexes with traced batches: JAX arrays
        train_scores = jax.jit(jax.vmap(lambda p, s: trainer.evaluate(p, s, xs, ys)))(final.params, final.model_state)
        train_acc = np.asarray(train_scores["accuracy"])
    history = {k: np.asarray(v) for k, v in table.results.history.items()}
    test_acc = history["val_accuracy"][:, -1]

    summary = table.summary("final_val_accuracy")
    common.say("\nFinal test accuracy over seeds (SweepResult.summary):")
    common.say(summary)
    test, train = common.mean_std(test_acc), common.mean_std(train_acc)
    common.say(
        f"\ntest accuracy {test['mean']:.4f} ± {test['std']:.4f} (min {test['min']:.4f}, max {test['max']:.4f}, "
        f"{args.seeds} seeds)   published MLP baseline (MNIST-1D README): {PUBLISHED_MLP:.2f}"
    )
    common.say(f"train accuracy (evaluation mode, final params) {train['mean']:.4f} ± {train['std']:.4f}")

    metrics = {
        "test_accuracy": test,
        "train_accuracy": train,
        "published_mlp_accuracy": PUBLISHED_MLP,
        "test_accuracy_per_seed": test_acc,
        "best_epoch_test_accuracy_mean": float(np.nanmax(np.nanmean(history["val_accuracy"], axis=0))),
    }
    return run.finish(
        config={
            "sizes": sizes,
            "optimizer": "adam + cosine decay",
            "n_train": len(y_train),
            "n_test": len(y_test),
            "steps": steps,
        },
        metrics=metrics,
        plot=lambda: plot(history, test_acc, args),
        summary=summary,
        curves={k: common.band(v) for k, v in history.items() if k != "lr"},
    )


def plot(history, test_acc, args):
    epochs = np.arange(1, history["loss"].shape[1] + 1)
    title = f"MNIST-1D, MLP {'-'.join(map(str, [40, *args.hidden, 10]))}, {len(test_acc)} seeds in one vmapped run"
    fig, axes = common.figure(title, 3, figsize=(15, 4.2))
    panels = [("loss", "val_loss", "cross-entropy loss"), ("accuracy", "val_accuracy", "accuracy")]
    for ax, (train_key, test_key, label) in zip(axes, panels):
        for key, color, name in ((train_key, "C0", "train (running, dropout on)"), (test_key, "C1", "test")):
            b = common.band(history[key])
            ax.plot(epochs, b["mean"], color=color, label=f"{name}: mean")
            ax.fill_between(epochs, b["min"], b["max"], color=color, alpha=0.2, label=f"{name}: min–max")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
    axes[1].axhline(PUBLISHED_MLP, color="k", ls="--", lw=1, label="published MLP (68%)")
    axes[0].legend(fontsize=8)
    axes[1].legend(fontsize=8, loc="lower right")
    axes[2].hist(test_acc, bins=min(12, max(3, len(test_acc) // 2)), color="C1", alpha=0.8)
    axes[2].axvline(PUBLISHED_MLP, color="k", ls="--", lw=1, label="published MLP")
    axes[2].axvline(float(np.mean(test_acc)), color="C3", lw=1.5, label="mean over seeds")
    axes[2].set_xlabel("final test accuracy")
    axes[2].set_ylabel("seeds")
    axes[2].legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
