"""Optimizer comparison on Fashion-MNIST, after Kingma & Ba (2015), section 6.2.

Kingma & Ba compare optimizers by the training cost of a multilayer network (two hidden
layers of 1,000 ReLU units, MNIST, mini-batches of 128) against iterations. Here: an MLP
784-256-256-10 (ReLU, no dropout, so the training loss is the plain objective) on a
random subset of Fashion-MNIST (10,000 training images by default, to keep the run at a
couple of minutes on 2 CPU cores), mini-batches of 128, a constant learning rate, and
four optimizers: SGD with Nesterov momentum 0.9, AdaGrad, RMSprop (decay 0.9) and Adam
(0.9, 0.999). Each optimizer runs a small learning-rate grid as one vmapped
``fnn.sweep``; the best rate of each is the one with the lowest final training loss
(mean over seeds), and the plot shows its training loss against iterations.

    python experiments/optimizers.py
    python experiments/optimizers.py --n-train 1000 --epochs 1 --seeds 1 --optimizers Adam

Writes ``<out>/optimizers.json`` and ``<out>/optimizers.png``.
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

NAME = "optimizers"

OPTIMIZERS = {
    "SGD+Nesterov": (lambda lr: fnn.sgd(lr, momentum=0.9, nesterov=True), [0.01, 0.03, 0.1, 0.3]),
    "AdaGrad": (lambda lr: fnn.adagrad(lr), [0.003, 0.01, 0.03, 0.1]),
    "RMSprop": (lambda lr: fnn.rmsprop(lr, decay=0.9), [3e-4, 1e-3, 3e-3, 1e-2]),
    "Adam": (lambda lr: fnn.adam(lr), [3e-4, 1e-3, 3e-3, 1e-2]),
}


def parser():
    p = common.parser(
        __doc__,
        data=True,
        n_train=10000,
        n_test=10000,
        epochs=10,
        batch_size=128,
        hidden=[256, 256],
        seeds=2,
        helps={"n_test": "first N test images (accuracy column only)", "seeds": "seeds per learning rate"},
    )
    p.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=list(OPTIMIZERS))
    p.add_argument("--lrs", type=int, default=None, help="use only the first N learning rates of each grid")
    return p


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    x_train, y_train, x_test, y_test = common.fashion_data(run)
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps_per_epoch = -(-len(y_train) // args.batch_size)
    common.say(
        f"Fashion-MNIST subset: {len(y_train)} train / {len(y_test)} test; MLP {'-'.join(map(str, sizes))} ReLU; "
        f"batch {args.batch_size}, {args.epochs} epochs ({steps_per_epoch} iterations each), {args.seeds} seed(s) per rate"
    )
    results, best = {}, {}
    for name in args.optimizers:
        make, lrs = OPTIMIZERS[name]
        lrs = lrs[: args.lrs] if args.lrs else lrs

        def config(lr=lrs[0], make=make):
            return fnn.Trainer(fnn.mlp(sizes), make(lr), fnn.cross_entropy)

        common.say(
            f"\n== {name}: learning rates {lrs} x {args.seeds} seed(s) = {len(lrs) * args.seeds} runs in one vmapped program"
        )
        with run(name):
            table = sweep(
                config,
                x_train,
                y_train,
                seeds=args.seeds,
                grid={"lr": lrs},
                **common.training_options(args, (x_test, y_test)),
            )
            jax.block_until_ready(table.results.history)
        results[name] = summarize(table, lrs, args.seeds)
        best[name] = min(results[name], key=lambda r: r["final_loss"])
        common.say(table.summary("final_loss"))
        common.say(
            f"   best lr {best[name]['lr']:g}: final training loss {best[name]['final_loss']:.4f}, "
            f"test accuracy {best[name]['test_accuracy']:.4f}  [{run.times[name]:.1f} s incl. compile]"
        )

    header = [
        "optimizer",
        "best lr",
        "final train loss",
        "train loss after 1 epoch",
        "test accuracy",
        "diverged (of grid)",
        "time (s)",
    ]
    rows = [
        [
            n,
            f"{b['lr']:g}",
            b["final_loss"],
            b["loss_curve"][0],
            b["test_accuracy"],
            sum(r["diverged"] for r in results[n]),
            f"{run.times[n]:.1f}",
        ]
        for n, b in best.items()
    ]
    table_md = common.markdown_table(header, rows)
    common.say("\nBest learning rate of each optimizer (lowest final training loss):\n" + table_md)
    metrics = {
        "best": {n: {k: v for k, v in b.items() if k != "loss_curve"} for n, b in best.items()},
        "grid": {n: [{k: v for k, v in r.items() if k != "loss_curve"} for r in rs] for n, rs in results.items()},
    }
    grids = {n: OPTIMIZERS[n][1][: args.lrs] if args.lrs else OPTIMIZERS[n][1] for n in args.optimizers}
    settings = {
        "SGD+Nesterov": "momentum 0.9, Nesterov",
        "AdaGrad": "initial accumulator 0, eps 1e-10",
        "RMSprop": "decay 0.9, eps 1e-8 outside the sqrt",
        "Adam": "b1 0.9, b2 0.999, eps 1e-8",
    }
    return run.finish(
        config={"sizes": sizes, "steps_per_epoch": steps_per_epoch, "grids": grids, "settings": settings},
        metrics=metrics,
        plot=lambda: plot(results, best, steps_per_epoch, args),
        table=table_md,
        curves={n: {str(r["lr"]): r["loss_curve"] for r in rs} for n, rs in results.items()},
    )


def summarize(table, lrs, seeds) -> list[dict]:
    """One dict per learning rate: mean over seeds of the loss curve, final loss, test accuracy."""
    history = {k: np.asarray(v, dtype=float) for k, v in table.results.history.items()}
    diverged = np.asarray(table.results.diverged)
    lr_of_member = np.asarray(table.hyperparameters["lr"])
    out = []
    for lr in lrs:
        members = np.isclose(lr_of_member, lr)
        failed = bool(diverged[members].any())
        curve = np.nanmean(history["loss"][members], axis=0)
        out.append(
            {
                "lr": float(lr),
                "diverged": failed,
                "final_loss": float("inf") if failed or not np.isfinite(curve[-1]) else float(curve[-1]),
                "test_accuracy": float(np.nanmean(history["val_accuracy"][members][:, -1])),
                "loss_curve": curve,
            }
        )
    return out


def plot(results, best, steps_per_epoch, args):
    title = f"Fashion-MNIST ({args.n_train} training images), MLP {'-'.join(map(str, [784, *args.hidden, 10]))}"
    fig, (ax0, ax1) = common.figure(title, 2, figsize=(12, 4.3), layout="constrained")
    for i, (name, b) in enumerate(best.items()):
        iterations = steps_per_epoch * np.arange(1, len(b["loss_curve"]) + 1)
        ax0.plot(iterations, b["loss_curve"], "o-", ms=3, color=f"C{i}", label=f"{name} (lr {b['lr']:g})")
        lrs = [r["lr"] for r in results[name]]
        finals = [r["final_loss"] if np.isfinite(r["final_loss"]) else np.nan for r in results[name]]
        ax1.plot(lrs, finals, "o-", color=f"C{i}", label=name)
    ax0.set_yscale("log")
    ax0.set_xlabel(f"iterations (mini-batches of {args.batch_size})")
    ax0.set_ylabel("training loss (epoch mean)")
    ax0.set_title("training loss of the best learning rate")
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("learning rate")
    ax1.set_ylabel(f"training loss after {args.epochs} epochs")
    ax1.set_title("the learning-rate sweeps")
    for ax in (ax0, ax1):
        ax.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
