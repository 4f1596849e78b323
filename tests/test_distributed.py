"""Devices: member and batch shardings, multi-host initialization and data shards.

The checks that need several devices or processes run in subprocesses (see
``tests/_multidevice_checks.py``), so this session keeps its single CPU device:

- 3 CPU devices from ``use_cpu_cores(3)``: a sweep runs on all three without a warning and
  equals the one-device sweep; a later call with another count is refused.
- 4 fake CPU devices (``XLA_FLAGS=--xla_force_host_platform_device_count=4``): a sweep
  sharded over them equals the one-device sweep; data-parallel ``fit`` equals one-device
  ``fit`` up to float reassociation; asking for 5 devices is an error.
- 2 processes over loopback (``jax.distributed`` with the CPU backend's gloo
  collectives): ``initialize``, gathering each process's shard, a jitted sum over a mesh
  spanning both, data-parallel ``fit`` across the processes, every member-running entry
  point over both against one device, refused data, checkpoints from process 0.
- marked ``processes`` (CI's second step, ``python -m pytest -q -m processes``): 4
  processes, 2 processes of 2 devices, and a process killed mid-sweep.

Both kinds start together (module fixture) and run while the in-process tests do.
"""

import json
import os
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import _multidevice_checks as checks
import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

import fnn
from fnn import distributed
from fnn.distributed import (
    ProcessInfo,
    UnusedCoresWarning,
    check_batch_divisible,
    data_parallel,
    initialize,
    member_sharding,
    process_shard,
    shard_for_process,
    use_cpu_cores,
)

