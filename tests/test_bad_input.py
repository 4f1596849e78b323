"""Bad input gets a clear error at every door: one table of calls, each row the call, the
exception type and a phrase its message must contain.

The doors: ``fit``, ``sweep`` and ``pbt`` (which trace ``fit`` inside, so they must check
first), ``Trainer.evaluate``, the optimizer / layer / schedule / regularizer constructors,
the data and process-sharding helpers and ``checkpoint.restore``. Sweep and PBT rows also
assert that nothing was compiled: their program is never called. ``FAMILIES`` holds fnn's
construction convention to account: each lowercase public name is its class, checked alike.
"""

import functools
import inspect

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from _sweep_setup import forbid

import fnn
from fnn import checkpoint, clipping, distributed, optimizers, regularizers, schedules
from fnn.datasets import load_digits
from fnn.sweeps import population_based as pbt_lib
from fnn.sweeps.successive_halving import Halving

N, BATCH = 300, 50


@pytest.fixture(scope="module")
def data():
    x, y = load_digits()
    return (x[:N] / 16.0).astype(np.float32), y[:N].astype(np.int32)


def trainer(model=None, loss=fnn.cross_entropy):
    return fnn.Trainer(model or fnn.mlp([64, 16, 10]), fnn.adam(1e-2), loss)


def config(lr=1e-2, dropout=0.0):
    return fnn.Trainer(fnn.mlp([64, 16, 10], dropout=dropout), fnn.adam(lr), fnn.cross_entropy)


def fit(x, y, tr=None, **change):
    return fnn.fit(tr or trainer(), x, y, **(dict(key=0, epochs=1, batch_size=BATCH) | change))


@functools.cache
def done_state():
    """The train state of a run that has done 1 epoch (built on first use)."""
    x, y = load_digits()
    x, y = (x[:N] / 16.0).astype(np.float32), y[:N].astype(np.int32)
    return fit(x, y).train_state


def sweep(x, y, **change):
    return fnn.sweep(config, x, y, **(dict(seeds=2, grid={"lr": [1e-2, 1e-3]}, epochs=1, batch_size=BATCH) | change))


BN = fnn.mlp([64, 16, 10], batchnorm=True)
PARAMS, STATE = fnn.mlp([64, 16, 10]).init(jax.random.key(0))
BN_PARAMS, BN_STATE = BN.init(jax.random.key(0))

