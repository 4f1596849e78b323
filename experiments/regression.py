"""Regression: an MLP with mean-squared error on scikit-learn's diabetes data, against the
mean predictor and ordinary least squares on the same splits; the MLP's L2 strength
selected on a validation split inside each training part (nested).

Diabetes (Efron et al. 2004): 442 patients, 10 features, target = disease progression
one year later. Each outer split (``fnn.train_test_split`` by key, 20% test) standardizes
the features and the target with the training part's statistics only. On each split:

* the mean predictor (the training mean of the target),
* ordinary least squares with an intercept (``numpy.linalg.lstsq``),
* an MLP 10-H-H-1 trained with MSE (Adam, L2 weight penalty, fixed number of epochs, no
  early stopping). Selection: 20% of the training part is held out as a validation split
  (``fnn.train_test_split`` with key ``1000 + split``, statistics of the rest only), and
  every L2 strength of ``--grid-l2`` trains on the rest over the seeds in ONE vmapped
  ``fnn.sweep``; the strength with the lowest mean final validation MSE is selected. The
  MLP is then retrained with it on the whole training part (the data OLS and the mean
  predictor see) over the seeds in one vmapped sweep, and only then is the test part
  read, once, to score every method. Besides each seed's score, the average of the seeds'
  predictions (an ensemble) is scored too.

Test MSE is reported in the target's original units (squared), with R² = 1 - SSE/SST
(SST around the test part's mean, as ``sklearn.metrics.r2_score``); mean ± std and
min–max over the outer splits, and a paired 95% t interval (same splits) for the
difference in test R² between the MLP and OLS.

    python experiments/regression.py
    python experiments/regression.py --splits 2 --seeds 2 --epochs 2

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
        helps={"seeds": "MLP seeds per split (one vmapped program)", "lr": "Adam's learning rate (constant)"},
    )
    p.add_argument("--splits", type=int, default=5, help="random train/test splits (keys 0..splits-1)")
    p.add_argument(
        "--test-fraction", type=float, default=0.2, help="share of the examples in the test part of each split"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.2, help="share of each training part held out to select the L2 strength"
    )
    p.add_argument(
        "--grid-l2", type=float, nargs="+", default=[0.01, 0.03, 0.1, 0.3, 1.0], help="L2 strengths to select from"
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

    def config(lr=args.lr, l2=args.grid_l2[0]):
        model = fnn.mlp(sizes, activation=args.activation)
        return fnn.Trainer(model, fnn.adam(lr), fnn.mse, regularizer=fnn.l2(l2))

    common.say(
        f"diabetes: {len(y)} examples, {args.splits} split(s) with {args.test_fraction:.0%} test; MLP "
        f"{'-'.join(map(str, sizes))} {args.activation}, MSE, Adam lr {args.lr:g}, batch {args.batch_size}, "
        f"{args.epochs} epochs, {args.seeds} seeds per split in one vmapped program; L2 from {args.grid_l2} "
        f"selected on {args.val_fraction:.0%} of each training part"
    )
    per_split, curves, tests, split_records = [], [], [], []
    trainer = config()
    for split in range(args.splits):
        x_tr, y_tr, x_te, y_te = fnn.train_test_split(jax.random.key(split), x, y, args.test_fraction)
        test = common.TestSet(x_te, y_te, f"test part of split {split}")
        tests.append(test)

        # selection: the L2 strength, on a validation split of the training part
        x_in, y_in, x_va, y_va = fnn.train_test_split(jax.random.key(1000 + split), x_tr, y_tr, args.val_fraction)
        (xs_in, xs_va), _ = fnn.standardize(x_in, x_va)
        (ys_in, ys_va), _ = fnn.standardize(y_in[:, None], y_va[:, None])
        common.say(
            f"\n== split {split + 1}/{args.splits}: select L2 on {len(y_in)} train / {len(y_va)} validation "
            f"({len(args.grid_l2)} strengths x {args.seeds} seeds), then retrain on {len(y_tr)}, test {len(y_te)}"
        )
        with run("MLP selection sweeps (compile + run)"):
            table = fnn.sweep(
                config,
                xs_in,
                ys_in,
                seeds=args.seeds,
                grid={"l2": args.grid_l2},
                tensorboard=run.tensorboard(f"split {split} select"),
                **common.training_options(args, (xs_va, ys_va)),
            )
            jax.block_until_ready(table.results.history)
        grid = [{"l2": a["l2"], "val_mse_std_units": a["mean"]} for a in table.aggregate("final_val_loss")]
        chosen = min(grid, key=lambda g: g["val_mse_std_units"])["l2"]

        # the selected MLP on the whole training part; then the test part, once
        (xs_tr,), (x_mean, x_std) = fnn.standardize(x_tr)
        (ys_tr,), (y_mean, y_std) = fnn.standardize(y_tr[:, None])
        y_mean, y_std = float(y_mean.reshape(())), float(y_std.reshape(()))
        with run("MLP final sweeps (compile + run)"):
            final = fnn.sweep(
                config,
                xs_tr,
                ys_tr,
                seeds=args.seeds,
                grid={"l2": [chosen]},
                tensorboard=run.tensorboard(f"split {split} final"),
                **common.training_options(args, None),
            )
            params = jax.block_until_ready(final.results.train_state.params)
        design = np.hstack([np.ones((len(y_tr), 1)), np.asarray(x_tr, float)])
        coef, *_ = np.linalg.lstsq(design, np.asarray(y_tr, float), rcond=None)

        x_test, y_test = test.read()  # once: every method of this split
        xs_te = (jnp.asarray(x_test, x_mean.dtype) - x_mean) / x_std
        predictions = np.asarray(jax.jit(jax.vmap(trainer.model.apply, in_axes=(0, None)))(params, xs_te))
        predictions = predictions.reshape(args.seeds, -1) * y_std + y_mean  # original units
        row = {"split": split, "n_train": len(y_tr), "n_test": len(y_test), "selected_l2": chosen, "l2_grid": grid}
        row["mean predictor"] = scores(y_test, np.full(len(y_test), float(np.mean(y_tr))))
        row["OLS (lstsq)"] = scores(y_test, np.hstack([np.ones((len(y_test), 1)), np.asarray(x_test, float)]) @ coef)
        seed_scores = [scores(y_test, p) for p in predictions]
        row["MLP"] = {m: common.mean_std([s[m] for s in seed_scores]) for m in ("mse", "r2")}
        row["MLP ensemble"] = scores(y_test, predictions.mean(axis=0))
        split_records.append(
            {
                "split": split,
                "split_key": split,
                "train": len(y_in),
                "validation": len(y_va),
                "validation_key": 1000 + split,
                "test": len(y_test),
                "final_train": len(y_tr),
            }
        )
        curves.append(
            {
                "split": split,
                "selected_l2": chosen,
                "train_mse_std_units": common.band(final.results.history["loss"]),
                "val_mse_std_units_selected": common.band(
                    np.asarray(table.results.history["val_loss"])[np.isclose(table.hyperparameters["l2"], chosen)]
                ),
            }
        )
        common.say(
            f"   selected L2 {chosen:g} (validation MSE, standardized: "
            + ", ".join(f"{g['l2']:g}: {g['val_mse_std_units']:.3f}" for g in grid)
            + ")\n   "
            + "; ".join(
                f"{k}: MSE {mean_of(v['mse']):.1f}, R² {mean_of(v['r2']):.3f}"
                for k, v in row.items()
                if isinstance(v, dict) and "mse" in v
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
    paired = {}
    if args.splits >= 2:
        for m in ("MLP", "MLP ensemble"):
            paired[f"{m} - OLS (lstsq)"] = common.paired_comparison(
                [mean_of(r[m]["r2"]) for r in per_split],
                [r["OLS (lstsq)"]["r2"] for r in per_split],
                names=(m, "OLS (lstsq)"),
            )
    header = ["method", "test MSE", "test R²", "R² min–max"]
    rows = [
        [
            m,
            f"{summary[m]['mse']['mean']:.1f} ± {summary[m]['mse']['std']:.1f}",
            f"{summary[m]['r2']['mean']:.3f} ± {summary[m]['r2']['std']:.3f}",
            f"{summary[m]['r2']['min']:.3f}–{summary[m]['r2']['max']:.3f}",
        ]
        for m in methods
    ]
    table_md = common.markdown_table(header, rows)
    pair_md = common.markdown_table(
        ["pair", "test R²: mean diff [95% CI]", "verdict"],
        [[k, common.ci_text(v, 3), v["verdict"]] for k, v in paired.items()],
    )
    common.say(
        f"\nmean ± std over {args.splits} split(s) (MLP: per split the mean over {args.seeds} seeds):\n{table_md}"
        f"\n\npaired over splits, 95% t interval:\n{pair_md}\nselected L2 per split: "
        f"{[r['selected_l2'] for r in per_split]}"
    )
    return run.finish(
        config={"sizes": sizes, "n": len(y), "loss": "mse on the standardized target"},
        metrics={"summary": summary, "paired_r2": paired, "per_split": per_split},
        protocol=common.protocol(
            {"outer_splits": split_records, "stratified": False, "source": f"diabetes ({len(y)} patients)"},
            selection="L2 strength of the MLP per outer split: the grid value with the lowest mean final "
            "validation MSE over the seeds, on a validation split of that split's training part; no epoch "
            "selection (final params); the MLP is then retrained on the whole training part with it, and the "
            "test part is read once to score every method",
            selected={"l2_per_split": [r["selected_l2"] for r in per_split]},
            validation_metrics=["per_split.*.l2_grid"],
            test_metrics=["summary", "paired_r2", "per_split.*.(methods)"],
            test=_all_read_once(tests),
            seeds=list(range(args.seeds)),
        ),
        plot=lambda: plot(summary, per_split, curves, args),
        table=table_md,
        paired_table=pair_md,
        curves_split_1=curves[0],
    )


def _all_read_once(tests):
    """The outer splits' test parts as one record for ``common.protocol``: read once each."""
    reads = {t.reads for t in tests}
    if reads != {1}:
        raise RuntimeError(f"every split's test part must be read exactly once; reads: {[t.reads for t in tests]}")
    return tests[0]


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
    for key, color, label in (
        ("train_mse_std_units", "C0", "train, final MLP"),
        ("val_mse_std_units_selected", "C2", f"validation, selection run (L2 {c['selected_l2']:g})"),
    ):
        ax1.plot(epochs, c[key]["mean"], color=color, label=f"{label} (mean over seeds)")
        ax1.fill_between(epochs, c[key]["min"], c[key]["max"], color=color, alpha=0.2, label="min–max")
    ax1.set(yscale="log", xlabel="epoch", ylabel="MSE, standardized target (split 1)")
    ax1.legend(fontsize=8)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    fnn.distributed.use_cpu_cores()  # one CPU device per core: the sweeps train members on all of them
    main()
