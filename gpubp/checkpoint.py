"""Training checkpoints: a model's parameters, its optimizer's state and the run's progress, in one file.

:func:`save_checkpoint` writes them atomically (see :mod:`gpubp.serialization`);
:func:`read_checkpoint` checks a file's arrays against its metadata; and
:func:`restore` puts a checkpoint back into a model and an optimizer for
``fit(resume=True)`` — after checking that the run is the same run (architecture,
data size, batch size, shuffling, epochs, seed, schedule, optimizer class and
hyperparameters) and allocating everything it needs, so a refused or failed
resume changes nothing.

A *model* here is anything with ``config()``, ``params`` and ``backend``
(:class:`gpubp.MLP`); this module never builds one (:func:`gpubp.io.load_checkpoint` does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from ._version import __version__
from .backends import Array, Backend, HostArray
from .errors import GpubpValueError
from .history import EnsembleHistory, History
from .optim import Optimizer
from .serialization import parse_metadata, read_npz, write_npz

FORMAT = "gpubp.checkpoint"
VERSION = 2
"""Version 2 records the run's seed, epochs, learning-rate schedule and early-stopping state."""


class Model(Protocol):
    backend: Backend
    params: Array

    def config(self) -> dict[str, Any]: ...


def save_checkpoint(path: Any, model: Model, optimizer: Optimizer, progress: dict[str, Any],
                    best_params: Array | None = None) -> None:
    """Write the model's parameters, the optimizer's state and ``progress`` to ``path`` atomically."""
    be = model.backend
    arrays = {"params": be.to_host(model.params)}
    optimizer_meta, optimizer_state = optimizer.export_state(be)
    arrays.update({f"optimizer.{name}": array for name, array in optimizer_state.items()})
    if best_params is not None:
        arrays["best_params"] = be.to_host(best_params)
    metadata = {"format": FORMAT, "version": VERSION, "gpubp": __version__,
                "model": model.config(), "optimizer": optimizer_meta, "progress": progress,
                "arrays": {name: {"shape": list(a.shape), "dtype": a.dtype.str} for name, a in arrays.items()}}
    write_npz(path, arrays, metadata)


def read_checkpoint(path: Any) -> tuple[Path, dict[str, Any], dict[str, HostArray]]:
    """A checkpoint's metadata and host arrays, after checking the format, the version, the declared
    array list, and every array's shape and dtype against the metadata (nothing is built yet)."""
    source, arrays = read_npz(path, "checkpoint")
    metadata = parse_metadata(source, arrays.pop("metadata"), FORMAT, VERSION, "checkpoint")
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


def optimizer_arrays(arrays: dict[str, HostArray]) -> dict[str, HostArray]:
    """The optimizer state among a checkpoint's arrays, by state name (``m``, ``v``, ``velocity``)."""
    return {name[len("optimizer."):]: a for name, a in arrays.items() if name.startswith("optimizer.")}


@dataclass
class Resumed:
    """What :func:`restore` hands back to the training loop, beyond what it loaded into model and optimizer."""

    epoch: int
    """The last epoch the checkpoint completed."""
    step: int
    rng_state: dict[str, Any]
    history: Any
    """A :class:`History` (an ensemble's run: an :class:`EnsembleHistory`)."""
    early_stopping: dict[str, Any]
    best_params: HostArray | None


def _json_equal(a: Any, b: Any) -> bool:
    """Equal as they would be after a JSON round trip (tuples are lists there)."""
    return bool(json.loads(json.dumps(a)) == json.loads(json.dumps(b)))


