"""What :meth:`gpubp.MLP.fit` returns: one record of metrics per epoch."""

from __future__ import annotations

from typing import Any


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