ROOT = Path(__file__).resolve().parents[1]
CHECKS = Path(__file__).with_name("_multidevice_checks.py")
TIMEOUT = 300
MULTIHOST_VARIABLES = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _environment(**variables) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in (*MULTIHOST_VARIABLES, "XLA_FLAGS")}
    path = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    flags = " ".join(["--xla_backend_optimization_level=0", variables.pop("XLA_FLAGS", "")]).strip()  # as conftest
    return env | {"JAX_PLATFORMS": "cpu", "PYTHONPATH": path, "XLA_FLAGS": flags} | variables


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Launched:
    """Subprocesses running ``_multidevice_checks.py``; ``reports(i)`` waits for one.

    Their output goes to files, not pipes: a process of a multi-process run whose pipe
    filled up, unread while the test waits on another, would block its partners in their
    next collective."""

    def __init__(self, runs: list[tuple[str, dict]], folder: Path):
        self.outputs = [(folder / f"run{i}.out", folder / f"run{i}.err") for i in range(len(runs))]
        self.runs = []
        for (mode, env), (out, err) in zip(runs, self.outputs, strict=True):
            with open(out, "w") as stdout, open(err, "w") as stderr:
                command = [sys.executable, str(CHECKS), mode]
                self.runs.append(
                    subprocess.Popen(command, cwd=ROOT, env=_environment(**env), stdout=stdout, stderr=stderr)
                )
        self.done: dict = {}

    def reports(self, i: int) -> dict:
        """``{check name: report}`` of run ``i``; fails the test if the run crashed or hung."""
        if i not in self.done:
            process = self.runs[i]
            try:
                process.wait(timeout=TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            out, err = (path.read_text() for path in self.outputs[i])
            if process.returncode is None or process.returncode < 0:
                pytest.fail(f"{process.args} did not finish in {TIMEOUT} s\n{out[-3000:]}\n{err[-3000:]}")
            reports = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
            if process.returncode != 0 or not reports:
                pytest.fail(f"{process.args} exited with {process.returncode}\n{out[-3000:]}\n{err[-3000:]}")
            self.done[i] = {r["check"]: r for r in reports}
        return self.done[i]

    def close(self):
        for process in self.runs:
            if process.poll() is None:
                process.kill()
            process.wait()


def _processes(mode: str, count: int, shared_dir, devices: int = 1) -> list[tuple[str, dict]]:
    """The ``count`` processes of one multi-process run of ``mode`` over loopback."""
    port = _free_port()
    flags = {"XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"} if devices > 1 else {}
    return [
        (
            mode,
            {
                "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}",
                "JAX_NUM_PROCESSES": str(count),
                "JAX_PROCESS_ID": str(i),
                "FNN_TEST_SHARED_DIR": str(shared_dir),
            }
            | flags,
        )
        for i in range(count)
    ]


# the runs launched together, by index: 0 four devices, 1-2 two processes, 3 three cores;
# and by ``launched_more`` (marked ``processes``: CI's second step): 0-3 four processes of
# one device, 4-5 two processes of two devices
RUNS = {"devices": [0], "processes": [1, 2], "cores": [3], "processes4": [0, 1, 2, 3], "processes2x2": [4, 5]}


@pytest.fixture(scope="module")
def launched(tmp_path_factory):
    """One 4-device run, a 2-process run and a 3-core run, started together (see ``RUNS``)."""
    shared = tmp_path_factory.mktemp("processes")
    runs = Launched(
        [
            ("devices", {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"}),
            *_processes("processes", 2, shared),
            ("cores", {}),
        ],
        tmp_path_factory.mktemp("outputs"),
    )
    yield runs
    runs.close()


@pytest.fixture(scope="module")
def launched_more(tmp_path_factory):
    """A 4-process run and a run of 2 processes of 2 devices, started together."""
    shared = tmp_path_factory.mktemp("more_processes")
    runs = Launched(
        [*_processes("processes4", 4, shared), *_processes("processes2x2", 2, shared, devices=2)],
        tmp_path_factory.mktemp("more_outputs"),
    )
    yield runs
    runs.close()


def assert_passed(report: dict):
    assert report["ok"], f"{report['check']} failed in the subprocess:\n{report.get('error')}"


# ---------------------------------------------------------------------------- 4 devices


@pytest.mark.parametrize(
    "check",
    [
        "sweep_parallel",
        "halving_and_compaction_sharded",
        "pbt_sharded",
        "data_parallel_fit",
        "too_many_devices",
        "fit_checks_batch_divisible",
    ],
)
def test_on_four_devices(launched, check):
    """sweep_parallel: members 2 per device, allclose(rtol 1e-5, atol 1e-6) to one device;
    data_parallel_fit: the same tolerance to one-device fit; too_many_devices: errors."""
    assert_passed(launched.reports(RUNS["devices"][0])[check])


# ---------------------------------------------------------------------------- 2 processes


@pytest.mark.parametrize(
    "check",
    [
        "processes_initialized",
        "allgather_shards",
        "global_mesh_sum",
        "data_parallel_fit_over_processes",
        "different_data_refused",
        "checkpoints_from_process_zero",
    ],
)
def test_two_processes_over_loopback(launched, check):
    reports = [launched.reports(i)[check] for i in RUNS["processes"]]
    for report in reports:
        assert_passed(report)
    if check == "processes_initialized":
        assert [(r["index"], r["count"]) for r in reports] == [(0, 2), (1, 2)]
    if check == "allgather_shards":
        assert reports[0]["shard_sizes"] == [6, 5]  # 11 examples: the first process gets the extra one
    if check == "data_parallel_fit_over_processes":  # == fit on one device (run by the 4-device check)
        reference = launched.reports(RUNS["devices"][0])["data_parallel_fit"].get("reference")
        if reference is None:
            pytest.fail("the one-device reference comes from the 4-device data_parallel_fit check, which failed")
        for report in reports:
            for a, b in zip(report["numbers"], reference, strict=True):
                np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def one_device_runs():
    """``member_runs`` on one device of this process: the one-process results."""
    return checks.member_runs(devices=1)


@pytest.mark.parametrize(
    "mode",
    [
        "processes",
        pytest.param("processes4", marks=pytest.mark.processes),
        pytest.param("processes2x2", marks=pytest.mark.processes),
    ],
)
def test_members_over_processes_equal_one_process(request, one_device_runs, mode):
    """A sweep, a chunked sweep, halving, compaction, PBT and the LR range test over 2
    processes, and a sweep, halving and PBT over 4 processes and over 2 processes of 2
    devices: every process holds the whole result, equal to one device's (rtol 1e-5; stop
    and best epochs, rungs and PBT's parents exact)."""
    check = "members_over_processes" if mode == "processes" else "members_over_more_processes"
    launched = request.getfixturevalue("launched" if mode == "processes" else "launched_more")
    for i in RUNS[mode]:
        report = launched.reports(i)[check]
        assert_passed(report)
        for name, got in report["runs"].items():
            assert_runs_equal(got, one_device_runs[name], f"{mode} process {i}: {name}")


def assert_runs_equal(got: dict, expected: dict, where: str = ""):
    """Summaries (``_multidevice_checks.summary``) equal: epochs, rungs and parents exactly,
    params, histories and losses to rtol 1e-5."""
    for key in ("stop_epoch", "best_epoch", "rung", "parents"):
        assert got.get(key) == expected.get(key), (where, key)
    for key in ("params", "losses"):
        for a, b in zip(got.get(key, []), expected.get(key, []), strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=f"{where} {key}")
    for entry, values in expected.get("history", {}).items():
        np.testing.assert_allclose(got["history"][entry], values, rtol=1e-5, atol=1e-6, err_msg=f"{where} {entry}")


@pytest.mark.processes
def test_a_killed_process_ends_the_other_and_a_restart_resumes(tmp_path):
    """Two processes sweep, saving after every epoch; once a save exists, process 1 is
    killed (SIGKILL). Process 0 must end with an error within the heartbeat timeout (5 s)
    and a margin, not hang; both started again resume from the checkpoint and end with
    the one-device sweep's result."""
    shared = tmp_path / "shared"
    shared.mkdir()
    variables = {"FNN_TEST_HEARTBEAT": "5"}
    (tmp_path / "first").mkdir()
    runs = Launched([(mode, env | variables) for mode, env in _processes("fault", 2, shared)], tmp_path / "first")
    try:
        deadline = time.monotonic() + TIMEOUT
        while not (shared / "killed.ckpt").exists() and runs.runs[1].poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (shared / "killed.ckpt").exists(), "no checkpoint was written"
        runs.runs[1].kill()
        killed = time.monotonic()
        code = runs.runs[0].wait(timeout=60)
        ended = time.monotonic() - killed
    finally:
        runs.close()
    assert code != 0, "process 0 finished although process 1 was killed before the end"
    saved_calls = fnn.checkpoint.read(shared / "killed.ckpt")[0]["metadata"]["state"]["calls"]
    assert 1 <= saved_calls < checks.FAULT_EPOCHS, saved_calls  # the restart goes on from there
    (tmp_path / "again").mkdir()
    restarted = Launched([(mode, env | variables) for mode, env in _processes("fault", 2, shared)], tmp_path / "again")
    try:
        reports = [restarted.reports(i)["sweep_with_checkpoints"] for i in (0, 1)]
    finally:
        restarted.close()
    expected = checks.fault_reference()
    for i, report in enumerate(reports):
        assert_passed(report)
        assert_runs_equal(report["runs"]["sweep"], expected, f"process {i}")
    print(f"process 0 ended {ended:.1f} s after process 1 was killed")


# ---------------------------------------------------------------------------- every core


@pytest.mark.parametrize("check", ["three_devices", "sweep_on_every_core", "late_call_refused"])
def test_use_cpu_cores(launched, check):
    """three_devices: use_cpu_cores(3) gives 3 (and use_cpu_cores() keeps a forced XLA_FLAGS
    count, in the 4-device run); sweep_on_every_core: a 3-device sweep, no warning, equal
    to one device; late_call_refused: another count after the start is an error."""
    assert_passed(launched.reports(RUNS["cores"][0])[check])
    if check == "three_devices":
        assert_passed(launched.reports(RUNS["devices"][0])["forced_count_kept"])


@pytest.fixture
def fresh_warning(monkeypatch):
    """The once-per-process warning not yet given, on a machine said to have 4 cores."""
    monkeypatch.setattr(distributed, "_warned_cores", [])
    monkeypatch.setattr(distributed, "cpu_cores", lambda: 4)


def tiny_sweep(**options):
    x, y = np.random.default_rng(0).random((40, 4), np.float32), np.arange(40) % 3
    config = lambda lr=1e-2: fnn.Trainer(fnn.mlp([4, 3]), fnn.sgd(lr), fnn.cross_entropy)  # noqa: E731
    return fnn.sweep(config, x, y, seeds=2, epochs=1, batch_size=20, **options)


def test_sweep_on_one_cpu_device_says_once_how_to_use_the_cores(fresh_warning):
    with pytest.warns(UnusedCoresWarning, match=r"1 CPU device of the 4 cores.*use_cpu_cores\(\)") as caught:
        tiny_sweep()
    assert caught[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings(record=True) as later:
        warnings.simplefilter("always")
        tiny_sweep()
    assert not [w for w in later if w.category is UnusedCoresWarning]  # once per process


def test_sweep_with_devices_chosen_does_not_warn(fresh_warning):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tiny_sweep(devices=1)
    assert not [w for w in caught if w.category is UnusedCoresWarning]


def test_use_cpu_cores_after_start():
    """This session's backend has started with one CPU device: asking for that is fine,
    asking for another count says to move the call up."""
    assert use_cpu_cores(len(jax.devices("cpu"))) == 1
    with pytest.raises(RuntimeError, match="call fnn.distributed.use_cpu_cores\\(\\) first thing"):
        use_cpu_cores(2)


@pytest.mark.parametrize("n", [0, -1, 1.5, True, "2"])
def test_use_cpu_cores_names_a_bad_count(n):
    with pytest.raises(ValueError, match="n must be an int >= 1"):
        use_cpu_cores(n)


# ---------------------------------------------------------------------------- shardings on one device


def test_one_device_needs_no_member_sharding():
    assert member_sharding(None, 6) is None and member_sharding(1, 6) is None
    assert member_sharding([jax.devices()[0]], 6) is None


@pytest.mark.parametrize(
    "devices, match",
    [
        (len(jax.devices()) + 1, "more devices than exist"),
        (0, "devices must be >= 1"),
        ([], "non-empty list of jax devices"),
        ("cpu", "non-empty list of jax devices"),
        (2.0, "non-empty list of jax devices"),
        ([jax.devices()[0]] * 2, "must not repeat"),
    ],
)
def test_bad_devices_are_named(devices, match):
    for make in (lambda: member_sharding(devices, 6), lambda: data_parallel(devices)):
        with pytest.raises(ValueError, match=match):
            make()


def test_data_parallel_is_a_batch_axis_sharding():
    sharding = data_parallel()
    assert isinstance(sharding, NamedSharding) and sharding.spec == PartitionSpec("data")
    assert sharding.mesh.shape == {"data": len(jax.devices())}
    check_batch_divisible(7, sharding)  # one device: any batch splits
    check_batch_divisible(7, None)
    with pytest.raises(ValueError, match="batch_sharding must be a jax.sharding.NamedSharding"):
        check_batch_divisible(8, jax.devices()[0])


# ---------------------------------------------------------------------------- multi-host entry point


@pytest.fixture
def initialize_calls(monkeypatch):
    """Records the arguments of jax.distributed.initialize instead of starting anything."""
    calls = []
    monkeypatch.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    return calls


def multihost_env(address="10.0.0.1:1234", count="4", index="3"):
    values = dict(zip(MULTIHOST_VARIABLES, (address, count, index)))
    return {k: v for k, v in values.items() if v is not None}


def test_initialize_passes_the_variables_to_jax(initialize_calls, monkeypatch):
    assert initialize(multihost_env(count=" 4 ")) == ProcessInfo(3, 4)
    heartbeat = dict(heartbeat_timeout_seconds=distributed.HEARTBEAT_TIMEOUT)
    assert initialize_calls == [dict(coordinator_address="10.0.0.1:1234", num_processes=4, process_id=3) | heartbeat]
    for name, value in multihost_env(address="127.0.0.1:5555", count="2", index="0").items():
        monkeypatch.setenv(name, value)
    assert initialize(heartbeat_timeout=5) == (0, 2)  # os.environ by default
    assert initialize_calls[-1] == dict(
        coordinator_address="127.0.0.1:5555", num_processes=2, process_id=0, heartbeat_timeout_seconds=5
    )
    assert distributed.initialize_from_env is initialize  # the earlier name


def test_initialize_without_variables_defers_to_jax_cluster_detection(initialize_calls):
    """No variables: jax.distributed.initialize() with no address detects Slurm, Open MPI,
    Kubernetes, ... (here the fake detects a one-process cluster)."""
    assert initialize({}) == ProcessInfo(0, 1)
    assert initialize({"JAX_NUM_PROCESSES": " "}) == (0, 1)
    assert initialize_calls == [dict(heartbeat_timeout_seconds=distributed.HEARTBEAT_TIMEOUT)] * 2


def test_initialize_where_jax_detects_no_cluster_runs_alone(monkeypatch):
    def no_cluster(**kwargs):
        raise ValueError("coordinator_address should be defined.")  # JAX's words when it detects nothing

    monkeypatch.setattr(jax.distributed, "initialize", no_cluster)
    assert initialize({}) == ProcessInfo(0, 1)


def test_initialize_names_a_bad_heartbeat_timeout(initialize_calls):
    with pytest.raises(ValueError, match="heartbeat_timeout must be >= 1"):
        initialize({}, heartbeat_timeout=0)
    assert initialize_calls == []


@pytest.mark.parametrize(
    "variables, match",
    [
        (multihost_env(address=None), "JAX_COORDINATOR_ADDRESS is not set"),
        (multihost_env(count=None), "JAX_NUM_PROCESSES is not set"),
        (multihost_env(index=None), "JAX_PROCESS_ID is not set"),
        (multihost_env(count="four"), "JAX_NUM_PROCESSES must be an integer; got 'four'"),
        (multihost_env(index="1.0"), "JAX_PROCESS_ID must be an integer"),
        (multihost_env(count="0", index="0"), "JAX_NUM_PROCESSES must be >= 1"),
        (multihost_env(index="4"), r"JAX_PROCESS_ID must lie in \[0, 4\)"),
        (multihost_env(index="-1"), "JAX_PROCESS_ID must lie in"),
        (multihost_env(address="10.0.0.1"), "JAX_COORDINATOR_ADDRESS must be host:port"),
        (multihost_env(address=":1234"), "JAX_COORDINATOR_ADDRESS must be host:port"),
        (multihost_env(address="host:99999"), "JAX_COORDINATOR_ADDRESS must be host:port"),
    ],
)
def test_initialize_names_the_bad_variable(initialize_calls, variables, match):
    with pytest.raises(ValueError, match=match):
        initialize(variables)
    assert initialize_calls == []


# ---------------------------------------------------------------------------- data shards


@pytest.mark.parametrize("n", [0, 1, 7, 10, 101])
@pytest.mark.parametrize("count", [1, 2, 3, 4, 7])
def test_process_shards_partition_the_examples(n, count):
    parts = [process_shard(n, i, count) for i in range(count)]
    covered = np.concatenate([np.arange(n)[p] for p in parts])
    assert list(covered) == list(range(n))  # disjoint, in order, every example once
    sizes = [p.stop - p.start for p in parts]
    assert sizes == [n // count + (i < n % count) for i in range(count)]  # the first n % count get one more
    equal = [process_shard(n, i, count, drop_remainder=True) for i in range(count)]
    assert [(p.start, p.stop) for p in equal] == [(i * (n // count), (i + 1) * (n // count)) for i in range(count)]


def test_process_shard_defaults_to_this_process():
    assert process_shard(10) == slice(0, 10)  # one process: everything
    x, y = np.arange(20.0).reshape(10, 2), np.arange(10)
    xs, ys = shard_for_process((x, y), 1, 3)
    np.testing.assert_array_equal(xs, x[4:7])
    np.testing.assert_array_equal(ys, y[4:7])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: process_shard(-1, 0, 2), "n_examples must be an int >= 0"),
        (lambda: process_shard(10.0, 0, 2), "n_examples"),
        (lambda: process_shard(10, 0, 0), "process_count must be an int >= 1"),
        (lambda: process_shard(10, 2, 2), r"process_index must be an int in \[0, 2\)"),
        (lambda: process_shard(10, -1, 2), "process_index"),
        (lambda: shard_for_process((np.zeros(3), np.zeros(4)), 0, 2), "same number of examples"),
        (lambda: shard_for_process(np.float32(1.0), 0, 2), "same number of examples"),
    ],
)
def test_bad_shard_arguments_are_named(call, match):
    with pytest.raises(ValueError, match=match):
        call()
