"""Optimizers with PyTorch's update rules, each one pass over the flat parameter buffer.

An optimizer is a small class holding hyperparameters and state (velocity,
moments) around a pure update function written against ``xp``. The network
calls :meth:`Optimizer.update` with its flat parameter and gradient buffers;
the backend may replace the update function by a fused kernel.

Weight decay follows PyTorch: ``SGD`` and ``Adam`` add ``weight_decay·θ`` to
the gradient (L2); ``AdamW`` decays the weights directly, ``θ ← θ·(1 − lr·wd)``.
"""

from __future__ import annotations

import math
from typing import Any

from . import _validate as check
from .errors import GpubpTypeError, GpubpValueError


def sgd_update(xp: Any, params: Any, grads: Any, velocity: Any, scratch: Any, *,
               lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
    """One SGD step in place (torch.optim.SGD with dampening 0).

    g ← ∇ + wd·θ;  v ← μ·v + g;  d ← g + μ·v (Nesterov) or v (momentum) or g;  θ ← θ − lr·d
    """
    g = grads
    if weight_decay:
        xp.multiply(params, weight_decay, out=scratch)
        xp.add(scratch, grads, out=scratch)
        g = scratch
    if momentum:
        xp.multiply(velocity, momentum, out=velocity)
        xp.add(velocity, g, out=velocity)
        if nesterov:  # θ ← θ − lr·g − lr·μ·v, in two passes through the scratch buffer
            xp.multiply(g, lr, out=scratch)
            xp.subtract(params, scratch, out=params)
            xp.multiply(velocity, lr * momentum, out=scratch)
            xp.subtract(params, scratch, out=params)
            return
        g = velocity
    xp.multiply(g, lr, out=scratch)
    xp.subtract(params, scratch, out=params)


def adam_update(xp: Any, params: Any, grads: Any, m: Any, v: Any, scratch: Any, scratch2: Any, *,
                step: int, lr: float, beta1: float, beta2: float, eps: float,
                weight_decay: float, decoupled: bool) -> None:
    """One Adam / AdamW step in place (torch.optim.Adam / AdamW, amsgrad off).

    g ← ∇ (+ wd·θ for Adam);  θ ← θ·(1 − lr·wd) for AdamW;
    m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
    θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    """
    g = grads
    if weight_decay and decoupled:
        xp.multiply(params, 1.0 - lr * weight_decay, out=params)
    elif weight_decay:
        xp.multiply(params, weight_decay, out=scratch2)
        xp.add(scratch2, grads, out=scratch2)
        g = scratch2
    xp.subtract(g, m, out=scratch)  # m ← m + (1 − β₁)(g − m)
    xp.multiply(scratch, 1.0 - beta1, out=scratch)
    xp.add(m, scratch, out=m)
    xp.multiply(g, g, out=scratch)  # v ← β₂v + (1 − β₂)g²
    xp.multiply(scratch, 1.0 - beta2, out=scratch)
    xp.multiply(v, beta2, out=v)
    xp.add(v, scratch, out=v)
    bias_correction1 = 1.0 - beta1**step
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step)
    xp.sqrt(v, out=scratch)
    xp.multiply(scratch, 1.0 / bias_correction2_sqrt, out=scratch)
    xp.add(scratch, eps, out=scratch)
    xp.divide(m, scratch, out=scratch)
    xp.multiply(scratch, lr / bias_correction1, out=scratch)
    xp.subtract(params, scratch, out=params)


