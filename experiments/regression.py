"""Regression: an MLP with mean-squared error on scikit-learn's diabetes data, against the
mean predictor and ordinary least squares on the same splits.

Diabetes (Efron et al. 2004): 442 patients, 10 features, target = disease progression
one year later. Each split (``fnn.train_test_split`` by key, 20% test) standardizes
the features and the target with the training part's statistics only. On each split:

* the mean predictor (the training mean of the target),
* ordinary least squares with an intercept (``numpy.linalg.lstsq``),
* an MLP 10-H-H-1 trained with MSE (Adam, L2 weight penalty, fixed number of epochs,
  no early stopping), over several seeds in one vmapped ``fnn.sweep``; besides each
  seed's score, the average of the seeds' predictions (an ensemble) is scored too.

Test MSE is reported in the target's original units (squared), with R² = 1 - SSE/SST
(SST around the test part's mean, as ``sklearn.metrics.r2_score``).

    python experiments/regression.py
    python experiments/regression.py --splits 1 --seeds 2 --epochs 2

Writes ``<out>/regression.json`` and ``<out>/regression.png``.
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

NAME = "regression"


def parser():
    p = common.parser(
        __doc__,
        seeds=8,
        hidden=[32, 32],
        activation="tanh",
        epochs=200,
        batch_size=32,
        lr=1e-3,
        l2=0.1,
        helps={"seeds": "MLP seeds per split (one vmapped program)", "lr": "Adam's learning rate (constant)"},
    )
    p.add_argument("--splits", type=int, default=5, help="random train/test splits (keys 0..splits-1)")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of the examples in the test part of each split"
    )
    return p


def scores(y_true, y_pred) -> dict:
    """Test MSE (original units) and R²."""
    y_true, y_pred = np.asarray(y_true, float).reshape(-1), np.asarray(y_pred, float).reshape(-1)
    sse = float(np.sum((y_true - y_pred) ** 2))
    sst = float(np.sum((y_true - y_true.mean()) ** 2))
    return {"mse": sse / y_true.size, "r2": 1.0 - sse / sst}


def mean_of(value) -> float:
    """A score, or the mean of a ``common.mean_std`` summary of seeds' scores."""
    return value["mean"] if isinstance(value, dict) else value


