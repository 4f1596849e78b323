"""Smoke tests of the experiment scripts: each ``main(argv)`` with tiny settings writes its
results JSON and PNG, the JSON's key metrics are finite numbers, and the JSON records the
protocol of experiments/README.md (split sizes and seeds, what was selected on the
validation split, the test set read exactly once; a selection run reads it never). The
statistics helpers of ``common`` (t quantiles, paired intervals) are checked against a t
table. The real runs are not part of the tests (their numbers are in
experiments/README.md)."""

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"

# The scripts' sweeps run here on the test session's one CPU device, which fnn.sweep points
# out once (a script run from the command line may give JAX one device per core instead).
pytestmark = pytest.mark.filterwarnings("ignore::fnn.distributed.UnusedCoresWarning")


def load(name):
    """Import ``experiments/<name>.py`` under a unique module name."""
    spec = importlib.util.spec_from_file_location(f"fnn_experiment_{name}", EXPERIMENTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_outputs(out: Path, name: str, returned: dict) -> dict:
    json_path, png_path = out / f"{name}.json", out / f"{name}.png"
    assert returned["json"] == json_path and json_path.is_file()
    assert png_path.is_file() and png_path.stat().st_size > 1000
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(json_path.read_text())
    for key in ("config", "metrics", "timings_s", "environment"):
        assert key in record, key
    assert record["environment"]["jax"] and record["environment"]["device"]
    assert finite(record["timings_s"]["total"])
    return record


def paths(out, data) -> list[str]:
    """The options every Fashion-MNIST script takes here: results folder, data folder, no progress."""
    return ["--out", str(out), "--data-dir", str(data), "--no-progress"]


def check_protocol(record: dict, *, test_read: bool = True) -> dict:
    """The protocol of experiments/README.md, as the JSON records it: split sizes and seeds,
    a selection rule, validation and test numbers named apart, the test set read once (or,
    for a selection run, not at all)."""
    protocol = record["protocol"]
    assert protocol["selection"] and "validation" in protocol["selection"]
    assert not set(protocol["validation_metrics"]) & set(protocol["test_metrics"])
    assert protocol["validation_metrics"]
    if test_read:
        assert protocol["test_reads"] == 1 and protocol["test_metrics"]
    else:
        assert protocol["test_reads"] == 0 and protocol["test_metrics"] == []
    return protocol


def check_split(split: dict, train: int, validation: int, test: int | None, stratified: bool = True):
    assert (split["train"], split["validation"], split["stratified"]) == (train, validation, stratified)
    assert isinstance(split["split_seed"], int)
    if test is not None:
        assert split["test"] == test


def test_mnist1d_seeds(tmp_path, capsys):
    options = "--seeds 2 --epochs 2 --n-train 400 --n-val 100 --n-test 200".split()
    logs = tmp_path / "tb"
    tensorboard = ["--tensorboard", str(logs)] if importlib.util.find_spec("tensorboardX") else []
    returned = load("mnist1d_seeds").main(["--out", str(tmp_path), *options, *tensorboard])
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed  # the progress lines from inside the compiled run
    assert "| seeds |" in printed  # SweepResult.summary's table
    record = check_outputs(tmp_path, "mnist1d_seeds", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 300, 100, 200)
    assert protocol["seeds"] == [0, 1] and protocol["selected"]["activation"] == "gelu"
    m = record["metrics"]
    for key in ("mean", "std", "min", "max"):
        for name in ("test_accuracy", "validation_accuracy"):
            assert finite(m[name][key]) and 0 <= m[name][key] <= 1
    assert m["test_accuracy"]["n"] == 2 and len(m["test_accuracy_per_seed"]) == 2
    assert m["test_accuracy_per_seed"] != m["validation_accuracy_per_seed"]  # two different sets
    assert 1 <= m["selected_epoch"]["min"] <= m["selected_epoch"]["max"] <= 2
    assert finite(m["train_accuracy"]["mean"]) and m["published_mlp_accuracy"] == 0.68
    for name in ("ensemble_test_accuracy", "ensemble_validation_accuracy"):  # the 2 seeds' averaged probabilities
        assert finite(m[name]) and 0 <= m[name] <= 1
    assert finite(m["ensemble_test_loss"]) and "ensemble of the 2 seeds" in printed
    if tensorboard:
        check_tensorboard_runs(logs / "mnist1d_seeds" / "train", record["curves"])


def check_tensorboard_runs(folder: Path, curves: dict):
    """The runs ``--tensorboard`` wrote for a 2-seed sweep: ``seed=0`` and ``seed=1``, whose
    per-epoch scalars average to the JSON's curves (the same runs), to float32 rounding."""
    from test_tensorboard import read_run  # needs tensorboard's reader (the test extra)

    runs = sorted(p.name for p in folder.iterdir() if p.is_dir())
    assert runs == ["seed=0", "seed=1"]
    scalars = [read_run(folder / run)[0] for run in runs]
    for name in ("loss", "val_loss", "val_accuracy"):
        per_seed = [[s[name][epoch] for epoch in sorted(s[name])] for s in scalars]
        np.testing.assert_allclose(np.mean(per_seed, axis=0), curves[name]["mean"], rtol=1e-6, err_msg=name)


def test_tensorboard_folders_are_per_phase_and_never_shared(tmp_path, monkeypatch):
    """``Run.tensorboard``: ``<DIR>/<name>/<phase slug>``, ``None`` without the option; a
    phase folder handed out twice, or holding runs already, is refused; without
    tensorboardX the option is refused before anything runs."""
    pytest.importorskip("tensorboardX")
    common = load("common")
    args = common.parser("T.").parse_args(["--tensorboard", str(tmp_path)])
    run = common.Run("demo", args)
    assert run.tensorboard("Select c16x32+d0 (warm)") == tmp_path / "demo" / "select-c16x32-d0-warm"
    with pytest.raises(SystemExit, match="two phases named like 'select c16x32"):
        run.tensorboard("select c16x32+d0 (warm)")
    (tmp_path / "demo" / "train").mkdir(parents=True)
    (tmp_path / "demo" / "train" / "seed=0").mkdir()
    with pytest.raises(SystemExit, match=r"demo/train holds runs already"):
        common.Run("demo", args).tensorboard("train")
    assert common.Run("demo", common.parser("T.").parse_args([])).tensorboard("train") is None
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(SystemExit, match=r"pip install 'fnn\[tensorboard\]'"):
        common.Run("demo", args)


def test_mnist1d_selection_reads_no_test_data(tmp_path, monkeypatch):
    module = load("mnist1d_seeds")
    common = module.common
    monkeypatch.setattr(common.TestSet, "read", lambda self: pytest.fail("the selection run read the test set"))
    options = (
        "--select --select-seeds 3 4 --grid-lr 0.01 0.02 --grid-l2 0.001 --grid-dropout 0.1 --grid-activation relu"
    )
    returned = module.main(
        [
            "--out",
            str(tmp_path),
            "--no-progress",
            "--epochs",
            "2",
            "--n-train",
            "300",
            "--n-val",
            "100",
            *options.split(),
        ]
    )
    record = check_outputs(tmp_path, "mnist1d_seeds_select", returned)
    assert record["command"].startswith("python experiments/mnist1d_seeds.py --out")
    protocol = check_protocol(record, test_read=False)
    check_split(protocol["split"], 200, 100, None)
    grid = record["metrics"]["grid"]
    points = [(g["activation"], g["lr"], g["l2"], g["dropout"]) for g in grid]
    assert points == [("relu", 0.01, 0.001, 0.1), ("relu", 0.02, 0.001, 0.1)]
    best = max(grid, key=lambda g: g["mean"])
    assert record["metrics"]["selected"] == {"activation": "relu", "lr": best["lr"], "l2": 0.001, "dropout": 0.1}
    assert protocol["seeds"] == [3, 4] and all(g["seeds"] == 2 for g in grid)


def test_fashion_mlp(tmp_path, shared_data):
    returned = load("fashion_mlp").main(
        [*paths(tmp_path, shared_data), *"--n-train 1200 --n-val 300 --n-test 300 --epochs 2 --hidden 32".split()]
        + "--seeds 2 --batchnorm".split()
    )
    record = check_outputs(tmp_path, "fashion_mlp", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 1200, 300, 300)
    assert protocol["selected"]["batchnorm"] is True and protocol["seeds"] == [0, 1]
    m = record["metrics"]
    for key in ("test_accuracy", "validation_accuracy", "train_accuracy"):
        assert all(finite(m[key][k]) for k in ("mean", "std", "min", "max")), key
    assert 0.2 < m["test_accuracy"]["mean"] <= 1  # two epochs already learn something
    assert m["test_accuracy"]["n"] == 2 and 1 <= m["selected_epoch"]["min"] <= m["selected_epoch"]["max"] <= 2
    assert finite(m["training_wall_time_s"]) and m["reaches_target"] == (m["test_accuracy"]["mean"] >= 0.9)


def test_fashion_mlp_selection(tmp_path, shared_data, monkeypatch):
    module = load("fashion_mlp")
    monkeypatch.setattr(module.common.TestSet, "read", lambda self: pytest.fail("the selection run read the test set"))
    options = "--select --n-train 600 --n-val 200 --epochs 1 --hidden 16 --select-seeds 7 --grid-dropout 0.1 0.3"
    returned = module.main([*paths(tmp_path, shared_data), *options.split(), "--select-variants", "bn+ls0.1+h16x8"])
    record = check_outputs(tmp_path, "fashion_mlp_select", returned)
    protocol = check_protocol(record, test_read=False)
    check_split(protocol["split"], 600, 200, None)
    grid = record["metrics"]["grid"]
    assert len(grid) == 4 and {g["dropout"] for g in grid} == {0.1, 0.3}  # lr x dropout x weight decay
    assert all(
        (g["hidden"], g["batchnorm"], g["label_smoothing"], g["epochs"]) == ([16, 8], True, 0.1, 1) for g in grid
    )
    best = max(grid, key=lambda g: g["mean"])
    keys = ("hidden", "batchnorm", "label_smoothing", "epochs", "lr", "dropout", "weight_decay")
    assert record["metrics"]["selected"] == {k: best[k] for k in keys}
    assert "--hidden 16 8 --batchnorm --label-smoothing 0.1" in record["metrics"]["run_selected"]


def test_optimizers(tmp_path, shared_data):
    options = "--n-train 512 --n-val 256 --n-test 200 --epochs 2 --hidden 32 --lrs 2 --seeds 3 --select-seeds 5"
    returned = load("optimizers").main(
        [*paths(tmp_path, shared_data), *options.split(), "--optimizers", "Adam", "AdaGrad"]
    )
    record = check_outputs(tmp_path, "optimizers", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 512, 256, 200)
    m = record["metrics"]
    assert set(m["optimizers"]) == {"Adam", "AdaGrad"} and protocol["seeds"] == [0, 1, 2]
    for name, r in m["optimizers"].items():
        grid = m["selection"][name]["grid"]
        assert len(grid) == 2
        ok = [g for g in grid if not g["diverged"]]
        assert r["selected_lr"] == max(ok, key=lambda g: g["final_val_accuracy"])["lr"]  # chosen on validation
        assert finite(r["final_train_loss"]["mean"]) and r["test_accuracy"]["n"] == 3
        assert len(r["test_per_seed"]) == len(r["val_per_seed"]) == 3
    pair = m["paired"]["Adam - AdaGrad"]["test_accuracy"]
    low, high = pair["ci"]
    assert low <= pair["mean_difference"] <= high and pair["n"] == 3
    diffs = [
        a - b for a, b in zip(m["optimizers"]["Adam"]["test_per_seed"], m["optimizers"]["AdaGrad"]["test_per_seed"])
    ]
    assert pair["mean_difference"] == pytest.approx(sum(diffs) / 3, abs=1e-6)  # paired seed by seed


def test_regularization(tmp_path, shared_data):
    returned = load("regularization").main(
        [*paths(tmp_path, shared_data), *"--n-train 400 --n-val 200 --n-test 200 --epochs 2 --hidden 32".split()]
        + "--seeds 2 --select-seeds 9 --settings none dropout+l2 --grid-dropout-l2 0.2 1e-4 0.5 1e-3".split()
    )  # no batch norm: one compiled program per phase
    record = check_outputs(tmp_path, "regularization", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 400, 200, 200)
    m = record["metrics"]
    assert [r["setting"] for r in m["selection"]] == ["dropout 0.2 + L2 0.0001", "dropout 0.5 + L2 0.001"]
    chosen = max(m["selection"], key=lambda r: r["final_val_accuracy"]["mean"])
    assert [r.get("selected", False) for r in m["selection"]] == [r is chosen for r in m["selection"]]
    assert set(m["settings"]) == {"none", chosen["setting"]}
    for setting in m["settings"].values():
        assert finite(setting["train_accuracy"]["mean"]) and finite(setting["test_accuracy"]["mean"])
        assert setting["test_accuracy"]["n"] == 2 and finite(setting["validation_accuracy"]["mean"])
    pair = m["paired_test_accuracy"][f"{chosen['setting']} - none"]
    assert pair["n"] == 2 and pair["verdict"] in (
        "no difference detected",
        f"{chosen['setting']} higher",
        "none higher",
    )


def test_regression(tmp_path):
    returned = load("regression").main(
        ["--out", str(tmp_path), *"--splits 2 --seeds 2 --epochs 2 --grid-l2 0.1 1.0 --no-progress".split()]
    )
    record = check_outputs(tmp_path, "regression", returned)
    protocol = check_protocol(record)
    splits = protocol["split"]["outer_splits"]
    assert [(s["train"] + s["validation"], s["final_train"], s["test"]) for s in splits] == [(354, 354, 88)] * 2
    summary = record["metrics"]["summary"]
    assert set(summary) == {"mean predictor", "OLS (lstsq)", "MLP", "MLP ensemble"}
    for method in summary.values():
        assert finite(method["mse"]["mean"]) and finite(method["r2"]["mean"])
    assert summary["OLS (lstsq)"]["r2"]["mean"] > 0.3  # OLS explains about half the variance of diabetes
    for row in record["metrics"]["per_split"]:
        best = min(row["l2_grid"], key=lambda g: g["val_mse_std_units"])
        assert row["selected_l2"] == best["l2"]  # chosen on the validation split


def test_test_set_is_read_once():
    common = load("common")
    test = common.TestSet([1, 2], [0, 1])
    assert test.reads == 0 and test.size == 2
    assert test.read() == ([1, 2], [0, 1]) and test.reads == 1
    with pytest.raises(RuntimeError, match="read already"):
        test.read()
    with pytest.raises(ValueError, match="read 0 times"):
        common.protocol({}, selection="on validation", validation_metrics=["v"], test_metrics=["t"], test=None)
    with pytest.raises(ValueError, match="both validation and test"):
        common.protocol({}, selection="on validation", validation_metrics=["a"], test_metrics=["a"], test=test)


def test_carve_validation_is_stratified_and_seeded():
    common = load("common")
    y = np.repeat(np.arange(4), [40, 30, 20, 10]).astype(np.int32)
    x = np.arange(100, dtype=np.float32)[:, None]
    (x_tr, y_tr, x_val, y_val), record = common.carve_validation(x, y, 20, seed=3)
    assert record == {"train": 80, "validation": 20, "split_seed": 3, "stratified": True}
    assert np.bincount(y_val).tolist() == [8, 6, 4, 2]  # each class's share exactly
    assert sorted(np.concatenate([x_tr, x_val])[:, 0].tolist()) == list(range(100))
    (_, _, x_again, _), _ = common.carve_validation(x, y, 20, seed=3)
    np.testing.assert_array_equal(x_val, x_again)
    with pytest.raises(ValueError, match="n_val must lie in"):
        common.carve_validation(x, y, 100, seed=0)


@pytest.mark.parametrize(
    ("p", "df", "expected"),
    [
        (0.975, 1, 12.7062),
        (0.975, 2, 4.3027),
        (0.975, 4, 2.7764),
        (0.975, 7, 2.3646),
        (0.975, 9, 2.2622),
        (0.975, 31, 2.0395),
        (0.995, 10, 3.1693),
        (0.95, 5, 2.0150),
        (0.025, 9, -2.2622),
        (0.5, 3, 0.0),
    ],
)
def test_t_quantile(p, df, expected):
    """Against the values of a t table (4 decimals)."""
    assert load("common").t_quantile(p, df) == pytest.approx(expected, abs=6e-5)


def test_paired_comparison():
    common = load("common")
    a = [0.80, 0.82, 0.81, 0.83, 0.84]
    b = [0.79, 0.80, 0.80, 0.81, 0.82]  # a is higher on every seed
    c = common.paired_comparison(a, b, names=("A", "B"))
    d = np.subtract(a, b)
    half = 2.7764 * d.std(ddof=1) / np.sqrt(5)  # t(0.975, 4) * standard error
    assert c["mean_difference"] == pytest.approx(d.mean()) and c["n"] == 5
    assert c["ci"] == pytest.approx([d.mean() - half, d.mean() + half], abs=1e-5)
    assert c["verdict"] == "A higher"
    assert common.paired_comparison(b, a, names=("B", "A"))["verdict"] == "A higher"
    noisy = common.paired_comparison([0.80, 0.83, 0.79], [0.81, 0.80, 0.82], names=("A", "B"))
    assert noisy["ci"][0] < 0 < noisy["ci"][1] and noisy["verdict"] == "no difference detected"
    with pytest.raises(ValueError, match="same number"):
        common.paired_comparison([1.0, 2.0], [1.0])


@pytest.mark.parametrize("name", ["mnist1d_seeds", "fashion_mlp", "optimizers", "regularization", "regression"])
def test_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--out" in text and "--no-progress" in text


def test_shared_options():
    """``common.parser`` adds the shared options a script names, in its order, with its
    defaults (and its wording of a help), after ``--out`` and ``--no-progress``; a name
    that is not a shared option is an error, not a silently missing option."""
    common = load("common")
    p = common.parser("Title.\n\nMore text.", epochs=3, hidden=[8, 8], helps={"epochs": "passes over the data"})
    assert p.description == "Title."
    assert [a.dest for a in p._actions] == ["help", "out", "no_progress", "tensorboard", "epochs", "hidden"]
    args = p.parse_args(["--hidden", "4", "5"])
    assert args.epochs == 3 and args.hidden == [4, 5] and args.no_progress is False
    assert "passes over the data" in p.format_help()
    with pytest.raises(TypeError, match="no shared option"):
        common.parser("Title.", epoch=3)


# --- the CNN experiments of issue 13 (mnist1d_cnn.py, fashion_cnn.py) ---------------------


def cpu_devices() -> list[str]:
    """``--cpu-devices`` as the scripts take it: the count this test process already has
    (the scripts call ``fnn.distributed.use_cpu_cores``, which cannot change a started backend)."""
    import jax

    return ["--cpu-devices", str(len(jax.devices("cpu")))]


def test_mnist1d_cnn(tmp_path):
    options = "--seeds 2 --epochs 2 --n-train 300 --n-val 100 --n-test 100 --channels 4 --no-progress"
    returned = load("mnist1d_cnn").main(["--out", str(tmp_path), *options.split(), *cpu_devices()])
    record = check_outputs(tmp_path, "mnist1d_cnn", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 200, 100, 100)
    assert protocol["split"]["final_train"] == 300  # retrained on train + validation
    assert protocol["seeds"] == [0, 1] and protocol["selected"]["epochs"] == 2
    m = record["metrics"]
    for name in ("test_accuracy", "train_accuracy"):
        assert all(finite(m[name][k]) and 0 <= m[name][k] <= 1 for k in ("mean", "std", "min", "max")), name
    assert m["test_accuracy"]["n"] == 2 and len(m["test_accuracy_per_seed"]) == 2
    assert m["selection_validation_accuracy"] is None  # no selection run in this folder
    assert m["parameters"] == 4 * 5 + 4 + 2 * (4 * 3 * 4 + 4) + 5 * 4 * 10 + 10  # 3 convs and Dense(5 * 4, 10)
    assert m["published_cnn_accuracy"] == 0.94 and finite(m["script_wall_time_s"])


def test_mnist1d_cnn_selection_reads_no_test_data(tmp_path, monkeypatch):
    module = load("mnist1d_cnn")
    data = "--n-train 300 --n-val 100 --channels 4 --no-progress".split()
    with monkeypatch.context() as patched:
        patched.setattr(module.common.TestSet, "read", lambda self: pytest.fail("the selection run read the test set"))
        options = "--select --select-seeds 3 --select-variants e2+b50 --grid-lr 0.01 0.02 --grid-weight-decay 0.1"
        options += " --grid-label-smoothing 0.1 --grid-dropout 0.2"
        returned = module.main(["--out", str(tmp_path), *data, *options.split(), *cpu_devices()])
    record = check_outputs(tmp_path, "mnist1d_cnn_select", returned)
    protocol = check_protocol(record, test_read=False)
    check_split(protocol["split"], 200, 100, None)
    grid = record["metrics"]["grid"]
    assert [(g["epochs"], g["batch_size"], g["lr"]) for g in grid] == [(2, 50, 0.01), (2, 50, 0.02)]
    best = max(grid, key=lambda g: g["mean"])
    keys = ("lr", "weight_decay", "label_smoothing", "dropout", "epochs", "batch_size")
    assert record["metrics"]["selected"] == {k: best[k] for k in keys}
    # the final run with the selected setting finds its validation score in the selection's JSON
    chosen = record["metrics"]["run_selected"].split()[2:]
    final = module.main(["--out", str(tmp_path), "--seeds", "2", "--n-test", "100", *data, *chosen, *cpu_devices()])
    assert final["metrics"]["selection_validation_accuracy"]["mean"] == pytest.approx(best["mean"])


def test_fashion_cnn(tmp_path, shared_data):
    options = "--n-train 600 --n-val 200 --n-test 200 --epochs 2 --seeds 2 --channels 4 --dense 8 --batch-size 200"
    returned = load("fashion_cnn").main([*paths(tmp_path, shared_data), *options.split(), *cpu_devices()])
    record = check_outputs(tmp_path, "fashion_cnn", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 600, 200, 200)
    assert protocol["split"]["final_train"] == 800  # retrained on train + validation
    assert protocol["seeds"] == [0, 1] and protocol["selected"]["channels"] == [4]
    m = record["metrics"]
    assert all(finite(m["test_accuracy"][k]) for k in ("mean", "std", "min", "max"))
    assert m["test_accuracy"]["n"] == 2 and m["selection_validation_accuracy"] is None
    # conv 1->4 (3x3, no bias), batch norm (scale, shift), Dense(14*14*4, 8), Dense(8, 10)
    assert m["parameters"] == 9 * 4 + 2 * 4 + 784 * 8 + 8 + 8 * 10 + 10
    assert m["under_max_parameters"] and m["reaches_target"] == (m["test_accuracy"]["mean"] >= 0.925)
    assert len(record["curves"]["accuracy"]["mean"]) == 2  # the learning curves


@pytest.mark.parametrize("name", ["mnist1d_cnn", "fashion_cnn", "bench_conv"])
def test_cnn_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--seeds" in capsys.readouterr().out


# --- the sweep-schedule experiments of issue 14 (halving.py, pbt.py) ----------------------


def test_halving(tmp_path):
    """Full sweep vs successive halving on a 3-point grid: rungs 3 -> 1, less compute, the
    finalist's numbers those of the same member in the full sweep, the test set read once."""
    options = "--epochs 3 --rung-epochs 1 --grid-lr 0.003 0.01 0.03 --grid-l2 0 --grid-dropout 0.1"
    options += " --final-seeds 2 --n-train 400 --n-val 100 --n-test 100 --no-progress --no-warm"
    returned = load("halving").main(["--out", str(tmp_path), *options.split(), *cpu_devices()])
    record = check_outputs(tmp_path, "halving", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 300, 100, 100)
    assert protocol["seeds"] == {"grid": [100], "retrained": [0, 1]}
    m = record["metrics"]
    assert list(m["methods"]) == ["full sweep", "halving, rungs of 1"]
    full, halved = m["methods"]["full sweep"], m["methods"]["halving, rungs of 1"]
    assert halved["rungs"] == [[3, 1], [1, 3]] and full["calls"] == 1 and halved["calls"] == 2
    assert 3 * 3 <= full["member_epochs"] and halved["member_epochs"] < full["member_epochs"]
    check = m["checks"]["halving, rungs of 1"]
    assert halved["member"] == check["replayed_finalist"]  # the rule replayed on the full sweep's histories
    assert all(d <= 1e-5 for d in check["max_abs_difference_to_full_sweep"].values())
    for s in (full, halved):
        assert set(s["selected"]) == {"lr", "l2", "dropout"} and 1 <= s["selected_epoch"] <= 3
        assert finite(s["validation_accuracy"]) and finite(s["wall_s_cold"]) and s["wall_s_warm"] is None
        assert s["validation_accuracy_seeds"]["n"] == 2
    for t in m["test_accuracy"].values():
        assert 0 <= t["selected_seed"] <= 1 and t["seeds"]["n"] == 2 and len(t["per_seed"]) == 2
    rows = record["rows"]["halving, rungs of 1"]
    assert sorted(r["rung"] for r in rows) == [0, 0, 1] and rows[halved["member"]]["stop_epoch"] == 3
    assert {s["rung_monitor"] for s in m["sensitivity"]} == {"val_loss", "val_accuracy"}


def test_pbt(tmp_path):
    """PBT vs the same population with fixed hyperparameters: trajectories recorded and
    within bounds, one selected member per repetition and method, the test set read once."""
    options = "--epochs 4 --interval 2 --repeats 2 --start-lr 0.01 0.03 --start-dropout 0 0.1"
    options += " --n-train 400 --n-val 100 --n-test 100 --no-progress"
    returned = load("pbt").main(["--out", str(tmp_path), *options.split(), *cpu_devices()])
    record = check_outputs(tmp_path, "pbt", returned)
    protocol = check_protocol(record)
    check_split(protocol["split"], 300, 100, 100)
    assert protocol["seeds"] == [0, 1]
    m = record["metrics"]
    for method in ("pbt", "fixed"):
        assert [p["repeat"] for p in m["per_repeat"][method]] == [0, 1]
        assert all(0 <= p["member"] < 4 and 1 <= p["selected_epoch"] <= 4 for p in m["per_repeat"][method])
        assert len(m["test_accuracy_per_repeat"][method]) == 2 and m["test_accuracy"][method]["n"] == 2
        assert finite(m["validation"][method]["validation_accuracy"]["mean"])
    assert m["test_comparison"]["n"] == 2
    t = record["trajectories"]
    lr, dropout = np.asarray(t["lr"]), np.asarray(t["dropout"])
    assert lr.shape == dropout.shape == (2, 4) and np.asarray(t["parents"]).shape == (2, 4)
    np.testing.assert_allclose(lr[0], [0.01, 0.01, 0.03, 0.03])  # the starting population, lr x dropout
    assert np.all((lr >= 1e-4) & (lr <= 0.1)) and np.all((dropout >= 0) & (dropout <= 0.6))
    moved = np.asarray(t["parents"])[0] != np.arange(4)  # after interval 0 one member copied another
    assert moved.sum() == 1


@pytest.mark.parametrize("name", ["halving", "pbt"])
def test_sweep_schedule_help(name, capsys):
    with pytest.raises(SystemExit) as exit_info:
        load(name).main(["--help"])
    assert exit_info.value.code == 0
    assert "--out" in capsys.readouterr().out
