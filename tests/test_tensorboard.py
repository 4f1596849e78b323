"""fnn.tensorboard: event files read back with TensorBoard's own reader (its
EventAccumulator and HParams protos, not the writer's) hold every history entry as a
float32 scalar at step = epoch, and the HParams dashboard's experiment and sessions.

A scalar is stored as float32: each value is compared with its float32 rounding, exactly
(one rounding of one number: exact in any arithmetic, tests/README.md).
"""

import os

import jax
import numpy as np
import pytest

import fnn
from fnn import tensorboard

pytest.importorskip("tensorboardX")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
hparams_metadata = pytest.importorskip("tensorboard.plugins.hparams.metadata")
api_pb2 = pytest.importorskip("tensorboard.plugins.hparams.api_pb2")


def read_run(folder):
    """``(scalars, hparams)`` of the event files directly in ``folder``: ``{tag: {step:
    value}}`` (each step once) and ``{tag: plugin content}`` of the HParams summaries."""
    accumulator = event_accumulator.EventAccumulator(
        str(folder), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.TENSORS: 0}
    )
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        assert len({e.step for e in events}) == len(events), f"{tag}: a step written twice"
        scalars[tag] = {e.step: e.value for e in events}
    try:
        hparams = accumulator.PluginTagToContent(hparams_metadata.PLUGIN_NAME)
    except KeyError:
        hparams = {}
    return scalars, hparams


def assert_history_written(scalars, history):
    """Every history entry, epoch by epoch, as its float32 rounding; NaN epochs absent."""
    assert set(scalars) == set(history)
    for name, values in history.items():
        values = np.asarray(values, np.float64)
        ran = np.flatnonzero(~np.isnan(values))
        assert sorted(scalars[name]) == ran.tolist(), name
        np.testing.assert_array_equal([scalars[name][e] for e in ran], values[ran].astype(np.float32), err_msg=name)


def session(content: dict):
    """The hparams values of a run's session start info."""
    info = hparams_metadata.parse_session_start_info_plugin_data(content[hparams_metadata.SESSION_START_INFO_TAG])
    return {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in info.hparams.items()}


def session_status(content: dict):
    return hparams_metadata.parse_session_end_info_plugin_data(content[hparams_metadata.SESSION_END_INFO_TAG]).status


