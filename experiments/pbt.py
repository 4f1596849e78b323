"""Population-based training vs the same population with fixed hyperparameters (MNIST-1D MLP).

The MNIST-1D MLP and split of ``mnist1d_seeds.py`` / ``halving.py`` (40-100-100-10, GELU,
Adam with the learning rate decayed to 0 by a cosine over the run, batches of 100, 60
epochs; 400 training signals held out, stratified, as the validation split). A
population of 16 members starts from learning rate × dropout (4 × 4 values, all members
of a repetition on the same training seed) and trains two ways:

* **PBT** (``fnn.pbt``, one compiled program): every ``--interval`` epochs the bottom
  quarter of the members by validation accuracy copy the whole state of a member drawn
  from the top quarter and multiply its learning rate and dropout by 0.8 or 1.25 each
  (clipped to ``--lr-bounds`` and ``--dropout-bounds``);
* **fixed**: the same 16 members, same starting values and seeds, with their
  hyperparameters fixed (``fnn.sweep`` over the zipped grid).

Each repetition ``r`` trains every member on seed ``r`` (and PBT draws with key ``r``);
all repetitions of the fixed population run as one sweep. Each member keeps the params
of its best-validation-accuracy epoch (a PBT member's history and best params are
inherited from the members it copied). Selected, per repetition and method: the member
with the highest best-epoch validation accuracy. Then the test set is read once to score
all the selected members; the script reports mean ± std over repetitions and a paired
95% t interval for PBT − fixed.

    python experiments/pbt.py                   # defaults: 16 members, interval 5, 60 epochs, 3 repetitions
    python experiments/pbt.py --epochs 4 --interval 2 --repeats 2 --n-train 600

Writes ``<out>/pbt.json`` and ``<out>/pbt.png``.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from halving import configuration, mnist1d  # noqa: E402  # the same model and split

import fnn  # noqa: E402

NAME = "pbt"
SELECTION = (
    "per repetition and method: the member with the highest validation accuracy at its best epoch (fit's "
    "best_params, monitor='val_accuracy'; PBT also ranks its members by validation accuracy at the end of "
    "each interval); the test set is read once, after every run, to score the selected members"
)


def parser():
    p = common.parser(
        __doc__,
        cache_dir=None,
        n_val=400,
        split_seed=0,
        cpu_devices=None,
        epochs=60,
        batch_size=100,
        hidden=[100, 100],
        activation="gelu",
        n_train=None,
        n_test=None,
        helps={
            "n_train": "use only the first N training signals (before the validation split)",
        },
    )
    p.add_argument("--start-lr", type=float, nargs="+", default=[1e-3, 3e-3, 1e-2, 3e-2], help="starting lrs")
    p.add_argument("--start-dropout", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4], help="starting dropouts")
    p.add_argument("--l2", type=float, default=0.0, help="L2 strength of every member (not perturbed)")
    p.add_argument("--interval", type=int, default=5, help="epochs between exploit/explore steps")
    p.add_argument("--fraction", type=float, default=0.25, help="the bottom fraction copies the top fraction")
    p.add_argument("--perturb", type=float, nargs="+", default=[0.8, 1.25], help="explore factors")
    p.add_argument("--lr-bounds", type=float, nargs=2, default=[1e-4, 0.1], help="clip perturbed lrs")
    p.add_argument("--dropout-bounds", type=float, nargs=2, default=[0.0, 0.6], help="clip perturbed dropouts")
    p.add_argument("--repeats", type=int, default=3, help="repetitions (training seed and PBT key 0..N-1)")
    return p


def best_member(history: dict, best_epoch) -> tuple[int, np.ndarray]:
    """The member with the highest validation accuracy at its best epoch (ties: the lowest
    index), and every member's best-epoch validation accuracy."""
    best_epoch = np.asarray(best_epoch)
    val = np.asarray(history["val_accuracy"])[np.arange(best_epoch.size), best_epoch]
    return int(np.argmax(val)), val


