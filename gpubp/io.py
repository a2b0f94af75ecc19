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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .errors import GpubpTypeError, GpubpValueError

if TYPE_CHECKING:
    from .mlp import MLP
    from .optim import Optimizer

FORMAT = "gpubp.mlp"
VERSION = 1


def _check_path(path: Any) -> Path:
    if not isinstance(path, (str, os.PathLike)):
        raise GpubpTypeError(f"path must be a str or os.PathLike, got {type(path).__name__}")
    return Path(path)


def save(net: MLP, path: Any) -> None:
    """Write ``net`` to ``path`` atomically (the exact path given; ``.npz`` is the usual suffix)."""
    from . import __version__

    metadata = {"format": FORMAT, "version": VERSION, "gpubp": __version__, **net.config()}
    write_npz(path, {"params": net.backend.to_host(net.params)}, metadata)


def write_npz(path: Any, arrays: dict[str, np.ndarray], metadata: dict[str, Any]) -> Path:
    """Write ``arrays`` and a JSON ``metadata`` string to an ``.npz`` at ``path``, atomically.

    The bytes go to a temporary file in the same directory, which is flushed
    and fsynced, then renamed over ``path`` (and the directory fsynced), so at
    every moment ``path`` holds either the previous complete file or the new
    complete file — also when the process is killed mid-write.
    """
    target = _check_path(path)
    if target.is_dir():
        raise GpubpValueError(f"path {str(target)!r} is a directory, expected a file name")
    directory = target.parent if str(target.parent) else Path(".")
    fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as handle:
            np.savez(handle, metadata=np.array(json.dumps(metadata)), **arrays)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, target)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    _fsync_directory(directory)
    return target


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
    source = _check_path(path)
    if not source.is_file():
        raise GpubpValueError(f"path {str(source)!r} does not exist or is not a file")
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


def load(path: Any, backend: Any = "auto") -> MLP:
    """Read a network written by :meth:`MLP.save` (or the network of a training checkpoint) onto ``backend``."""
    source, arrays = read_npz(path, "model")
    if _format_of(arrays["metadata"]) == CHECKPOINT_FORMAT:
        return load_checkpoint(source, backend=backend).net
    if set(arrays) != {"params", "metadata"}:
        raise GpubpValueError(
            f"{str(source)!r} is not a gpubp model: expected arrays ['metadata', 'params'], got {sorted(arrays)}"
        )
    metadata = _parse_metadata(source, arrays["metadata"], FORMAT, VERSION, "model")
    return _build_net(source, metadata, arrays["params"], backend)


def _build_net(source: Path, config: dict[str, Any], params: np.ndarray, backend: Any) -> MLP:
    from .mlp import MLP

    missing = {"sizes", "activation", "output_activation", "loss", "dtype", "init"} - set(config)
    if missing:
        raise GpubpValueError(f"{str(source)!r}: metadata lacks {sorted(missing)}")
    try:
        net = MLP(config["sizes"], activation=config["activation"], output_activation=config["output_activation"],
                  loss=config["loss"], backend=backend, dtype=config["dtype"], init=config["init"])
    except (ValueError, TypeError) as error:
        raise GpubpValueError(f"{str(source)!r} has an invalid architecture in its metadata: {error}") from None
    if params.shape != (net.n_params,) or params.dtype != net.dtype:
        raise GpubpValueError(
            f"{str(source)!r}: params has shape {params.shape} and dtype {params.dtype}, the architecture in its "
            f"metadata needs shape ({net.n_params},) and dtype {net.dtype}"
        )
    net.set_weights(net._split(params))
    return net


def _format_of(metadata_array: np.ndarray) -> Any:
    try:
        return json.loads(str(metadata_array)).get("format")
    except (json.JSONDecodeError, AttributeError):
        return None


