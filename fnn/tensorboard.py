"""TensorBoard event files from fnn's results, written on the host after a run.

A history (``{name: [epochs] array}``: ``loss``, the metrics, ``lr``, ``val_*``) becomes one
scalar per entry and epoch, at step = the epoch's index (0-based), stored as float32 as
TensorBoard stores every scalar; a NaN (an epoch that did not run) is skipped. Each run is a
folder; ``tensorboard --logdir DIR`` shows every run under ``DIR``:

- :func:`write_history` / :func:`write_fit`: one run. ``start_epoch`` / ``end_epoch`` write
  part of a history, so a run can be written as it goes — after each compiled call of a run
  split into chunks, the epochs the call ran — each call adding an event file to the run's
  folder (TensorBoard reads them all).
- :func:`write_sweep`: a run per member, named by its hyperparameters and seed
  (``lr=0.001,l2=0.0001,seed=3``), and the HParams dashboard: the experiment's
  hyperparameters and metrics (in ``DIR`` itself) and each run's hyperparameter values
  (its session), marked failed where the member diverged. The dashboard lists each run's
  last value of every metric — its final one.
- :func:`write_pbt`: a run per member (``member=3``), its history and, per epoch, the value
  of each hyperparameter that epoch trained with (``pbt/lr``) and the member whose run
  trained it (``pbt/member``) — PBT copies histories with the state, so a member's history
  before its last copy is its ancestors'.

The writer is tensorboardX (``pip install 'fnn[tensorboard]'``), imported when a function
is called, so fnn imports without it: of the two writers that need no TensorFlow it brings
the fewest packages (numpy, packaging, protobuf; ``tensorboard`` itself brings grpcio,
werkzeug, markdown, pillow, absl-py and its data server). The files are TensorBoard's own
format (TFRecords of ``Event`` protos); the viewer, ``pip install tensorboard``, may live
wherever you look at them.
"""

from __future__ import annotations

import math
import os
import secrets
import time
from collections.abc import Mapping, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from fnn.checks import check_int

__all__ = ["write_fit", "write_history", "write_pbt", "write_sweep"]

_PLUGIN = "hparams"  # the HParams dashboard's plugin name, tags and data version
_EXPERIMENT = "_hparams_/experiment"
_SESSION_START = "_hparams_/session_start_info"
_SESSION_END = "_hparams_/session_end_info"
_VERSION = 0


