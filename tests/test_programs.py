"""fnn.programs: the persistent compilation cache (a second process loads what the first
compiled; another JAX version's entries are never read; a bad folder is a clear error)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import pytest

import fnn
from fnn.programs import default_cache_dir, use_compilation_cache

CHILD = Path(__file__).with_name("_cache_child.py")
WORKLOADS = ("fit", "sweep", "halving", "pbt")


def _child(cache: Path, *names: str) -> dict:
    """Run tests/_cache_child.py on ``cache`` (workloads ``names``, default all) in a fresh process; its report."""
    env = os.environ | {"PYTHONPATH": os.pathsep.join([str(CHILD.parents[1]), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, str(CHILD), str(cache), *names], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_a_second_process_loads_every_program_and_another_versions_cache_is_not_read(tmp_path):
    cold = _child(tmp_path)
    warm = _child(tmp_path)
    folder = Path(cold["folder"])
    assert folder.parent == tmp_path and folder.name.startswith(f"jax-{jax.__version__}-jaxlib-")
    for name in WORKLOADS:
        assert cold[name]["misses"] > 0, name  # compiled, and written
        assert warm[name]["misses"] == 0 and warm[name]["hits"] == cold[name]["misses"], (name, warm[name])
        assert warm[name]["digest"] == cold[name]["digest"], name  # the loaded programs compute the same bits
    # the same entries under another version's folder name: a fresh process compiles everything again
    folder.rename(tmp_path / "jax-0.0.0-jaxlib-0.0.0")
    other = _child(tmp_path, "fit")
    assert other["fit"]["hits"] == 0 and other["fit"]["misses"] == cold["fit"]["misses"]


def test_an_unwritable_cache_folder_is_an_error_that_names_it(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    before = jax.config.jax_compilation_cache_dir
    with pytest.raises(ValueError, match=f"cannot write the compilation cache folder {blocker}/jax-"):
        use_compilation_cache(blocker)
    assert jax.config.jax_compilation_cache_dir == before  # nothing was turned on


def test_the_default_folder_comes_from_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("FNN_COMPILATION_CACHE", str(tmp_path / "cache"))
    assert default_cache_dir() == tmp_path / "cache"
    monkeypatch.delenv("FNN_COMPILATION_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "fnn" / "compilation"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path.home() / ".cache" / "fnn" / "compilation"
    assert fnn.programs.use_compilation_cache is use_compilation_cache  # public, as README says
