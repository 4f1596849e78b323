"""fnn.datasets: IDX parsing, the MNIST-family loaders (search, checksums, download), MNIST-1D."""

import gzip
import hashlib
import struct
import sys

import numpy as np
import pytest

from fnn import datasets
from fnn.datasets import Dataset, load_fashion_mnist, load_mnist, read_idx

STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CODES = {np.uint8: 0x08, np.int8: 0x09, np.int16: 0x0B, np.int32: 0x0C, np.float32: 0x0D, np.float64: 0x0E}


def idx_bytes(array) -> bytes:
    """IDX encoding of ``array``, written independently of the code under test."""
    array = np.asarray(array)
    header = bytes([0, 0, CODES[array.dtype.type], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write(path, content: bytes, gz: bool):
    path.write_bytes(gzip.compress(content, mtime=0) if gz else content)
    return path


def tiny_split(seed=0):
    rng = np.random.default_rng(seed)
    return [
        rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 5, dtype=np.uint8),
        rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        rng.integers(0, 10, 3, dtype=np.uint8),
    ]


@pytest.fixture
def no_env_data(tmp_path, monkeypatch):
    """No FNN_DATA, no system folder, and a user cache inside tmp_path (returned)."""
    monkeypatch.delenv("FNN_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {})
    return tmp_path / "cache" / "fnn"


# --- read_idx ----------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_round_trip(tmp_path, gz, dtype):
    array = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype) * (3 if dtype != np.uint8 else 1)
    # the name says nothing about compression: detection is by magic bytes
    out = read_idx(write(tmp_path / "data.bin", idx_bytes(array), gz))
    assert out.shape == array.shape and out.dtype == np.dtype(dtype) and out.dtype.isnative
    np.testing.assert_array_equal(out, array)
    out[0] = 0  # a writable array, not a view of an immutable buffer


def test_read_idx_one_dimensional(tmp_path):
    labels = np.array([3, 1, 4, 1, 5], np.uint8)
    np.testing.assert_array_equal(read_idx(write(tmp_path / "l.gz", idx_bytes(labels), True)), labels)


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda b: b[:-5], ["truncated", "1200 bytes", "1195"]),
        (lambda b: b + b"\x00\x00", ["trailing", "1200 bytes", "1202"]),
        (lambda b: b"\x08\x03" + b[2:], ["not an IDX file", "08 03 0c 03"]),
        (lambda b: b[:2] + b"\x07" + b[3:], ["not an IDX file", "00 00 07 03"]),
        (lambda b: b[:10], ["truncated IDX header", "16"]),
        (lambda b: b"", ["not an IDX file", "empty"]),
    ],
    ids=["truncated", "trailing", "magic", "dtype-code", "short-header", "empty"],
)
def test_read_idx_rejects_bad_files(tmp_path, gz, mutate, words):
    good = idx_bytes(np.zeros((10, 5, 6), np.int32))  # 1200 data bytes
    path = write(tmp_path / "broken-idx", mutate(good), gz)
    with pytest.raises(ValueError) as err:
        read_idx(path)
    for word in [str(path), *words]:
        assert word in str(err.value)


def test_read_idx_corrupt_gzip(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(idx_bytes(np.zeros((4, 4), np.uint8)))[:-6])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as err:
        read_idx(path)
    assert str(path) in str(err.value)


# --- MNIST-family loaders on small files -----------------------------------------------------