class Optimizer:
    """Base class: holds state buffers shaped like the flat parameter buffer."""

    lr: float

    def __init__(self) -> None:
        self.state: dict[str, Any] = {}
        self.steps = 0
        self._size: int | None = None

    def _buffers(self, backend: Any, params: Any, names: tuple[str, ...]) -> list[Any]:
        """The state buffers, allocated (zeroed) on first use; checks the buffer still fits."""
        if self._size is None:
            self._size = int(params.size)
        elif self._size != params.size:
            raise GpubpValueError(
                f"this {type(self).__name__} holds state for {self._size} parameters but was given a "
                f"network with {params.size}; use one optimizer per network"
            )
        for name in names:
            if name not in self.state:
                self.state[name] = backend.zeros(params.shape, params.dtype)
        return [self.state[name] for name in names]

    def update(self, backend: Any, params: Any, grads: Any, skip: Any = None) -> None:
        """Apply one step to ``params`` in place, given ``grads`` (both flat backend arrays).

        ``skip`` is an optional 1-element int32 flag (the divergence guard's):
        when it is set the step does nothing. On the host it is read before the
        step is counted; on a GPU the kernel reads it, the step is counted, and
        the guard takes the count back when it reads the flags.
        """
        if skip is not None and not backend.is_gpu and skip[0]:
            return
        self.steps += 1
        self._update(backend, params, grads, skip)

    def _update(self, backend: Any, params: Any, grads: Any, skip: Any) -> None:
        raise NotImplementedError

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.hyperparameters().items())
        return f"{type(self).__name__}({fields})"

    # --- checkpoints -----------------------------------------------------------------------------
    state_names: tuple[str, ...] = ()
    """The state buffers a checkpoint keeps (scratch buffers are not state)."""

    def export_state(self, backend: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """(JSON-ready description, host copies of the state buffers) for a checkpoint."""
        meta = {"class": type(self).__name__, "hyperparameters": self.hyperparameters(), "steps": self.steps,
                "size": self._size}
        arrays = {name: backend.to_host(self.state[name]) for name in self.state_names if name in self.state}
        return meta, arrays

    def load_state(self, backend: Any, params: Any, meta: dict[str, Any], arrays: dict[str, Any]) -> None:
        """Take step count and state buffers from a checkpoint; all checked before anything changes."""
        if meta.get("class") != type(self).__name__:
            raise GpubpValueError(f"the checkpoint holds {meta.get('class')} state, this optimizer is a "
                                  f"{type(self).__name__}; resume with the same optimizer class")
        steps = meta.get("steps")
        if not isinstance(steps, int) or isinstance(steps, bool) or steps < 0:
            raise GpubpValueError(f"the checkpoint's optimizer step count must be an integer >= 0, got {steps!r}")
        unknown = set(arrays) - set(self.state_names)
        if unknown:
            raise GpubpValueError(f"the checkpoint holds optimizer state {sorted(unknown)} that a "
                                  f"{type(self).__name__} does not have")
        for name, array in arrays.items():
            if array.shape != tuple(params.shape) or array.dtype != params.dtype:
                raise GpubpValueError(f"optimizer state {name!r} has shape {array.shape} and dtype {array.dtype}, "
                                      f"the network's parameters are {tuple(params.shape)} {params.dtype}")
        self.state = {name: backend.asarray(array, params.dtype) for name, array in arrays.items()}
        self._size = int(params.size) if arrays or meta.get("size") is not None else None
        self.steps = steps

    @staticmethod
    def from_state(backend: Any, params: Any, meta: dict[str, Any], arrays: dict[str, Any]) -> Optimizer:
        """An optimizer rebuilt from a checkpoint: class, hyperparameters, step count and state."""
        classes = {"SGD": SGD, "Adam": Adam, "AdamW": AdamW}
        if meta.get("class") not in classes:
            raise GpubpValueError(f"unknown optimizer class {meta.get('class')!r}; expected one of {sorted(classes)}")
        hyper = dict(meta.get("hyperparameters") or {})
        if "betas" in hyper:
            hyper["betas"] = tuple(hyper["betas"])
        optimizer = classes[meta["class"]](**hyper)
        optimizer.load_state(backend, params, meta, arrays)
        return optimizer

    def hyperparameters(self) -> dict[str, Any]:
        raise NotImplementedError


class SGD(Optimizer):
    """Stochastic gradient descent, torch.optim.SGD's rule: θ ← θ − lr·d (see :func:`sgd_update`)."""

    state_names = ("velocity",)

    def __init__(self, lr: float, momentum: float = 0.0, nesterov: bool = False, weight_decay: float = 0.0):
        super().__init__()
        self.lr = check.positive_float("lr", lr)
        self.momentum = check.unit_interval("momentum", momentum)
        self.weight_decay = check.positive_float("weight_decay", weight_decay, allow_zero=True)
        if not isinstance(nesterov, bool):
            raise GpubpTypeError(f"nesterov must be True or False, got {nesterov!r}")
        if nesterov and self.momentum == 0:
            raise GpubpValueError("nesterov=True needs momentum > 0, got momentum=0")
        self.nesterov = nesterov

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                "weight_decay": self.weight_decay}

    def _update(self, backend: Any, params: Any, grads: Any, skip: Any) -> None:
        names = ("velocity",) if self.momentum else ()
        if backend.needs_optimizer_scratch:
            names += ("scratch",)
        buffers = dict(zip(names, self._buffers(backend, params, names)))
        backend.sgd_update(params, grads, buffers.get("velocity"), buffers.get("scratch"), skip=skip, lr=self.lr, momentum=self.momentum,
                           nesterov=self.nesterov, weight_decay=self.weight_decay)


class Adam(Optimizer):
    """Adam (Kingma & Ba), torch.optim.Adam's rule; ``weight_decay`` is an L2 term in the gradient."""

    decoupled = False
    state_names = ("m", "v")

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__()
        self.lr = check.positive_float("lr", lr)
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise GpubpValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (check.unit_interval("betas[0]", betas[0]), check.unit_interval("betas[1]", betas[1]))
        self.eps = check.positive_float("eps", eps)
        self.weight_decay = check.positive_float("weight_decay", weight_decay, allow_zero=True)

    def hyperparameters(self) -> dict[str, Any]:
        return {"lr": self.lr, "betas": self.betas, "eps": self.eps, "weight_decay": self.weight_decay}

    def _update(self, backend: Any, params: Any, grads: Any, skip: Any) -> None:
        names: tuple[str, ...] = ("m", "v")
        if backend.needs_optimizer_scratch:
            names += ("scratch",) + (("scratch2",) if self.weight_decay and not self.decoupled else ())
        buffers = dict(zip(names, self._buffers(backend, params, names)))
        backend.adam_update(params, grads, buffers["m"], buffers["v"], buffers.get("scratch"),
                            buffers.get("scratch2"), skip=skip, step=self.steps, lr=self.lr,
                            beta1=self.betas[0], beta2=self.betas[1], eps=self.eps,
                            weight_decay=self.weight_decay, decoupled=self.decoupled)


class AdamW(Adam):
    """AdamW (Loshchilov & Hutter), torch.optim.AdamW's rule: decoupled decay θ ← θ·(1 − lr·wd)."""

    decoupled = True

    def __init__(self, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2):
        super().__init__(lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW}
