"""fnn.export: a model saved with ``jax.export`` runs in a process without fnn and computes
what ``model.apply`` does; PyTorch state dicts hold the weights in torch's layouts.

Every float32 comparison bounds each output by ``k * EPS32 * scale`` (tests/README.md):
``scale`` is the sum of the absolute values of the terms behind each output, which
:func:`term_scale` gets by running the model on ``|x|`` with ``|params|`` (and batch norm's
mean as ``-|mean|``, so that ``x - mean`` adds magnitudes) in float64; ``k`` counts the
terms of the sums on the way (each layer's fan-in, +1 for a bias) and 5 roundings per
batch norm (subtract, rsqrt, two products, add).
"""

import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tolerances import EPS32, assert_close_f32

import fnn
from fnn import export

README = Path(__file__).resolve().parents[1] / "README.md"
BATCH_NORM_ROUNDINGS = 5


def randomized(model, seed):
    """``model.init``'s params and state with every leaf redrawn: weights, biases, batch
    norm's scale and offset and running mean from N(0, 1), running variances from
    U(0.5, 2) — so that a mixed-up mean and variance, a missing bias or a transposed
    kernel all show."""
    params, state = model.init(jax.random.key(seed))
    leaves, treedef = jax.tree_util.tree_flatten_with_path((params, state))
    rng = np.random.default_rng(seed)
    new = [
        rng.uniform(0.5, 2.0, leaf.shape) if "var" in jax.tree_util.keystr(path) else rng.normal(size=leaf.shape)
        for path, leaf in leaves
    ]
    return jax.tree.unflatten(treedef, [jnp.asarray(v, jnp.float32) for v in new])


def term_scale(model, params, state, x):
    """Each output's sum of the absolute values of the terms behind it, in float64 (see the
    module docstring); valid for models of affine layers, batch norm, ReLU and max pools."""

    def magnitude(path, v):
        v = jnp.abs(jnp.asarray(v, jnp.float64))
        return -v if "mean" in jax.tree_util.keystr(path) else v

    params, state = jax.tree_util.tree_map_with_path(magnitude, (params, state))
    return np.asarray(model.apply(params, jnp.abs(jnp.asarray(x, jnp.float64)), state=state))


def mlp_model():
    """An MLP with batch norm, 64 features in (the loader recipe feeds it zeros [7, 64])."""
    return fnn.mlp([64, 16, 3], batchnorm=True), (64,), 64 + BATCH_NORM_ROUNDINGS + 17


def cnn_model():
    """A small CNN: convolution, batch norm, ReLU, max pool, flatten, dense."""
    model = fnn.Serial(
        (
            fnn.Conv2D(2, 4, 3),
            fnn.BatchNorm(4),
            fnn.Activation("relu"),
            fnn.MaxPool2D(2),
            fnn.Flatten(),
            fnn.Dense(3 * 3 * 4, 3),
        )
    )
    return model, (6, 6, 2), (9 * 2 + 1) + BATCH_NORM_ROUNDINGS + (36 + 1)


def loader_recipe() -> str:
    """The loader of fnn.export's docstring (which README repeats), as code."""
    doc = export.__doc__
    block = doc[doc.index("Loading it with JAX alone::") :].split("::\n\n", 1)[1]
    lines = []
    for line in block.splitlines():
        if line and not line.startswith("    "):
            break
        lines.append(line)
    return textwrap.dedent("\n".join(lines)).strip()


# Runs in a fresh interpreter without fnn: the docstring's recipe on model.jax (the MLP),
# then every saved model at two batch sizes. argv: the folder, the model names.
CHILD = """
import sys

{recipe}

folder, names = sys.argv[1], sys.argv[2:]
inputs = np.load(f"{{folder}}/inputs.npz")
outputs = {{"recipe": np.asarray(y)}}
for name in names:
    with open(f"{{folder}}/{{name}}.jax", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    assert str(exported.in_avals[0].shape[0]) == "b", exported.in_avals
    for batch in (1, 5):
        outputs[f"{{name}}_{{batch}}"] = np.asarray(exported.call(inputs[f"{{name}}_{{batch}}"]))
np.savez(f"{{folder}}/outputs.npz", **outputs)
assert not [m for m in sys.modules if m.split(".")[0] == "fnn"], "the loader imported fnn"
"""