def check_same_run(source: Path, metadata: dict[str, Any], arrays: dict[str, HostArray], model: Model,
                   optimizer: Optimizer, run: dict[str, Any]) -> None:
    """Refuse, naming the field and both values, a checkpoint of another network, optimizer or run,
    or one whose parameters are not finite."""
    if metadata["model"] != model.config():
        raise GpubpValueError(f"checkpoint {str(source)!r} is of a different network: {metadata['model']}, "
                              f"this one is {model.config()}")
    saved_class = metadata["optimizer"].get("class")
    if saved_class != type(optimizer).__name__:
        raise GpubpValueError(f"the checkpoint holds {saved_class} state, this optimizer is a "
                              f"{type(optimizer).__name__}; resume with the same optimizer class")
    params = arrays["params"]
    if params.shape != tuple(model.params.shape) or params.dtype != model.params.dtype:
        raise GpubpValueError(f"checkpoint {str(source)!r}: params {params.shape} {params.dtype}, this network "
                              f"has {tuple(model.params.shape)} {model.params.dtype}")
    if not np.isfinite(params).all():
        raise GpubpValueError(f"checkpoint {str(source)!r} holds non-finite parameters")
    progress = metadata["progress"]
    for key, value in run.items():
        if not _json_equal(progress.get(key), value):
            extend = (" (a run cannot be extended: its schedule and early stopping depend on it; to train on, "
                      "load the network with gpubp.load(PATH) and fit it with a new checkpoint)"
                      if key == "epochs" else "")
            raise GpubpValueError(
                f"checkpoint {str(source)!r} was written by a run with {key}={progress.get(key)!r}, this fit "
                f"has {key}={value!r}; resume with the same training data and settings, or start a new "
                f"checkpoint{extend}"
            )
    saved = metadata["optimizer"].get("hyperparameters") or {}
    for key, value in optimizer.hyperparameters().items():
        if not _json_equal(saved.get(key), value):
            raise GpubpValueError(
                f"checkpoint {str(source)!r} was trained with optimizer {key}={saved.get(key)!r}, this fit's "
                f"{type(optimizer).__name__} has {key}={value!r}; resume with the same optimizer settings, "
                f"or start a new checkpoint"
            )


def _progress(source: Path, progress: dict[str, Any]) -> tuple[int, int, dict[str, Any], Any, dict[str, Any]]:
    try:
        state = progress["history"]
        kind: Any = EnsembleHistory if isinstance(state, dict) and "members" in state else History
        history = kind.from_state(state)
        rng_state = progress["rng_state"]
        np.random.default_rng().bit_generator.state = rng_state  # checks its form
        early = dict(progress["early_stopping"])
        return int(progress["epoch"]), int(progress["step"]), rng_state, history, early
    except (KeyError, TypeError, ValueError) as error:
        raise GpubpValueError(f"checkpoint {str(source)!r} has invalid training progress: {error}") from None


def restore(path: Any, model: Model, optimizer: Optimizer, run: dict[str, Any],
            accept_progress: Callable[[dict[str, Any]], None] | None = None, shown: Any = None) -> Resumed:
    """Load a checkpoint into ``model`` and ``optimizer`` for ``fit(resume=True)``.

    In order: every check (format, same network, same run, same optimizer,
    progress, finite parameters; and ``accept_progress(progress)``, the
    caller's own, which raises to refuse), then the optimizer's device allocations, and
    only then any change — so an error, out-of-memory included, leaves model and
    optimizer as they were. The caller allocates what else it needs (the
    best-weights buffer) before calling.
    """
    source, metadata, arrays = read_checkpoint(path)
    source = Path(shown) if shown is not None else source  # what messages call it (a copy's original)
    check_same_run(source, metadata, arrays, model, optimizer, run)
    epoch, step, rng_state, history, early = _progress(source, metadata["progress"])
    if accept_progress is not None:
        try:
            accept_progress(metadata["progress"])
        except (KeyError, TypeError) as error:
            raise GpubpValueError(f"checkpoint {str(source)!r} has invalid training progress: {error!r}") from None
    try:
        optimizer.check_state(model.params, metadata["optimizer"], optimizer_arrays(arrays))
    except (TypeError, KeyError) as error:
        raise GpubpValueError(f"checkpoint {str(source)!r}: invalid optimizer state: {error}") from None
    optimizer.load_state(model.backend, model.params, metadata["optimizer"], optimizer_arrays(arrays))
    model.backend.copy_into(model.params, arrays["params"])
    return Resumed(epoch, step, rng_state, history, early, arrays.get("best_params"))
