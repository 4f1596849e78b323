"""Datasets: the MNIST family from IDX files, MNIST-1D, and scikit-learn's bundled sets.

Everything here returns NumPy arrays on the host; turning them into training inputs
(scaling, splitting, standardizing, one-hot labels) is the job of :mod:`fnn.data`.

MNIST and Fashion-MNIST are read from the original IDX files (gzip-compressed or not),
looked up in this order, file by file:

1. the ``directory`` argument, if given (and then only there);
2. ``$FNN_DATA/<name>``, where ``<name>`` is ``mnist`` or ``fashion-mnist``;
3. for Fashion-MNIST, Debian's ``/usr/share/datasets/fashion-mnist``
   (``apt-get install dataset-fashion-mnist``);
4. the user cache, ``$XDG_CACHE_HOME/fnn/<name>`` or ``~/.cache/fnn/<name>``.

The SHA-256 of each file's *decompressed* content is checked against :data:`CONTENT_SHA256`,
so any gzip header (upstream's or Debian's) and an uncompressed copy are all accepted.
With ``download=True`` missing files are fetched from :data:`MIRRORS` into the cache (or
into ``directory``), checked against upstream's MD5 of the ``.gz`` (:data:`GZ_MD5`) and
written atomically. Optional packages (``mnist1d``, ``scikit-learn``) are imported only by
the functions that need them: ``pip install 'fnn[experiments]'``.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from fnn import files
from fnn.data import Dataset  # defined with the splits; re-exported here for the loaders' users

__all__ = [
    "Dataset",
    "read_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_mnist1d",
    "load_digits",
    "load_diabetes",
    "MIRRORS",
    "GZ_MD5",
    "CONTENT_SHA256",
    "SYSTEM_DIRS",
]


# ---------------------------------------------------------------------------------------
# IDX files
# ---------------------------------------------------------------------------------------

_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when it starts with the gzip magic bytes."""
    data = path.read_bytes()
    if data[:2] != _GZIP_MAGIC:
        return data
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, ValueError) as err:  # BadGzipFile is an OSError
        raise ValueError(f"{path}: corrupt or truncated gzip data ({err})") from err