def test_saved_models_run_without_fnn_and_match_apply(tmp_path):
    """The MLP and the CNN, loaded by JAX alone in another process, give ``model.apply``'s
    outputs (evaluation mode: running statistics) at batch sizes 1 and 5 from one file.
    ``apply`` runs once per model on all of its inputs stacked (evaluation mode treats each
    example alone), to keep the test fast."""
    models = {"model": mlp_model(), "cnn": cnn_model()}  # "model": the recipe's model.jax
    rng = np.random.default_rng(0)
    inputs, expected = {}, {}
    for i, (name, (model, shape, k)) in enumerate(models.items()):
        params, state = randomized(model, i)
        exported = export.save_model(tmp_path / f"{name}.jax", model, params, state, np.zeros((2, *shape), np.float32))
        assert exported.in_avals[0].dtype == np.float32 and exported.in_avals[0].shape[1:] == shape
        batches = {f"{name}_{n}": rng.normal(size=(n, *shape)).astype(np.float32) for n in (1, 5)}
        inputs |= batches
        if name == "model":
            batches["recipe"] = np.zeros((7, 64), np.float32)  # what the recipe feeds it
        stacked = np.concatenate(list(batches.values()))
        want = np.asarray(model.apply(params, stacked, state=state))
        atol = k * EPS32 * term_scale(model, params, state, stacked)
        ends = np.cumsum([len(x) for x in batches.values()])
        expected |= {key: (w, t) for key, w, t in zip(batches, np.split(want, ends[:-1]), np.split(atol, ends[:-1]))}
    np.savez(tmp_path / "inputs.npz", **inputs)
    child = CHILD.format(recipe=loader_recipe())
    done = subprocess.run(
        [sys.executable, "-c", child, str(tmp_path), *models], cwd=tmp_path, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-3000:]
    outputs = np.load(tmp_path / "outputs.npz")
    assert sorted(outputs) == sorted(expected)
    for name, (want, atol) in expected.items():
        assert_close_f32(outputs[name], want, atol=atol, err_msg=name)


def test_readme_shows_the_docstring_loader():
    assert loader_recipe() in README.read_text()


def test_save_model_checks_its_arguments_before_tracing(tmp_path):
    model, shape, _ = mlp_model()
    params, state = model.init(jax.random.key(0))
    x = np.zeros((2, *shape), np.float32)
    with pytest.raises(ValueError, match="path=.*does not exist"):
        export.save_model(tmp_path / "missing" / "m.jax", model, params, state, x)
    with pytest.raises(ValueError, match="path=.*is a folder"):
        export.save_model(tmp_path, model, params, state, x)
    with pytest.raises(ValueError, match=r"params\[0\]\['w'\] has shape \(63, 16\); the model expects \(64, 16\)"):
        bad = (dict(params[0], w=jnp.zeros((63, 16))), *params[1:])
        export.save_model(tmp_path / "m.jax", model, bad, state, x)
    with pytest.raises(ValueError, match="model_state"):
        export.save_model(tmp_path / "m.jax", model, params, None, x)
    with pytest.raises(ValueError, match="example_x must have a batch axis"):
        export.save_model(tmp_path / "m.jax", model, params, state, np.float32(1.0))
    with pytest.raises(ValueError, match="example_x must hold numbers"):
        export.save_model(tmp_path / "m.jax", model, params, state, np.array([["a"]]))
    with pytest.raises(ValueError, match="platforms must be"):
        export.save_model(tmp_path / "m.jax", model, params, state, x, platforms=("gpu",))
    with pytest.raises(ValueError, match="model must be an fnn Layer"):
        export.save_model(tmp_path / "m.jax", 3, params, state, x)
    assert list(tmp_path.iterdir()) == []


def test_save_model_without_flatbuffers_says_what_to_install(tmp_path, monkeypatch):
    model, shape, _ = mlp_model()
    params, state = model.init(jax.random.key(0))
    real = export.importlib.util.find_spec
    monkeypatch.setattr(export.importlib.util, "find_spec", lambda name: None if name == "flatbuffers" else real(name))
    with pytest.raises(ImportError, match=r"pip install 'fnn\[export\]'"):
        export.save_model(tmp_path / "m.jax", model, params, state, np.zeros((1, *shape), np.float32))


# -- PyTorch state dicts: checked against NumPy in torch's conventions --------------------


