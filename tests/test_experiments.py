"""Smoke tests of the experiment scripts: each ``main(argv)`` with tiny settings writes its
results JSON and PNG, and the JSON's key metrics are finite numbers. The real runs are
not part of the tests (their numbers are in experiments/README.md)."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


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


def test_mnist1d_seeds(tmp_path, capsys):
    returned = load("mnist1d_seeds").main(
        ["--out", str(tmp_path), "--seeds", "2", "--epochs", "2", "--n-train", "400", "--n-test", "200"]
    )
    printed = capsys.readouterr().out
    assert "epoch 1/2" in printed and "epoch 2/2" in printed  # the progress lines from inside the compiled run
    assert "| seeds |" in printed  # SweepResult.summary's table
    m = check_outputs(tmp_path, "mnist1d_seeds", returned)["metrics"]
    for key in ("mean", "std", "min", "max"):
        assert finite(m["test_accuracy"][key]) and 0 <= m["test_accuracy"][key] <= 1
    assert m["test_accuracy"]["n"] == 2 and len(m["test_accuracy_per_seed"]) == 2
    assert finite(m["train_accuracy"]["mean"]) and m["published_mlp_accuracy"] == 0.68


def test_fashion_mlp(tmp_path, shared_data):
    returned = load("fashion_mlp").main(
        [*paths(tmp_path, shared_data), *"--n-train 1200 --holdout 200 --n-test 300 --epochs 2 --hidden 32".split()]
    )
    m = check_outputs(tmp_path, "fashion_mlp", returned)["metrics"]
    for key in (
        "test_accuracy",
        "heldout_accuracy_best",
        "train_accuracy_best",
        "seconds_per_epoch",
        "time_to_result_s",
    ):
        assert finite(m[key]), key
    assert 0.2 < m["test_accuracy"] <= 1  # two epochs already learn something
    assert m["best_epoch"] in (1, 2)


def test_optimizers(tmp_path, shared_data):
    options = (
        "--n-train 512 --n-test 200 --epochs 2 --hidden 32 --lrs 2 --optimizers Adam"  # one optimizer: one compile
    )
    returned = load("optimizers").main([*paths(tmp_path, shared_data), *options.split()])
    m = check_outputs(tmp_path, "optimizers", returned)["metrics"]
    assert set(m["best"]) == {"Adam"}
    for best in m["best"].values():
        assert finite(best["final_loss"]) and finite(best["lr"]) and finite(best["test_accuracy"])
    assert all(len(grid) == 2 for grid in m["grid"].values())


def test_regularization(tmp_path, shared_data):
    returned = load("regularization").main(
        [*paths(tmp_path, shared_data), *"--n-train 400 --n-test 200 --epochs 2 --hidden 32 --seeds 2".split()]
        + "--settings none dropout+l2".split()
    )  # the settings of the first phase only: one compiled program (the batch-norm phase is a second one)
    m = check_outputs(tmp_path, "regularization", returned)["metrics"]
    assert set(m) == {"none", "dropout 0.3 + L2 0.0005"}
    for setting in m.values():
        assert finite(setting["train_accuracy"]["mean"]) and finite(setting["test_accuracy"]["mean"])
        assert setting["test_accuracy"]["n"] == 2


def test_regression(tmp_path):
    returned = load("regression").main(
        ["--out", str(tmp_path), "--splits", "1", "--seeds", "2", "--epochs", "2", "--no-progress"]
    )
    summary = check_outputs(tmp_path, "regression", returned)["metrics"]["summary"]
    assert set(summary) == {"mean predictor", "OLS (lstsq)", "MLP", "MLP ensemble"}
    for method in summary.values():
        assert finite(method["mse"]["mean"]) and finite(method["r2"]["mean"])
    assert summary["OLS (lstsq)"]["r2"]["mean"] > 0.3  # OLS explains about half the variance of diabetes


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
    assert [a.dest for a in p._actions] == ["help", "out", "no_progress", "epochs", "hidden"]
    args = p.parse_args(["--hidden", "4", "5"])
    assert args.epochs == 3 and args.hidden == [4, 5] and args.no_progress is False
    assert "passes over the data" in p.format_help()
    with pytest.raises(TypeError, match="no shared option"):
        common.parser("Title.", epoch=3)
