"""Test configuration: float64 available, dtype promotion strict, rank promotion an error.

Warnings are errors too (``filterwarnings = ["error"]`` in pyproject.toml), as in
Equinox's test configuration: the library must not mix dtypes implicitly (a float32
array with a float64 one, an integer array with a float one) nor warn.

The tests compile hundreds of small programs and run each for milliseconds, so XLA's
backend optimization level is lowered: on 2 CPU cores this halves the suite's time
(compilation dominates), and equality tests compare programs built with the same flags.
Benchmarks and experiments do not go through this file and keep full optimization.
"""

import os
from pathlib import Path

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_backend_optimization_level=0").strip()

import jax  # noqa: E402  (XLA_FLAGS must be set before JAX starts its backend)
import pytest  # noqa: E402

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_numpy_dtype_promotion", "strict")
jax.config.update("jax_numpy_rank_promotion", "raise")

SHARED_DATA = Path(os.environ.get("FNN_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    """The folder with the MNIST-family IDX files; skips the test where it is absent."""
    if not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"no shared data folder at {SHARED_DATA} (set FNN_DATA to the folder holding fashion-mnist/)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def all_digits():
    """scikit-learn's 1,797 digits ``x, y``, scaled to [0, 1] (float32 ``x``, int32 ``y``)."""
    import numpy as np

    from fnn.datasets import load_digits

    x, y = load_digits()
    return x / np.float32(16.0), y


@pytest.fixture(scope="session")
def digits_300(all_digits):
    """300 training and 100 validation digits (scikit-learn), scaled to [0, 1]: the small
    real problem of the sweep tests (``x, y, x_val, y_val``)."""
    x, y = all_digits
    return x[:300], y[:300], x[300:400], y[300:400]


@pytest.fixture(scope="session")
def padded_batch():
    """A mini-batch ``x, y, w`` of 12 random examples of 5 features (float32) and 3 classes
    (int32), whose last 3 rows are padding (weight 0), as the last batch of an epoch is:
    the training-step tests' data."""
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 5)).astype(np.float32)
    y = rng.integers(0, 3, 12).astype(np.int32)
    w = np.ones(12, np.float32)
    w[-3:] = 0
    return x, y, w
