"""Test configuration: float64 available, rank promotion an error, warnings fatal."""

import os
from pathlib import Path

import jax
import pytest

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(os.environ.get("FNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The folder with the MNIST-family IDX files; skips the test where it is absent."""
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA} (set FNN_DATA to the folder holding fashion-mnist/)")
    return SHARED_DATA