def main(argv=None) -> dict:
    run, args = common.start_on_cores(NAME, parser(), argv)  # members on every core
    load_start = common.load_average()
    x_train, y_train, x_val, y_val, test, split, (mean, std) = mnist1d(run, args)
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps = args.epochs * -(-len(y_train) // args.batch_size)
    base = configuration(sizes, args.activation, steps)

    def config(lr=1e-2, dropout=0.1):  # l2 fixed: only lr and dropout are members' hyperparameters
        return base(lr=lr, l2=args.l2, dropout=dropout)

    start = list(itertools.product(args.start_lr, args.start_dropout))
    population = {"lr": [lr for lr, _ in start], "dropout": [d for _, d in start]}
    size = len(start)
    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    common.say(
        f"MNIST-1D: {len(y_train)} train / {len(y_val)} validation / {test.size} test; MLP "
        f"{'-'.join(map(str, sizes))} {args.activation}, Adam cosine, batch {args.batch_size}, {args.epochs} epochs; "
        f"{size} members (lr {args.start_lr} x dropout {args.start_dropout}), {args.repeats} repetition(s); "
        f"{len(jax.devices())} device(s); load average {load_start}"
    )

    pbts = []
    for r in range(args.repeats):
        common.say(f"\n== PBT, repetition {r} (seed {r}, key {r}): interval {args.interval}, fraction {args.fraction}")
        with run("pbt (compile + run)" if r == 0 else "pbt (run)"):
            result = fnn.pbt(
                config,
                x_train,
                y_train,
                population=population,
                interval=args.interval,
                hyperparameters=["lr", "dropout"],
                fraction=args.fraction,
                perturb=args.perturb,
                bounds={"lr": tuple(args.lr_bounds), "dropout": tuple(args.dropout_bounds)},
                seeds=[r] * size,
                key=r,
                tensorboard=run.tensorboard(f"pbt repetition {r}"),
                **fit_options,
            )
            jax.block_until_ready(result.results.history)
        pbts.append(result)
    common.say(f"\n== fixed hyperparameters: {size} members x {args.repeats} seed(s) in one sweep")
    with run("fixed (compile + run)"):
        log = run.tensorboard("fixed")
        fixed = fnn.sweep(
            config, x_train, y_train, grid=population, product=False, seeds=args.repeats, tensorboard=log, **fit_options
        )
        jax.block_until_ready(fixed.results.history)
    load_after = common.load_average()

    # fixed's members: grid point g, seed r at row g * repeats + r; as [repeats, size] views.
    fixed_history = {k: np.asarray(v) for k, v in fixed.results.history.items()}
    fixed_best_epoch = np.asarray(fixed.results.best_epoch)
    per_repeat = {"pbt": [], "fixed": []}
    for r, result in enumerate(pbts):
        history = {k: np.asarray(v) for k, v in result.results.history.items()}
        j, val = best_member(history, result.results.best_epoch)
        per_repeat["pbt"].append(
            {
                "repeat": r,
                "member": j,
                "validation_accuracy": float(val[j]),
                "selected_epoch": int(np.asarray(result.results.best_epoch)[j]) + 1,
                "final_lr": float(result.hyperparameters["lr"][-1, j]),
                "final_dropout": float(result.hyperparameters["dropout"][-1, j]),
                "start_of_lineage": {k: population[k][result.lineage(j)[0]] for k in population},
                "population_final_val_accuracy_mean": float(np.mean(history["val_accuracy"][:, -1])),
                "population_best_val_accuracy_mean": float(np.mean(val)),
                "copies": int(np.sum(result.parents != np.arange(size))),
            }
        )
        rows = np.arange(size) * args.repeats + r
        g, val = best_member({"val_accuracy": fixed_history["val_accuracy"][rows]}, fixed_best_epoch[rows])
        per_repeat["fixed"].append(
            {
                "repeat": r,
                "member": g,
                "validation_accuracy": float(val[g]),
                "selected_epoch": int(fixed_best_epoch[rows][g]) + 1,
                "lr": population["lr"][g],
                "dropout": population["dropout"][g],
                "population_final_val_accuracy_mean": float(np.mean(fixed_history["val_accuracy"][rows, -1])),
                "population_best_val_accuracy_mean": float(np.mean(val)),
            }
        )

    # The test set, read once: the selected member of every repetition, both methods.
    trainer = config()
    with run("evaluate"):
        selected = [pbts[r].results for r in range(args.repeats)] + [fixed.results] * args.repeats
        index = [p["member"] for p in per_repeat["pbt"]] + [
            p["member"] * args.repeats + p["repeat"] for p in per_repeat["fixed"]
        ]
        params = jax.tree.map(
            lambda *a: np.stack([np.asarray(x[i]) for x, i in zip(a, index)]), *(s.best_params for s in selected)
        )
        states = jax.tree.map(
            lambda *a: np.stack([np.asarray(x[i]) for x, i in zip(a, index)]), *(s.best_model_state for s in selected)
        )
        x_test, y_test = test.read()  # once
        x_test = (jnp.asarray(x_test, mean.dtype) - mean) / std  # standardized with the training statistics
        accuracy = common.evaluate_members(trainer, params, states, x_test, y_test)["accuracy"]
    tested = {"pbt": accuracy[: args.repeats], "fixed": accuracy[args.repeats :]}

    summary = {}
    for method in ("pbt", "fixed"):
        summary[method] = {
            "validation_accuracy": common.mean_std([p["validation_accuracy"] for p in per_repeat[method]]),
            "population_final_val_accuracy_mean": common.mean_std(
                [p["population_final_val_accuracy_mean"] for p in per_repeat[method]]
            ),
        }
    test_summary = {m: common.mean_std(tested[m]) for m in tested}
    comparison = (
        common.paired_comparison(tested["pbt"], tested["fixed"], names=("pbt", "fixed")) if args.repeats >= 2 else None
    )
    table = report(per_repeat, tested, summary, test_summary, comparison)
    common.say("\n" + table)
    common.say(f"load average {load_start} -> {load_after}")
    trajectories = {k: v for k, v in pbts[0].hyperparameters.items() if k != "seed"}
    metrics = {
        "validation": summary,
        "per_repeat": per_repeat,
        "test_accuracy": test_summary,
        "test_accuracy_per_repeat": tested,
        "test_comparison": comparison,
        "load_average_start": load_start,
        "load_average_end": load_after,
    }
    return run.finish(
        config={
            "sizes": sizes,
            "optimizer": "adam + cosine decay",
            "steps": steps,
            "population": population,
            "perturbed": ["lr", "dropout"],
        },
        metrics=metrics,
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected={m: [{k: p[k] for k in p if k != "repeat"} for p in per_repeat[m]] for m in per_repeat},
            validation_metrics=["validation", "per_repeat"],
            test_metrics=["test_accuracy", "test_accuracy_per_repeat", "test_comparison"],
            test=test,
            seeds=list(range(args.repeats)),
        ),
        plot=lambda: plot(pbts[0], fixed_history, per_repeat, args),
        table=table,
        trajectories={"repeat": 0, **trajectories, "parents": pbts[0].parents, "scores": pbts[0].scores},
    )


