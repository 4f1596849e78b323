"""Successive halving vs the full sweep: a 27-point grid of the MNIST-1D MLP.

The MNIST-1D MLP of ``mnist1d_seeds.py`` (40-100-100-10, GELU, Adam with the learning
rate decayed to 0 by a cosine, batches of 100, 60 epochs; 400 of the 4,000 training
signals held out, stratified, as the validation split; inputs standardized with the
training statistics) over a grid of learning rate × L2 × dropout (3 values each: 27
points, one seed each). Two ways to pick a point, both on the validation split only:

* the **full sweep**: every point trains all its epochs (``fnn.sweep``); selected: the
  point with the highest best-epoch validation accuracy;
* **successive halving** (``fnn.sweep(..., schedule=fnn.halving(rung_epochs, eta=3))``):
  every point trains ``rung_epochs`` epochs, the best third (by ``--rung-monitor`` at the
  rung's last epoch) go on with their whole state, and so on — rungs of 27, 9, 3 and 1
  members, the finalist training on to the same total epochs; selected: the finalist (where
  the epochs run out before one member is left, the last rung's best by validation accuracy).
  One halving run per value of ``--rung-epochs`` (default 5 and 10; 5 was chosen before
  any run, 10 added after the first run showed the full sweep's winner dropped at epoch 5).

Each method is timed from a cold start (``jax.clear_caches()`` first, so each pays all of
its own compilations; the full sweep runs first), then all once more with their programs
compiled (warm; ``--no-warm`` skips this). Run as a script, the persistent compilation
cache is on (``fnn.programs.use_compilation_cache``): from the second run of the script on,
a cold start loads its programs from disk instead of compiling them (delete the cache
folder, or point ``FNN_COMPILATION_CACHE`` at an empty one, to time compilation itself;
``experiments/bench_compile.py`` measures both). Member-epochs (the compute: per compiled call,
its padded members × the epochs its loop ran) come from ``SweepResult.member_epochs``.
Then each selected configuration is retrained over ``--final-seeds`` new seeds in one
plain ``fnn.sweep`` (each seed keeps its best-validation-epoch params), and only then is
the test set read, once, to score all of them: every method's single-seed selected model
and the retrained seeds. A replay of the halving rule on the full sweep's validation
histories (no training, no test data) shows how the choice depends on the rung length and
the monitor.

    python experiments/halving.py                  # defaults: 27 points, 60 epochs, rungs of 5 and of 10
    python experiments/halving.py --epochs 4 --rung-epochs 1 --final-seeds 2 --n-train 600

Writes ``<out>/halving.json`` and ``<out>/halving.png``.
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

NAME = "halving"
HYPERPARAMETERS = ("lr", "l2", "dropout")
SELECTION = (
    "full sweep: the grid point (one seed) with the highest validation accuracy at its best epoch; successive "
    "halving: its finalist (members ranked at each rung by the rung monitor on the validation split); each "
    "member keeps the params of its epoch with the highest validation accuracy (fit's best_params, "
    "monitor='val_accuracy'); the selected configurations are retrained over new seeds, then the test set is "
    "read once to score the selected single-seed models and the retrained seeds"
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
    p.add_argument("--grid-lr", type=float, nargs="+", default=[3e-3, 1e-2, 3e-2], help="Adam's initial learning rates")
    p.add_argument("--grid-l2", type=float, nargs="+", default=[0.0, 1e-3, 1e-2], help="L2 strengths (l2/2 sum w^2)")
    p.add_argument("--grid-dropout", type=float, nargs="+", default=[0.0, 0.1, 0.3], help="dropout rates")
    p.add_argument("--grid-seed", type=int, default=100, help="the training seed of every grid point")
    p.add_argument(
        "--rung-epochs",
        type=int,
        nargs="+",
        default=[5, 10],
        help="epochs per rung of successive halving; one halving run per value",
    )
    p.add_argument("--eta", type=int, default=3, help="keep the best 1/eta of the members after each rung")
    p.add_argument(
        "--rung-monitor",
        default="val_loss",
        choices=["val_loss", "val_accuracy"],
        help="what ranks the members at the end of each rung",
    )
    p.add_argument(
        "--final-seeds", type=int, default=8, help="retrain each selected configuration over seeds 0..N-1 (0: skip)"
    )
    p.add_argument(
        "--no-warm", action="store_true", help="skip the second timing of each method (its programs compiled)"
    )
    return p


def mnist1d(run, args):
    """MNIST-1D as ``mnist1d_seeds.py`` splits it: 400 training signals (stratified, seed 0)
    as the validation split, inputs standardized with the training statistics, the test
    set sealed. Returns ``x_train, y_train, x_val, y_val, test, split, (mean, std)``."""
    with run("data"):
        data = fnn.datasets.load_mnist1d(args.cache_dir)
        x_all, y_all = data.x_train[: args.n_train], data.y_train[: args.n_train]
        (x_train, y_train, x_val, y_val), split = common.carve_validation(
            x_all, y_all, args.n_val, seed=args.split_seed
        )
        (x_train, x_val), (mean, std) = fnn.standardize(x_train, x_val)
        test = common.TestSet(data.x_test[: args.n_test], data.y_test[: args.n_test], "MNIST-1D test set")
        split |= {"source": f"MNIST-1D training set ({len(y_all)} signals)", "test": test.size}
    return x_train, y_train, x_val, y_val, test, split, (mean, std)


def configuration(sizes, activation: str, steps: int):
    """The MNIST-1D MLP of ``mnist1d_seeds.py``, its swept hyperparameters as arguments."""

    def config(lr=1e-2, l2=0.0, dropout=0.1):
        model = fnn.mlp(sizes, activation=activation, dropout=dropout)
        optimizer = fnn.adam(fnn.schedules.cosine_decay(lr, steps))
        return fnn.Trainer(model, optimizer, fnn.cross_entropy, regularizer=fnn.l2(l2))

    return config


def rung_sizes(n: int, eta: int, rung_epochs: int, epochs: int) -> list[tuple[int, int]]:
    """The rungs ``fnn.halving`` runs: ``(members, end epoch)`` each (as ``fnn.sweeps.successive_halving``)."""
    out, alive = [], n
    for k in range(n):
        end = epochs if alive == 1 else min((k + 1) * rung_epochs, epochs)
        out.append((alive, end))
        if end >= epochs:
            return out
        alive = max(1, alive // eta)
    return out


def unpadded(rungs: list[tuple[int, int]]) -> int:
    """Member-epochs of ``rungs`` without padding: each rung's members x its epochs."""
    starts = [0] + [end for _, end in rungs[:-1]]
    return sum(members * (end - start) for (members, end), start in zip(rungs, starts))


