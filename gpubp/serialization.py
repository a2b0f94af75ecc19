"""gpubp's file format: one ``.npz`` of plain arrays plus a JSON ``metadata`` string, written atomically.

A file holds named arrays and ``metadata``, a JSON string with the format name
(``gpubp.mlp`` for a model, ``gpubp.checkpoint`` for a training checkpoint),
its version, and what the arrays mean. Writes go to a temporary file in the
same directory that is flushed, fsynced and renamed over the target, so an
existing file is never left half-written. Reads use ``allow_pickle=False`` and
check the format and version before anything is built. This module knows
arrays and dictionaries only; what a network or a checkpoint is, is
:mod:`gpubp.mlp`'s and :mod:`gpubp.checkpoint`'s business.
"""

from __future__ import annotations

import json
import os
import secrets
import stat
import zipfile
from pathlib import Path
from typing import Any, BinaryIO, Callable

import numpy as np

from ._version import __version__
from .errors import FileWriteError, GpubpTypeError, GpubpValueError

MODEL_FORMAT = "gpubp.mlp"
MODEL_VERSION = 1
MODEL_FIELDS = ("sizes", "activation", "output_activation", "loss", "dtype", "init")
"""The architecture a model file's metadata holds (``MLP.config()``)."""


def check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise GpubpTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def _file_and_directory(path: Any, name: str) -> tuple[Path, Path]:
    """``path`` as a file name (not a directory) and the directory it is in."""
    target = check_path(path)
    if target.is_dir():
        raise GpubpValueError(f"{name} {str(target)!r} is a directory, expected a file name")
    return target, target.parent if str(target.parent) else Path(".")


def check_output_path(path: Any, name: str) -> Path:
    """``path`` as a file that a run can write at its end: not a directory, in an existing writable
    directory, itself writable if it exists. ``name`` (an argument or an option) starts every message."""
    target, directory = _file_and_directory(path, name)
    if not directory.is_dir():
        raise GpubpValueError(f"{name} {str(target)!r}: directory {str(directory)!r} does not exist")
    if not os.access(directory, os.W_OK | os.X_OK):
        raise GpubpValueError(f"{name} {str(target)!r}: directory {str(directory)!r} is not writable")
    if (target.exists() or target.is_symlink()) and not os.access(target, os.W_OK):
        raise GpubpValueError(f"{name} {str(target)!r} is not writable (a read-only file or a broken link)")
    return target


def write_model(path: Any, config: dict[str, Any], params: np.ndarray) -> None:
    """Write a model — its architecture ``config`` and flat ``params`` — to ``path`` atomically."""
    metadata = {"format": MODEL_FORMAT, "version": MODEL_VERSION, "gpubp": __version__, **config}
    write_npz(path, {"params": params}, metadata)


def read_model(source: Path, arrays: dict[str, np.ndarray]) -> tuple[dict[str, Any], np.ndarray]:
    """The architecture and flat parameters of a model file's arrays (from :func:`read_npz`)."""
    if set(arrays) != {"params", "metadata"}:
        raise GpubpValueError(
            f"{str(source)!r} is not a gpubp model: expected arrays ['metadata', 'params'], got {sorted(arrays)}"
        )
    metadata = parse_metadata(source, arrays["metadata"], MODEL_FORMAT, MODEL_VERSION, "model")
    return check_model_config(source, metadata), arrays["params"]


def check_model_config(source: Path, config: dict[str, Any]) -> dict[str, Any]:
    """The architecture fields of ``config``, all present."""
    missing = set(MODEL_FIELDS) - set(config)
    if missing:
        raise GpubpValueError(f"{str(source)!r}: metadata lacks {sorted(missing)}")
    return {key: config[key] for key in MODEL_FIELDS}