FIT = [
    ("y count", lambda x, y: fit(x, y[:10]), "same number of examples"),
    ("batch_size 0", lambda x, y: fit(x, y, batch_size=0), "batch_size must be >= 1"),
    ("batch_size > n", lambda x, y: fit(x, y, batch_size=5000), "batch_size must be <= the number of examples"),
    ("batch_size float", lambda x, y: fit(x, y, batch_size=32.0), "batch_size must be a Python int"),
    ("empty x", lambda x, y: fit(x[:0], y[:0]), "non-empty"),
    ("x not numeric", lambda x, y: fit(np.array([["a"] * 64] * N), y), "x must be"),
    ("x integer", lambda x, y: fit((x * 16).astype(np.int32), y), "x must be floating point"),
    ("NaN in x", lambda x, y: fit(np.where(np.arange(64) == 3, np.nan, x).astype(np.float32), y), "x holds"),
    ("x rank", lambda x, y: fit(x[:, :, None], y), "x of shape (300, 64, 1) does not fit the model"),
    ("x features", lambda x, y: fit(x[:, :63], y), "does not fit the model"),
    (
        "x rank 1, 1-input model",
        lambda x, y: fit(x[:, 0], y, trainer(fnn.mlp([1, 16, 10]))),
        "x of shape (300,) does not fit the model: Dense(1, 16) expects",
    ),
    (
        "x rank 1, named",
        lambda x, y: fit(x[:, 0], y, trainer(fnn.mlp([1, 16, 10]))),
        "x has rank 1 (one number per example, no feature axis): a model of 1 input takes x[:, None]",
    ),
    (
        "validation x rank 1",
        lambda x, y: fit(x[:, :1], y, trainer(fnn.mlp([1, 16, 10])), validation=(x[:5, 0], y[:5])),
        "validation must be (x_val, y_val) with x_val of shape [m, 1]",
    ),
    (
        "output without a row per example",
        lambda x, y: fit(x, y, trainer(lambda p, xb: jnp.sum(xb, axis=0) @ p), params=jnp.zeros((64, 10), jnp.float32)),
        "its output must have one row per example ([batch, ...]); for 1 and 2 examples it has shapes (10,) and (10,)",
    ),
    # float64 data for a float32 model: an error under strict dtype promotion (set by tests/conftest.py)
    ("x float64", lambda x, y: fit(x.astype(np.float64), y), "x of shape (300, 64) does not fit the model"),
    ("float labels", lambda x, y: fit(x, y.astype(np.float32)), "integer class labels"),
    ("labels out of range", lambda x, y: fit(x, np.full(N, 10, np.int32)), r"y must lie in [0, 10)"),
    ("one-hot NaN", lambda x, y: fit(x, np.where(np.eye(10)[y] > 0, np.nan, 0.0).astype(np.float32)), "non-finite"),
    (
        "mse targets shape",
        lambda x, y: fit(x, y, trainer(loss=fnn.mse)),
        "y must have shape [n, 10] to match the model's output",
    ),
    (
        "undeclared loss, labels",
        lambda x, y: fit(x, y, trainer(loss=lambda p, t, w=None: fnn.cross_entropy(p, t, w))),
        "if your loss takes integer class labels",
    ),
    ("epochs 0", lambda x, y: fit(x, y, epochs=0), "epochs must be >= 1"),
    ("key missing", lambda x, y: fit(x, y, key=None), "key is required"),
    ("key string", lambda x, y: fit(x, y, key="seed"), "key must be an int seed or a jax.random key"),
    ("key float", lambda x, y: fit(x, y, key=1.5), "key must be an int seed or a jax.random key"),
    ("tol vector", lambda x, y: fit(x, y, tol=[0.1, 0.2]), "tol must be a real scalar"),
    ("tol negative", lambda x, y: fit(x, y, tol=-1.0), "tol must lie in"),
    ("tol string", lambda x, y: fit(x, y, tol="0.1"), "tol must be a real scalar"),
    ("threshold 0", lambda x, y: fit(x, y, divergence_threshold=0.0), "divergence_threshold must lie in"),
    ("monitor", lambda x, y: fit(x, y, monitor="val_loss"), "monitor must be one of"),
    ("patience 0", lambda x, y: fit(x, y, patience=0), "patience must be >= 1"),
    ("validation not a pair", lambda x, y: fit(x, y, validation=x), "validation must be a pair"),
    ("validation triple", lambda x, y: fit(x, y, validation=(x, y, y)), "validation must be a pair"),
    ("validation empty", lambda x, y: fit(x, y, validation=(x[:0], y[:0])), "validation must hold non-empty arrays"),
    (
        "validation features",
        lambda x, y: fit(x, y, validation=(x[:5, :63], y[:5])),
        "validation must be (x_val, y_val)",
    ),
    (
        "validation labels",
        lambda x, y: fit(x, y, validation=(x[:5], np.full(5, -1, np.int32))),
        "validation y must lie",
    ),
    (
        "validation NaN",
        lambda x, y: fit(x, y, validation=(np.full((5, 64), np.nan, np.float32), y[:5])),
        "validation x holds",
    ),
    (
        "validation x float64",
        lambda x, y: fit(x, y, validation=(x[:5].astype(np.float64), y[:5])),
        "validation x of shape (5, 64) does not fit the model",
    ),
    ("eval_batch_size 0", lambda x, y: fit(x, y, validation=(x, y), eval_batch_size=0), "eval_batch_size must be >= 1"),
    ("eval_batch_size 0, no validation", lambda x, y: fit(x, y, eval_batch_size=0), "eval_batch_size must be >= 1"),
    ("drop_last string", lambda x, y: fit(x, y, drop_last="no"), "drop_last must be a bool"),
    ("progress string", lambda x, y: fit(x, y, progress="yes"), "progress must be a bool"),
    ("complex x", lambda x, y: fit(x.astype(np.complex64), y), "x must be floating point (real, not complex)"),
    ("key too large", lambda x, y: fit(x, y, key=2**70), "key must be an int seed that fits in 64 bits"),
    (
        "integer params",
        lambda x, y: fit(x, y, params=jax.tree.map(lambda a: a.astype(jnp.int32), PARAMS)),
        "must be floating point",
    ),
    (
        "targets the loss refuses",
        lambda x, y: fit(x.reshape(N, 2, 32), y[:, None].repeat(2, 1), trainer(fnn.mlp([32, 10]))),
        "y of shape (300, 2) does not fit the loss",
    ),
    (
        "train_state done",
        lambda x, y: fit(x, y, train_state=done_state(), epochs=1),
        "train_state has run 1 epochs",
    ),
    (
        "train_state counters",
        lambda x, y: fit(x, y, train_state=done_state()._replace(epoch=1.0), epochs=3),
        "train_state.epoch must be an int32 scalar",
    ),
    (
        "train_state key",
        lambda x, y: fit(x, y, train_state=done_state()._replace(key=0), epochs=3),
        "train_state.key must be a typed jax.random key",
    ),
    ("params count", lambda x, y: fit(x, y, params=PARAMS[:2]), "params has 2 entries"),
    (
        "params leaf",
        lambda x, y: fit(x, y, params=({"w": PARAMS[0]["w"][:, :8], "b": PARAMS[0]["b"]}, *PARAMS[1:])),
        r"params[0]['w'] has shape (64, 8)",
    ),
    (
        "empty state with BN",
        lambda x, y: fit(x, y, trainer(BN), params=BN_PARAMS, model_state=()),
        "model_state has 0 entries",
    ),
    ("no state with BN", lambda x, y: fit(x, y, trainer(BN), params=BN_PARAMS), "model_state"),
    ("state without params", lambda x, y: fit(x, y, model_state=STATE), "model_state= goes with params="),
    ("train_state type", lambda x, y: fit(x, y, train_state=PARAMS), "train_state must be an fnn.TrainState"),
    (
        "trainer type",
        lambda x, y: fnn.fit(fnn.mlp([64, 10]), x, y, key=0, epochs=1, batch_size=BATCH),
        "trainer must be an fnn.Trainer",
    ),
    ("checkpoint folder", lambda x, y: fit(x, y, checkpoint="/nonexistent-folder/run.ckpt"), "checkpoint="),
    ("checkpoint is a folder", lambda x, y: fit(x, y, checkpoint="/tmp"), "checkpoint="),
    ("resume without path", lambda x, y: fit(x, y, resume=True), "need checkpoint="),
    (
        "checkpoint_every 0",
        lambda x, y: fit(x, y, checkpoint="/tmp/fnn-bad-input.ckpt", checkpoint_every=0),
        "checkpoint_every must be >= 1",
    ),
]