def write_split(directory, arrays, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for stem, array in zip(STEMS, arrays):
        write(directory / (stem + ".gz" if gz else stem), idx_bytes(array), gz)


def patch_checksums(monkeypatch, name, arrays, md5=True):
    for stem, array in zip(STEMS, arrays):
        content = idx_bytes(array)
        monkeypatch.setitem(datasets.CONTENT_SHA256[name], stem, hashlib.sha256(content).hexdigest())
        if md5:
            gz = gzip.compress(content, mtime=0)
            monkeypatch.setitem(datasets.GZ_MD5[name], stem, hashlib.md5(gz).hexdigest())


def test_checksum_mismatch_names_the_file(tmp_path):
    write_split(tmp_path, tiny_split())  # valid IDX files, not the real content
    with pytest.raises(ValueError) as err:
        load_mnist(tmp_path)
    message = str(err.value)
    assert "train-images-idx3-ubyte" in message and str(tmp_path) in message
    assert datasets.CONTENT_SHA256["mnist"]["train-images-idx3-ubyte"] in message
    assert hashlib.sha256(idx_bytes(tiny_split()[0])).hexdigest() in message


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gz"])
def test_loads_patched_split_from_directory(tmp_path, monkeypatch, gz):
    arrays = tiny_split()
    write_split(tmp_path, arrays, gz)
    patch_checksums(monkeypatch, "fashion-mnist", arrays, md5=False)
    ds = load_fashion_mnist(tmp_path)
    assert isinstance(ds, Dataset)
    for got, want in zip(ds, arrays):
        np.testing.assert_array_equal(got, want)
        assert got.dtype == np.uint8


def test_missing_files_are_listed(tmp_path, no_env_data):
    (tmp_path / "partial").mkdir()
    write(tmp_path / "partial" / STEMS[1], idx_bytes(tiny_split()[1]), False)
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(tmp_path / "partial")
    message = str(err.value)
    assert "3 of 4" in message and str(tmp_path / "partial") in message
    for stem in (STEMS[0], STEMS[2], STEMS[3]):
        assert stem in message
    assert f"{STEMS[1]}[.gz]" not in message
    assert "download=True" in message


def test_missing_message_lists_search_path(no_env_data, monkeypatch, tmp_path):
    monkeypatch.setenv("FNN_DATA", str(tmp_path / "shared"))
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "debian",)})
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist()
    message = str(err.value)
    places = [str(tmp_path / "shared" / "fashion-mnist"), str(tmp_path / "debian"), str(no_env_data / "fashion-mnist")]
    assert all(p in message for p in places)
    assert message.index(places[0]) < message.index(places[1]) < message.index(places[2])
    assert "FNN_DATA" in message and "apt-get install dataset-fashion-mnist" in message
    assert "4 of 4" in message


def test_search_order_env_then_system_then_cache(no_env_data, monkeypatch, tmp_path):
    env, system, cache = tiny_split(1), tiny_split(2), tiny_split(3)
    write_split(no_env_data / "fashion-mnist", cache)
    write_split(tmp_path / "debian", system)
    monkeypatch.setattr(datasets, "SYSTEM_DIRS", {"fashion-mnist": (tmp_path / "debian",)})
    patch_checksums(monkeypatch, "fashion-mnist", system, md5=False)
    np.testing.assert_array_equal(load_fashion_mnist().x_train, system[0])  # system before cache
    write_split(tmp_path / "shared" / "fashion-mnist", env)
    monkeypatch.setenv("FNN_DATA", str(tmp_path / "shared"))
    patch_checksums(monkeypatch, "fashion-mnist", env, md5=False)
    np.testing.assert_array_equal(load_fashion_mnist().x_train, env[0])  # FNN_DATA first


def test_download_from_file_mirror(tmp_path, monkeypatch, no_env_data):
    arrays = tiny_split()
    mirror = tmp_path / "mirror"
    write_split(mirror, arrays)
    monkeypatch.setitem(datasets.MIRRORS, "mnist", mirror.as_uri() + "/")
    patch_checksums(monkeypatch, "mnist", arrays)

    with pytest.raises(FileNotFoundError):
        load_mnist()
    ds = load_mnist(download=True)
    for got, want in zip(ds, arrays):
        np.testing.assert_array_equal(got, want)
    assert sorted(p.name for p in (no_env_data / "mnist").iterdir()) == sorted(f"{s}.gz" for s in STEMS)
    for path in mirror.iterdir():
        path.unlink()  # the cache now serves them, without a network
    np.testing.assert_array_equal(load_mnist().y_test, arrays[3])


def test_download_into_directory_and_md5_mismatch(tmp_path, monkeypatch):
    arrays = tiny_split()
    mirror = tmp_path / "mirror"
    write_split(mirror, arrays)
    monkeypatch.setitem(datasets.MIRRORS, "fashion-mnist", mirror.as_uri() + "/")
    patch_checksums(monkeypatch, "fashion-mnist", arrays)
    monkeypatch.setitem(datasets.GZ_MD5["fashion-mnist"], STEMS[2], "0" * 32)
    target = tmp_path / "target"
    with pytest.raises(ValueError) as err:
        load_fashion_mnist(target, download=True)
    message = str(err.value)
    assert "MD5 mismatch" in message and STEMS[2] in message and "0" * 32 in message
    assert hashlib.md5((mirror / f"{STEMS[2]}.gz").read_bytes()).hexdigest() in message
    # the files fetched before the bad one stay; the bad one and its temporary file do not
    assert sorted(p.name for p in target.iterdir()) == [f"{STEMS[0]}.gz", f"{STEMS[1]}.gz"]