def _parse_idx(data: bytes, path) -> np.ndarray:
    head = data[:4]
    if len(head) < 4 or head[:2] != b"\x00\x00" or head[2] not in _IDX_DTYPES or head[3] == 0:
        raise ValueError(
            f"{path}: not an IDX file; expected magic bytes 00 00 <type 08/09/0b/0c/0d/0e> <ndim>, "
            f"found {head.hex(' ') or 'an empty file'}"
        )
    dtype, ndim = _IDX_DTYPES[head[2]], head[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ValueError(f"{path}: truncated IDX header; expected {header} bytes, found {len(data)}")
    shape = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "trailing bytes after the data"
        raise ValueError(
            f"{path}: IDX payload size mismatch ({what}); header says shape {shape} of {dtype.name}, "
            f"i.e. {expected} bytes, but the file holds {actual}"
        )
    array = np.frombuffer(data, dtype, count=expected // dtype.itemsize, offset=header)
    return array.reshape(shape).astype(dtype.newbyteorder("="))  # a writable, native-order copy


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (as used by MNIST), gzip-compressed or raw, into a NumPy array.

    Compression is detected from the gzip magic bytes, not the file name. The header is
    two zero bytes, a type code (0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
    0x0D float32, 0x0E float64; multi-byte types big-endian), the number of dimensions
    and one big-endian uint32 per dimension.

    Returns:
      A writable array in native byte order with the shape from the header.

    Raises:
      ValueError: wrong magic bytes, corrupt gzip data, or a payload whose size is not
        exactly the product of the dimensions times the item size (names the file).
    """
    path = Path(path)
    return _parse_idx(_read_bytes(path), path)


# ---------------------------------------------------------------------------------------
# MNIST and Fashion-MNIST
# ---------------------------------------------------------------------------------------

_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

#: Base URLs of the upstream mirrors; ``<base><file>.gz`` is fetched. Point an entry
#: elsewhere (any ``urllib`` URL, ``file://`` included) to use another mirror.
MIRRORS = {
    "mnist": "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "fashion-mnist": "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
}

#: Upstream MD5 of each ``.gz`` file (torchvision; the Fashion-MNIST README).
GZ_MD5 = {
    "mnist": {
        "train-images-idx3-ubyte": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte": "ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
    },
}

#: SHA-256 of each file's decompressed IDX content.
CONTENT_SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}

#: System-wide install locations searched after ``$FNN_DATA`` (Debian's package).
SYSTEM_DIRS = {"fashion-mnist": (Path("/usr/share/datasets/fashion-mnist"),)}


def _cache_root() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "fnn"


def _search_dirs(name: str, directory) -> list[Path]:
    if directory is not None:
        return [Path(directory)]
    dirs = [Path(os.environ["FNN_DATA"]) / name] if os.environ.get("FNN_DATA") else []
    return dirs + list(SYSTEM_DIRS.get(name, ())) + [_cache_root() / name]


def _find(stem: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / stem, d / f"{stem}.gz"):
            if candidate.is_file():
                return candidate
    return None


def _atomic_write(target: Path, write) -> None:
    """Create ``target``'s folder, then write ``target`` atomically with ``write(file)``
    (``fnn.files``; the temporary is ``.<name>.<random>.part`` beside it)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    files.write_atomically(target, write, prefix=f".{target.name}.", suffix=".part")


def _download(name: str, stem: str, target_dir: Path) -> None:
    url = MIRRORS[name] + stem + ".gz"
    target = target_dir / f"{stem}.gz"

    def fetch(f):
        md5 = hashlib.md5()
        try:
            with urllib.request.urlopen(url, timeout=60) as response:
                while chunk := response.read(1 << 20):
                    md5.update(chunk)
                    f.write(chunk)
        except OSError as err:  # urllib.error.URLError is an OSError
            raise OSError(
                f"could not download {url} ({err}); without a network, get the files another way "
                f"(set FNN_DATA or pass directory=)"
            ) from err
        expected, actual = GZ_MD5[name][stem], md5.hexdigest()
        if actual != expected:
            raise ValueError(f"{url}: MD5 mismatch for {stem}.gz; expected {expected}, got {actual}")

    _atomic_write(target, fetch)


def _missing_message(name: str, loader: str, missing: list[str], dirs: list[Path], directory) -> str:
    lines = [
        f"{name}: {len(missing)} of {len(_IDX_FILES)} IDX files not found: " + ", ".join(f"{m}[.gz]" for m in missing),
        "searched, in order: " + ", ".join(str(d) for d in dirs),
        "ways to get them:",
        f"  - pass {loader}(directory=...) with a folder holding the four files (.gz or uncompressed)",
    ]
    if directory is None:
        lines.append(f"  - or set FNN_DATA to a folder holding {name}/")
    if name == "fashion-mnist":
        lines.append("  - or on Debian/Ubuntu: apt-get install dataset-fashion-mnist")
    target = Path(directory) if directory is not None else _cache_root() / name
    lines.append(f"  - or, with a network, {loader}(download=True) fetches them from {MIRRORS[name]} into {target}")
    return "\n".join(lines)


def _load_idx_dataset(name: str, loader: str, directory, download: bool) -> Dataset:
    dirs = _search_dirs(name, directory)
    found = {stem: _find(stem, dirs) for stem in _IDX_FILES}
    missing = [stem for stem, path in found.items() if path is None]
    if missing and download:
        target_dir = Path(directory) if directory is not None else _cache_root() / name
        for stem in missing:
            _download(name, stem, target_dir)
            found[stem] = target_dir / f"{stem}.gz"
    elif missing:
        raise FileNotFoundError(_missing_message(name, loader, missing, dirs, directory))
    arrays = []
    for stem in _IDX_FILES:
        path = found[stem]
        assert path is not None  # found above, downloaded, or reported missing
        data = _read_bytes(path)
        expected = CONTENT_SHA256[name][stem]
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected:
            raise ValueError(
                f"{path}: SHA-256 of the decompressed content does not match {name}/{stem}; "
                f"expected {expected}, got {actual} (a corrupt or different file)"
            )
        arrays.append(_parse_idx(data, path))
    return Dataset(*arrays)


def load_mnist(directory: str | os.PathLike[str] | None = None, *, download: bool = False) -> Dataset:
    """Load MNIST (LeCun et al. 1998) from its original IDX files.

    Args:
      directory: folder holding ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
        ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each ``.gz`` or not).
        When ``None``: ``$FNN_DATA/mnist``, then ``$XDG_CACHE_HOME/fnn/mnist`` (or
        ``~/.cache/fnn/mnist``), file by file.
      download: fetch missing files from ``MIRRORS["mnist"]`` into ``directory`` (or the
        cache when ``directory`` is ``None``). Needs a network.

    Returns:
      ``Dataset`` of uint8 arrays: ``x_train`` [60000, 28, 28], ``y_train`` [60000],
      ``x_test`` [10000, 28, 28], ``y_test`` [10000]; labels 0-9, pixels 0-255.

    Raises:
      FileNotFoundError: files missing and ``download`` false; lists them, the places
        searched and the ways to get them.
      ValueError: a file whose decompressed SHA-256 (or downloaded MD5) is wrong.
    """
    return _load_idx_dataset("mnist", "load_mnist", directory, download)


def load_fashion_mnist(directory: str | os.PathLike[str] | None = None, *, download: bool = False) -> Dataset:
    """Load Fashion-MNIST (Xiao, Rasul & Vollgraf 2017) from its original IDX files.

    Same files, arguments and return value as :func:`load_mnist`, with ``fashion-mnist``
    as the folder name, and Debian's ``/usr/share/datasets/fashion-mnist`` searched after
    ``$FNN_DATA/fashion-mnist``. Classes: 0 T-shirt/top, 1 Trouser, 2 Pullover, 3 Dress,
    4 Coat, 5 Sandal, 6 Shirt, 7 Sneaker, 8 Bag, 9 Ankle boot.
    """
    return _load_idx_dataset("fashion-mnist", "load_fashion_mnist", directory, download)


# ---------------------------------------------------------------------------------------
# Generated and bundled datasets (optional packages)
# ---------------------------------------------------------------------------------------

_EXTRA_HINT = "pip install 'fnn[experiments]'"


def _require(module: str, package: str, caller: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise ImportError(f"{caller} needs the '{package}' package: {_EXTRA_HINT}") from err


def _generate_mnist1d() -> dict:
    """The standard MNIST-1D arrays, built locally (``make_dataset``, never the download path)."""
    import random

    data = _require("mnist1d.data", "mnist1d", "load_mnist1d")
    np_state, py_state = np.random.get_state(), random.getstate()
    try:  # make_dataset reseeds NumPy's and Python's global generators; put them back
        return data.make_dataset(data.get_dataset_args())
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def load_mnist1d(cache_dir: str | os.PathLike[str] | None = None) -> Dataset:
    """MNIST-1D (Greydanus & Kobak 2024): 4000 train / 1000 test signals of length 40.

    Generated locally by the ``mnist1d`` package with its standard arguments (seed 42;
    about a few seconds), then cached as ``mnist1d.npz`` in ``cache_dir`` (default
    ``$XDG_CACHE_HOME/fnn/mnist1d`` or ``~/.cache/fnn/mnist1d``) and read from there on
    later calls. Delete the file to regenerate.

    Returns:
      ``Dataset`` with float32 ``x_train`` [4000, 40], ``x_test`` [1000, 40] and int32
      labels 0-9 ``y_train`` [4000], ``y_test`` [1000].
    """
    path = Path(cache_dir if cache_dir is not None else _cache_root() / "mnist1d") / "mnist1d.npz"
    if not path.is_file():
        raw = _generate_mnist1d()
        arrays: dict[str, Any] = {
            "x_train": np.asarray(raw["x"], np.float32),
            "y_train": np.asarray(raw["y"], np.int32),
            "x_test": np.asarray(raw["x_test"], np.float32),
            "y_test": np.asarray(raw["y_test"], np.int32),
        }
        _atomic_write(path, lambda f: np.savez(f, **arrays))
    with np.load(path, allow_pickle=False) as cached:
        try:
            return Dataset(*(cached[field] for field in Dataset._fields))
        except KeyError as err:
            raise ValueError(f"{path}: not an fnn MNIST-1D cache ({err}); delete it to regenerate") from err


def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 handwritten digits (UCI): 1797 examples, no split.

    Returns:
      ``(x, y)``: float32 ``x`` [1797, 64] with pixel values 0-16 (unscaled) and int32
      labels 0-9 ``y`` [1797]. Split and scale with :mod:`fnn.data`.
    """
    sk = _require("sklearn.datasets", "scikit-learn", "load_digits")
    x, y = sk.load_digits(return_X_y=True)
    return x.astype(np.float32), y.astype(np.int32)


def load_diabetes() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's diabetes regression set: 442 examples, 10 features, no split.

    Returns:
      ``(x, y)``: float32 ``x`` [442, 10] (scikit-learn's mean-centred, scaled features)
      and float32 target ``y`` [442] (disease progression after one year, 25-346).
    """
    sk = _require("sklearn.datasets", "scikit-learn", "load_diabetes")
    x, y = sk.load_diabetes(return_X_y=True)
    return x.astype(np.float32), y.astype(np.float32)
