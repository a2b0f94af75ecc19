"""Saving and loading networks: one ``.npz`` file, JSON metadata, no pickle.

The file holds two arrays: ``params`` (the flat parameter buffer) and
``metadata`` (a JSON string with the format name and version and the
constructor arguments). Writes go to a temporary file in the same directory
that is flushed, fsynced and renamed over the target, so an existing file is
never left half-written. Reads use ``allow_pickle=False`` and check every
field before building the network.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GpubpTypeError, GpubpValueError

if TYPE_CHECKING:
    from .mlp import MLP

FORMAT = "gpubp.mlp"
VERSION = 1


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise GpubpTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def save(net: MLP, path: Any) -> None:
    """Write ``net`` to ``path`` atomically (the exact path given; ``.npz`` is the usual suffix)."""
    from . import __version__

    target = _check_path(path)
    if target.is_dir():
        raise GpubpValueError(f"path {str(target)!r} is a directory, expected a file name")
    metadata = {"format": FORMAT, "version": VERSION, "gpubp": __version__, **net.config()}
    params = net.backend.to_host(net.params)
    directory = target.parent if str(target.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, params=params, metadata=np.array(json.dumps(metadata)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


def load(path: Any, backend: Any = "auto") -> MLP:
    """Read a network written by :meth:`MLP.save` onto ``backend``."""
    from .mlp import MLP

    source = _check_path(path)
    if not source.is_file():
        raise GpubpValueError(f"path {str(source)!r} does not exist or is not a file")
    try:
        with np.load(source, allow_pickle=False) as archive:
            names = set(archive.files)
            if names != {"params", "metadata"}:
                raise GpubpValueError(
                    f"{str(source)!r} is not a gpubp model: expected arrays ['metadata', 'params'], got {sorted(names)}"
                )
            metadata_array = archive["metadata"]
            params = archive["params"]
    except (zipfile.BadZipFile, OSError, EOFError) as error:
        raise GpubpValueError(f"{str(source)!r} is not a readable .npz file: {error}") from None
    except ValueError as error:
        if isinstance(error, GpubpValueError):
            raise
        raise GpubpValueError(
            f"{str(source)!r} is not a readable .npz file of plain arrays (pickled data is never loaded): {error}"
        ) from None
    metadata = _parse_metadata(source, metadata_array)
    try:
        net = MLP(metadata["sizes"], activation=metadata["activation"],
                  output_activation=metadata["output_activation"], loss=metadata["loss"], backend=backend,
                  dtype=metadata["dtype"], init=metadata["init"])
    except (ValueError, TypeError) as error:
        raise GpubpValueError(f"{str(source)!r} has an invalid architecture in its metadata: {error}") from None
    if params.shape != (net.n_params,) or params.dtype != net.dtype:
        raise GpubpValueError(
            f"{str(source)!r}: params has shape {params.shape} and dtype {params.dtype}, the architecture in its "
            f"metadata needs shape ({net.n_params},) and dtype {net.dtype}"
        )
    net.set_weights(net._split(params))
    return net


def _parse_metadata(source: Path, metadata_array: np.ndarray) -> dict[str, Any]:
    if metadata_array.shape != () or metadata_array.dtype.kind != "U":
        raise GpubpValueError(f"{str(source)!r}: metadata must be a JSON string, got {metadata_array.dtype}")
    try:
        metadata = json.loads(str(metadata_array))
    except json.JSONDecodeError as error:
        raise GpubpValueError(f"{str(source)!r}: metadata is not valid JSON: {error}") from None
    if not isinstance(metadata, dict) or metadata.get("format") != FORMAT:
        raise GpubpValueError(f"{str(source)!r} is not a gpubp model file (format {FORMAT!r} expected)")
    if metadata.get("version") != VERSION:
        raise GpubpValueError(
            f"{str(source)!r} has format version {metadata.get('version')!r}; this gpubp reads version {VERSION}"
        )
    missing = {"sizes", "activation", "output_activation", "loss", "dtype", "init"} - set(metadata)
    if missing:
        raise GpubpValueError(f"{str(source)!r}: metadata lacks {sorted(missing)}")
    return metadata
