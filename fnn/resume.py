"""Resuming a run from its checkpoint: what must match, said in the user's words.

A run's checkpoint (written by ``fit(checkpoint=...)``, see :mod:`fnn.checkpoint`)
holds the whole epoch-loop carry and, in its metadata, a *description* of the run: the
settings that decide its numbers (fit's options that a resumed run must match, as
:mod:`fnn.options` declares them: ``batch_size``, ``drop_last``, ``patience``,
``monitor``, ``eval_batch_size``, ``batch_sharding``, ``tol``, ``divergence_threshold``;
the number of training and validation examples, the history entries, ``epochs``, the loss's name, every number in the trainer — learning
rate, momentum, dropout rate, L2 strength, EMA decay, ... —, every static field of the
trainer's configuration objects — ``nesterov``, activations, the EMA's ``debias`` and
``evaluate`` flags, ... —, the run key and a SHA-256 digest of the data) and the shape of
every array it carries (params, model state, optimizer state, moving average, ...).

Resuming compares the call's description with the file's before reading any array, so
a mismatch is reported as what the user changed — "the checkpoint was written for
batch_size=64; this call has batch_size=32", "the model's parameters differ:
params[0]['w'] is float32[64, 16] in the checkpoint, float32[64, 8] in this call" —
rather than as a leaf number.

One difference is allowed: a larger ``epochs``. The run then continues where it
stopped, its histories padded with NaN to the new length, bit-identical to a run that had
the larger ``epochs`` from the start (nothing else in a run depends on ``epochs``). A
run that stopped early or diverged stays stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re

import jax
import jax.numpy as jnp
import numpy as np

from fnn import checkpoint as checkpoint_lib
from fnn.loop import Loop, RunData, Settings
from fnn.options import LARGER, SAME, STATIC, TRACED, names
from fnn.pytree import is_static
from fnn.train import Trainer

# where a carried array lives -> how to name a difference there
_PARTS = (
    (".result.train_state.params", "the model's parameters differ (another model or layer sizes?)"),
    (".result.train_state.model_state", "the model's state (batch-norm statistics) differs (another model?)"),
    (".result.train_state.opt_state", "the optimizer's state differs (another optimizer?)"),
    (".result.train_state.ema_", "the moving average of the params differs (trainer.ema added or removed?)"),
    (".result.train_state.loss_scale", "the loss scale's state differs (compute_dtype float16 added or removed?)"),
)


def describe(trainer: Trainer, loop: Loop, settings: Settings, data: RunData, epochs: int) -> dict:
    """The run's description, stored as the checkpoint's metadata (JSON).

    Returns:
      ``{"settings": {name: value}, "arrays": {path: "dtype[shape]"}}``: the settings
      that decide the run's numbers — fit's options that a resumed run must match
      (``fnn.options``), the loss, every number in the trainer
      (``trainer.optimizer.lr.value``, ``trainer.ema.decay``, ...), every static field of
      its configuration objects (:func:`static_fields`), the run key, a digest of the
      data — and the arrays of the carry outside the histories.
    """
    static = [name for name in names(STATIC, on_resume=SAME) if name in Settings.__dataclass_fields__]
    settings_used = {
        "epochs": epochs,
        "examples": int(data.x.shape[0]),
        "validation examples": 0 if data.validation is None else int(data.validation[0].shape[0]),
        **{name: _json(getattr(settings, name)) for name in static},
        **{name: repr(float(getattr(data, name))) for name in names(TRACED, scalar=True)},
        "history": sorted(loop.result.history),
        "loss": getattr(trainer.loss, "__name__", type(trainer.loss).__name__),
        "key": np.asarray(jax.random.key_data(loop.result.train_state.key)).tolist(),
        "data (SHA-256)": digest((data.x, data.y, data.validation)),
    }
    settings_used |= describe_trainer(trainer)
    without_history = loop._replace(result=loop.result._replace(history={}))
    arrays = {
        jax.tree_util.keystr(path): spec(leaf) for path, leaf in jax.tree_util.tree_leaves_with_path(without_history)
    }
    return {"settings": settings_used, "arrays": arrays}


def describe_trainer(trainer: Trainer) -> dict:
    """Every number in the trainer (``trainer.optimizer.lr.value``, ...) and the static
    fields of its configuration objects (:func:`static_fields`), by path: what a resumed
    run's trainer must match."""
    numbers = {
        "trainer" + jax.tree_util.keystr(path): np.asarray(leaf).tolist()
        for path, leaf in jax.tree_util.tree_leaves_with_path(trainer)
    }
    return numbers | static_fields(trainer)


