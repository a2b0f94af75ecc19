"""Learning-rate schedules for :meth:`gpubp.MLP.fit`: the learning rate of each epoch.

A schedule is called as ``schedule(epoch, base_lr, epochs)`` with ``epoch``
counting from 1, the optimizer's learning rate when ``fit`` started, and the
number of epochs ``fit`` was asked for; it returns that epoch's learning rate.
``fit`` sets ``optimizer.lr`` before each epoch, records it in the history
(``"lr"``), and puts the base rate back when it returns.

``fit(lr_schedule=…)`` also takes ``"constant"``, ``"step"`` (×0.1 every third
of the run), ``"cosine"``, or any ``callable(epoch) -> lr``.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from . import _validate as check
from .errors import GpubpTypeError, GpubpValueError


class Schedule:
    """Base class: ``__call__(epoch, base_lr, epochs) -> lr``."""

    def __call__(self, epoch: int, base_lr: float, epochs: int) -> float:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    def describe(self) -> dict[str, Any]:
        """The schedule as JSON-ready data, the same in every process (a checkpoint compares it on resume)."""
        return {"class": type(self).__name__, **vars(self)}


class Constant(Schedule):
    """The base learning rate throughout."""

    def __call__(self, epoch: int, base_lr: float, epochs: int) -> float:
        return base_lr


class StepLR(Schedule):
    """``base_lr · gamma^⌊(epoch − 1) / step_size⌋``: multiply by ``gamma`` every ``step_size`` epochs
    (torch.optim.lr_scheduler.StepLR)."""

    def __init__(self, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = check.positive_int("step_size", step_size)
        self.gamma = check.positive_float("gamma", gamma)

    def __call__(self, epoch: int, base_lr: float, epochs: int) -> float:
        return base_lr * self.gamma ** ((epoch - 1) // self.step_size)


class CosineLR(Schedule):
    """``min_lr + (base_lr − min_lr) · ½(1 + cos(π (epoch − 1) / T))`` with ``T`` = the run's epochs
    (or ``epochs`` given here): from ``base_lr`` down toward ``min_lr`` (torch's CosineAnnealingLR).
    ``warmup`` first epochs rise linearly to ``base_lr``."""

    def __init__(self, epochs: int | None = None, min_lr: float = 0.0, warmup: int = 0) -> None:
        self.epochs = None if epochs is None else check.positive_int("epochs", epochs)
        self.min_lr = check.positive_float("min_lr", min_lr, allow_zero=True)
        if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
            raise GpubpValueError(f"warmup must be an integer >= 0, got {warmup!r}")
        self.warmup = warmup

    def __call__(self, epoch: int, base_lr: float, epochs: int) -> float:
        if epoch <= self.warmup:
            return base_lr * epoch / (self.warmup + 1)
        total = (self.epochs or epochs) - self.warmup
        progress = min(epoch - 1 - self.warmup, total) / max(total, 1)
        return self.min_lr + (base_lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


class Lambda(Schedule):
    """Any ``function(epoch) -> lr``."""

    def __init__(self, function: Callable[[int], float]) -> None:
        self.function = function

    def __call__(self, epoch: int, base_lr: float, epochs: int) -> float:
        return self.function(epoch)

    def describe(self) -> dict[str, Any]:
        """The function by its module and qualified name (its code cannot be compared across processes)."""
        name = getattr(self.function, "__qualname__", type(self.function).__qualname__)
        return {"class": "Lambda", "function": f"{getattr(self.function, '__module__', '?')}.{name}"}


SCHEDULES = ("constant", "step", "cosine")


def get_schedule(schedule: Any, epochs: int) -> Schedule:
    """A :class:`Schedule` from what ``fit(lr_schedule=…)`` accepts."""
    if schedule is None:
        return Constant()
    if isinstance(schedule, Schedule):
        return schedule
    if isinstance(schedule, str):
        key = schedule.lower()
        if key == "constant":
            return Constant()
        if key == "step":
            return StepLR(max(1, -(-epochs // 3)), 0.1)
        if key == "cosine":
            return CosineLR()
        raise GpubpValueError(f"unknown lr_schedule {schedule!r}; expected one of {list(SCHEDULES)}, a "
                              f"gpubp.schedules.Schedule, or a function of the epoch")
    if callable(schedule):
        return Lambda(schedule)
    raise GpubpTypeError(f"lr_schedule must be a name {list(SCHEDULES)}, a Schedule or a function of the epoch, "
                         f"got {type(schedule).__name__}")


def checked_lr(schedule: Schedule, epoch: int, base_lr: float, epochs: int) -> float:
    """The schedule's rate for ``epoch``, refused unless it is a finite number ≥ 0."""
    lr = schedule(epoch, base_lr, epochs)
    try:
        value = float(lr)
    except (TypeError, ValueError):
        raise GpubpTypeError(f"lr_schedule returned {lr!r} for epoch {epoch}; expected a number") from None
    if not math.isfinite(value) or value < 0:
        raise GpubpValueError(f"lr_schedule returned {value!r} for epoch {epoch}; expected a finite number >= 0")
    return value