def torch_reference(ops, state_dict, x, absolute=False):
    """A ``torch.nn.Sequential`` of ``ops`` evaluated in NumPy (float64) on channels-first
    ``x`` with ``state_dict``'s arrays, written from torch's documented formulas, e.g.
    Conv2d: ``y[n, o, i, j] = bias[o] + sum_{c, p, q} x_pad[n, c, i*s + p*d, j*s + q*d] *
    weight[o, c, p, q]``. ``absolute``: the same with every input and weight by its
    magnitude (batch norm's ``|x - mean|`` bounded by ``x + |mean|``): the terms' scale."""
    sd = {k: np.asarray(v, np.float64) for k, v in state_dict.items()}
    mag = np.abs if absolute else (lambda v: v)
    x = mag(np.asarray(x, np.float64))
    for op, *args in ops:
        if op == "conv":
            (name, stride, padding, dilation), w = args, mag(sd[f"{args[0]}.weight"])
            rank = w.ndim - 2
            x = np.pad(x, [(0, 0), (0, 0)] + [(padding, padding)] * rank)
            out = [(x.shape[2 + a] - dilation * (w.shape[2 + a] - 1) - 1) // stride + 1 for a in range(rank)]
            y = np.zeros((x.shape[0], w.shape[0], *out))
            for taps in np.ndindex(*w.shape[2:]):
                view = tuple(
                    slice(t * dilation, t * dilation + stride * (o - 1) + 1, stride) for t, o in zip(taps, out)
                )
                y += np.einsum(
                    "nc...,oc->no...", x[(slice(None), slice(None), *view)], w[(slice(None), slice(None), *taps)]
                )
            x = y + mag(sd[f"{name}.bias"]).reshape(1, -1, *[1] * rank)
        elif op == "batchnorm":
            name, shape = args[0], (1, -1) + (1,) * (x.ndim - 2)
            mean, var = (sd[f"{name}.{s}"].reshape(shape) for s in ("running_mean", "running_var"))
            centred = x + np.abs(mean) if absolute else x - mean
            x = centred / np.sqrt(var + 1e-5) * mag(sd[f"{name}.weight"]).reshape(shape) + mag(
                sd[f"{name}.bias"]
            ).reshape(shape)
        elif op == "relu":
            x = np.maximum(x, 0.0)
        elif op == "maxpool2":
            n, c, h, w = x.shape
            x = x.reshape(n, c, h // 2, 2, w // 2, 2).max(axis=(3, 5))
        elif op == "flatten":
            x = x.reshape(x.shape[0], -1)
        elif op == "linear":
            name = args[0]
            x = x @ mag(sd[f"{name}.weight"]).T
            if f"{name}.bias" in sd:
                x = x + mag(sd[f"{name}.bias"])
    return x


def cnn2d_case():
    """Conv2D (padding 1) -> BatchNorm -> ReLU -> MaxPool -> Flatten -> Dense: the Dense
    sees a flattened channels-last map, whose rows the conversion reorders."""
    model = fnn.Serial(
        (
            fnn.Conv2D(2, 3, 3, padding=1),
            fnn.BatchNorm(3),
            fnn.Activation("relu"),
            fnn.MaxPool2D(2),
            fnn.Flatten(),
            fnn.Dense(3 * 3 * 3, 4),
        )
    )
    ops = [("conv", "0", 1, 1, 1), ("batchnorm", "1"), ("relu",), ("maxpool2",), ("flatten",), ("linear", "5")]
    keys = ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    return model, ops, (6, 6, 2), (0, 3, 1, 2), (9 * 2 + 1) + BATCH_NORM_ROUNDINGS + 28, keys + ["5.weight", "5.bias"]


def cnn1d_case():
    """Conv1D (stride 2, dilation 2, padding 2: 9 positions give 5) -> ReLU -> Flatten ->
    a nested Serial of BatchNorm and Dense: the batch norm's four vectors follow the
    flattened features, reordered as the Dense's rows."""
    inner = fnn.Serial((fnn.BatchNorm(15), fnn.Dense(15, 2)))
    model = fnn.Serial(
        (fnn.Conv1D(2, 3, 3, strides=2, dilation=2, padding=2), fnn.Activation("relu"), fnn.Flatten(), inner)
    )
    ops = [("conv", "0", 2, 2, 2), ("relu",), ("flatten",), ("batchnorm", "3.0"), ("linear", "3.1")]
    keys = ["0.weight", "0.bias", "3.0.weight", "3.0.bias", "3.0.running_mean", "3.0.running_var"]
    keys += ["3.0.num_batches_tracked", "3.1.weight", "3.1.bias"]
    return model, ops, (9, 2), (0, 2, 1), (3 * 2 + 1) + BATCH_NORM_ROUNDINGS + 16, keys


def mlp_case():
    """An MLP with batch norm: a Dense without bias, BatchNorm1d, ReLU, Dense."""
    ops = [("linear", "0"), ("batchnorm", "1"), ("relu",), ("linear", "3")]
    keys = ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var", "1.num_batches_tracked"]
    return (
        fnn.mlp([5, 4, 3], batchnorm=True),
        ops,
        (5,),
        (0, 1),
        5 + BATCH_NORM_ROUNDINGS + 5,
        keys + ["3.weight", "3.bias"],
    )


CASES = {"cnn2d": cnn2d_case, "cnn1d": cnn1d_case, "mlp": mlp_case}


@pytest.mark.parametrize("case", CASES)
def test_state_dict_computes_the_model_in_torch_conventions(case):
    """The state dict, run through torch's formulas in NumPy on channels-first input, gives
    ``model.apply``'s outputs; it holds torch's names, shapes and nothing else."""
    model, ops, shape, to_channels_first, k, keys = CASES[case]()
    params, state = randomized(model, 1)
    state_dict = export.to_torch_state_dict(model, params, state)
    assert list(state_dict) == keys
    x = np.random.default_rng(2).normal(size=(3, *shape)).astype(np.float32)
    want = torch_reference(ops, state_dict, x.transpose(to_channels_first))
    scale = torch_reference(ops, state_dict, x.transpose(to_channels_first), absolute=True)
    got = model.apply(params, x, state=state)
    assert_close_f32(got, want, atol=k * EPS32 * scale)


def test_layer_norm_after_flatten_normalizes_the_same_features():
    """A LayerNorm's scale and offset follow the flattened features as a Dense's rows do:
    torch's formula, on fnn's own hidden features put in torch's (channel, position) order
    and the converted vectors, gives fnn's output in that order. The bound: F + 10
    roundings (the mean and variance are sums of F terms) of the deviation's terms,
    ``(|h| + mean|h|) / std * |scale| + |offset|``."""
    model = fnn.Serial((fnn.Conv1D(2, 3, 3), fnn.Flatten(), fnn.LayerNorm(15)))
    params, state = randomized(model, 7)
    state_dict = export.to_torch_state_dict(model, params, state)
    assert list(state_dict) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    x = np.random.default_rng(8).normal(size=(3, 5, 2)).astype(np.float32)
    hidden = np.asarray(fnn.Serial(model.layers[:2]).apply(params[:2], x), np.float64)
    to_torch = lambda v: v.reshape(3, 5, 3).transpose(0, 2, 1).reshape(3, 15)  # noqa: E731
    h = to_torch(hidden)
    std = np.sqrt(h.var(-1, keepdims=True) + 1e-5)
    weight, bias = (np.asarray(state_dict[f"2.{n}"], np.float64) for n in ("weight", "bias"))
    want = (h - h.mean(-1, keepdims=True)) / std * weight + bias
    scale = (np.abs(h) + np.abs(h).mean(-1, keepdims=True)) / std * np.abs(weight) + np.abs(bias)
    got = to_torch(np.asarray(model.apply(params, x, state=state)))
    assert_close_f32(got, want, atol=(15 + 10) * EPS32 * scale)


def test_a_residual_adds_no_level_to_the_names():
    block = fnn.Residual(fnn.Serial((fnn.Dense(4, 4), fnn.Activation("relu"))))
    model = fnn.Serial((fnn.Dense(3, 4), block))
    params, _ = randomized(model, 9)
    assert list(export.to_torch_state_dict(model, params)) == ["0.weight", "0.bias", "1.0.weight", "1.0.bias"]


@pytest.mark.parametrize("case", CASES)
def test_state_dict_round_trip_is_exact(case):
    model = CASES[case]()[0]
    params, state = randomized(model, 3)
    back = export.from_torch_state_dict(model, export.to_torch_state_dict(model, params, state))
    assert jax.tree.structure(back) == jax.tree.structure((params, state))
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves((params, state))):
        assert a.dtype == b.dtype
        np.testing.assert_array_equal(a, b)


def test_from_torch_state_dict_reads_tensor_like_values_and_refuses_what_does_not_fit():
    model = mlp_case()[0]
    params, state = randomized(model, 4)
    state_dict = export.to_torch_state_dict(model, params, state)

    class Tensor:  # what torch.Tensor offers: .numpy()
        def __init__(self, value):
            self.value = value

        def numpy(self):
            return self.value

    back = export.from_torch_state_dict(model, {k: Tensor(v) for k, v in state_dict.items()})
    np.testing.assert_array_equal(back[0][0]["w"], params[0]["w"])
    without = {k: v for k, v in state_dict.items() if k != "1.running_var"}
    with pytest.raises(ValueError, match="state_dict has no '1.running_var', which BatchNorm at 1 needs"):
        export.from_torch_state_dict(model, without)
    with pytest.raises(ValueError, match=r"names the model does not have: \['2.weight'\]"):
        export.from_torch_state_dict(model, state_dict | {"2.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"state_dict\['0.weight'\] has shape \(5, 4\); Dense at 0 expects \(4, 5\)"):
        export.from_torch_state_dict(model, state_dict | {"0.weight": state_dict["0.weight"].T})
    with pytest.raises(ValueError, match="state_dict must be a mapping"):
        export.from_torch_state_dict(model, list(state_dict.values()))
    without_count = {k: v for k, v in state_dict.items() if k != "1.num_batches_tracked"}
    np.testing.assert_array_equal(export.from_torch_state_dict(model, without_count)[1][1]["var"], state[1]["var"])


def test_layers_without_a_torch_counterpart_are_refused():
    function = fnn.Serial((fnn.Dense(2, 2), fnn.Function(lambda p, x: x * p)))
    with pytest.raises(ValueError, match="Function at 1 has no torch counterpart"):
        export.to_torch_state_dict(function, ({"w": jnp.ones((2, 2)), "b": jnp.zeros(2)}, jnp.ones(())))
    with pytest.raises(ValueError, match="holds a Function"):
        export.from_torch_state_dict(function, {})
    reshaped = fnn.Serial((fnn.Conv1D(1, 2, 3), fnn.Reshape((-1,)), fnn.Dense(8, 1)))
    params, _ = reshaped.init(jax.random.key(0))
    with pytest.raises(ValueError, match="Reshape at 1 reshapes a convolution's channels-last output"):
        export.to_torch_state_dict(reshaped, params)
    with pytest.raises(ValueError, match=r"params\[2\]\['w'\] has shape"):
        export.to_torch_state_dict(reshaped, (params[0], (), {"w": jnp.ones((3, 1)), "b": jnp.zeros(1)}))


# -- PyTorch itself, where it is installed -----------------------------------------------


def torch_model(case):
    """The ``torch.nn`` model of each case."""
    nn = pytest.importorskip("torch").nn
    if case == "cnn2d":
        return nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(27, 4)
        )
    if case == "cnn1d":
        inner = nn.Sequential(nn.BatchNorm1d(15), nn.Linear(15, 2))
        return nn.Sequential(nn.Conv1d(2, 3, 3, stride=2, dilation=2, padding=2), nn.ReLU(), nn.Flatten(), inner)
    return nn.Sequential(nn.Linear(5, 4, bias=False), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))


@pytest.mark.parametrize("case", CASES)
def test_torch_loads_the_state_dict_and_computes_the_same(case):
    torch = pytest.importorskip("torch")
    model, ops, shape, to_channels_first, k, _ = CASES[case]()
    params, state = randomized(model, 5)
    net = torch_model(case)
    state_dict = export.to_torch_state_dict(model, params, state)
    net.load_state_dict({name: torch.from_numpy(v) for name, v in state_dict.items()}, strict=True)
    net.eval()
    x = np.random.default_rng(6).normal(size=(3, *shape)).astype(np.float32)
    with torch.no_grad():
        got = net(torch.from_numpy(np.ascontiguousarray(x.transpose(to_channels_first)))).numpy()
    scale = torch_reference(ops, state_dict, x.transpose(to_channels_first), absolute=True)
    assert_close_f32(got, model.apply(params, x, state=state), atol=k * EPS32 * scale)
    back = export.from_torch_state_dict(model, net.state_dict())
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves((params, state))):
        np.testing.assert_array_equal(a, b)
