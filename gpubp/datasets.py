"""Real datasets from files on disk: the IDX format and Fashion-MNIST. Nothing is downloaded.

IDX (the format of MNIST and Fashion-MNIST) is a big-endian header and a
payload::

    0x00 0x00 <type code> <ndim>   magic number (4 bytes)
    <dim 0> … <dim ndim-1>          uint32 each, big-endian
    payload                         prod(dims) items of the type, row-major

:func:`read_idx` reads one file, raw or gzip-compressed (recognised by its
content, not its name), and checks the magic number, the dimensions and that
the payload has exactly the size they promise. :func:`load_fashion_mnist`
finds the four Fashion-MNIST files and returns them ready for an MLP.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from .errors import DatasetFormatError, DatasetNotFoundError, GpubpTypeError

IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8), 0x09: np.dtype(np.int8), 0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"), 0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8"),
}
"""IDX type code → element type (multi-byte types are big-endian on disk)."""

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
"""Where the Debian package ``dataset-fashion-mnist`` puts the files."""

FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte", "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte", "test_labels": "t10k-labels-idx1-ubyte",
}

FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                         "Ankle boot")
"""Class names by label."""

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: Path) -> bytes:
    with open(path, "rb") as handle:
        head = handle.read(2)
        handle.seek(0)
        if head != _GZIP_MAGIC:
            return handle.read()
        try:
            with gzip.GzipFile(fileobj=handle) as unzipped:
                return unzipped.read()
        except (OSError, EOFError, zlib.error) as error:
            raise DatasetFormatError(f"{path}: corrupt or truncated gzip data ({error})") from None


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """The array stored in an IDX file (raw or gzipped), in native byte order.

    Raises :class:`~gpubp.errors.DatasetFormatError` when the magic number,
    the type code, the dimensions or the payload size are wrong.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise GpubpTypeError(f"path must be a file path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise DatasetNotFoundError(f"no IDX file at {path}")
    data = _read_bytes(path)
    if len(data) < 4:
        raise DatasetFormatError(f"{path}: {len(data)} bytes, too short for an IDX header (4-byte magic number)")
    if data[0] != 0 or data[1] != 0:
        raise DatasetFormatError(
            f"{path}: not an IDX file: the magic number must start with two zero bytes, got {data[:4].hex()}"
        )
    code, ndim = data[2], data[3]
    if code not in IDX_TYPES:
        raise DatasetFormatError(
            f"{path}: unknown IDX type code 0x{code:02x}; expected one of {[hex(c) for c in IDX_TYPES]}"
        )
    if ndim == 0:
        raise DatasetFormatError(f"{path}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetFormatError(f"{path}: truncated header: {ndim} dimensions need {header} bytes, "
                                 f"file has {len(data)}")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_TYPES[code]
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        raise DatasetFormatError(
            f"{path}: payload {what}: dimensions {dims} of {dtype.name} need {expected} bytes, found {actual}"
        )
    return np.frombuffer(data, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | os.PathLike, array: Any, compress: bool | None = None) -> None:
    """Write ``array`` as an IDX file (gzipped when ``compress`` or when the name ends in ``.gz``)."""
    array = np.asarray(array)
    codes = {dtype.newbyteorder("="): code for code, dtype in IDX_TYPES.items()}
    native = array.dtype.newbyteorder("=")
    if native not in codes:
        raise GpubpTypeError(f"array dtype {array.dtype} has no IDX type; expected one of "
                             f"{sorted(str(d) for d in codes)}")
    if array.ndim == 0 or array.ndim > 255:
        raise GpubpTypeError(f"array must have 1 to 255 dimensions, got {array.ndim}")
    code = codes[native]
    payload = (bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
               + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes())
    path = Path(path)
    if compress or (compress is None and path.suffix == ".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def _candidates(path: str | os.PathLike | None) -> list[tuple[str, Path]]:
    places: list[tuple[str, Path]] = []
    if path is not None:
        places.append(("path", Path(path)))
    if os.environ.get("GPUBP_DATA"):
        base = Path(os.environ["GPUBP_DATA"])
        places += [("$GPUBP_DATA", base), ("$GPUBP_DATA", base / "fashion-mnist")]
    places.append(("default", FASHION_MNIST_DIR))
    return places


def _find(directory: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def fashion_mnist_dir(path: str | os.PathLike | None = None) -> Path:
    """The first directory holding all four Fashion-MNIST files: ``path``, then ``$GPUBP_DATA``
    (itself or its ``fashion-mnist/``), then ``/usr/share/datasets/fashion-mnist``."""
    if path is not None and not isinstance(path, (str, os.PathLike)):
        raise GpubpTypeError(f"path must be a directory path or None, got {type(path).__name__}")
    looked = []
    for source, directory in _candidates(path):
        found = {key: _find(directory, stem) for key, stem in FASHION_MNIST_FILES.items()}
        if all(found.values()):
            return directory
        missing = [FASHION_MNIST_FILES[key] for key, value in found.items() if value is None]
        looked.append(f"{directory} ({source}): missing {', '.join(missing)}")
        if source == "path":  # an explicit path that is wrong is an error, not a hint to look elsewhere
            break
    raise DatasetNotFoundError(
        "Fashion-MNIST not found. Looked in:\n  " + "\n  ".join(looked) + "\n"
        "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu; files land in "
        f"{FASHION_MNIST_DIR}), or put the four files {', '.join(s + '[.gz]' for s in FASHION_MNIST_FILES.values())} "
        "(from https://github.com/zalandoresearch/fashion-mnist) in a directory and pass it as `path` "
        "(`--data-dir` for gpubp train) or set GPUBP_DATA to it. gpubp never downloads anything."
    )


def load_fashion_mnist(path: str | os.PathLike | None = None) -> tuple[tuple[np.ndarray, np.ndarray],
                                                                       tuple[np.ndarray, np.ndarray]]:
    """``((X_train, y_train), (X_test, y_test))``: X float32 in [0, 1] shaped ``(n, 784)``, y int64 in 0..9.

    60,000 training and 10,000 test images of 28×28. The files are looked for
    as :func:`fashion_mnist_dir` says; a missing, corrupt or inconsistent file
    raises an error naming it.
    """
    directory = fashion_mnist_dir(path)
    out = []
    for split in ("train", "test"):
        image_file = _find(directory, FASHION_MNIST_FILES[f"{split}_images"])
        label_file = _find(directory, FASHION_MNIST_FILES[f"{split}_labels"])
        assert image_file is not None and label_file is not None  # fashion_mnist_dir found all four
        images, labels = read_idx(image_file), read_idx(label_file)
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DatasetFormatError(f"{image_file}: expected uint8 images (n, rows, cols), got {images.dtype} "
                                     f"{images.shape}")
        if labels.ndim != 1 or labels.dtype != np.uint8:
            raise DatasetFormatError(f"{label_file}: expected uint8 labels (n,), got {labels.dtype} {labels.shape}")
        if len(images) != len(labels):
            raise DatasetFormatError(f"{image_file} has {len(images)} images but {label_file} has {len(labels)} labels")
        if labels.size and labels.max() > 9:
            raise DatasetFormatError(f"{label_file}: labels must be 0..9, found {int(labels.max())}")
        X = images.reshape(len(images), -1).astype(np.float32)
        np.divide(X, np.float32(255), out=X)  # exactly 0 and 1 at the ends
        out.append((X, labels.astype(np.int64)))
    return out[0], out[1]