def write_npz(path: Any, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and a JSON ``metadata`` string to an ``.npz`` at ``path``, atomically
    (see :func:`write_atomic`)."""
    return write_atomic(path, lambda handle: np.savez(handle, metadata=np.array(json.dumps(metadata)),
                                                      **arrays))  # type: ignore[arg-type]


def write_atomic(path: Any, write: Callable[[BinaryIO], Any]) -> Path:
    """Write a file at ``path`` with ``write(handle)``, atomically.

    The bytes go to a temporary file in the same directory, which is flushed
    and fsynced, then renamed over ``path`` (and the directory fsynced), so at
    every moment ``path`` holds either the previous complete file or the new
    complete file — also when the process is killed mid-write.
    """
    target, directory = _file_and_directory(path, "path")
    if not directory.is_dir():
        raise FileWriteError(f"cannot write {str(target)!r}: directory {str(directory)!r} does not exist")
    try:
        fd, temporary = _create_temporary(directory, target.name)
    except OSError as error:
        raise FileWriteError(f"cannot write {str(target)!r}: {error.strerror or error}") from None
    try:
        if target.exists():  # overwriting keeps the file's permissions, as writing into it would
            os.fchmod(fd, stat.S_IMODE(os.stat(target).st_mode))
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException as error:
        if os.path.exists(temporary):
            os.unlink(temporary)
        if isinstance(error, OSError):  # disk full, quota, I/O error: the previous file is untouched
            raise FileWriteError(f"cannot write {str(target)!r} (the previous file, if any, is untouched): "
                                 f"{error.strerror or error}") from error
        raise
    _fsync_directory(directory)
    return target


def _create_temporary(directory: Path, name: str) -> tuple[int, str]:
    """A new file ``.NAME.XXXXXXXX.tmp`` in ``directory``, opened for writing, created with mode 0666 less
    the umask — as any other file is (``tempfile.mkstemp`` would make it 0600, and the rename keeps that)."""
    for _ in range(100):
        temporary = str(directory / f".{name}.{secrets.token_hex(4)}.tmp")
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
            return os.open(temporary, flags, 0o666), temporary
        except FileExistsError:
            continue
    raise FileExistsError(f"no free temporary name for {name!r} in {str(directory)!r}")


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_npz(path: Any, what: str) -> tuple[Path, dict[str, np.ndarray]]:
    """Every array of an ``.npz`` at ``path`` (never unpickling), with clear errors for what is not one."""
    source = check_path(path)
    if not source.is_file():
        raise GpubpValueError(f"path {str(source)!r} does not exist or is not a file")
    with open(source, "rb") as handle:
        head = handle.read(64)
    if not head.startswith(b"PK"):
        raise GpubpValueError(f"{str(source)!r} is not a gpubp file (an .npz archive): it holds {_describe(head)}")
    try:
        with np.load(source, allow_pickle=False) as archive:
            arrays = {name: archive[name] for name in archive.files}
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise GpubpValueError(f"{str(source)!r} is not a readable .npz file: {error}") from None
    except ValueError as error:
        raise GpubpValueError(
            f"{str(source)!r} is not a readable .npz file of plain arrays (pickled data is never loaded): {error}"
        ) from None
    if "metadata" not in arrays:
        raise GpubpValueError(f"{str(source)!r} is not a gpubp {what}: it has no 'metadata' array, only "
                              f"{sorted(arrays)}")
    return source, arrays


def _describe(head: bytes) -> str:
    """What the first bytes of a file look like, for an error message."""
    if not head:
        return "nothing (it is empty)"
    if head.startswith(b"\x93NUMPY"):
        return "a single NumPy array (.npy), not an .npz archive"
    if head.startswith(b"\x1f\x8b"):
        return "gzip-compressed data"
    if head.startswith(b"\x80"):
        return "Python pickle data (never loaded)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as error:  # text cut in the middle of a character is still text
        text = head[:error.start].decode("utf-8") if error.start >= len(head) - 3 else ""
    if not text or any(ord(c) < 32 and c not in "\t\n\r" for c in text):
        return f"binary data starting with {head[:8]!r}"
    return f"text starting with {text[:40]!r}"


def read_metadata(path: Any) -> dict[str, Any] | None:
    """The JSON metadata of a gpubp file without reading its other arrays; None where there is none to read."""
    try:
        with np.load(check_path(path), allow_pickle=False) as archive:
            if "metadata" not in archive.files:
                return None
            metadata = json.loads(str(archive["metadata"]))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return None
    return metadata if isinstance(metadata, dict) else None


def format_of(metadata_array: np.ndarray) -> Any:
    try:
        return json.loads(str(metadata_array)).get("format")
    except (json.JSONDecodeError, AttributeError):
        return None


def parse_metadata(source: Path, metadata_array: np.ndarray, expected_format: str, version: int,
                    what: str) -> dict[str, Any]:
    if metadata_array.shape != () or metadata_array.dtype.kind != "U":
        raise GpubpValueError(f"{str(source)!r}: metadata must be a JSON string, got {metadata_array.dtype}")
    try:
        metadata = json.loads(str(metadata_array))
    except json.JSONDecodeError as error:
        raise GpubpValueError(f"{str(source)!r}: metadata is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != expected_format:
        raise GpubpValueError(f"{str(source)!r} is not a gpubp {what} file (format {expected_format!r} expected)")
    if metadata.get("version") != version:
        raise GpubpValueError(
            f"{str(source)!r} has {what} format version {metadata.get('version')!r}; this gpubp reads version {version}"
        )
    return metadata