SWEEP = [
    (
        "negative lr",
        lambda x, y: sweep(x, y, grid={"lr": [1e-2, -1.0]}),
        "grid point {'lr': -1.0} is refused by the configuration: lr",
    ),
    ("NaN lr", lambda x, y: sweep(x, y, grid={"lr": [np.nan]}), "grid['lr'] must hold finite numbers"),
    (
        "dropout 1.5",
        lambda x, y: sweep(x, y, grid={"lr": [1e-2], "dropout": [0.1, 1.5]}),
        "'dropout': 1.5} is refused by the configuration: rate",
    ),
    ("grid strings", lambda x, y: sweep(x, y, grid={"lr": ["fast"]}), "grid['lr'] must be a sequence of numbers"),
    ("unknown grid key", lambda x, y: sweep(x, y, grid={"momentum": [0.9]}), "'momentum' is not a hyperparameter"),
    ("labels out of range", lambda x, y: sweep(x, np.full(N, 10, np.int32)), r"y must lie in [0, 10)"),
    ("NaN in x", lambda x, y: sweep(np.full_like(x, np.nan), y), "x holds"),
    ("x float64", lambda x, y: sweep(x.astype(np.float64), y), "x of shape (300, 64) does not fit the model"),
    (
        "validation labels",
        lambda x, y: sweep(x, y, validation=(x[:5], np.full(5, 12, np.int32))),
        "validation y must lie",
    ),
    ("batch_size > n", lambda x, y: sweep(x, y, batch_size=5000), "batch_size must be <= the number of examples"),
    ("unknown option", lambda x, y: sweep(x, y, epoch=3), "unknown fit option(s) ['epoch']"),
    ("missing epochs", lambda x, y: fnn.sweep(config, x, y, seeds=2, batch_size=BATCH), "epochs"),
    ("tol negative", lambda x, y: sweep(x, y, tol=-1.0), "tol must lie in"),
    ("key", lambda x, y: sweep(x, y, key=0), "key= is not a sweep option"),
    (
        "config returns no trainer",
        lambda x, y: fnn.sweep(lambda lr=0.1: fnn.adam(lr), x, y, epochs=1, batch_size=BATCH),
        "config must return an fnn.Trainer",
    ),
    (
        "config int(hidden)",
        lambda x, y: fnn.sweep(
            lambda lr=1e-2, hidden=8.0: fnn.Trainer(fnn.mlp([64, int(hidden), 10]), fnn.adam(lr), fnn.cross_entropy),
            *(x, y),
            grid={"lr": [1e-2], "hidden": [8.0, 16.0]},
            epochs=1,
            batch_size=BATCH,
        ),
        "the configuration uses hyperparameter(s) ['hidden'] as Python values",
    ),
    (
        "config if lr < 1",
        lambda x, y: fnn.sweep(
            lambda lr=1e-2: fnn.Trainer(
                fnn.mlp([64, 16, 10]), fnn.sgd(lr) if lr < 1 else fnn.adam(lr), fnn.cross_entropy
            ),
            *(x, y),
            grid={"lr": [1e-2, 2.0]},
            epochs=1,
            batch_size=BATCH,
        ),
        "the configuration uses hyperparameter(s) ['lr'] as Python values",
    ),
    ("grid not a dict", lambda x, y: sweep(x, y, grid=[("lr", [1e-2])]), "grid must be a dict"),
    ("chunk_size word", lambda x, y: sweep(x, y, chunk_size="max"), "chunk_size must be an int >= 1, 'auto' or None"),
    ("chunk_size 0", lambda x, y: sweep(x, y, chunk_size=0), "chunk_size must be >= 1"),
    ("memory_budget alone", lambda x, y: sweep(x, y, memory_budget=10**9), "memory_budget= is used only with"),
    (
        "memory_budget too small",
        lambda x, y: sweep(x, y, chunk_size="auto", memory_budget=1000),
        "more than the memory budget of",
    ),
    (
        "memory_budget fraction",
        lambda x, y: sweep(x, y, chunk_size="auto", memory_budget=1e9 + 0.5),
        "memory_budget must be",
    ),
    ("resume alone", lambda x, y: sweep(x, y, resume=True), "checkpoint_every and resume need checkpoint="),
    ("checkpoint_every 0", lambda x, y: sweep(x, y, checkpoint="s.ckpt", checkpoint_every=0), "checkpoint_every must"),
    (
        "checkpoint folder",
        lambda x, y: sweep(x, y, checkpoint="/no/such/folder/s.ckpt"),
        "the folder /no/such/folder does not exist",
    ),
    ("resume a word", lambda x, y: sweep(x, y, checkpoint="s.ckpt", resume="yes"), "resume must be a bool"),
]

