"""Reading networks and checkpoints back: ``gpubp.load`` and ``gpubp.io.load_checkpoint``.

The file format is :mod:`gpubp.serialization`'s (one ``.npz``, JSON metadata,
no pickle, atomic writes); what a checkpoint holds is :mod:`gpubp.checkpoint`'s.
This module builds the objects: a :class:`gpubp.MLP` from a model file or
from a checkpoint, and the optimizer of a checkpoint.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from .backends import Backend, HostArray
from .checkpoint import FORMAT as CHECKPOINT_FORMAT
from .checkpoint import optimizer_arrays, read_checkpoint, save_checkpoint
from .ensemble import ENSEMBLE_FORMAT, ENSEMBLE_VERSION, Ensemble
from .errors import GpubpValueError
from .mlp import MLP
from .optim import Optimizer
from .serialization import check_model_config, format_of, parse_metadata, read_model, read_npz

__all__ = ["Checkpoint", "load", "load_checkpoint", "save", "save_checkpoint"]

save = MLP.save
"""``save(net, path)``: the same as ``net.save(path)``."""


def load(path: Any, backend: str | Backend = "auto") -> Any:
    """Read a network written by :meth:`MLP.save`, an ensemble written by :meth:`Ensemble.save`, or the
    network (ensemble) of a training checkpoint, onto ``backend``."""
    source, arrays = read_npz(path, "model")
    kind = format_of(arrays["metadata"])
    if kind == CHECKPOINT_FORMAT:
        return load_checkpoint(source, backend=backend).net
    if kind == ENSEMBLE_FORMAT:
        if set(arrays) != {"params", "metadata"}:
            raise GpubpValueError(f"{str(source)!r} is not a gpubp ensemble: expected arrays ['metadata', "
                                  f"'params'], got {sorted(arrays)}")
        metadata = parse_metadata(source, arrays["metadata"], ENSEMBLE_FORMAT, ENSEMBLE_VERSION, "ensemble")
        return _build_net(source, metadata.get("model") or {}, arrays["params"], backend, metadata.get("seeds"))
    config, params = read_model(source, arrays)
    return _build_net(source, config, params, backend)


def _build_net(source: Path, config: dict[str, Any], params: HostArray, backend: str | Backend,
               seeds: Any = None) -> Any:
    """The network — or, for a configuration with ``n_members``, the ensemble — of ``config`` and ``params``."""
    try:
        if isinstance(config, dict) and "n_members" in config:
            architecture = {**check_model_config(source, config), "n_members": config["n_members"]}
            return Ensemble.from_config(architecture, params, backend, seeds)
        return MLP.from_config(check_model_config(source, config), params, backend)
    except (ValueError, TypeError) as error:
        raise GpubpValueError(f"{str(source)!r} does not hold a valid network: {error}") from None


class Checkpoint(NamedTuple):
    """What a training checkpoint holds: ``net, optimizer, progress = load_checkpoint(path)``, or by name.

    ``progress`` has the ``epoch`` and ``step`` completed, ``rng_state`` of the data order,
    ``history``, the ``early_stopping`` state, and the run's ``n_train``, ``batch_size``,
    ``shuffle``, ``epochs``, ``seed``, ``validation_split`` and ``lr_schedule``. (The best weights
    that early stopping kept, when there are any, are for a resumed ``fit``, which reads them itself.)
    """

    net: Any
    """The :class:`MLP` (or :class:`Ensemble`) of the checkpoint."""
    optimizer: Optimizer
    progress: dict[str, Any]


def load_checkpoint(path: Any, backend: str | Backend = "auto") -> Checkpoint:
    """Read a checkpoint written by ``fit(checkpoint=…)`` into a new network and optimizer on ``backend``."""
    source, metadata, arrays = read_checkpoint(path)
    net = _build_net(source, metadata["model"], arrays["params"], backend)
    try:
        optimizer = Optimizer.from_state(net.backend, net.params, metadata["optimizer"], optimizer_arrays(arrays))
    except (ValueError, TypeError, KeyError) as error:
        raise GpubpValueError(f"{str(source)!r}: invalid optimizer state: {error}") from None
    return Checkpoint(net, optimizer, metadata["progress"])