def main(argv=None) -> dict:
    run, args = common.start(NAME, parser(), argv)
    with run("data"):
        x, y = fnn.datasets.load_diabetes()
    sizes = [x.shape[1], *args.hidden, 1]

    def config(lr=args.lr, l2=args.l2):
        model = fnn.mlp(sizes, activation=args.activation)
        return fnn.Trainer(model, fnn.adam(lr), fnn.mse, regularizer=fnn.l2(l2))

    common.say(
        f"diabetes: {len(y)} examples, {args.splits} split(s) with {args.test_fraction:.0%} test; MLP "
        f"{'-'.join(map(str, sizes))} {args.activation}, MSE, Adam lr {args.lr:g}, L2 {args.l2:g}, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.seeds} seeds per split in one vmapped program"
    )
    per_split, curves = [], []
    trainer = config()
    for split in range(args.splits):
        x_tr, y_tr, x_te, y_te = fnn.train_test_split(jax.random.key(split), x, y, args.test_fraction)
        (xs_tr, xs_te), _ = fnn.standardize(x_tr, x_te)
        (ys_tr, ys_te), (y_mean, y_std) = fnn.standardize(y_tr[:, None], y_te[:, None])
        y_mean, y_std = float(y_mean.reshape(())), float(y_std.reshape(()))

        def original(pred_std, y_mean=y_mean, y_std=y_std):
            return np.asarray(pred_std, float).reshape(-1) * y_std + y_mean

        row = {"split": split, "n_train": len(y_tr), "n_test": len(y_te)}
        row["mean predictor"] = scores(y_te, np.full(len(y_te), float(np.mean(y_tr))))
        design = np.hstack([np.ones((len(y_tr), 1)), np.asarray(x_tr, float)])
        coef, *_ = np.linalg.lstsq(design, np.asarray(y_tr, float), rcond=None)
        row["OLS (lstsq)"] = scores(y_te, np.hstack([np.ones((len(y_te), 1)), np.asarray(x_te, float)]) @ coef)

        common.say(
            f"\n== split {split + 1}/{args.splits}: {len(y_tr)} train / {len(y_te)} test; {args.seeds} MLP seeds"
        )
        with run("MLP sweeps (compile + run)"):
            table = sweep(
                config,
                xs_tr,
                ys_tr,
                seeds=args.seeds,
                **common.training_options(args, (xs_te, ys_te)),
            )
            params = table.results.train_state.params
            predictions = np.asarray(
                jax.jit(jax.vmap(trainer.model.apply, in_axes=(0, None)))(params, jnp.asarray(xs_te))
            )
        seed_scores = [scores(y_te, original(p)) for p in predictions]
        row["MLP"] = {m: common.mean_std([s[m] for s in seed_scores]) for m in ("mse", "r2")}
        row["MLP ensemble"] = scores(y_te, original(predictions.mean(axis=0)))
        curves.append(
            {
                "split": split,
                "train_mse_std_units": common.band(table.results.history["loss"]),
                "test_mse_std_units": common.band(table.results.history["val_loss"]),
            }
        )
        common.say(
            "   "
            + "; ".join(
                f"{k}: MSE {mean_of(v['mse']):.1f}, R² {mean_of(v['r2']):.3f}"
                for k, v in row.items()
                if isinstance(v, dict)
            )
        )
        per_split.append(row)

    methods = ["mean predictor", "OLS (lstsq)", "MLP", "MLP ensemble"]
    summary = {}
    for m in methods:
        mse = [mean_of(r[m]["mse"]) for r in per_split]
        r2 = [mean_of(r[m]["r2"]) for r in per_split]
        summary[m] = {"mse": common.mean_std(mse), "r2": common.mean_std(r2)}
    summary["MLP"]["seed_std_r2_mean"] = float(np.mean([r["MLP"]["r2"]["std"] for r in per_split]))
    header = ["method", "test MSE", "test R²"]
    rows = [
        [
            m,
            f"{summary[m]['mse']['mean']:.1f} ± {summary[m]['mse']['std']:.1f}",
            f"{summary[m]['r2']['mean']:.3f} ± {summary[m]['r2']['std']:.3f}",
        ]
        for m in methods
    ]
    table_md = common.markdown_table(header, rows)
    common.say(
        f"\nmean ± std over {args.splits} split(s) (MLP: per split the mean over {args.seeds} seeds):\n{table_md}"
    )
    return run.finish(
        config={"sizes": sizes, "n": len(y), "loss": "mse on the standardized target"},
        metrics={"summary": summary, "per_split": per_split},
        plot=lambda: plot(summary, per_split, curves, args),
        table=table_md,
        curves_split_1=curves[0],
    )


def plot(summary, per_split, curves, args):
    title = f"Diabetes regression: MLP {'-'.join(map(str, [10, *args.hidden, 1]))} vs OLS vs mean predictor"
    fig, (ax0, ax1) = common.figure(title, 2, figsize=(12, 4.2))
    methods = list(summary)
    for i, m in enumerate(methods):
        r2 = [mean_of(r[m]["r2"]) for r in per_split]
        ax0.scatter(np.full(len(r2), i) + np.linspace(-0.1, 0.1, len(r2)), r2, color=f"C{i}", s=18)
        ax0.errorbar(
            i + 0.25, summary[m]["r2"]["mean"], yerr=summary[m]["r2"]["std"], fmt="D", color=f"C{i}", capsize=3
        )
    ax0.set_xticks(range(len(methods)), methods, fontsize=8)
    ax0.set_ylabel("test R² (dots: splits; diamond: mean ± std)")
    ax0.axhline(0, color="k", lw=0.5)
    c = curves[0]
    epochs = np.arange(1, len(c["train_mse_std_units"]["mean"]) + 1)
    for key, color, label in (("train_mse_std_units", "C0", "train"), ("test_mse_std_units", "C1", "test")):
        ax1.plot(epochs, c[key]["mean"], color=color, label=f"{label} (mean over seeds)")
        ax1.fill_between(epochs, c[key]["min"], c[key]["max"], color=color, alpha=0.2, label=f"{label} min–max")
    ax1.set(yscale="log", xlabel="epoch", ylabel="MSE, standardized target (split 1)")
    ax1.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    main()