@pytest.fixture(scope="module")
def data():
    """40 training and 20 validation examples of 4 features, 3 classes."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int32) + (x[:, 1] > 0.5).astype(np.int32)
    return x[:40], y[:40], x[40:], y[40:]


def config(lr=1e-2):
    return fnn.Trainer(fnn.mlp([4, 8, 3]), fnn.adam(lr), fnn.cross_entropy)


def test_write_fit_history_and_its_session(tmp_path, data):
    x, y, x_val, y_val = data
    result = fnn.fit(config(), x, y, key=0, epochs=3, batch_size=16, validation=(x_val, y_val))
    hparams = {"lr": np.float32(1e-2), "optimizer": "adam", "batchnorm": False, "hidden": 8}
    run = tensorboard.write_fit(tmp_path / "run", result, hparams=hparams, metrics=["val_loss", "val_accuracy"])
    assert run == str(tmp_path / "run")
    scalars, content = read_run(run)
    assert_history_written(scalars, result.history)
    assert session(content) == {"lr": 0.01, "optimizer": "adam", "batchnorm": False, "hidden": 8.0}
    assert session_status(content) == api_pb2.STATUS_SUCCESS
    experiment = hparams_metadata.parse_experiment_plugin_data(content[hparams_metadata.EXPERIMENT_TAG])
    assert [m.name.tag for m in experiment.metric_infos] == ["val_loss", "val_accuracy"]
    types = {h.name: h.type for h in experiment.hparam_infos}
    assert types == {
        "lr": api_pb2.DATA_TYPE_FLOAT64,
        "optimizer": api_pb2.DATA_TYPE_STRING,
        "batchnorm": api_pb2.DATA_TYPE_BOOL,
        "hidden": api_pb2.DATA_TYPE_FLOAT64,
    }


def test_write_history_in_parts_appends_and_skips_epochs_not_run(tmp_path):
    """Two calls, epochs [0, 2) then [2, 5), in one second: two event files of one run,
    read as one history; NaN (an epoch that did not run) is not written."""
    history = {
        "loss": np.array([1.25, 0.7, 0.1234567891, np.nan, np.nan]),
        "val_loss": np.array([1.5, np.nan, 0.3, 0.2, np.nan], np.float32),
    }
    tensorboard.write_history(tmp_path, history, end_epoch=2)
    tensorboard.write_history(tmp_path, history, start_epoch=2)
    assert len(os.listdir(tmp_path)) == 2
    scalars, content = read_run(tmp_path)
    assert_history_written(scalars, history)
    assert content == {}


def test_write_sweep_runs_experiment_and_sessions(tmp_path, data):
    x, y, x_val, y_val = data
    table = fnn.sweep(
        config, x, y, seeds=2, grid={"lr": [1e-3, 3e-2]}, epochs=3, batch_size=16, validation=(x_val, y_val)
    )
    runs = tensorboard.write_sweep(tmp_path, table)
    names = ["lr=0.001,seed=0", "lr=0.001,seed=1", "lr=0.03,seed=0", "lr=0.03,seed=1"]
    assert [os.path.basename(r) for r in runs] == names
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(names)
    _, root = read_run(tmp_path)
    experiment = hparams_metadata.parse_experiment_plugin_data(root[hparams_metadata.EXPERIMENT_TAG])
    domains = {h.name: list(h.domain_discrete) for h in experiment.hparam_infos}
    assert domains == {"lr": [0.001, 0.03], "seed": [0.0, 1.0]}
    metrics = [m.name.tag for m in experiment.metric_infos]
    assert sorted(metrics) == ["accuracy", "loss", "val_accuracy", "val_loss"]  # the history's, but the lr
    for i, run in enumerate(runs):
        scalars, content = read_run(run)
        assert_history_written(scalars, {k: v[i] for k, v in table.results.history.items()})
        expected = {"lr": float(table.hyperparameters["lr"][i]), "seed": float(table.hyperparameters["seed"][i])}
        assert session(content) == pytest.approx(expected, rel=1e-7)
        assert session_status(content) == api_pb2.STATUS_SUCCESS


def test_write_pbt_writes_each_epochs_hyperparameters_and_trainer(tmp_path, data):
    """The values written follow the state: member j's history at the end of interval i
    is the score of ``lineage(j)[i]`` (checked here from ``scores``), whose hyperparameter
    of interval i is what ``pbt/lr`` shows for that interval's epochs."""
    x, y, x_val, y_val = data
    result = fnn.pbt(
        config,
        x,
        y,
        population={"lr": [1e-3, 3e-3, 1e-2, 3e-2]},
        interval=2,
        hyperparameters=["lr"],
        key=1,
        epochs=4,
        batch_size=16,
        validation=(x_val, y_val),
    )
    runs = tensorboard.write_pbt(tmp_path, result, interval=2)
    assert [os.path.basename(r) for r in runs] == [f"member={j}" for j in range(4)]
    for j, run in enumerate(runs):
        scalars, content = read_run(run)
        history = {k: v[j] for k, v in result.results.history.items()}
        lineage = result.lineage(j)
        for i, trainer in enumerate(lineage):
            assert history[result.monitor][2 * i + 1] == result.scores[i, trainer]
        assert_history_written({k: v for k, v in scalars.items() if not k.startswith("pbt/")}, history)
        epochs = np.arange(4)
        np.testing.assert_array_equal([scalars["pbt/member"][e] for e in epochs], np.repeat(lineage, 2))
        lr = [result.hyperparameters["lr"][e // 2, lineage[e // 2]] for e in epochs]
        np.testing.assert_array_equal([scalars["pbt/lr"][e] for e in epochs], np.float32(lr))
        assert content == {}
    with pytest.raises(ValueError, match="interval=1 splits the 4 epochs into 4 intervals; the result has 2"):
        tensorboard.write_pbt(tmp_path, result, interval=1)


def test_bad_arguments_are_refused_before_anything_is_written(tmp_path):
    history = {"loss": np.array([1.0, 0.5])}
    (tmp_path / "file").write_text("")
    with pytest.raises(ValueError, match="logdir=.* exists and is not a folder"):
        tensorboard.write_history(tmp_path / "file", history)
    with pytest.raises(ValueError, match="history must be a non-empty mapping"):
        tensorboard.write_history(tmp_path / "run", [1.0, 0.5])
    with pytest.raises(ValueError, match=r"history\['loss'\] must be a 1-D array"):
        tensorboard.write_history(tmp_path / "run", {"loss": np.ones((2, 3))})
    with pytest.raises(ValueError, match="one length"):
        tensorboard.write_history(tmp_path / "run", history | {"acc": np.ones(3)})
    with pytest.raises(ValueError, match="0 <= start_epoch <= end_epoch <= 2"):
        tensorboard.write_history(tmp_path / "run", history, start_epoch=1, end_epoch=3)
    with pytest.raises(ValueError, match="needs hparams= too"):
        tensorboard.write_history(tmp_path / "run", history, metrics=["loss"])
    with pytest.raises(ValueError, match="metrics must name entries of the history"):
        tensorboard.write_history(tmp_path / "run", history, hparams={"lr": 0.1}, metrics=["accuracy"])
    with pytest.raises(ValueError, match=r"hparams\['layers'\] must be a number, a str or a bool"):
        tensorboard.write_history(tmp_path / "run", history, hparams={"layers": [1, 2]})
    stacked = jax.tree.map(lambda v: np.stack([v, v]), fnn.FitResult(*[np.zeros(())] * 4, history, *[np.zeros(())] * 5))
    with pytest.raises(ValueError, match="use write_sweep"):
        tensorboard.write_fit(tmp_path / "run", stacked)
    with pytest.raises(ValueError, match="table must be what fnn.sweep returns"):
        tensorboard.write_sweep(tmp_path / "run", stacked)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_without_tensorboardx_the_error_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "tensorboardX.event_file_writer", None)
    with pytest.raises(ImportError, match=r"pip install 'fnn\[tensorboard\]'"):
        tensorboard.write_history(tmp_path, {"loss": np.array([1.0])})


def test_fit_sweep_and_pbt_write_their_runs_when_asked(tmp_path, data):
    """``tensorboard=``: fit writes each compiled chunk's epochs (here chunks of 2 of 3
    epochs: two event files), a sweep and PBT write their runs when they end; read back
    equal to the results. A bad folder is refused before anything runs."""
    x, y, x_val, y_val = data
    options = dict(epochs=3, batch_size=16, validation=(x_val, y_val))
    run = tmp_path / "fit"
    result = fnn.fit(
        config(), x, y, key=0, checkpoint=tmp_path / "fit.ckpt", checkpoint_every=2, tensorboard=run, **options
    )
    assert len(os.listdir(run)) == 2
    assert_history_written(read_run(run)[0], result.history)
    table = fnn.sweep(config, x, y, seeds=2, tensorboard=tmp_path / "sweep", **options)
    for i, name in enumerate(["seed=0", "seed=1"]):
        assert_history_written(
            read_run(tmp_path / "sweep" / name)[0], {k: v[i] for k, v in table.results.history.items()}
        )
    pbt = fnn.pbt(
        config,
        x,
        y,
        population={"lr": [1e-3, 3e-2]},
        interval=1,
        hyperparameters=["lr"],
        tensorboard=tmp_path / "pbt",
        **options,
    )
    scalars, _ = read_run(tmp_path / "pbt" / "member=0")
    assert {k: v for k, v in scalars.items() if not k.startswith("pbt/")} == {
        k: {e: np.float32(v) for e, v in enumerate(h[0])} for k, h in pbt.results.history.items()
    }
    for call in (
        lambda: fnn.fit(config(), x, y, key=0, tensorboard=3, **options),
        lambda: fnn.sweep(config, x, y, tensorboard="", **options),
        lambda: fnn.pbt(config, x, y, population=2, interval=1, hyperparameters=["lr"], tensorboard=[], **options),
    ):
        with pytest.raises(ValueError, match="tensorboard must be a folder path"):
            call()