EVALUATE = [
    ("batch_size 0", lambda x, y: trainer().evaluate(PARAMS, STATE, x, y, batch_size=0), "batch_size must be >= 1"),
    ("params", lambda x, y: trainer().evaluate(PARAMS[:1], STATE, x, y), "params has 1 entries"),
    ("state with BN", lambda x, y: trainer(BN).evaluate(BN_PARAMS, (), x, y), "state has 0 entries"),
    ("labels out of range", lambda x, y: trainer().evaluate(PARAMS, STATE, x, y + 10), "y must lie in [0, 10)"),
    ("NaN in x", lambda x, y: trainer().evaluate(PARAMS, STATE, np.full_like(x, np.nan), y), "x holds"),
    ("empty x", lambda x, y: trainer().evaluate(PARAMS, STATE, x[:0], y[:0]), "x must be a non-empty array"),
    ("x rank 1", lambda x, y: trainer().evaluate(PARAMS, STATE, x[:, 0], y), "x has rank 1"),
]


def pbt(x, y, **change):
    arguments = dict(population={"lr": [1e-2, 1e-3]}, interval=1, hyperparameters=["lr"], epochs=2, batch_size=BATCH)
    return fnn.pbt(config, x, y, **(arguments | change))


PBT = [
    ("population empty", lambda x, y: pbt(x, y, population={"lr": []}), "population['lr'] must list at least one"),
    (
        "population lengths",
        lambda x, y: pbt(x, y, population={"lr": [1e-2, 1e-3], "dropout": [0.1]}),
        "population arrays must have equal lengths (one value per member); got {'lr': 2, 'dropout': 1}",
    ),
    ("bounds a list", lambda x, y: pbt(x, y, bounds=["lr"]), "bounds must be a dict {name: (low, high)} or None"),
    ("fraction array", lambda x, y: pbt(x, y, fraction=np.array([0.25])), "fraction must be a real number"),
    ("fraction 0.75", lambda x, y: pbt(x, y, fraction=np.float32(0.75)), "fraction must lie in (0, 0.5]"),
    ("interval = epochs", lambda x, y: pbt(x, y, interval=2), "interval must be < epochs"),
    ("interval > epochs", lambda x, y: pbt(x, y, interval=5), "interval=5 with epochs=2 would never exploit"),
    (
        "dropout past 1",
        lambda x, y: pbt(
            x, y, population={"dropout": [0.5, 0.9]}, hyperparameters=["dropout"], epochs=4, perturb=(1.25,)
        ),
        "exploring can take 'dropout' to 1.758",
    ),
    (
        "dropout bound 1",
        lambda x, y: pbt(
            x, y, population={"dropout": [0.5, 0.9]}, hyperparameters=["dropout"], bounds={"dropout": (0, 1)}
        ),
        "rate must lie in [0.0, 1.0); got 1.0; give bounds={'dropout': (low, high)}",
    ),
    ("labels out of range", lambda x, y: pbt(x, np.full(N, 10, np.int32)), r"y must lie in [0, 10)"),
    ("resume alone", lambda x, y: pbt(x, y, resume=True), "checkpoint_every and resume need checkpoint="),
    (
        "checkpoint folder",
        lambda x, y: pbt(x, y, checkpoint="/no/such/folder/p.ckpt"),
        "the folder /no/such/folder does not exist",
    ),
]

