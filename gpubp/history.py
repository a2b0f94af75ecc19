"""What ``fit`` returns: one record of metrics per epoch (:class:`History`), and each member's
(:class:`EnsembleHistory`, for :meth:`gpubp.Ensemble.fit`)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .errors import GpubpValueError


class History:
    """Per-epoch metrics: ``history["loss"]`` is the list of epoch losses.

    Keys present depend on the run: ``loss``, ``accuracy`` (classification),
    ``val_loss``/``val_accuracy`` (with validation data), ``lr`` (the
    learning rate of the epoch), ``time`` (seconds of the epoch's training pass) and ``samples_per_s``
    (training samples per second of it), ``val_time`` (seconds of the validation pass, with validation
    data), ``skipped_steps`` (with ``on_nonfinite="skip_step"``).
    """

    def __init__(self) -> None:
        self.epochs: list[int] = []
        self.records: list[dict[str, float]] = []
        self.monitor: str | None = None
        """The metric ``fit`` judged epochs by (``val_loss`` with validation data, else ``loss``)."""
        self.best_epoch: int | None = None
        """The epoch with the best ``monitor`` value."""
        self.stopped_epoch: int | None = None
        """The epoch early stopping ended training after, or None when it ran all epochs."""
        self.resumed_from: int | None = None
        """The last epoch of the checkpoint this run resumed from (its records are the checkpoint's), or None."""

    def append(self, epoch: int, record: dict[str, float]) -> None:
        self.epochs.append(epoch)
        self.records.append(dict(record))

    def __getitem__(self, key: str) -> list[float]:
        if not self.records or key not in self.records[0]:
            raise KeyError(f"{key!r} is not in this history; it has {self.keys()}")
        return [record[key] for record in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []

    def as_dict(self) -> dict[str, Any]:
        """``{"epoch": [...], "loss": [...], ..., "best_epoch": …, "stopped_epoch": …}``, ready for JSON."""
        return {"epoch": list(self.epochs), **{key: self[key] for key in self.keys()},
                "monitor": self.monitor, "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

    def to_state(self) -> dict[str, Any]:
        """Everything in this history, JSON-ready (for checkpoints); :meth:`from_state` reverses it."""
        return {"epochs": list(self.epochs), "records": [dict(r) for r in self.records], "monitor": self.monitor,
                "best_epoch": self.best_epoch, "stopped_epoch": self.stopped_epoch}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> "History":
        history = cls()
        history.epochs = [int(e) for e in state["epochs"]]
        history.records = [{str(k): float(v) for k, v in r.items()} for r in state["records"]]
        history.monitor, history.best_epoch, history.stopped_epoch = (state["monitor"], state["best_epoch"],
                                                                       state["stopped_epoch"])
        return history

    def __repr__(self) -> str:
        if not self.records:
            return "History(no epochs)"
        last = ", ".join(f"{k}={v:.4g}" for k, v in self.records[-1].items())
        return f"History({len(self)} epochs; last: {last})"


RUN_KEYS = ("time", "samples_per_s", "val_time")
"""The keys of an ensemble's record that are the run's (one number), not each member's."""


class EnsembleHistory:
    """Per-epoch metrics of every member of an ensemble: ``history["loss"]`` is an ``(epochs, K)`` array.

    The per-member keys are those of :class:`History` (``loss``, ``accuracy``, ``val_loss``,
    ``val_accuracy``, ``lr``, ``skipped_steps``); ``time``, ``samples_per_s`` and ``val_time``
    are the run's, ``(epochs,)``. A member's metrics are NaN for the epochs after it stopped
    (early stopping) or was frozen (``on_nonfinite="freeze_member"``). :meth:`member` gives one
    member's history as a :class:`History`, the one an MLP trained alone would have.
    """

    def __init__(self, members: int) -> None:
        self.members = members
        self.epochs: list[int] = []
        self.records: list[dict[str, Any]] = []
        self.monitor: str | None = None
        self.best_epoch: list[int | None] = [None] * members
        """Each member's epoch with the best ``monitor`` value."""
        self.member_stopped: list[int | None] = [None] * members
        """The epoch early stopping ended each member's training after (None: it trained to the end)."""
        self.frozen: list[int | None] = [None] * members
        """The epoch in which each member produced NaN/Inf and was frozen (``on_nonfinite="freeze_member"``)."""
        self.stopped_epoch: int | None = None
        """The epoch the whole run ended after because every member had stopped, or None."""
        self.resumed_from: int | None = None

    def append(self, epoch: int, record: dict[str, Any]) -> None:
        self.epochs.append(epoch)
        self.records.append({key: (float(value) if key in RUN_KEYS else [float(v) for v in value])
                             for key, value in record.items()})

    def __getitem__(self, key: str) -> np.ndarray:
        if not self.records or key not in self.records[0]:
            raise KeyError(f"{key!r} is not in this history; it has {self.keys()}")
        return np.array([record[key] for record in self.records], dtype=np.float64)

    def __len__(self) -> int:
        return len(self.records)

    def keys(self) -> list[str]:
        return list(self.records[0]) if self.records else []

    def last_epoch(self, k: int) -> int | None:
        """The last epoch member ``k`` trained in."""
        ends = [e for e in (self.member_stopped[k], self.frozen[k]) if e is not None]
        return min(ends) if ends else (self.epochs[-1] if self.epochs else None)

    def member(self, k: int) -> History:
        """Member ``k``'s history: its metrics up to the epoch it stopped, as an MLP's ``fit`` would return."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 0 <= k < self.members:
            raise GpubpValueError(f"k must be a member index in [0, {self.members}), got {k!r}")
        history = History()
        last = self.last_epoch(k)
        for epoch, record in zip(self.epochs, self.records):
            if last is not None and epoch <= last:
                history.append(epoch, {key: (value if key in RUN_KEYS else value[k]) for key, value in record.items()})
        history.monitor, history.best_epoch = self.monitor, self.best_epoch[k]
        stopped = self.member_stopped[k]
        if stopped is None and self.frozen[k] is None:  # still training when the run stopped (a callback): as alone
            stopped = self.stopped_epoch
        history.stopped_epoch, history.resumed_from = stopped, self.resumed_from
        return history

    def as_dict(self) -> dict[str, Any]:
        """Everything as lists (``[epoch][member]`` for the per-member keys), ready for JSON."""
        return {"epoch": list(self.epochs), **{key: self[key].tolist() for key in self.keys()},
                "monitor": self.monitor, "best_epoch": list(self.best_epoch),
                "member_stopped": list(self.member_stopped), "frozen": list(self.frozen),
                "stopped_epoch": self.stopped_epoch}

    def to_state(self) -> dict[str, Any]:
        """Everything, JSON-ready (NaN written as None), for checkpoints; :meth:`from_state` reverses it."""
        def clean(value: Any) -> Any:
            if isinstance(value, list):
                return [clean(v) for v in value]
            return None if isinstance(value, float) and math.isnan(value) else value

        return {"members": self.members, "epochs": list(self.epochs),
                "records": [{key: clean(value) for key, value in record.items()} for record in self.records],
                "monitor": self.monitor, "best_epoch": list(self.best_epoch),
                "member_stopped": list(self.member_stopped), "frozen": list(self.frozen),
                "stopped_epoch": self.stopped_epoch}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> EnsembleHistory:
        members = int(state["members"])
        history = cls(members)

        def number(value: Any) -> float:
            return math.nan if value is None else float(value)

        history.epochs = [int(e) for e in state["epochs"]]
        history.records = [{str(key): ([number(v) for v in value] if isinstance(value, list) else number(value))
                            for key, value in record.items()} for record in state["records"]]
        for name in ("best_epoch", "member_stopped", "frozen"):
            values = state[name]
            if not isinstance(values, list) or len(values) != members:
                raise ValueError(f"{name} must list one epoch (or None) per member")
            setattr(history, name, [None if v is None else int(v) for v in values])
        history.monitor, history.stopped_epoch = state["monitor"], state["stopped_epoch"]
        return history

    def __repr__(self) -> str:
        if not self.records:
            return f"EnsembleHistory({self.members} members, no epochs)"
        loss = np.asarray(self.records[-1]["loss"], dtype=np.float64)
        return (f"EnsembleHistory({self.members} members, {len(self)} epochs; last loss "
                f"{np.nanmin(loss):.4g}–{np.nanmax(loss):.4g})" if np.isfinite(loss).any() else
                f"EnsembleHistory({self.members} members, {len(self)} epochs)")