def write_history(
    logdir: str | os.PathLike[str],
    history: Mapping[str, Any],
    *,
    start_epoch: int = 0,
    end_epoch: int | None = None,
    hparams: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """Write one run's history, epochs ``[start_epoch, end_epoch)``, to the run folder ``logdir``.

    Args:
      logdir: the run's folder (created with its parents if missing); each call adds an
        event file to it.
      history: ``{name: [epochs] array}`` (a ``FitResult.history``); NaN entries are skipped.
      start_epoch, end_epoch: the epochs to write (default: all); write each epoch once.
      hparams: ``{name: number, str or bool}``: the run's hyperparameters for the HParams
        dashboard (its session); give them once per run.
      metrics: with ``hparams``, the history entries the dashboard lists as metrics (an
        experiment summary in ``logdir``; give it for one run of a group only: TensorBoard
        reads the first it finds). Default: TensorBoard lists every scalar of the runs that
        have hparams.

    Returns:
      the run's folder, as a str.

    Raises:
      ValueError: naming the argument, before anything is written: ``logdir`` not a folder
        path, ``history`` not a mapping of 1-D arrays of one length, epochs outside
        ``0 <= start_epoch <= end_epoch <= epochs``, an hparam value that is not a number,
        str or bool, ``metrics`` without ``hparams`` or naming an entry the history lacks.
      ImportError: without tensorboardX (``pip install 'fnn[tensorboard]'``).
    """
    folder, summaries = _run(logdir, history, start_epoch, end_epoch, hparams, metrics)
    _write(folder, summaries)
    return folder


def write_fit(
    logdir: str | os.PathLike[str],
    result: Any,
    *,
    hparams: Mapping[str, Any] | None = None,
    metrics: Sequence[str] | None = None,
) -> str:
    """Write a ``FitResult``'s history to the run folder ``logdir`` (:func:`write_history`);
    with ``hparams``, its HParams session ends failed if the run diverged.

    Args:
      logdir: the run's folder (created if missing).
      result: what ``fnn.fit`` returns (one run: histories [epochs]).
      hparams, metrics: as for :func:`write_history`.

    Returns:
      the run's folder, as a str.

    Raises:
      ValueError: for a result with a member axis (use :func:`write_sweep`), and as
        :func:`write_history`.
      ImportError: without tensorboardX (``pip install 'fnn[tensorboard]'``).
    """
    one_run = isinstance(getattr(result, "history", None), Mapping) and np.ndim(getattr(result, "diverged", ())) == 0
    if not one_run:
        raise ValueError(
            "result must be one run's FitResult (what fnn.fit returns); for a sweep's stacked results use write_sweep"
        )
    folder, summaries = _run(logdir, result.history, 0, None, hparams, metrics)
    _write(folder, summaries + ([] if hparams is None else _session_end(bool(result.diverged))))
    return folder


def write_sweep(logdir: str | os.PathLike[str], table: Any) -> list[str]:
    """Write a ``SweepResult``: one run per member under ``logdir``, named by its
    hyperparameters and seed, and the HParams dashboard's experiment and sessions.

    Args:
      logdir: the experiment's folder (created if missing).
      table: what ``fnn.sweep`` returns: ``table.hyperparameters`` ``{name: [members]}``
        with ``seed``, ``table.results`` a ``FitResult`` with histories [members, epochs].

    Returns:
      the members' run folders, in member order. Runs are named ``name=value,...`` in the
      order of ``table.hyperparameters`` with values to 6 significant digits (more where
      two members would share a name, then ``,member=i``).

    Raises:
      ValueError: naming ``table``, for one without per-member hyperparameters and histories.
      ImportError: without tensorboardX (``pip install 'fnn[tensorboard]'``).
    """
    folder = _folder(logdir)
    hyper, members = _members(table, "table", "fnn.sweep")
    histories = _member_histories(table.results, members, "table")
    epochs = next(iter(histories.values())).shape[1]
    names = _run_names(hyper, members)
    hparams = [{k: _value(v[i]) for k, v in hyper.items()} for i in range(members)]
    metrics = [name for name in histories if name != "lr"]
    _write(folder, _experiment({k: [h[k] for h in hparams] for k in hyper}, metrics, domains=True))
    diverged = np.asarray(table.results.diverged).reshape(-1)
    runs = []
    for i in range(members):
        run = os.path.join(folder, names[i])
        scalars = _scalars({name: h[i] for name, h in histories.items()}, range(epochs))
        _write(_folder(run), scalars + _session(hparams[i], time.time()) + _session_end(diverged[i]))
        runs.append(run)
    return runs


def write_pbt(logdir: str | os.PathLike[str], result: Any, *, interval: int) -> list[str]:
    """Write a ``PBTResult``: one run per member under ``logdir`` (``member=j``) with its
    history and, per epoch, each hyperparameter's value (``pbt/<name>``) and the member
    whose run trained that epoch (``pbt/member``).

    Member ``j``'s history holds, for each interval ``i``, the epochs trained by member
    ``result.lineage(j)[i]`` (whose state ``j`` carries), with that member's
    hyperparameters of interval ``i``; those are the values written. A ``PBTResult`` does
    not record the interval, hence the argument.

    Args:
      logdir: the experiment's folder (created if missing).
      result: what ``fnn.pbt`` returns.
      interval: the ``interval`` the run was given (epochs between exploit steps).

    Returns:
      the members' run folders, in member order.

    Raises:
      ValueError: naming the argument: a ``result`` that is not a ``PBTResult``, an
        ``interval`` that does not split the history's epochs into the result's intervals.
      ImportError: without tensorboardX (``pip install 'fnn[tensorboard]'``).
    """
    folder = _folder(logdir)
    hyper, members = _members(result, "result", "fnn.pbt")
    if not callable(getattr(result, "lineage", None)):
        raise ValueError("result must be what fnn.pbt returns (a PBTResult)")
    histories = _member_histories(result.results, members, "result")
    trajectories = {k: np.asarray(v) for k, v in hyper.items() if k != "seed"}
    intervals, epochs = len(result.parents), len(next(iter(histories.values()))[0])
    interval = check_int("interval", interval)
    if -(-epochs // interval) != intervals:
        raise ValueError(
            f"interval={interval} splits the {epochs} epochs into {-(-epochs // interval)} intervals; the result "
            f"has {intervals}: give the interval fnn.pbt ran with"
        )
    of_epoch = np.arange(epochs) // interval  # each epoch's interval
    runs = []
    width = len(str(members - 1))
    for j in range(members):
        run = os.path.join(folder, f"member={j:0{width}d}")
        values = {name: h[j] for name, h in histories.items()}
        ran = ~np.all([np.isnan(v) for v in values.values()], axis=0)
        trainer = np.asarray(result.lineage(j))[of_epoch]  # who trained each epoch
        values |= {f"pbt/{k}": np.where(ran, v[of_epoch, trainer], np.nan) for k, v in trajectories.items()}
        values["pbt/member"] = np.where(ran, trainer, np.nan)
        _write(_folder(run), _scalars(values, range(epochs)))
        runs.append(run)
    return runs


# -- checks ---------------------------------------------------------------------------


def _run(logdir, history, start_epoch, end_epoch, hparams, metrics) -> tuple[str, list[tuple[int, Any]]]:
    """:func:`write_history`'s arguments checked, and what it writes: ``(folder, summaries)``."""
    folder = _folder(logdir)
    values, epochs = _history(history)
    start = check_int("start_epoch", start_epoch, minimum=0)
    end = epochs if end_epoch is None else check_int("end_epoch", end_epoch, minimum=0)
    if not start <= end <= epochs:
        raise ValueError(
            f"start_epoch and end_epoch must satisfy 0 <= start_epoch <= end_epoch <= {epochs} (the history's "
            f"epochs); got start_epoch={start}, end_epoch={end}"
        )
    if metrics is not None and hparams is None:
        raise ValueError("metrics= lists the HParams dashboard's metrics: it needs hparams= too")
    checked = None if hparams is None else _hparams(hparams)
    names = None if metrics is None else _metrics(metrics, values)
    summaries = _scalars(values, range(start, end))
    if checked is not None:
        summaries += _session(checked, time.time())
    if checked is not None and names is not None:  # the types only: other runs' values are not known here
        summaries += _experiment({k: [v] for k, v in checked.items()}, names, domains=False)
    return folder, summaries


def _folder(logdir) -> str:
    """``logdir`` as a str, checked: a path that is not a file (created later, when written)."""
    try:
        path = os.fspath(logdir)
    except TypeError:
        path = ""
    if not isinstance(path, str) or not path:
        raise ValueError(f"logdir must be a folder path (a non-empty str or os.PathLike); got {logdir!r}")
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"logdir={path!r} exists and is not a folder")
    return path


def _history(history) -> tuple[dict[str, np.ndarray], int]:
    """``history`` as ``{name: [epochs] float64}`` and its number of epochs, checked."""
    if not isinstance(history, Mapping) or not history:
        raise ValueError(f"history must be a non-empty mapping {{name: [epochs] array}}; got {type(history).__name__}")
    values = {}
    for name, h in history.items():
        h = np.asarray(h)
        if not isinstance(name, str) or h.ndim != 1 or not np.issubdtype(h.dtype, np.number):
            raise ValueError(
                f"history[{name!r}] must be a 1-D array of numbers, [epochs]; got shape {h.shape}, dtype {h.dtype}"
            )
        values[name] = h.astype(np.float64)
    lengths = {len(h) for h in values.values()}
    if len(lengths) > 1:
        raise ValueError(f"history's entries must have one length (the epochs); got {sorted(lengths)}")
    return values, lengths.pop()


def _hparams(hparams) -> dict[str, float | str | bool]:
    """``hparams`` checked: names to numbers, strs or bools (NumPy scalars as Python's)."""
    if not isinstance(hparams, Mapping):
        raise ValueError(f"hparams must be a mapping {{name: value}}; got {type(hparams).__name__}")
    out = {}
    for name, v in hparams.items():
        if isinstance(v, (str, bool, np.bool_)) or (np.ndim(v) == 0 and isinstance(np.asarray(v).item(), (int, float))):
            out[str(name)] = _value(v)
        else:
            raise ValueError(f"hparams[{name!r}] must be a number, a str or a bool; got {v!r}")
    return out


def _metrics(metrics, values: dict) -> list[str]:
    """``metrics`` checked: a sequence of history names."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    unknown = [m for m in names if m not in values]
    if not names or unknown:
        raise ValueError(f"metrics must name entries of the history {list(values)}; got {metrics!r}")
    return names


def _members(result, name: str, maker: str) -> tuple[dict[str, np.ndarray], int]:
    """``result.hyperparameters`` (with ``seed``) as arrays, and the number of members."""
    hyper = getattr(result, "hyperparameters", None)
    if not isinstance(hyper, Mapping) or "seed" not in hyper or not hasattr(result, "results"):
        raise ValueError(f"{name} must be what {maker} returns; got {type(result).__name__}")
    hyper = {k: np.asarray(v) for k, v in hyper.items()}
    return hyper, len(hyper["seed"])


def _member_histories(results, members: int, name: str) -> dict[str, np.ndarray]:
    """``results.history`` checked: ``{name: [members, epochs]}`` of numbers."""
    history = getattr(results, "history", None)
    if not isinstance(history, Mapping) or not history:
        raise ValueError(f"{name}.results must be a FitResult with a member axis; got {type(results).__name__}")
    values = {k: np.asarray(h, np.float64) for k, h in history.items()}
    shapes = {h.shape for h in values.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 2 or next(iter(shapes))[0] != members:
        raise ValueError(f"{name}.results.history must hold [{members}, epochs] arrays; got shapes {sorted(shapes)}")
    return values


# -- names and values -----------------------------------------------------------------


def _value(v) -> float | str | bool:
    """A hyperparameter as the dashboard shows it: a str or bool as is, a number as the
    float its shortest repr in its own dtype gives (a float32 ``0.001`` as ``0.001``, not
    ``0.0010000000474974513``)."""
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    return float(str(np.asarray(v)[()]))


def _run_names(hyper: dict[str, np.ndarray], members: int) -> list[str]:
    """Each member's run name, ``name=value,...``: 6 significant digits, 17 where two
    members would share a name, and ``,member=i`` after names still shared."""
    for digits in (6, 17):
        names = [",".join(f"{k}={_label(v[i], digits)}" for k, v in hyper.items()) for i in range(members)]
        if len(set(names)) == members:
            return names
    return [f"{name},member={i}" for i, name in enumerate(names)]


def _label(v, digits: int) -> str:
    """A hyperparameter in a run name: a number to ``digits`` significant digits (``3``,
    ``0.001``, ``1e-05``), a str or bool as is."""
    value = _value(v)
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


# -- summaries ------------------------------------------------------------------------


def _tensorboardx() -> SimpleNamespace:
    """tensorboardX's synchronous event writer and protos, or an ImportError that says how
    to install them."""
    try:
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import api_pb2, event_pb2, plugin_hparams_pb2, summary_pb2, tensor_pb2, types_pb2
    except ImportError as error:
        raise ImportError(
            "fnn.tensorboard writes event files with tensorboardX: pip install 'fnn[tensorboard]'"
        ) from error
    return SimpleNamespace(
        EventsWriter=EventsWriter,
        api=api_pb2,
        event=event_pb2,
        hparams=plugin_hparams_pb2,
        summary=summary_pb2,
        tensor=tensor_pb2,
        types=types_pb2,
    )


def _write(folder: str, summaries: list[tuple[int, Any]]) -> None:
    """Write ``(step, Summary)`` pairs to a new event file in ``folder`` (created if missing)."""
    tbx = _tensorboardx()
    os.makedirs(folder, exist_ok=True)
    # the file is named by the second and host; the random suffix keeps two writes in one second apart
    writer = tbx.EventsWriter(os.path.join(folder, "events"), f".{secrets.token_hex(4)}")
    try:
        for step, summary in summaries:
            writer.write_event(tbx.event.Event(wall_time=time.time(), step=step, summary=summary))
    finally:
        writer.close()


def _scalars(values: dict[str, np.ndarray], epochs) -> list[tuple[int, Any]]:
    """One Summary per epoch of ``epochs`` with each entry's value there (NaN skipped)."""
    summary = _tensorboardx().summary.Summary
    out = []
    for epoch in epochs:
        entries = [
            summary.Value(tag=name, simple_value=float(v[epoch]))
            for name, v in values.items()
            if not math.isnan(v[epoch])
        ]
        if entries:
            out.append((epoch, summary(value=entries)))
    return out


def _plugin_summary(tag: str, **data) -> list[tuple[int, Any]]:
    """A step-0 Summary holding HParamsPluginData(``data``) under ``tag``, with the empty
    float tensor TensorBoard's own hparams summaries carry as their value."""
    tbx = _tensorboardx()
    content = tbx.hparams.HParamsPluginData(version=_VERSION, **data).SerializeToString()
    metadata = tbx.summary.SummaryMetadata(
        plugin_data=tbx.summary.SummaryMetadata.PluginData(plugin_name=_PLUGIN, content=content)
    )
    empty = tbx.tensor.TensorProto(dtype=tbx.types.DT_FLOAT)
    empty.tensor_shape.dim.add(size=0)
    return [(0, tbx.summary.Summary(value=[tbx.summary.Summary.Value(tag=tag, metadata=metadata, tensor=empty)]))]


def _session(hparams: dict[str, float | str | bool], start: float) -> list[tuple[int, Any]]:
    """The HParams session start: the run's hyperparameter values."""
    info = _tensorboardx().hparams.SessionStartInfo(start_time_secs=start)
    for name, value in hparams.items():
        if isinstance(value, bool):
            info.hparams[name].bool_value = value
        elif isinstance(value, str):
            info.hparams[name].string_value = value
        else:
            info.hparams[name].number_value = value
    return _plugin_summary(_SESSION_START, session_start_info=info)


def _session_end(diverged: bool) -> list[tuple[int, Any]]:
    """The HParams session end: failed if the run diverged, else succeeded."""
    tbx = _tensorboardx()
    status = tbx.api.STATUS_FAILURE if diverged else tbx.api.STATUS_SUCCESS
    end = tbx.hparams.SessionEndInfo(status=status, end_time_secs=time.time())
    return _plugin_summary(_SESSION_END, session_end_info=end)


def _experiment(values: dict[str, list], metrics: list[str], *, domains: bool) -> list[tuple[int, Any]]:
    """The HParams experiment: each hyperparameter with its type (from ``values``: name ->
    the runs' values) and, with ``domains``, the values it takes; and the metrics' tags."""
    api = _tensorboardx().api
    infos = []
    for name, vs in values.items():
        if all(isinstance(v, bool) for v in vs):
            kind, domain = api.DATA_TYPE_BOOL, sorted(set(vs))
        elif all(isinstance(v, str) for v in vs):
            kind, domain = api.DATA_TYPE_STRING, sorted(set(vs))
        else:
            kind, domain = api.DATA_TYPE_FLOAT64, sorted({float(v) for v in vs})
        info = api.HParamInfo(name=name, type=kind)
        if domains:
            info.domain_discrete.extend(domain)
        infos.append(info)
    experiment = api.Experiment(
        hparam_infos=infos,
        metric_infos=[api.MetricInfo(name=api.MetricName(tag=m)) for m in metrics],
        time_created_secs=time.time(),
    )
    return _plugin_summary(_EXPERIMENT, experiment=experiment)