FUNCTIONS = [
    ("halving eta 0", lambda: fnn.halving(2, eta=0), "eta must be >= 2; got 0"),
    ("halving eta 1", lambda: fnn.halving(2, eta=1), "eta must be >= 2; got 1"),
    (
        "train_test_split key string",
        lambda: fnn.train_test_split("seed", np.zeros((10, 2)), np.zeros(10), 0.3),
        "key must be an int seed or a jax.random key",
    ),
    (
        "train_test_split key float",
        lambda: fnn.train_test_split(0.5, np.zeros((10, 2)), np.zeros(10), 0.3),
        "key must be an int seed or a jax.random key",
    ),
    (
        "process_shard drop_remainder string",
        lambda: distributed.process_shard(10, 0, 3, drop_remainder="no"),
        "drop_remainder must be a bool (True or False); got 'no' (str)",
    ),
    (
        "shard_for_process drop_remainder 0",
        lambda: distributed.shard_for_process(np.zeros(10), 0, 3, drop_remainder=0),
        "drop_remainder must be a bool",
    ),
    (
        "GlobalAvgPool of nothing",
        lambda: fnn.GlobalAvgPool().apply((), jnp.zeros((2, 0, 3), jnp.float32)),
        "GlobalAvgPool expects input x of shape [batch, *spatial, channels] (rank >= 3, every spatial size >= 1)",
    ),
]