def test_download_failure_is_an_oserror(tmp_path, monkeypatch):
    monkeypatch.setitem(datasets.MIRRORS, "mnist", (tmp_path / "nowhere").as_uri() + "/")
    with pytest.raises(OSError, match="could not download") as err:
        load_mnist(tmp_path / "target", download=True)
    assert STEMS[0] in str(err.value)
    assert list((tmp_path / "target").iterdir()) == []


# --- the real files ----------------------------------------------------------------------------


@pytest.mark.parametrize("loader, name", [(load_mnist, "mnist"), (load_fashion_mnist, "fashion-mnist")])
def test_real_data(shared_data, monkeypatch, loader, name):
    if not (shared_data / name).is_dir():
        pytest.skip(f"no {name}/ in {shared_data}")
    ds = loader(shared_data / name)
    assert [a.shape for a in ds] == [(60000, 28, 28), (60000,), (10000, 28, 28), (10000,)]
    assert all(a.dtype == np.uint8 for a in ds)
    for labels in (ds.y_train, ds.y_test):
        assert labels.min() == 0 and labels.max() == 9
    counts = np.bincount(ds.y_train, minlength=10)
    if name == "fashion-mnist":
        assert (counts == 6000).all() and (np.bincount(ds.y_test) == 1000).all()
    else:
        assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0

    monkeypatch.setenv("FNN_DATA", str(shared_data))
    monkeypatch.setenv("XDG_CACHE_HOME", "/nonexistent")
    via_env = loader()
    for a, b in zip(ds, via_env):
        np.testing.assert_array_equal(a, b)


# --- MNIST-1D and scikit-learn's sets ----------------------------------------------------------


def test_mnist1d_generates_caches_and_reloads(tmp_path, monkeypatch):
    pytest.importorskip("mnist1d")
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    ds = datasets.load_mnist1d(tmp_path)
    np.testing.assert_array_equal(np.random.get_state()[1], before)  # global RNG left alone
    assert [a.shape for a in ds] == [(4000, 40), (4000,), (1000, 40), (1000,)]
    assert [a.dtype for a in ds] == [np.float32, np.int32, np.float32, np.int32]
    assert set(np.unique(ds.y_train)) == set(range(10)) == set(np.unique(ds.y_test))
    assert np.isfinite(ds.x_train).all()
    assert [p.name for p in tmp_path.iterdir()] == ["mnist1d.npz"]

    def no_generation():
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(datasets, "_generate_mnist1d", no_generation)
    again = datasets.load_mnist1d(tmp_path)
    for a, b in zip(ds, again):
        np.testing.assert_array_equal(a, b)
        assert a.dtype == b.dtype


def test_mnist1d_default_cache_dir(monkeypatch, tmp_path, no_env_data):
    fake = {"x": np.zeros((4, 40)), "y": np.arange(4), "x_test": np.ones((2, 40)), "y_test": np.arange(2)}
    monkeypatch.setattr(datasets, "_generate_mnist1d", lambda: fake)
    ds = datasets.load_mnist1d()
    assert (no_env_data / "mnist1d" / "mnist1d.npz").is_file()
    assert ds.x_test.shape == (2, 40) and ds.y_train.dtype == np.int32


def test_missing_optional_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)  # makes the import fail
    with pytest.raises(
        ImportError, match=r"load_digits needs the 'scikit-learn' package: pip install 'fnn\[experiments\]'"
    ):
        datasets.load_digits()


def test_digits_and_diabetes():
    pytest.importorskip("sklearn")
    x, y = datasets.load_digits()
    assert x.shape == (1797, 64) and x.dtype == np.float32 and 0 <= x.min() and x.max() == 16
    assert y.shape == (1797,) and y.dtype == np.int32 and set(np.unique(y)) == set(range(10))
    x, y = datasets.load_diabetes()
    assert x.shape == (442, 10) and x.dtype == np.float32
    assert y.shape == (442,) and y.dtype == np.float32 and 25 <= y.min() and y.max() <= 346
