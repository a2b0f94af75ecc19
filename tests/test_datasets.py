"""IDX files and Fashion-MNIST: the reader on files the tests write, path resolution, and (when the
Debian package dataset-fashion-mnist is installed) the real data."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

import gpubp
from gpubp import datasets
from gpubp.datasets import FASHION_MNIST_DIR, FASHION_MNIST_FILES, load_fashion_mnist, read_idx, write_idx
from gpubp.errors import DatasetFormatError, DatasetNotFoundError, GpubpError

REAL_DATA = all((FASHION_MNIST_DIR / (stem + ".gz")).is_file() for stem in FASHION_MNIST_FILES.values())
needs_real_data = pytest.mark.skipif(
    not REAL_DATA, reason=f"Fashion-MNIST is not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")


def _idx_bytes(array: np.ndarray, code: int) -> bytes:
    return bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">u4").tobytes() + array.tobytes()


# --- the IDX reader --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype,code", [(np.uint8, 0x08), (np.int8, 0x09), (">i2", 0x0B), (">i4", 0x0C),
                                        (">f4", 0x0D), (">f8", 0x0E)])
def test_reads_every_idx_type_raw_and_gzipped(tmp_path, rng, dtype, code):
    array = (rng.normal(0, 50, (3, 4, 5))).astype(dtype)
    raw, zipped = tmp_path / "a-idx3", tmp_path / "a-idx3.gz"
    raw.write_bytes(_idx_bytes(array, code))  # written by hand, not by write_idx
    zipped.write_bytes(gzip.compress(_idx_bytes(array, code)))
    for path in (raw, zipped):
        out = read_idx(path)
        np.testing.assert_array_equal(out, array)
        assert out.shape == (3, 4, 5) and out.dtype.isnative


def test_gzip_is_recognised_by_content_not_name(tmp_path):
    labels = np.arange(10, dtype=np.uint8)
    path = tmp_path / "labels-no-suffix"
    path.write_bytes(gzip.compress(_idx_bytes(labels, 0x08)))
    np.testing.assert_array_equal(read_idx(path), labels)


def test_write_idx_round_trip(tmp_path, rng):
    for array in (rng.integers(0, 256, (7, 28, 28)).astype(np.uint8), rng.normal(size=(4, 3)),
                  np.arange(5, dtype=np.int32)):
        for name in ("x-idx", "x-idx.gz"):
            write_idx(tmp_path / name, array)
            np.testing.assert_array_equal(read_idx(tmp_path / name), array)
    with pytest.raises(gpubp.errors.GpubpTypeError, match="no IDX type"):
        write_idx(tmp_path / "c", np.zeros(3, np.complex64))


@pytest.mark.parametrize("content,message", [
    (b"", "too short for an IDX header"),
    (b"\x00\x00", "too short"),
    (b"\x12\x34\x08\x01" + b"\x00\x00\x00\x01" + b"\x07", "not an IDX file: the magic number"),
    (b"\x00\x00\x07\x01" + b"\x00\x00\x00\x01" + b"\x07", "unknown IDX type code 0x07"),
    (b"\x00\x00\x08\x00", "declares 0 dimensions"),
    (b"\x00\x00\x08\x03" + b"\x00\x00\x00\x02", "truncated header: 3 dimensions need 16 bytes"),
    (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x05" + b"\x01\x02\x03",
     r"payload truncated: dimensions \(5,\) of uint8 need 5"),
    (b"\x00\x00\x08\x01" + b"\x00\x00\x00\x02" + b"\x01\x02\x03", "payload has trailing bytes"),
    (b"\x00\x00\x0c\x01" + b"\x00\x00\x00\x02" + b"\x00" * 7, r"of int32 need 8 bytes, found 7"),
])
def test_bad_idx_files_are_clear_errors(tmp_path, content, message):
    path = tmp_path / "bad-idx"
    path.write_bytes(content)
    with pytest.raises(DatasetFormatError, match=message) as info:
        read_idx(path)
    assert str(path) in str(info.value) and isinstance(info.value, ValueError)


def test_truncated_and_corrupt_gzip(tmp_path):
    data = gzip.compress(_idx_bytes(np.arange(1000, dtype=np.uint8).reshape(10, 100), 0x08))
    truncated, corrupt = tmp_path / "t.gz", tmp_path / "c.gz"
    truncated.write_bytes(data[: len(data) // 2])
    corrupt.write_bytes(data[:20] + bytes(b ^ 0xFF for b in data[20:40]) + data[40:])
    for path in (truncated, corrupt):
        with pytest.raises(DatasetFormatError, match="corrupt or truncated gzip data"):
            read_idx(path)


def test_missing_file_and_bad_path_type(tmp_path):
    with pytest.raises(DatasetNotFoundError, match="no IDX file at"):
        read_idx(tmp_path / "nothing")
    with pytest.raises(gpubp.errors.GpubpTypeError, match="path must be a file path"):
        read_idx(42)


# --- Fashion-MNIST from a directory -------------------------------------------------------------------
def _fake_fashion_mnist(directory, n_train=12, n_test=5, gz=True, seed=0):
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train_images": rng.integers(0, 256, (n_train, 28, 28)).astype(np.uint8),
        "train_labels": (np.arange(n_train) % 10).astype(np.uint8),
        "test_images": rng.integers(0, 256, (n_test, 28, 28)).astype(np.uint8),
        "test_labels": (np.arange(n_test) % 10).astype(np.uint8),
    }
    for key, array in arrays.items():
        write_idx(directory / (FASHION_MNIST_FILES[key] + (".gz" if gz else "")), array)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_load_fashion_mnist_from_a_directory(tmp_path, gz):
    arrays = _fake_fashion_mnist(tmp_path / "fm", gz=gz)
    (X, y), (X_test, y_test) = load_fashion_mnist(tmp_path / "fm")
    assert X.shape == (12, 784) and X.dtype == np.float32 and y.dtype == np.int64
    assert X_test.shape == (5, 784) and y_test.shape == (5,)
    np.testing.assert_array_equal(X, arrays["train_images"].reshape(12, 784) / np.float32(255))
    np.testing.assert_array_equal(y, arrays["train_labels"])
    assert 0 <= X.min() and X.max() <= 1


def test_path_then_env_then_default(tmp_path, monkeypatch):
    explicit, env = tmp_path / "explicit", tmp_path / "env"
    _fake_fashion_mnist(explicit, n_train=11, seed=1)
    _fake_fashion_mnist(env / "fashion-mnist", n_train=13, seed=2)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    monkeypatch.setenv("GPUBP_DATA", str(env))
    assert len(load_fashion_mnist(explicit)[0][0]) == 11  # the path wins
    assert len(load_fashion_mnist()[0][0]) == 13  # then $GPUBP_DATA/fashion-mnist
    _fake_fashion_mnist(env, n_train=14, seed=3)
    assert len(load_fashion_mnist()[0][0]) == 14  # $GPUBP_DATA itself before its fashion-mnist/
    monkeypatch.delenv("GPUBP_DATA")
    default = tmp_path / "default"
    _fake_fashion_mnist(default, n_train=15)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", default)
    assert len(load_fashion_mnist()[0][0]) == 15


def test_missing_data_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", tmp_path / "not-installed")
    monkeypatch.setenv("GPUBP_DATA", str(tmp_path / "nope"))
    with pytest.raises(DatasetNotFoundError) as info:
        load_fashion_mnist()
    message = str(info.value)
    assert "apt-get install dataset-fashion-mnist" in message and "GPUBP_DATA" in message
    assert str(tmp_path / "nope") in message and "never downloads" in message
    assert isinstance(info.value, FileNotFoundError) and isinstance(info.value, GpubpError)


def test_a_wrong_explicit_path_is_an_error_even_when_data_is_installed(tmp_path, monkeypatch):
    default = tmp_path / "default"
    _fake_fashion_mnist(default)
    monkeypatch.setattr(datasets, "FASHION_MNIST_DIR", default)
    (tmp_path / "partial").mkdir()
    write_idx(tmp_path / "partial" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DatasetNotFoundError, match="missing train-labels-idx1-ubyte, t10k-images"):
        load_fashion_mnist(tmp_path / "partial")


def test_inconsistent_files_are_rejected(tmp_path):
    _fake_fashion_mnist(tmp_path / "a")
    write_idx(tmp_path / "a" / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    with pytest.raises(DatasetFormatError, match="12 images but .* 7 labels"):
        load_fashion_mnist(tmp_path / "a")
    _fake_fashion_mnist(tmp_path / "b")
    write_idx(tmp_path / "b" / "t10k-labels-idx1-ubyte.gz", np.full(5, 10, np.uint8))
    with pytest.raises(DatasetFormatError, match="labels must be 0..9, found 10"):
        load_fashion_mnist(tmp_path / "b")
    _fake_fashion_mnist(tmp_path / "c")
    write_idx(tmp_path / "c" / "train-images-idx3-ubyte.gz", np.zeros((12, 784), np.uint8))
    with pytest.raises(DatasetFormatError, match=r"expected uint8 images \(n, rows, cols\)"):
        load_fashion_mnist(tmp_path / "c")


# --- the real data -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def fashion_mnist():
    if not REAL_DATA:
        pytest.skip(f"Fashion-MNIST is not in {FASHION_MNIST_DIR} (apt-get install dataset-fashion-mnist)")
    return load_fashion_mnist()


@needs_real_data
def test_real_fashion_mnist_shapes_and_balance(fashion_mnist):
    (X, y), (X_test, y_test) = fashion_mnist
    assert X.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X.dtype == np.float32 and X.min() == 0 and X.max() == 1
    np.testing.assert_array_equal(np.bincount(y), np.full(10, 6000))
    np.testing.assert_array_equal(np.bincount(y_test), np.full(10, 1000))


@pytest.mark.slow
@needs_real_data
def test_short_real_data_run_learns(fashion_mnist):
    """Two epochs on 20,000 images: well above chance (10 %) and above a linear model's first epochs."""
    (X, y), (X_test, y_test) = fashion_mnist
    net = gpubp.MLP([784, 128, 10], activation="relu", loss="cross_entropy", backend="numpy", seed=0)
    history = net.fit(X[:20000], y[:20000], epochs=2, batch_size=128, optimizer=gpubp.optim.Adam(1e-3),
                      validation_split=0.1, progress=False, seed=0)
    assert history["val_accuracy"][-1] > 0.8
    assert net.evaluate(X_test, y_test)["accuracy"] > 0.8