CONSTRUCTORS = [
    ("sgd lr string", lambda: fnn.sgd("0.1"), "lr must be"),
    ("adam lr None", lambda: fnn.adam(None), "lr must be"),
    ("adam lr negative", lambda: fnn.adam(-1e-3), "lr must lie in"),
    ("adam b1 = 1", lambda: fnn.adam(1e-3, b1=1.0), "b1 must lie in"),
    ("SGD class", lambda: fnn.optimizers.SGD(-0.1), "lr must lie in"),
    ("rmsprop eps 0", lambda: fnn.rmsprop(1e-3, eps=0.0), "eps must lie in"),
    ("nesterov without momentum", lambda: fnn.sgd(0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    ("clip inner", lambda: fnn.clip_by_global_norm("adam", 1.0), "optimizer must be"),
    ("clip max_norm", lambda: fnn.clip_by_global_norm(fnn.adam(1e-3), 0.0), "max_norm must lie in"),
    ("Dropout None", lambda: fnn.Dropout(None), "rate must be"),
    ("Dropout string", lambda: fnn.Dropout("0.5"), "rate must be"),
    ("Dropout 1.5", lambda: fnn.Dropout(1.5), "rate must lie in"),
    ("BatchNorm momentum", lambda: fnn.BatchNorm(4, momentum="0.9"), "momentum must be"),
    ("Dense size", lambda: fnn.Dense(0, 3), "in_features must be >= 1"),
    ("Dense init", lambda: fnn.Dense(3, 3, w_init="glorot"), "must be a callable or one of"),
    ("mlp sizes", lambda: fnn.mlp([64]), "sizes must list at least"),
    ("activation name", lambda: fnn.Activation("relu6"), "activation must be a callable or one of"),
    ("Serial layer", lambda: fnn.Serial((fnn.Dense(3, 3), "relu")), "layers[1] must be an fnn Layer"),
    ("cosine string", lambda: schedules.cosine_decay("1", 10), "init_value must be"),
    ("cosine steps 0", lambda: schedules.cosine_decay(1.0, 0), "decay_steps must lie in"),
    ("piecewise order", lambda: schedules.piecewise_constant([10, 5], [1.0, 0.5, 0.1]), "strictly increasing"),
    ("l2 string", lambda: fnn.l2("1e-4"), "strength must be"),
    ("l1 negative", lambda: fnn.l1(-1.0), "strength must lie in"),
    ("Trainer optimizer", lambda: fnn.Trainer(fnn.mlp([4, 2]), "adam", fnn.mse), "optimizer must be an fnn optimizer"),
    ("Trainer loss", lambda: fnn.Trainer(fnn.mlp([4, 2]), fnn.adam(1e-3), "mse"), "loss must be a function"),
    ("Loss targets", lambda: fnn.losses.Loss(fnn.mse, targets="classes"), "targets must be one of"),
    (
        "metric named loss",
        lambda: fnn.Trainer(fnn.mlp([4, 2]), fnn.adam(1e-3), fnn.mse, metrics={"loss": fnn.mse}),
        "metric name 'loss' is taken",
    ),
    (
        "metric named val_x",
        lambda: fnn.Trainer(fnn.mlp([4, 2]), fnn.adam(1e-3), fnn.mse, metrics={"val_acc": fnn.mse}),
        "is taken by the history",
    ),
    (
        "metrics a string",
        lambda: fnn.Trainer(fnn.mlp([4, 2]), fnn.adam(1e-3), fnn.mse, metrics="accuracy"),
        "metrics must be",
    ),
]


def _crafted(path):
    path.write_bytes(b"FNNCKPT\n" + b"\x00" * 40)
    return path


RESTORE = [
    (
        "not a checkpoint",
        lambda p: checkpoint.restore(p.write_bytes(b"hello world" * 8) and p, like={}),
        checkpoint.CheckpointError,
    ),
    ("truncated", lambda p: checkpoint.restore(_crafted(p), like={}), checkpoint.CheckpointError),
    (
        "other structure",
        lambda p: checkpoint.save(p, {"w": np.zeros(3, np.float32)}) or checkpoint.restore(p, like={"v": jnp.zeros(3)}),
        checkpoint.CheckpointError,
    ),
    (
        "other shape",
        lambda p: (
            checkpoint.save(p, {"w": np.zeros(3, np.float32)})
            or checkpoint.restore(p, like={"w": jnp.zeros(4, jnp.float32)})
        ),
        checkpoint.CheckpointError,
    ),
]


def rows(table, door):
    return [pytest.param(call, match, id=f"{door}: {name}") for name, call, match in table]


@pytest.mark.parametrize("call, match", rows(FIT, "fit") + rows(EVALUATE, "evaluate"))
def test_fit_and_evaluate_refuse(data, call, match):
    with pytest.raises(ValueError) as info:
        call(*data)
    assert match in str(info.value)


@pytest.mark.parametrize("call, match", rows(SWEEP, "sweep"))
def test_sweep_refuses_before_compiling(data, call, match, monkeypatch):
    forbid(monkeypatch, fnn.sweeps.population, "advance", "the sweep program")
    with pytest.raises(ValueError) as info:
        call(*data)
    assert match in str(info.value)


@pytest.mark.parametrize("call, match", rows(PBT, "pbt"))
def test_pbt_refuses_before_compiling(data, call, match, monkeypatch):
    forbid(monkeypatch, pbt_lib, "_program", "the pbt program")
    with pytest.raises(ValueError) as info:
        call(*data)
    assert match in str(info.value)


@pytest.mark.parametrize("call, match", rows(CONSTRUCTORS, "constructor") + rows(FUNCTIONS, "function"))
def test_constructors_refuse(call, match):
    with pytest.raises(ValueError) as info:
        call()
    assert match in str(info.value)


# fnn's construction convention (docs/architecture.md): every lowercase public name of a
# configuration object is its CapWords class, whose __post_init__ makes every check. Each row:
# the public name, the class, its call signature (names and defaults, which users call by), and
# arguments with one bad value, named by the error.
FAMILIES = [
    (fnn.sgd, optimizers.SGD, "(lr, momentum=0.0, nesterov=False)", dict(lr=0.1, momentum=1.0), "momentum"),
    (
        fnn.rmsprop,
        optimizers.RMSProp,
        "(lr, decay=0.9, eps=1e-08, momentum=0.0, centered=False)",
        dict(lr=0.1, eps=0.0),
        "eps",
    ),
    (fnn.adagrad, optimizers.AdaGrad, "(lr, initial_accumulator=0.0, eps=1e-10)", dict(lr=-1.0), "lr"),
    (fnn.adam, optimizers.Adam, "(lr, b1=0.9, b2=0.999, eps=1e-08)", dict(lr=0.1, b2=1.0), "b2"),
    (
        fnn.adamw,
        optimizers.AdamW,
        "(lr, b1=0.9, b2=0.999, eps=1e-08, weight_decay=0.01)",
        dict(lr=0.1, weight_decay=-1.0),
        "weight_decay",
    ),
    (
        fnn.clip_by_global_norm,
        clipping.ClipByGlobalNorm,
        "(optimizer, max_norm)",
        dict(optimizer=fnn.sgd(0.1), max_norm=0.0),
        "max_norm",
    ),
    (
        fnn.clip_by_value,
        clipping.ClipByValue,
        "(optimizer, max_value)",
        dict(optimizer="sgd", max_value=1.0),
        "optimizer",
    ),
    (schedules.constant, schedules.Constant, "(value)", dict(value=-0.1), "value"),
    (
        schedules.piecewise_constant,
        schedules.PiecewiseConstant,
        "(boundaries, values)",
        dict(boundaries=[10, 5], values=[1.0, 0.5, 0.1]),
        "boundaries",
    ),
    (
        schedules.exponential_decay,
        schedules.ExponentialDecay,
        "(init_value, decay_rate, decay_steps, staircase=False)",
        dict(init_value=0.1, decay_rate=0.5, decay_steps=0),
        "decay_steps",
    ),
    (
        schedules.step_decay,
        schedules.StepDecay,
        "(init_value, factor, every)",
        dict(init_value=0.1, factor=0.5, every=0),
        "every",
    ),
    (
        schedules.inverse_time_decay,
        schedules.InverseTimeDecay,
        "(init_value, decay_rate, decay_steps, staircase=False)",
        dict(init_value=0.1, decay_rate=0.5, decay_steps=2, staircase=1),
        "staircase",
    ),
    (
        schedules.cosine_decay,
        schedules.CosineDecay,
        "(init_value, decay_steps, alpha=0.0)",
        dict(init_value=0.1, decay_steps=10, alpha=1.5),
        "alpha",
    ),
    (
        schedules.warmup,
        schedules.Warmup,
        "(schedule, warmup_steps, init_value=0.0)",
        dict(schedule="0.1", warmup_steps=5),
        "schedule",
    ),
    (fnn.l1, regularizers.L1, "(strength, select=is_weight)", dict(strength=-1.0), "strength"),
    (fnn.l2, regularizers.L2, "(strength, select=is_weight)", dict(strength=0.1, select=None), "select"),
    (
        fnn.l1_l2,
        regularizers.L1L2,
        "(l1_strength, l2_strength, select=is_weight)",
        dict(l1_strength=0.1, l2_strength=None),
        "l2_strength",
    ),
    (fnn.init.constant, fnn.init.Constant, "(value)", dict(value="0.5"), "value"),
    (fnn.init.normal, fnn.init.Normal, "(stddev=0.01)", dict(stddev=-0.1), "stddev"),
    (fnn.init.uniform, fnn.init.Uniform, "(scale=0.01)", dict(scale=float("nan")), "scale"),
    (fnn.init.orthogonal, fnn.init.Orthogonal, "(gain=1.0)", dict(gain=np.array([1.0])), "gain"),
    (fnn.halving, Halving, "(rung_epochs, eta=3, monitor=None)", dict(rung_epochs=2, eta=1), "eta"),
    (fnn.ema, fnn.EMA, "(decay, debias=True, warmup=False, evaluate=True)", dict(decay=1.0), "decay"),
    (
        fnn.dynamic_loss_scale,
        fnn.DynamicLossScale,
        "(initial_scale=32768.0, factor=2.0, period=2000, min_scale=1.0)",
        dict(factor=1.0),
        "factor",
    ),
]


def call_signature(function) -> str:
    """``function``'s parameters with their defaults, without annotations: ``(lr, momentum=0.0)``."""
    words = [
        p.name if p.default is p.empty else f"{p.name}={getattr(p.default, '__name__', repr(p.default))}"
        for p in inspect.signature(function).parameters.values()
    ]
    return f"({', '.join(words)})"


@pytest.mark.parametrize(
    "public, cls, signature, kwargs, argument", FAMILIES, ids=[f"{c.__module__}.{c.__name__}" for _, c, *_ in FAMILIES]
)
def test_each_public_name_is_its_class_and_checks_alike(public, cls, signature, kwargs, argument):
    assert public is cls  # a plain alias: no wrapper function repeating the class's docs and checks
    assert call_signature(cls) == signature
    with pytest.raises(ValueError, match=rf"^{argument}\b") as direct:
        cls(**kwargs)
    with pytest.raises(ValueError) as through_public_name:
        public(**kwargs)
    assert str(through_public_name.value) == str(direct.value)


def test_halving_built_directly_stores_python_ints():
    schedule = Halving(np.int64(2), eta=np.int32(3))
    assert schedule == fnn.halving(2, 3) and type(schedule.rung_epochs) is int and type(schedule.eta) is int


@pytest.mark.parametrize("call, error", rows(RESTORE, "restore"))
def test_restore_refuses_naming_the_file(tmp_path, call, error):
    path = tmp_path / "run.ckpt"
    with pytest.raises(error) as info:
        call(path)
    assert str(path) in str(info.value)