def report(per_repeat, tested, summary, test_summary, comparison) -> str:
    header = ["method", "repetition", "selected member", "hyperparameters at the end", "val acc", "test acc"]
    rows = []
    for method in ("pbt", "fixed"):
        for p, t in zip(per_repeat[method], tested[method]):
            if method == "pbt":
                hyper = f"lr {p['final_lr']:.3g}, dropout {p['final_dropout']:.3g}"
            else:
                hyper = f"lr {p['lr']:.3g}, dropout {p['dropout']:.3g}"
            rows.append([method, p["repeat"], p["member"], hyper, p["validation_accuracy"], float(t)])
        rows.append(
            [
                f"**{method}**",
                "mean ± std",
                "",
                f"population mean final val acc {summary[method]['population_final_val_accuracy_mean']['mean']:.4f}",
                common.pm(summary[method]["validation_accuracy"]),
                common.pm(test_summary[method]),
            ]
        )
    text = common.markdown_table(header, rows)
    if comparison is not None:
        text += f"\n\ntest accuracy, PBT − fixed (paired 95% t interval): {common.ci_text(comparison)}; {comparison['verdict']}"
    return text


def plot(result, fixed_history, per_repeat, args):
    lr, dropout = result.hyperparameters["lr"], result.hyperparameters["dropout"]
    intervals, size = lr.shape
    best = per_repeat["pbt"][0]["member"]
    fig, axes = common.figure(
        f"PBT on the MNIST-1D MLP: {size} members, interval {args.interval} epochs (repetition 0)",
        3,
        figsize=(16, 4.5),
        layout="constrained",
    )
    edges = np.minimum(np.arange(intervals + 1) * args.interval, args.epochs)  # interval i: epochs edges[i]..edges[i+1]
    for ax, values, name in ((axes[0], lr, "learning rate (peak of the cosine)"), (axes[1], dropout, "dropout rate")):
        for j in range(size):
            ax.stairs(values[:, j], edges, color=f"C{j % 10}", lw=0.8, alpha=0.7, baseline=None)
        ax.stairs(values[:, best], edges, color="k", lw=2, baseline=None, label=f"selected member {best}")
        ax.set(xlabel="epoch", ylabel=name)
        ax.legend(fontsize=8)
    axes[0].set_yscale("log")
    axes[0].set_title("hyperparameter trajectories (every member)")
    ax = axes[2]
    epochs = np.arange(1, fixed_history["val_accuracy"].shape[1] + 1)
    pbt_val = np.asarray(result.results.history["val_accuracy"])
    rows = np.arange(size) * args.repeats  # repetition 0 of the fixed population
    for j in range(size):
        ax.plot(epochs, fixed_history["val_accuracy"][rows[j]], color="0.6", lw=0.8, label="fixed" if j == 0 else None)
        ax.plot(epochs, pbt_val[j], color="C0", lw=0.8, label="PBT (inherited histories)" if j == 0 else None)
    ax.set(title="validation accuracy of every member", xlabel="epoch", ylabel="validation accuracy")
    ax.legend(fontsize=8, loc="lower right")
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    main()
