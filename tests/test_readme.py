"""README's Python examples run as written (documentation that cannot rot)."""

import re
from pathlib import Path

import jax
import pytest
from jax.experimental.compilation_cache import compilation_cache

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def cache_in(tmp_path, monkeypatch):
    """README turns on the compilation cache: here in a temporary folder, off again after."""
    monkeypatch.setenv("FNN_COMPILATION_CACHE", str(tmp_path))
    yield tmp_path
    jax.config.update("jax_compilation_cache_dir", None)
    compilation_cache.reset_cache()


def test_readme_examples_run(capsys, cache_in):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    assert len(blocks) >= 3
    namespace = {}
    exec(compile("\n".join(blocks), str(README), "exec"), namespace)
    assert namespace["folder"].parent == cache_in and any(namespace["folder"].iterdir())
    assert namespace["result"].history["val_accuracy"][namespace["result"].best_epoch] > 0.9
    assert namespace["runs"].history["loss"].shape == (8, 20)
    assert len(namespace["table"].rows()) == 8
    assert namespace["halved"].member_epochs == 9 * 2 + 3 * 2 + 8 and namespace["halved"].rung.max() == 2
    assert namespace["population"].parents.shape == (4, 8)
    assert 1e-5 < namespace["test"].suggestion < 1.0
    assert all(row["members"] == 4 for row in namespace["table"].ensemble(namespace["config"], *namespace["held_out"]))
