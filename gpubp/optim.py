"""Optimizers: hyperparameters and state, with PyTorch's update rules; the math is the backend's.

An optimizer holds its hyperparameters and its state buffers — SGD's velocity,
Adam's moments, and ``steps``, the count of updates applied — all on the
network's device. :meth:`Optimizer.update` hands them to the backend's
``sgd_update`` / ``adam_update`` (the reference in
:mod:`gpubp.backends.base`, one kernel launch on a GPU). The step count lives
on the device and the update counts itself there, skipping what the
divergence guard flags, so no host code ever corrects it.

**Ensembles and sweeps.** ``lr``, ``weight_decay`` and (SGD) ``momentum`` also take a list of
K values, one per member of a :class:`gpubp.Ensemble` of K networks (a number is every
member's); :attr:`Optimizer.members` is then K. The update of an ensemble is the same rule
for every member at once, each with its own values, its own step count and its own skip flag
(``sgd_update_members`` / ``adam_update_members``; one kernel launch on a GPU).

Weight decay follows PyTorch: ``SGD`` and ``Adam`` add ``weight_decay·θ`` to
the gradient (L2); ``AdamW`` decays the weights directly, ``θ ← θ·(1 − lr·wd)``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _validate as check
from .backends import Array, Backend
from .errors import GpubpTypeError, GpubpValueError


def per_member(name: str, value: Any, check_one: Callable[[str, Any], float]) -> float | tuple[float, ...]:
    """A hyperparameter checked by ``check_one``: a number, or a list of numbers (one per ensemble member)."""
    if isinstance(value, (list, tuple, np.ndarray)):
        values = list(value)
        if not values:
            raise GpubpValueError(f"{name} must be a number or a non-empty list of numbers (one per member), got []")
        return tuple(check_one(f"{name}[{k}]", v) for k, v in enumerate(values))
    return check_one(name, value)


def member_values(value: float | tuple[float, ...], members: int) -> tuple[float, ...]:
    """A hyperparameter as one value per member (a number repeated)."""
    return value if isinstance(value, tuple) else (value,) * members


class Optimizer:
    """Base class: state buffers shaped like the flat parameter buffer, plus the device step count."""

    lr: float | tuple[float, ...]
    state_names: tuple[str, ...] = ()
    """The buffers of the update rule, besides ``steps``, that a checkpoint keeps."""
    per_member_names: tuple[str, ...] = ("lr", "weight_decay")
    """The hyperparameters that may hold one value per ensemble member."""

    def __init__(self) -> None:
        self.state: dict[str, Array] = {}
        self._size: int | None = None

    @property
    def members(self) -> int | None:
        """K when a hyperparameter holds one value per member of an ensemble of K, else None."""
        return self._member_count()

    def _member_count(self) -> int | None:
        """:attr:`members`, checking that every per-member list has the same length."""
        lengths = {name: len(v) for name in self.per_member_names if isinstance(v := getattr(self, name), tuple)}
        if not lengths:
            return None
        if len(set(lengths.values())) > 1:
            raise GpubpValueError("the per-member hyperparameters must have one value per member alike, got "
                                  + ", ".join(f"{n} with {k}" for n, k in lengths.items()))
        return next(iter(lengths.values()))

    def describe_members(self) -> str:
        """Which hyperparameters hold a list, for messages: ``lr (3 values)``."""
        return ", ".join(f"{name} ({len(v)} values)" for name in self.per_member_names
                         if isinstance(v := getattr(self, name), tuple))

    @property
    def steps(self) -> int:
        """Updates applied so far (skipped steps not counted); reading it waits for the device. For an
        ensemble, the most any member has taken (see :attr:`member_steps`)."""
        counter = self.state.get("steps")
        return 0 if counter is None else int(self.backend_steps().max())

    @property
    def member_steps(self) -> list[int]:
        """Each member's updates so far (one entry for a single network)."""
        return [int(s) for s in self.backend_steps()]

    def backend_steps(self) -> Any:
        counter = self.state.get("steps")
        if counter is None:
            return np.zeros(1, dtype=np.int64)
        return np.asarray(counter.get() if hasattr(counter, "get") else counter)

    def _buffers(self, backend: Backend, params: Array) -> dict[str, Array]:
        """The state buffers this rule needs, allocated (zeroed) on first use; checks they still fit."""
        counts = params.shape[0] if params.ndim == 2 else 1  # one step count per member of an ensemble
        held = [tuple(buffer.shape) for name, buffer in self.state.items() if name != "steps"]
        steps = self.state.get("steps")
        if self._size is None:
            self._size = int(params.size)
        elif self._size != params.size or any(shape != tuple(params.shape) for shape in held) \
                or (steps is not None and steps.size != counts):
            raise GpubpValueError(
                f"this {type(self).__name__} holds state for {self._size} parameters but was given a "
                f"network with {params.size}; use one optimizer per network"
            )
        if "steps" not in self.state:
            self.state["steps"] = backend.zeros((counts,), np.int64)
        for name in self.needed_state():
            if name not in self.state:
                self.state[name] = backend.zeros(params.shape, params.dtype)
        return self.state

    def needed_state(self) -> tuple[str, ...]:
        """The buffers these hyperparameters use (SGD without momentum has no velocity)."""
        return self.state_names

    def update(self, backend: Backend, params: Array, grads: Array, skip: Array | None = None) -> None:
        """Apply one step to ``params`` in place, given ``grads`` (both flat backend arrays).

        ``skip`` is an optional 1-element int32 device flag (the divergence
        guard's): when it is set the backend's update does nothing and the
        step is not counted.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({fields})"

    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError

    # --- checkpoints -----------------------------------------------------------------------------
    def export_state(self, backend: Backend) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSON-ready description, host copies of the state buffers) for a checkpoint."""
        counter = self.state.get("steps")
        steps: int | list[int] = self.member_steps if counter is not None and counter.size > 1 else self.steps
        meta = {"class": type(self).__name__, "hyperparameters": self.hyperparameters(), "steps": steps,
                "size": self._size}
        arrays = {name: backend.to_host(self.state[name]) for name in self.state_names if name in self.state}
        return meta, arrays

    def check_state(self, params: Array, meta: dict[str, Any], arrays: dict[str, Any]) -> int | list[int]:
        """Check a checkpoint's optimizer state against this optimizer and ``params``; the step count.

        Raises ``GpubpValueError`` naming the first mismatch, without changing anything.
        """
        if meta.get("class") != type(self).__name__:
            raise GpubpValueError(f"the checkpoint holds {meta.get('class')} state, this optimizer is a "
                                  f"{type(self).__name__}; resume with the same optimizer class")
        steps = meta.get("steps")
        counts = steps if isinstance(steps, list) and params.ndim == 2 else [steps]
        if params.ndim == 2 and len(counts) != params.shape[0] or \
                not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0 for c in counts):
            expected = f"a list of {params.shape[0]} integers >= 0 (one per member)" if params.ndim == 2 \
                else "an integer >= 0"
            raise GpubpValueError(f"the checkpoint's optimizer step count must be {expected}, got {steps!r}")
        unknown = set(arrays) - set(self.state_names)
        if unknown:
            raise GpubpValueError(f"the checkpoint holds optimizer state {sorted(unknown)} that a "
                                  f"{type(self).__name__} does not have")
        for name, array in arrays.items():
            if array.shape != tuple(params.shape) or array.dtype != params.dtype:
                raise GpubpValueError(f"optimizer state {name!r} has shape {array.shape} and dtype {array.dtype}, "
                                      f"the network's parameters are {tuple(params.shape)} {params.dtype}")
        checked: list[int] = [c for c in counts if isinstance(c, int)]
        return checked if isinstance(steps, list) else checked[0]

    def load_state(self, backend: Backend, params: Array, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Take step count and state buffers from a checkpoint; all checked and allocated before anything changes."""
        steps = self.check_state(params, meta, arrays)
        state = {name: backend.asarray(array, params.dtype) for name, array in arrays.items()}
        if steps or arrays or meta.get("size") is not None:
            state["steps"] = backend.asarray(np.array(steps if isinstance(steps, list) else [steps], dtype=np.int64))
        self.state = state
        self._size = int(params.size) if state else None

    @staticmethod
    def from_state(backend: Backend, params: Array, meta: dict[str, Any], arrays: dict[str, Any]) -> Optimizer:
        """An optimizer rebuilt from a checkpoint: class, hyperparameters, step count and state."""
        classes: dict[str, type[Optimizer]] = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
        if meta.get("class") not in classes:
            raise GpubpValueError(f"unknown optimizer class {meta.get('class')!r}; expected one of {sorted(classes)}")
        hyper = dict(meta.get("hyperparameters") or {})
        if "betas" in hyper:
            hyper["betas"] = tuple(hyper["betas"])
        optimizer = classes[meta["class"]](**hyper)
        optimizer.load_state(backend, params, meta, arrays)
        return optimizer


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule: θ ← θ − lr·d (see
    :func:`gpubp.backends.base.sgd_math`)."""

    state_names = ("velocity",)
    per_member_names = ("lr", "momentum", "weight_decay")

    def __init__(self, lr: float | Sequence[float], momentum: float | Sequence[float] = 0.0, nesterov: bool = False,
                 weight_decay: float | Sequence[float] = 0.0):
        super().__init__()
        self.lr = per_member("lr", lr, check.positive_float)
        self.momentum = per_member("momentum", momentum, check.unit_interval)
        self.weight_decay = per_member("weight_decay", weight_decay, _non_negative)
        if not isinstance(nesterov, bool):
            raise GpubpTypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and 0 in member_values(self.momentum, 1):
            raise GpubpValueError(f"nesterov=True needs momentum > 0 (for every member), got momentum={momentum!r}")
        self.nesterov = nesterov
        self._member_count()

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def needed_state(self) -> tuple[str, ...]:
        return ("velocity",) if any(member_values(self.momentum, 1)) else ()

    def update(self, backend: Backend, params: Array, grads: Array, skip: Array | None = None) -> None:
        state = self._buffers(backend, params)
        if params.ndim == 2:  # an ensemble: each member its own values
            k = params.shape[0]
            backend.sgd_update_members(params, grads, state.get("velocity"), state["steps"], skip,
                                       lr=member_values(self.lr, k), momentum=member_values(self.momentum, k),
                                       nesterov=self.nesterov, weight_decay=member_values(self.weight_decay, k))
            return
        assert not isinstance(self.lr, tuple) and not isinstance(self.momentum, tuple) \
            and not isinstance(self.weight_decay, tuple), "per-member values reach only an ensemble"
        backend.sgd_update(params, grads, state.get("velocity"), state["steps"], skip, lr=self.lr,
                           momentum=self.momentum, nesterov=self.nesterov, weight_decay=self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba), torch.optim.Adam's rule; ``weight_decay`` is an L2 term in the gradient
    (see :func:`gpubp.backends.base.adam_math`)."""

    decoupled = False
    state_names = ("m", "v")

    def __init__(self, lr: float | Sequence[float] = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float | Sequence[float] = 0.0):
        super().__init__()
        self.lr = per_member("lr", lr, check.positive_float)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise GpubpValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (check.unit_interval("betas[0]", betas[0]), check.unit_interval("betas[1]", betas[1]))
        self.eps = check.positive_float("eps", eps)
        self.weight_decay = per_member("weight_decay", weight_decay, _non_negative)
        self._member_count()

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def update(self, backend: Backend, params: Array, grads: Array, skip: Array | None = None) -> None:
        state = self._buffers(backend, params)
        if params.ndim == 2:  # an ensemble: each member its own rate and decay
            k = params.shape[0]
            backend.adam_update_members(params, grads, state["m"], state["v"], state["steps"], skip,
                                        lr=member_values(self.lr, k), beta1=self.betas[0], beta2=self.betas[1],
                                        eps=self.eps, weight_decay=member_values(self.weight_decay, k),
                                        decoupled=self.decoupled)
            return
        assert not isinstance(self.lr, tuple) and not isinstance(self.weight_decay, tuple), \
            "per-member values reach only an ensemble"
        backend.adam_update(params, grads, state["m"], state["v"], state["steps"], skip, lr=self.lr,
                            beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), torch.optim.AdamW's rule: decoupled decay θ ← θ·(1 − lr·wd)."""

    decoupled = True

    def __init__(self, lr: float | Sequence[float] = 1e-3, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float | Sequence[float] = 1e-2):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


def _non_negative(name: str, value: Any) -> float:
    return check.positive_float(name, value, allow_zero=True)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
