"""Models out of fnn: a trained model as a file that JAX alone runs, and its weights in
PyTorch's layout.

**A file that JAX alone runs.** :func:`save_model` serializes the model's evaluation-mode
forward pass, ``x -> model.apply(params, x, state=model_state)``, with ``jax.export``: a
StableHLO program (JAX's stable, versioned export format) whose batch size is symbolic
(``jax.export.symbolic_shape("b, ...")``), so one file serves any batch size, and whose
params and batch-norm statistics are constants inside it. A program that has only JAX
(``pip install jax flatbuffers``: JAX reads the file with ``flatbuffers``) loads and runs
it — no fnn, no model code. Loading it with JAX alone::

    import jax
    import numpy as np

    with open("model.jax", "rb") as f:
        exported = jax.export.deserialize(bytearray(f.read()))
    y = exported.call(np.zeros((7, 64), np.float32))  # any batch size: the exported x is [b, 64] float32

``exported.in_avals`` says what ``x`` must be (``[b, 64] float32``) and
``exported.platforms`` where it runs. JAX promises that a file loads in the JAX versions
released up to six months after the one that wrote it (the backward compatibility of
``jax.export``).

Why the params are constants in the program rather than arguments of it: the file is then
the whole model — nothing else to ship, keep in sync or restructure (arguments would be
a pytree of arrays that the loader must rebuild in the structure fnn gives), and the
loader's call is ``exported.call(x)``. The cost is that new weights mean a new file, and
the file holds the weights (about their size in bytes; the serialization caps a file at
2 GiB).

**PyTorch's layout.** :func:`to_torch_state_dict` and :func:`from_torch_state_dict`
convert the params (and batch-norm statistics) of ``Dense``, ``Conv1D``, ``Conv2D``,
``BatchNorm`` and ``LayerNorm`` layers to and from a PyTorch ``state_dict`` of the same
model built with ``torch.nn`` — with NumPy only: torch is not needed, and the dicts hold
NumPy arrays (``torch.from_numpy`` turns them into tensors; torch tensors and anything
``np.asarray`` accepts are read). A model is a sequence of layers, a PyTorch
``nn.Sequential`` of the matching modules in the same order:

=================  ===============================  ===========================================
fnn                torch                            names and layouts
=================  ===============================  ===========================================
``Dense``          ``nn.Linear``                    ``weight`` [out, in] = ``w.T``; ``bias`` = ``b``
``Conv1D``         ``nn.Conv1d``                    ``weight`` [out, in, k] = ``w.transpose(2, 1, 0)``
``Conv2D``         ``nn.Conv2d``                    ``weight`` [out, in, kh, kw] = ``w.transpose(3, 2, 0, 1)``
``BatchNorm``      ``nn.BatchNorm1d/2d``            ``weight`` = scale, ``bias`` = offset,
                                                    ``running_mean``, ``running_var``
``LayerNorm``      ``nn.LayerNorm(features)``       ``weight`` = scale, ``bias`` = offset
=================  ===============================  ===========================================

Layers without params (activations, dropout, pools, ``Flatten``) take their places in the
sequence and have no entries. Keys are the layer's position, ``"{i}.weight"``, as
``nn.Sequential`` names them; a ``Serial`` inside a ``Serial`` adds a level (``"2.0.weight"``),
a ``Residual`` adds none (its params are its inner layer's). fnn is channels-last where
torch is channels-first, which changes no kernel but one thing: a ``Flatten`` after a
convolution orders the features (position, channel) where torch's ``nn.Flatten`` orders them
(channel, position), so the rows of the ``Dense`` (and of a ``BatchNorm`` / ``LayerNorm``)
after it are reordered to match — the torch model computes the same function on the
channels-first input ``x.transpose(0, 3, 1, 2)`` (2-D) or ``x.transpose(0, 2, 1)`` (1-D).
A ``Reshape`` of a convolution's output has no such counterpart and is refused, as are
layers with params of other kinds (a ``Function``). The hyperparameters are not in a
state dict: build the torch layers with the same ``eps`` (fnn's and torch's default is
1e-5) and, for training, torch's ``momentum = 1 - `` fnn's.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from fnn import files
from fnn.checkpoint import check_destination
from fnn.layers.base import Function, Layer, NoInitializer, Residual, Serial, as_model, check_params, is_empty
from fnn.layers.conv import Conv1D, Conv2D
from fnn.layers.dense import Dense
from fnn.layers.norm import BatchNorm, LayerNorm
from fnn.layers.pool import GlobalAvgPool
from fnn.layers.reshape import Flatten, Reshape
from fnn.types import ModelState, Params

__all__ = ["PLATFORMS", "from_torch_state_dict", "save_model", "to_torch_state_dict"]

#: The platforms :func:`save_model` lowers for by default: every platform JAX runs on, so
#: the file runs wherever the loader is (lowering for all of them costs a few milliseconds
#: and a few hundred bytes).
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")


def save_model(
    path: str | os.PathLike[str],
    model: Layer | Callable[..., Any],
    params: Params,
    model_state: ModelState,
    example_x: ArrayLike,
    *,
    platforms: Sequence[str] = PLATFORMS,
) -> jax.export.Exported:
    """Write ``model``'s evaluation-mode forward pass, with ``params`` and ``model_state``
    inside, to ``path`` as a serialized ``jax.export`` program that JAX alone runs.

    The program is ``x -> model.apply(params, x, state=model_state)`` (no dropout; batch
    norm with its running statistics) for ``x`` of ``example_x``'s shape and dtype but any
    batch size (the first axis is the symbol ``b``). The file is written atomically. The
    module docstring has the loader, and why the params are constants of the program.

    Args:
      path: the file to write (str or os.PathLike); its folder must exist. An existing
        file is replaced.
      model: an fnn Layer, or a pure function ``f(params, x)``.
      params: the params, e.g. ``result.best_params`` or ``result.train_state.params``.
      model_state: the model state (batch-norm statistics), e.g.
        ``result.best_model_state``; ``None`` for a model without state.
      example_x: an array shaped like the model's input, ``[batch, ...]``: its shape but
        the batch size, and its dtype, are the program's.
      platforms: where the program may run, a sequence of ``"cpu"``, ``"cuda"``,
        ``"rocm"``, ``"tpu"`` (default :data:`PLATFORMS`: all of them).

    Returns:
      the ``jax.export.Exported`` written (``.in_avals``, ``.out_avals``, ``.call(x)``).

    Shapes:
      example_x [batch, *features] -> the program maps x [b, *features] to the model's
      output for it, e.g. [b, classes].

    Raises:
      ValueError: before anything is traced, naming the argument: ``path`` not writable
        (see ``fnn.checkpoint.check_destination``), ``model`` not a model, ``params`` or
        ``model_state`` not those the model's ``init`` gives (the first leaf that differs),
        ``example_x`` not an array with a batch axis, ``platforms`` unknown.
      ImportError: when ``flatbuffers``, which JAX serializes with, is not installed
        (``pip install 'fnn[export]'``).
    """
    check_destination(path, name="path")
    model = as_model(model)
    check_params(model, params, model_state, names=("params", "model_state"))
    x = _example(example_x)
    platforms = _platforms(platforms)
    if importlib.util.find_spec("flatbuffers") is None:
        raise ImportError("fnn.export.save_model needs flatbuffers to serialize the program: pip install 'fnn[export]'")

    def predict(x):
        return model.apply(params, x, state=model_state)

    spec = jax.ShapeDtypeStruct(jax.export.symbolic_shape("b, ...", like=x.shape), x.dtype)
    exported = jax.export.export(jax.jit(predict), platforms=platforms)(spec)
    blob = exported.serialize()
    files.write_atomically(path, lambda f: f.write(blob), prefix=f".{os.path.basename(path)}.export-")
    return exported


def _example(example_x) -> jax.ShapeDtypeStruct:
    """``example_x``'s shape and dtype (JAX's dtype for it: float64 data is float32 unless
    x64 is on), checked: an array of numbers or bools with a batch axis."""
    try:
        dtype = jax.dtypes.canonicalize_dtype(np.result_type(example_x))
        shape = np.shape(example_x)
    except (TypeError, ValueError):
        raise ValueError(
            f"example_x must be an array shaped like the model's input, [batch, ...]; got {type(example_x).__name__}"
        ) from None
    if not (np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.bool_)):
        raise ValueError(f"example_x must hold numbers or bools; got dtype {dtype}")
    if len(shape) < 1:
        raise ValueError(f"example_x must have a batch axis first, [batch, ...]; got shape {shape}")
    return jax.ShapeDtypeStruct(shape, dtype)


def _platforms(platforms) -> tuple[str, ...]:
    """``platforms`` checked: a non-empty sequence of names from :data:`PLATFORMS`."""
    names = (platforms,) if isinstance(platforms, str) else tuple(platforms)
    if not names or any(name not in PLATFORMS for name in names):
        raise ValueError(f"platforms must be a non-empty sequence of names from {PLATFORMS}; got {platforms!r}")
    return names


# -- PyTorch state dicts --------------------------------------------------------------

# Where the features a layer sees come from, for the one layout difference with torch:
# None (features as torch has them), ("map", C) (a channels-last feature map with C
# channels: a convolution's output) or ("flat", C) (such a map flattened: (position,
# channel) order, where torch's is (channel, position)).
_Order = tuple[str, int] | None

# Each convertible layer's torch names: (torch name, "params" or "state", fnn key).
_NAMES: dict[type, tuple[tuple[str, str, str], ...]] = {
    Dense: (("weight", "params", "w"), ("bias", "params", "b")),
    Conv1D: (("weight", "params", "w"), ("bias", "params", "b")),
    Conv2D: (("weight", "params", "w"), ("bias", "params", "b")),
    BatchNorm: (
        ("weight", "params", "scale"),
        ("bias", "params", "offset"),
        ("running_mean", "state", "mean"),
        ("running_var", "state", "var"),
    ),
    LayerNorm: (("weight", "params", "scale"), ("bias", "params", "offset")),
}

# torch's BatchNorm also keeps the number of batches it has seen (used only with
# momentum=None); fnn does not count them: written as 0, ignored when read.
_BATCHES = "num_batches_tracked"


def to_torch_state_dict(model: Layer, params: Params, model_state: ModelState = None) -> dict[str, np.ndarray]:
    """``model``'s params (and batch-norm statistics) as a PyTorch ``state_dict``.

    Load it into the matching ``torch.nn`` model (the module docstring's table) with
    ``torch_model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()})``;
    that model then computes what ``model.apply(params, x, state=model_state)`` does, on
    channels-first input.

    Args:
      model: an fnn Layer made of ``Dense``, ``Conv1D``, ``Conv2D``, ``BatchNorm``,
        ``LayerNorm`` and layers without params, in ``Serial`` and ``Residual``.
      params: the params ``model.init`` gives (or trained ones).
      model_state: the model state (batch-norm statistics); ``None`` for a model without.

    Returns:
      ``{name: array}`` in torch's names and layouts, in the model's order, each array a
      writable, contiguous NumPy copy in the params' dtype (``num_batches_tracked``: int64 0).

    Raises:
      ValueError: naming the argument, for params or state that do not fit the model; naming
        the layer, for one that has no torch counterpart here (see the module docstring).
    """
    model = as_model(model)
    check_params(model, params, model_state, names=("params", "model_state"))
    out: dict[str, np.ndarray] = {}

    def visit(layer, prefix, p, s, order):
        trees = {"params": p, "state": s}
        for torch_name, tree, key in _NAMES.get(type(layer), ()):
            if key in trees[tree]:  # a layer without bias has no "b"
                value = np.asarray(jax.device_get(trees[tree][key]))
                value = _to_torch(layer, _where(layer, prefix), key, value, order)
                out[prefix + torch_name] = np.array(value, order="C")  # a writable copy
        if isinstance(layer, BatchNorm):
            out[prefix + _BATCHES] = np.array(0, np.int64)
        return p, s

    _walk(model, params, model_state, visit)
    return out


def from_torch_state_dict(model: Layer, state_dict: Mapping[str, Any]) -> tuple[Params, ModelState]:
    """``model``'s params and model state from a PyTorch ``state_dict`` of the matching
    ``torch.nn`` model (the inverse of :func:`to_torch_state_dict`).

    Args:
      model: an fnn Layer, as for :func:`to_torch_state_dict`.
      state_dict: ``{name: array}``, e.g. ``torch_model.state_dict()`` (CPU tensors) or
        a dict of NumPy arrays; every name the model needs, and no other
        (``num_batches_tracked`` is accepted and ignored).

    Returns:
      ``(params, model_state)`` structured as ``model.init`` gives them, each leaf a JAX
      array of ``init``'s dtype.

    Raises:
      ValueError: naming the entry, for a ``state_dict`` that is not a mapping, lacks a name
        the model needs, has one it does not know, or holds an array of another shape
        (both shapes in torch's layout); naming the layer, for one without a torch
        counterpart here.
    """
    model = as_model(model)
    if not isinstance(state_dict, Mapping):
        raise ValueError(f"state_dict must be a mapping {{name: array}}; got {type(state_dict).__name__}")
    try:
        template_params, template_state = jax.eval_shape(model.init, jax.random.key(0))
    except NoInitializer:
        raise ValueError(
            "model holds a Function (a user's f(params, x)), which has no torch counterpart here"
        ) from None
    used = set()

    def visit(layer, prefix, p, s, order):
        trees = {"params": dict(p) if isinstance(p, dict) else p, "state": dict(s) if isinstance(s, dict) else s}
        for torch_name, tree, key in _NAMES.get(type(layer), ()):
            if key not in trees[tree]:  # a layer without bias has no "b"
                continue
            name, want, where = prefix + torch_name, trees[tree][key], _where(layer, prefix)
            if name not in state_dict:
                raise ValueError(f"state_dict has no {name!r}, which {where} needs")
            value = _as_numpy(state_dict[name])
            expected = _to_torch(layer, where, key, np.zeros(want.shape, want.dtype), order).shape
            if value.shape != expected:
                raise ValueError(f"state_dict[{name!r}] has shape {value.shape}; {where} expects {expected}")
            trees[tree][key] = jnp.asarray(_from_torch(layer, where, key, value, order), want.dtype)
            used.add(name)
        if isinstance(layer, BatchNorm):
            used.add(prefix + _BATCHES)
        return trees["params"], trees["state"]

    params, state = _walk(model, template_params, template_state, visit)
    unknown = [name for name in state_dict if name not in used]
    if unknown:
        raise ValueError(f"state_dict holds names the model does not have: {unknown}")
    return params, state


def _as_numpy(value) -> np.ndarray:
    """A state dict's value as a NumPy array (a torch tensor through its ``.numpy()``)."""
    return np.asarray(value.numpy() if hasattr(value, "numpy") else value)


def _walk(model: Layer, params, state, visit) -> tuple[Params, ModelState]:
    """Call ``visit(layer, prefix, p, s, order) -> (p, s)`` on every layer of ``model`` that
    is not a ``Serial`` or ``Residual``, in order, with its torch key prefix, params, state
    and the order of the features it sees (:data:`_Order`); returns the params and state
    rebuilt from what ``visit`` returned."""

    def walk(layer, prefix, p, s, order):
        if isinstance(layer, Serial):
            states = (None,) * len(layer.layers) if is_empty(s) else s
            new_p, new_s = [], []
            for i, (inner, pi, si) in enumerate(zip(layer.layers, p, states)):
                pi, si, order = walk(inner, f"{prefix}{i}.", pi, si, order)
                new_p.append(pi)
                new_s.append(si)
            return tuple(new_p), (s if is_empty(s) else tuple(new_s)), order
        if isinstance(layer, Residual):
            return walk(layer.layer, prefix, p, s, order)
        p, s = visit(layer, prefix, p, s, order)
        return p, s, _order_after(layer, prefix, p, s, order)

    params, state, _ = walk(model, "", params, state, None)
    return params, state


def _where(layer: Layer, prefix: str) -> str:
    """A layer in messages: its class and torch key prefix, e.g. ``Dense at 4``."""
    return f"{type(layer).__name__} at {prefix[:-1] or 'the top'}"


def _order_after(layer: Layer, prefix: str, p, s, order: _Order) -> _Order:
    """The order of the features after ``layer`` (at ``prefix``), given ``order`` before it;
    ``ValueError`` for a layer with no torch counterpart here."""
    where = _where(layer, prefix)
    if isinstance(layer, (Conv1D, Conv2D)):
        return ("map", layer.out_channels)
    if isinstance(layer, Dense):
        return None if order is None or order[0] == "flat" else ("map", layer.out_features)
    if isinstance(layer, Flatten):
        return ("flat", order[1]) if order is not None else None
    if isinstance(layer, GlobalAvgPool):
        return None
    if isinstance(layer, Reshape) and order is not None:
        raise ValueError(
            f"{where} reshapes a convolution's channels-last output: torch's tensor there is channels-first, "
            "so no reshape of it matches; use Flatten (or GlobalAvgPool) before the Dense layers"
        )
    if isinstance(layer, Function) or (type(layer) not in _NAMES and jax.tree.leaves((p, s))):
        raise ValueError(f"{where} has no torch counterpart here: only {[t.__name__ for t in _NAMES]} have params")
    return order


def _feature_order(features: int, order: _Order, where: str) -> np.ndarray | None:
    """For ``features`` that are a flattened channels-last map (``order`` ``("flat", C)``):
    ``perm`` with ``torch_vector = fnn_vector[perm]``; ``None`` when the orders agree."""
    if order is None or order[0] != "flat":
        return None
    channels = order[1]
    if features % channels:
        raise ValueError(f"{where} sees {features} features, not a whole number of {channels}-channel positions")
    return np.arange(features).reshape(features // channels, channels).T.reshape(-1)


# The axes of a convolution's kernel, fnn's to torch's and back, by the number of spatial axes.
_KERNEL_TO_TORCH = {1: (2, 1, 0), 2: (3, 2, 0, 1)}
_KERNEL_FROM_TORCH = {1: (2, 1, 0), 2: (2, 3, 1, 0)}


def _to_torch(layer: Layer, where: str, key: str, value: np.ndarray, order: _Order) -> np.ndarray:
    """fnn's ``value`` of entry ``key`` of ``layer`` (named ``where`` in messages) in torch's
    layout and feature order, given the ``order`` of the features the layer sees."""
    if isinstance(layer, (Conv1D, Conv2D)):
        return value.transpose(_KERNEL_TO_TORCH[layer.rank]) if key == "w" else value
    if isinstance(layer, Dense) and key == "b":
        return value
    perm = _feature_order(value.shape[0], order, where)  # a Dense's rows, a norm's features
    value = value if perm is None else value[perm]
    return value.T if isinstance(layer, Dense) else value


def _from_torch(layer: Layer, where: str, key: str, value: np.ndarray, order: _Order) -> np.ndarray:
    """The inverse of :func:`_to_torch`: torch's ``value`` in fnn's layout and order."""
    if isinstance(layer, (Conv1D, Conv2D)):
        return value.transpose(_KERNEL_FROM_TORCH[layer.rank]) if key == "w" else value
    if isinstance(layer, Dense):
        if key == "b":
            return value
        value = value.T
    perm = _feature_order(value.shape[0], order, where)
    return value if perm is None else value[np.argsort(perm)]