def replay(history: dict, eta: int, rung_epochs: int, epochs: int, monitor: str) -> int:
    """The finalist successive halving would pick, replayed on the full sweep's histories
    (a member that goes on is the same run as in the full sweep, to float32 rounding; the rule of
    ``fnn.sweeps.successive_halving.survivors``: best ``max(1, n // eta)`` at each rung's last epoch,
    non-finite last, ties to the lower index; of the last rung, the best validation accuracy)."""
    values = np.asarray(history[monitor], dtype=float)
    alive = np.arange(values.shape[0])
    for _, end in rung_sizes(values.shape[0], eta, rung_epochs, epochs)[:-1]:
        scores = values[alive, end - 1] * (-1 if monitor.endswith("accuracy") else 1)
        scores = np.where(np.isfinite(scores), scores, np.inf)
        order = np.lexsort((alive, scores))
        alive = np.sort(alive[order[: max(1, alive.size // eta)]])
    return int(alive[np.argmax(np.max(np.asarray(history["val_accuracy"])[alive], axis=1))])  # last rung's best


def timed(run, label: str, fn):
    """``fn()`` from a cold start (``jax.clear_caches()``: it compiles everything it runs),
    timed as the run's phase ``label``, its result waited for."""
    jax.clear_caches()
    with run(label):
        result = fn()
        jax.block_until_ready(result.results.history)
    return result


def write_tensorboard(run, tables: dict) -> None:
    """With ``--tensorboard``, each timed sweep's runs (``fnn.tensorboard.write_sweep``),
    written after the timings (they compare the sweeps' wall times) from process 0."""
    for phase, table in tables.items():
        folder = run.tensorboard(phase)
        if folder is not None:
            with fnn.multihost.process_zero_writes(f"tensorboard {phase}") as writing:
                if writing:
                    fnn.tensorboard.write_sweep(folder, table)


def main(argv=None) -> dict:
    run, args = common.start_on_cores(NAME, parser(), argv)  # members on every core
    load_start = common.load_average()
    x_train, y_train, x_val, y_val, test, split, (mean, std) = mnist1d(run, args)
    sizes = [x_train.shape[1], *args.hidden, 10]
    steps = args.epochs * -(-len(y_train) // args.batch_size)
    config = configuration(sizes, args.activation, steps)
    grid = {"lr": args.grid_lr, "l2": args.grid_l2, "dropout": args.grid_dropout}
    n = len(args.grid_lr) * len(args.grid_l2) * len(args.grid_dropout)
    fit_options = common.training_options(args, (x_val, y_val)) | {"monitor": "val_accuracy"}
    common.say(
        f"MNIST-1D: {len(y_train)} train / {len(y_val)} validation / {test.size} test; MLP "
        f"{'-'.join(map(str, sizes))} {args.activation}, Adam cosine, batch {args.batch_size}, {args.epochs} epochs; "
        f"grid lr {args.grid_lr} x l2 {args.grid_l2} x dropout {args.grid_dropout} = {n} points, seed "
        f"{args.grid_seed}; {len(jax.devices())} device(s); load average {load_start}"
    )
    for r in args.rung_epochs:
        rungs = rung_sizes(n, args.eta, r, args.epochs)
        common.say(
            f"halving, rungs of {r} epochs: (members, to epoch) {rungs}, ranked by {args.rung_monitor}: "
            f"{unpadded(rungs)} member-epochs without padding, against {n * args.epochs} for the full sweep"
        )

    def full_sweep():
        return fnn.sweep(config, x_train, y_train, grid=grid, seeds=[args.grid_seed], **fit_options)

    def halving(r: int):
        schedule = fnn.halving(rung_epochs=r, eta=args.eta, monitor=args.rung_monitor)
        return fnn.sweep(config, x_train, y_train, grid=grid, seeds=[args.grid_seed], schedule=schedule, **fit_options)

    names = {r: f"halving, rungs of {r}" for r in args.rung_epochs}
    common.say("\n== full sweep (cold: compiles its program)")
    full = timed(run, "full sweep (cold)", full_sweep)
    halved = {}
    for r in args.rung_epochs:
        common.say(f"\n== {names[r]} epochs (cold: compiles its programs)")
        halved[r] = timed(run, f"{names[r]} (cold)", lambda r=r: halving(r))
    if not args.no_warm:
        common.say("\n== all again, programs compiled (warm)")
        with run("full sweep (warm)"):
            jax.block_until_ready(full_sweep().results.history)
        for r in args.rung_epochs:
            with run(f"{names[r]} (warm)"):
                jax.block_until_ready(halving(r).results.history)
    load_after_sweeps = common.load_average()
    write_tensorboard(run, {"full sweep": full} | {names[r]: halved[r] for r in args.rung_epochs})

    full_rows = full.rows()
    history = {k: np.asarray(v) for k, v in full.results.history.items()}

    def point(row) -> dict:
        return {k: row[k] for k in HYPERPARAMETERS}

    methods = {"full sweep": (full, max(range(n), key=lambda i: (full_rows[i]["best_val_accuracy"], -i)))}
    for r, result in halved.items():  # the finalist; where the epochs ran out first, the best of the last rung
        last, rows = np.flatnonzero(result.rung == result.rung.max()), result.rows()
        methods[names[r]] = (result, int(max(last, key=lambda i: (rows[i]["best_val_accuracy"], -i))))
    timings = dict(run.times)
    summary = {}
    for name, (result, index) in methods.items():
        row = result.rows()[index]
        summary[name] = {
            "selected": point(row),
            "member": index,
            "validation_accuracy": row["best_val_accuracy"],
            "selected_epoch": row["best_epoch"] + 1,
            "member_epochs": result.member_epochs,
            "calls": result.calls,
            "wall_s_cold": timings[f"{name} (cold)"],
            "wall_s_warm": timings.get(f"{name} (warm)"),
        }
    f = summary["full sweep"]
    checks = {}
    for r, result in halved.items():
        h, finalist = summary[names[r]], methods[names[r]][1]
        h["rung_epochs"] = r
        h["rungs"] = rung_sizes(n, args.eta, r, args.epochs)
        h["member_epochs_fraction"] = h["member_epochs"] / f["member_epochs"]
        h["wall_fraction_cold"] = h["wall_s_cold"] / f["wall_s_cold"]
        if not args.no_warm:
            h["wall_fraction_warm"] = h["wall_s_warm"] / f["wall_s_warm"]
        h["validation_gap"] = f["validation_accuracy"] - h["validation_accuracy"]
        h["rank_in_full_sweep"] = 1 + sum(
            row["best_val_accuracy"] > full_rows[finalist]["best_val_accuracy"] for row in full_rows
        )
        h["good_result_cold"] = bool(h["validation_gap"] <= 0.01 and h["wall_fraction_cold"] < 0.4)
        h["good_result_warm"] = bool(h["validation_gap"] <= 0.01 and h.get("wall_fraction_warm", 1.0) < 0.4)
        # A member that goes on is the same run as in the full sweep, to float32 rounding (XLA:CPU
        # picks its batched kernels by the members in a call): compare the epochs each one ran.
        halved_history = {k: np.asarray(v) for k, v in result.results.history.items()}
        ran = [row["stop_epoch"] for row in result.rows()]
        checks[names[r]] = {
            "max_abs_difference_to_full_sweep": {
                k: max(
                    float(np.max(np.abs(history[k][i, : ran[i]] - halved_history[k][i, : ran[i]]), initial=0.0))
                    for i in range(n)
                )
                for k in ("loss", "val_loss", "val_accuracy")
            },
            "replayed_finalist": replay(history, args.eta, r, args.epochs, args.rung_monitor),
        }

    # Retrain each selected configuration over new seeds (validation picks each seed's epoch).
    chosen = list(dict.fromkeys(tuple(summary[m]["selected"][k] for k in HYPERPARAMETERS) for m in methods))
    retrained = None
    if args.final_seeds:
        common.say(f"\n== the selected configuration(s) {chosen} over seeds 0..{args.final_seeds - 1}")
        zipped = {k: [c[i] for c in chosen] for i, k in enumerate(HYPERPARAMETERS)}
        with run("retrain selected"):
            log = run.tensorboard("retrain selected")
            retrained = fnn.sweep(
                config,
                x_train,
                y_train,
                grid=zipped,
                product=False,
                seeds=args.final_seeds,
                tensorboard=log,
                **fit_options,
            )
            jax.block_until_ready(retrained.results.history)

    # The test set, read once: every method's single-seed selected model and every retrained seed.
    trainer = config()
    with run("evaluate"):
        # (np.asarray: a plain sweep's results may be sharded over the devices, halving's are on one)
        picked = list(methods.values())

        def stacked(field: str):
            trees = [getattr(result.results, field) for result, _ in picked]
            index = [i for _, i in picked]
            return jax.tree.map(lambda *a: np.stack([np.asarray(x[i]) for x, i in zip(a, index)]), *trees)

        x_test, y_test = test.read()  # once
        x_test = (jnp.asarray(x_test, mean.dtype) - mean) / std  # standardized with the training statistics
        single = common.evaluate_members(trainer, stacked("best_params"), stacked("best_model_state"), x_test, y_test)
        if retrained is not None:
            seeds_test = common.evaluate_members(
                trainer, retrained.results.best_params, retrained.results.best_model_state, x_test, y_test
            )["accuracy"]
    tested = {}
    for i, name in enumerate(methods):
        tested[name] = {"selected_seed": float(single["accuracy"][i])}
        if retrained is not None:
            which = chosen.index(tuple(summary[name]["selected"][k] for k in HYPERPARAMETERS))
            rows = slice(which * args.final_seeds, (which + 1) * args.final_seeds)
            val = [row["best_val_accuracy"] for row in retrained.rows()[rows]]
            summary[name]["validation_accuracy_seeds"] = common.mean_std(val)
            tested[name] |= {"seeds": common.mean_std(seeds_test[rows]), "per_seed": seeds_test[rows]}

    # Sensitivity (validation only): the halving rule replayed on the full sweep's histories.
    sensitivity = []
    lengths = {max(1, args.epochs // d) for d in (20, 12, 6, 4)} | {max(1, (args.epochs - 1) // 3)} | set(halved)
    for monitor in ("val_loss", "val_accuracy"):
        for r in sorted(lengths):
            pick = replay(history, args.eta, r, args.epochs, monitor)
            sensitivity.append(
                {
                    "rung_monitor": monitor,
                    "rung_epochs": r,
                    "finalist": point(full_rows[pick]),
                    "validation_accuracy": full_rows[pick]["best_val_accuracy"],
                    "rank_in_full_sweep": 1
                    + sum(row["best_val_accuracy"] > full_rows[pick]["best_val_accuracy"] for row in full_rows),
                    "member_epochs_unpadded": unpadded(rung_sizes(n, args.eta, r, args.epochs)),
                }
            )

    table = report(summary, tested, args)
    replay_table = common.markdown_table(
        ["rung monitor", "rung epochs", "finalist (lr, l2, dropout)", "its val acc", "rank of 27", "member-epochs"],
        [
            [
                s["rung_monitor"],
                s["rung_epochs"],
                ", ".join(f"{s['finalist'][k]:g}" for k in HYPERPARAMETERS),
                s["validation_accuracy"],
                s["rank_in_full_sweep"],
                s["member_epochs_unpadded"],
            ]
            for s in sensitivity
        ],
    )
    common.say("\n" + table)
    common.say(
        "\nthe halving rule replayed on the full sweep's validation histories (no test data; member-epochs "
        f"without padding, full sweep {n * args.epochs}):\n{replay_table}"
    )
    common.say(f"\nchecks of each halving run against the full sweep: {checks}")
    common.say(f"load average {load_start} -> {load_after_sweeps}")
    metrics = {
        "methods": summary,
        "test_accuracy": tested,
        "checks": checks,
        "sensitivity": sensitivity,
        "load_average_start": load_start,
        "load_average_after_sweeps": load_after_sweeps,
        "load_average_end": common.load_average(),
    }
    halved_histories = {names[r]: {k: np.asarray(v) for k, v in h.results.history.items()} for r, h in halved.items()}
    return run.finish(
        config={"sizes": sizes, "optimizer": "adam + cosine decay", "steps": steps, "grid": grid, "points": n},
        metrics=metrics,
        protocol=common.protocol(
            split,
            selection=SELECTION,
            selected={m: summary[m]["selected"] for m in methods},
            validation_metrics=["methods", "checks", "sensitivity"],
            test_metrics=["test_accuracy"],
            test=test,
            seeds={"grid": [args.grid_seed], "retrained": list(range(args.final_seeds))},
        ),
        plot=lambda: plot(history, halved_histories, halved, methods, summary, tested, args),
        table=table,
        replay_table=replay_table,
        rows={"full sweep": full_rows, **{names[r]: h.rows() for r, h in halved.items()}},
    )


def report(summary: dict, tested: dict, args) -> str:
    header = [
        "method",
        "selected (lr, l2, dropout)",
        "member-epochs",
        "compiled calls",
        "wall s (cold)",
        *(["wall s (warm)"] if not args.no_warm else []),
        "val acc (selected seed)",
        "test acc (selected seed)",
        *([f"val acc, {args.final_seeds} seeds", f"test acc, {args.final_seeds} seeds"] if args.final_seeds else []),
    ]
    rows = []
    for name, s in summary.items():
        rows.append(
            [
                name,
                ", ".join(f"{s['selected'][k]:g}" for k in HYPERPARAMETERS),
                s["member_epochs"],
                s["calls"],
                f"{s['wall_s_cold']:.1f}",
                *([f"{s['wall_s_warm']:.1f}"] if not args.no_warm else []),
                s["validation_accuracy"],
                tested[name]["selected_seed"],
                *(
                    [common.pm(s["validation_accuracy_seeds"]), common.pm(tested[name]["seeds"])]
                    if args.final_seeds
                    else []
                ),
            ]
        )
    return common.markdown_table(header, rows)


def plot(history, halved_histories, halved, methods, summary, tested, args):
    epochs = np.arange(1, history["val_accuracy"].shape[1] + 1)
    n = history["val_accuracy"].shape[0]
    fig, axes = common.figure(
        f"MNIST-1D MLP, {n}-point grid: full sweep vs successive halving (eta {args.eta}), validation split",
        2 + len(halved),
        figsize=(5.5 * (2 + len(halved)), 4.5),
        squeeze=False,
        layout="constrained",
    )
    axes = axes[0]
    best_full = methods["full sweep"][1]
    ax = axes[0]
    for i in range(n):
        ax.plot(epochs, history["val_accuracy"][i], color="0.7", lw=0.8)
    ax.plot(epochs, history["val_accuracy"][best_full], color="C3", lw=1.8, label="selected (full sweep)")
    ax.set(title="full sweep: every point, all epochs", xlabel="epoch", ylabel="validation accuracy")
    ax.title.set_fontsize(10)
    ax.legend(fontsize=8, loc="lower right")
    for ax, (r, result) in zip(axes[1:], halved.items()):
        name = f"halving, rungs of {r}"
        h, finalist, rung = halved_histories[name]["val_accuracy"], methods[name][1], result.rung
        for k in range(int(rung.max()) + 1):
            for j, i in enumerate(np.flatnonzero(rung == k)):
                label = f"stopped at rung {k} ({np.sum(rung == k)})" if j == 0 else None
                ax.plot(epochs, h[i], color=f"C{k}", lw=1.8 if i == finalist else 0.8, label=label)
        for _, end in rung_sizes(n, args.eta, r, args.epochs)[:-1]:
            ax.axvline(end + 0.5, color="k", ls=":", lw=0.8)
        ax.set(title=f"{name} epochs; colour: the rung where each stopped", xlabel="epoch", ylim=axes[0].get_ylim())
        ax.title.set_fontsize(10)
        ax.legend(fontsize=8, loc="lower right")
    ax = axes[-1]
    names = list(summary)
    x = np.arange(len(names))
    member_epochs = np.asarray([summary[m]["member_epochs"] for m in names], dtype=float)
    ax.bar(x - 0.27, member_epochs / member_epochs[0], 0.27, color="C0", label="member-epochs")
    for offset, key, color, label in (
        (0.0, "wall_s_cold", "C1", "wall, cold"),
        (0.27, "wall_s_warm", "C2", "wall, warm"),
    ):
        walls = [summary[m][key] for m in names]
        if all(w is not None for w in walls):
            ax.bar(
                x + offset,
                np.asarray(walls) / walls[0],
                0.27,
                color=color,
                label=f"{label} (compile incl.)" if key == "wall_s_cold" else label,
            )
    for i, m in enumerate(names):
        text = f"val {summary[m]['validation_accuracy']:.3f}\ntest {tested[m]['selected_seed']:.3f}"
        ax.text(i, 1.04, text, ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [m.replace(", ", "\n") for m in names], fontsize=8)
    ax.set(title="cost relative to the full sweep", ylabel="fraction of the full sweep", ylim=(0, 1.75))
    ax.title.set_fontsize(10)
    ax.legend(fontsize=7, loc="upper center", ncol=3)
    return fig


if __name__ == "__main__":
    fnn.programs.use_compilation_cache()  # a re-run loads the programs this machine compiled before
    main()