def static_fields(obj, path: str = "trainer") -> dict[str, str]:
    """The static fields of ``obj``'s configuration objects (fnn's pytree dataclasses), by path.

    Static fields (``nesterov``, an activation's name, layer sizes, the EMA's ``debias``
    and ``evaluate``, the loss and metrics) are part of the compiled program, not
    leaves, so a resumed call must match them too.

    Args:
      obj: the trainer (or any pytree of dataclasses, tuples, lists and dicts).
      path: the name of ``obj`` in the keys.
    Returns:
      ``{"trainer.optimizer.nesterov": "False", "trainer.ema.debias": "True", ...}``:
      each value by its ``repr`` with memory addresses left out (a function's ``repr``
      holds its address, which differs between processes).
    """
    found: dict[str, str] = {}
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        for field in dataclasses.fields(obj):
            value, where = getattr(obj, field.name), f"{path}.{field.name}"
            if is_static(field):
                found[where] = re.sub(r" at 0x[0-9a-fA-F]+", "", repr(value))
            else:
                found |= static_fields(value, where)
    elif isinstance(obj, (tuple, list)):
        for i, value in enumerate(obj):
            found |= static_fields(value, f"{path}[{i}]")
    elif isinstance(obj, dict):
        for key, value in obj.items():
            found |= static_fields(value, f"{path}[{key!r}]")
    return found


def _json(value):
    """A setting as stored in the description: JSON scalars as they are, others by ``repr``."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)


def digest(arrays) -> str:
    """A short SHA-256 of the arrays' dtypes, shapes and bytes (``None`` leaves skipped)."""
    sha = hashlib.sha256()
    for leaf in jax.tree.leaves(arrays):
        host = np.ascontiguousarray(leaf)
        sha.update(f"{host.dtype}{host.shape}".encode())
        sha.update(host.tobytes())
    return sha.hexdigest()[:16]


def spec(leaf) -> str:
    if jnp.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        return f"key<{jax.random.key_impl(leaf)}>{list(leaf.shape)}"
    return f"{leaf.dtype}{list(leaf.shape)}"


def restore(path, like: Loop, description: dict) -> Loop:
    """Restore the loop saved at ``path`` for a call described by ``description``.

    Args:
      path: the checkpoint file.
      like: the call's initial loop (structure, shapes, dtypes).
      description: ``describe(...)`` of the call.
    Returns:
      the restored loop, its histories extended to the call's ``epochs``.
    Raises:
      ValueError: naming the setting or array that differs between the file and the call.
      fnn.checkpoint.CheckpointError: a damaged file.
    """
    header, _ = checkpoint_lib.read(path)
    saved = header.get("metadata") or {}
    if set(saved) != {"settings", "arrays"}:
        raise ValueError(f"checkpoint {path} was not written by fnn.fit (no run description); cannot resume from it")
    compare(path, saved, description)
    saved_epochs = saved["settings"]["epochs"]
    old = like._replace(result=like.result._replace(history=_resized(like.result.history, saved_epochs)))
    loop = checkpoint_lib.restore(path, like=old)
    return loop._replace(
        result=loop.result._replace(history=_resized(loop.result.history, description["settings"]["epochs"]))
    )


def compare(path, saved: dict, call: dict, extendable: tuple[str, ...] = names(on_resume=LARGER)):
    """Raise ValueError for the first difference between the saved run and this call:
    the carried arrays first (another model or optimizer), then the settings (a setting
    in ``extendable`` may be larger in the call: a run extended to more epochs)."""
    for key in [*call["arrays"], *(k for k in saved["arrays"] if k not in call["arrays"])]:  # tree order
        was, now = saved["arrays"].get(key, "nothing"), call["arrays"].get(key, "nothing")
        if was != now:
            reason = next((text for prefix, text in _PARTS if key.startswith(prefix)), "the run's state differs")
            where = key.replace(".result.train_state.", "")
            raise ValueError(
                f"cannot resume from {path}: {reason}: {where} is {was} in the checkpoint, {now} in this call"
            )
    settings = call["settings"] | {name: None for name in saved["settings"] if name not in call["settings"]}
    for name, value in settings.items():  # a setting of the checkpoint alone (privacy removed, say) differs too
        was = saved["settings"].get(name)
        if name in extendable and isinstance(was, int) and was <= value:
            continue  # extending a run is allowed
        if was != value:
            hint = f": pass epochs >= {was} to resume it" if name == "epochs" and name in extendable else ""
            raise ValueError(
                f"cannot resume from {path}: the checkpoint was written for {name}={was!r}; "
                f"this call has {name}={value!r}{hint}"
            )


def _resized(history: dict, epochs: int) -> dict:
    """Histories cut or padded with NaN to ``epochs`` entries."""
    return {
        k: jnp.concatenate([h[:epochs], jnp.full((max(epochs - h.shape[0], 0),), np.nan, h.dtype)])
        for k, h in history.items()
    }
