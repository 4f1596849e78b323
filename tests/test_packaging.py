"""The built distributions hold all of fnn, and the runtime dependencies are what it imports.

An editable install hides a package left out of the wheel (it imports from the source
tree); here the wheel and the sdist are built from a copy of the sources with setuptools'
own build hooks (no network, no pip) and their file lists compared with the tree's.
.ci/run also installs the wheel into a fresh environment and runs tests/smoke.py.
"""

import ast
import shutil
import subprocess
import sys
import tarfile
import zipfile
from email.parser import Parser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "fnn").rglob("*.py"))


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[zipfile.ZipFile, tarfile.TarFile]:
    """The wheel and the sdist of a copy of the sources."""
    tree = tmp_path_factory.mktemp("source")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, tree / name)
    shutil.copytree(ROOT / "fnn", tree / "fnn", ignore=shutil.ignore_patterns("__pycache__"))
    out = tree / "dist"
    out.mkdir()
    for hook in ("build_wheel", "build_sdist"):  # one process each (a second build in one process writes nothing)
        code = f"import setuptools.build_meta as b, sys; b.{hook}(sys.argv[1])"
        done = subprocess.run([sys.executable, "-c", code, str(out)], cwd=tree, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    (wheel,), (sdist,) = out.glob("*.whl"), out.glob("*.tar.gz")
    return zipfile.ZipFile(wheel), tarfile.open(sdist)


def test_the_wheel_holds_every_module_and_py_typed(built):
    names = set(built[0].namelist())
    packages = sorted({str(Path(p).parent) for p in SOURCES})
    assert len(packages) >= 3  # fnn, fnn.layers, fnn.sweeps at least
    assert [p for p in SOURCES if p not in names] == []
    assert "fnn/py.typed" in names


def test_the_sdist_holds_every_module_and_py_typed(built):
    names = {name.split("/", 1)[1] for name in built[1].getnames() if "/" in name}
    assert [p for p in SOURCES if p not in names] == []
    assert "fnn/py.typed" in names and "pyproject.toml" in names


def _imported_at_module_level() -> set[str]:
    """Top-level names of the packages fnn's modules import when they are imported
    (imports inside functions are optional: scikit-learn, mnist1d)."""
    stdlib = set(sys.stdlib_module_names)
    names = set()
    for path in SOURCES:
        for node in ast.parse((ROOT / path).read_text()).body:
            if isinstance(node, ast.Import):
                names |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.split(".")[0])
    return names - stdlib - {"fnn", "__future__"}


def test_runtime_dependencies_are_what_fnn_imports(built):
    wheel = built[0]
    (metadata,) = [n for n in wheel.namelist() if n.endswith(".dist-info/METADATA")]
    requires = Parser().parsestr(wheel.read(metadata).decode()).get_all("Requires-Dist")
    runtime = {r.split(";")[0].split(">")[0].split("<")[0].split("=")[0].strip() for r in requires if "extra" not in r}
    # jaxlib has no module of its own to import (JAX loads it), but is pinned with jax
    assert runtime == _imported_at_module_level() | {"jaxlib"} == {"jax", "jaxlib", "numpy"}
    assert wheel.filename.endswith("-py3-none-any.whl")
