"""An MLP on the full Fashion-MNIST: test accuracy of a held-out-selected model, and its time.

Fashion-MNIST (Xiao, Rasul & Vollgraf 2017): 60,000 training and 10,000 test 28x28
grey images, 10 classes. Pixels are scaled to [0, 1] (``fnn.prepare_images``). 5,000
training images are held out (a fixed random split) for model selection: the run keeps
the parameters of the epoch with the best held-out accuracy, and only those are scored
on the test set, once. The target is the 0.8833 test accuracy of the MLP 256-128-100 in
the Fashion-MNIST benchmark table.

The whole run (all epochs) is one compiled program: it is compiled ahead of time
(``jax.jit(...).lower(...).compile()``) so that compile time and training time are
measured separately.

    python experiments/fashion_mlp.py                      # 784-256-256-10, 20 epochs
    python experiments/fashion_mlp.py --n-train 2000 --epochs 1

Writes ``<out>/fashion_mlp.json`` and ``<out>/fashion_mlp.png``.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import fnn  # noqa: E402

NAME = "fashion_mlp"
BENCHMARK = 0.8833  # Fashion-MNIST benchmark table: MLPClassifier, hidden (256, 128, 100)


def parser():
    p = common.parser(
        __doc__,
        data=True,
        hidden=[256, 256],
        epochs=20,
        batch_size=128,
        lr=1e-3,
        dropout=0.2,
        l2=0.0,
        n_train=None,
        n_test=None,
        helps={"n_train": "use only N of the 60,000 training images (before the hold-out)"},
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the run (init, data order, dropout)")
    p.add_argument("--holdout", type=int, default=5000, help="training images held out for model selection")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    x_all, y_all, x_test, y_test = common.fashion_data(run)
    with run("data"):  # the hold-out split
        split = fnn.train_test_split(jax.random.key(1234), np.asarray(x_all), y_all, args.holdout / len(y_all))
        x_train, y_train, x_val, y_val = (jnp.asarray(a) for a in split)
        x_test, y_test = jnp.asarray(x_test), jnp.asarray(y_test)
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps = args.epochs * -(-len(y_train) // args.batch_size)
    model = fnn.mlp(sizes, activation="relu", dropout=args.dropout if args.dropout > 0 else None)
    trainer = fnn.Trainer(
        model,
        fnn.adam(fnn.schedules.cosine_decay(args.lr, steps)),
        fnn.cross_entropy,
        regularizer=fnn.l2(args.l2) if args.l2 > 0 else None,
    )

    def train(x, y, xv, yv):
        return fnn.fit(
            trainer,
            x,
            y,
            key=args.seed,
            monitor="val_accuracy",
            **common.training_options(args, (xv, yv)),
        )

    common.say(
        f"Fashion-MNIST: {len(y_train)} train / {len(y_val)} held out / {len(y_test)} test; MLP {'-'.join(map(str, sizes))} "
        f"ReLU, dropout {args.dropout}, Adam lr {args.lr:g} cosine, batch {args.batch_size}, {args.epochs} epochs"
    )
    with run("compile"):
        compiled = jax.jit(train).lower(x_train, y_train, x_val, y_val).compile()
    common.say(f"compiled in {run.times['compile']:.1f} s; training (per-epoch lines: held-out = 'val_')")
    t0 = time.perf_counter()
    with run("train"):
        result = compiled(x_train, y_train, x_val, y_val)
        jax.block_until_ready(result.history)
    if bool(result.diverged):
        raise fnn.DivergenceError(result)
    with run("evaluate"):
        score = jax.jit(trainer.evaluate)
        test = score(result.best_params, result.best_model_state, x_test, y_test)
        test_final = score(result.train_state.params, result.train_state.model_state, x_test, y_test)
        train = score(result.best_params, result.best_model_state, x_train, y_train)
    train_time = time.perf_counter() - t0

    history = {k: np.asarray(v) for k, v in result.history.items()}
    best = int(result.best_epoch)
    per_epoch = run.times["train"] / args.epochs
    reached = np.flatnonzero(history["val_accuracy"] >= BENCHMARK)
    metrics = {
        "test_accuracy": float(test["accuracy"]),
        "test_loss": float(test["loss"]),
        "test_accuracy_final_epoch": float(test_final["accuracy"]),
        "heldout_accuracy_best": float(history["val_accuracy"][best]),
        "train_accuracy_best": float(train["accuracy"]),
        "best_epoch": best + 1,
        "benchmark_mlp_accuracy": BENCHMARK,
        "beats_benchmark": float(test["accuracy"]) > BENCHMARK,
        "seconds_per_epoch": per_epoch,
        "time_to_result_s": run.times["compile"] + per_epoch * (best + 1),
        "heldout_first_epoch_at_benchmark": int(reached[0]) + 1 if reached.size else None,
        "time_to_heldout_benchmark_s": run.times["compile"] + per_epoch * (reached[0] + 1) if reached.size else None,
    }
    run.times["train_and_evaluate"] = round(train_time, 3)
    common.say(
        f"\ntest accuracy {metrics['test_accuracy']:.4f} (params of epoch {best + 1}, best held-out accuracy "
        f"{metrics['heldout_accuracy_best']:.4f}); last epoch's params: {metrics['test_accuracy_final_epoch']:.4f}; "
        f"benchmark MLP 256-128-100: {BENCHMARK}"
    )
    common.say(
        f"time: compile {run.times['compile']:.1f} s + {per_epoch:.2f} s/epoch; the selected model after "
        f"{metrics['time_to_result_s']:.1f} s; whole script {run.total():.1f} s"
    )
    return run.finish(
        config={
            "sizes": sizes,
            "activation": "relu",
            "optimizer": "adam + cosine decay",
            "n_train": len(y_train),
            "n_heldout": len(y_val),
            "n_test": len(y_test),
            "steps": steps,
        },
        metrics=metrics,
        plot=lambda: plot(history, metrics, sizes),
        history=history,
    )


def plot(history, metrics, sizes):
    epochs = np.arange(1, len(history["loss"]) + 1)
    fig, (ax0, ax1) = common.figure(f"Fashion-MNIST, MLP {'-'.join(map(str, sizes))}", 2, figsize=(11, 4))
    ax0.plot(epochs, history["loss"], label="train (running, dropout on)")
    ax0.plot(epochs, history["val_loss"], label="held-out 5k")
    ax0.set_ylabel("cross-entropy loss")
    ax1.plot(epochs, history["accuracy"], label="train (running, dropout on)")
    ax1.plot(epochs, history["val_accuracy"], label="held-out")
    ax1.axhline(BENCHMARK, color="k", ls="--", lw=1, label=f"benchmark MLP ({BENCHMARK})")
    ax1.plot(
        [metrics["best_epoch"]],
        [metrics["test_accuracy"]],
        "r*",
        ms=12,
        label=f"test, selected epoch ({metrics['test_accuracy']:.4f})",
    )
    ax1.set_ylabel("accuracy")
    for ax in (ax0, ax1):
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