def _parse_metadata(source: Path, metadata_array: np.ndarray, expected_format: str, version: int,
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


# --- training checkpoints -------------------------------------------------------------------------------
CHECKPOINT_FORMAT = "gpubp.checkpoint"
CHECKPOINT_VERSION = 1


@dataclass
class Checkpoint:
    """What a training checkpoint holds: the network, its optimizer (with state), and the training progress."""

    net: MLP
    optimizer: Optimizer
    progress: dict[str, Any]
    """``epoch`` and ``step`` completed, ``rng_state`` of the data order, ``history``, early-stopping state,
    and the run's ``n_train``, ``batch_size``, ``shuffle``, ``base_lr``."""
    best_params: np.ndarray | None = None


def save_checkpoint(path: Any, net: MLP, optimizer: Optimizer, progress: dict[str, Any],
                    best_params: Any = None) -> None:
    """Write network, optimizer state and progress to ``path`` atomically (see :func:`write_npz`)."""
    from . import __version__

    be = net.backend
    arrays = {"params": be.to_host(net.params)}
    optimizer_meta, optimizer_arrays = optimizer.export_state(be)
    arrays.update({f"optimizer.{name}": array for name, array in optimizer_arrays.items()})
    if best_params is not None:
        arrays["best_params"] = be.to_host(best_params)
    metadata = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "gpubp": __version__,
                "model": net.config(), "optimizer": optimizer_meta, "progress": progress,
                "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}}
    write_npz(path, arrays, metadata)


def read_checkpoint(path: Any) -> tuple[Path, dict[str, Any], dict[str, np.ndarray]]:
    """A checkpoint's metadata and host arrays, after checking the format, the version, the declared
    array list, and every array's shape and dtype against the metadata (nothing is built yet)."""
    source, arrays = read_npz(path, "checkpoint")
    metadata = _parse_metadata(source, arrays.pop("metadata"), CHECKPOINT_FORMAT, CHECKPOINT_VERSION, "checkpoint")
    for key in ("model", "optimizer", "progress", "arrays"):
        if not isinstance(metadata.get(key), dict):
            raise GpubpValueError(f"{str(source)!r}: checkpoint metadata lacks {key!r}")
    declared = metadata["arrays"]
    if set(declared) != set(arrays) or "params" not in arrays:
        raise GpubpValueError(f"{str(source)!r}: the checkpoint declares arrays {sorted(declared)} but holds "
                              f"{sorted(arrays)}")
    for name, array in arrays.items():
        spec = declared[name]
        if not isinstance(spec, dict) or list(array.shape) != spec.get("shape") or array.dtype.str != spec.get("dtype"):
            raise GpubpValueError(f"{str(source)!r}: array {name!r} has shape {list(array.shape)} and dtype "
                                  f"{array.dtype.str}, the metadata says {spec}")
    best = arrays.get("best_params")
    if best is not None and best.shape != arrays["params"].shape:
        raise GpubpValueError(f"{str(source)!r}: best_params has shape {best.shape}, params {arrays['params'].shape}")
    return source, metadata, arrays


def optimizer_arrays(arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The optimizer state among a checkpoint's arrays, by state name (``m``, ``v``, ``velocity``)."""
    return {name[len("optimizer."):]: a for name, a in arrays.items() if name.startswith("optimizer.")}


def load_checkpoint(path: Any, backend: Any = "auto") -> Checkpoint:
    """Read a checkpoint written by ``fit(checkpoint=…)`` into a new network and optimizer on ``backend``."""
    from .optim import Optimizer

    source, metadata, arrays = read_checkpoint(path)
    net = _build_net(source, metadata["model"], arrays["params"], backend)
    try:
        optimizer = Optimizer.from_state(net.backend, net.params, metadata["optimizer"], optimizer_arrays(arrays))
    except (ValueError, TypeError, KeyError) as error:
        raise GpubpValueError(f"{str(source)!r}: invalid optimizer state: {error}") from None
    return Checkpoint(net, optimizer, metadata["progress"], arrays.get("best_params"))
