"""Reading networks and checkpoints back: ``gpubp.load`` and ``gpubp.io.load_checkpoint``.

The file format is :mod:`gpubp.serialization`'s (one ``.npz``, JSON metadata,
no pickle, atomic writes); what a checkpoint holds is :mod:`gpubp.checkpoint`'s.
This module builds the objects: a :class:`gpubp.MLP` from a model file or
from a checkpoint, and the optimizer of a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend, HostArray
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import optimizer_arrays, read_checkpoint, save_checkpoint
from .errors import GpubpValueError
from .mlp import MLP
from .optim import Optimizer
from .serialization import check_model_config, format_of, read_model, read_npz

__all__ = ["Checkpoint", "load", "load_checkpoint", "save", "save_checkpoint"]

save = MLP.save
"""``save(net, path)``: the same as ``net.save(path)``."""


def load(path: Any, backend: str | Backend = "auto") -> MLP:
    """Read a network written by :meth:`MLP.save` (or the network of a training checkpoint) onto ``backend``."""
    source, arrays = read_npz(path, "model")
    if format_of(arrays["metadata"]) == CHECKPOINT_FORMAT:
        return load_checkpoint(source, backend=backend).net
    config, params = read_model(source, arrays)
    return _build_net(source, config, params, backend)


def _build_net(source: Path, config: dict[str, Any], params: HostArray, backend: str | Backend) -> MLP:
    try:
        return MLP.from_config(check_model_config(source, config), params, backend)
    except (ValueError, TypeError) as error:
        raise GpubpValueError(f"{str(source)!r} does not hold a valid network: {error}") from None


@dataclass
class Checkpoint:
    """What a training checkpoint holds: the network, its optimizer (with state), and the training progress."""

    net: MLP
    optimizer: Optimizer
    progress: dict[str, Any]
    """``epoch`` and ``step`` completed, ``rng_state`` of the data order, ``history``, ``early_stopping``
    state, and the run's ``n_train``, ``batch_size``, ``shuffle``, ``epochs``, ``seed``, ``lr_schedule``."""
    best_params: np.ndarray | None = None


def load_checkpoint(path: Any, backend: str | Backend = "auto") -> Checkpoint:
    """Read a checkpoint written by ``fit(checkpoint=…)`` into a new network and optimizer on ``backend``."""
    source, metadata, arrays = read_checkpoint(path)
    net = _build_net(source, metadata["model"], arrays["params"], backend)
    try:
        optimizer = Optimizer.from_state(net.backend, net.params, metadata["optimizer"], optimizer_arrays(arrays))
    except (ValueError, TypeError, KeyError) as error:
        raise GpubpValueError(f"{str(source)!r}: invalid optimizer state: {error}") from None
    return Checkpoint(net, optimizer, metadata["progress"], arrays.get("best_params"))
