"""The reference backend: every operation the network needs, written against ``self.xp``.

The network never calls NumPy or CuPy directly; it calls these methods. The
base class implements each of them with array-module calls that work on both
NumPy and CuPy (``out=`` everywhere, nothing allocated per call), which makes
it the executable specification. A backend subclass overrides only what it
can do better — the CuPy backend replaces the hot elementwise operations with
fused CUDA kernels of the same names — and every backend is tested against it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import threading
from typing import TYPE_CHECKING, Any, Callable, ContextManager

import numpy as np

from .spec import Array, HostArray

if TYPE_CHECKING:
    from ..activations import Activation
    from ..losses import Loss


UPDATE_PASSES = 4
"""What an optimizer update counts as in :meth:`Backend.elementwise` (SGD makes 2–7 passes, Adam 13–15):
enough that the NumPy backend splits the update of a 131k-parameter network over threads."""


class Backend:
    """Array operations for one array module (``xp``) and one device; implements
    :class:`~gpubp.backends.spec.BackendSpec`.

    A backend object may be shared by networks trained in several threads: what
    it keeps between calls (scratch buffers) is kept per thread.
    """

    name = "base"
    is_gpu = False

    def __init__(self, xp: Any):
        self.xp = xp
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"<gpubp backend {self.name!r} on {self.device_name()}>"

    # --- memory and transfers ---------------------------------------------------------------
    def device_name(self) -> str:
        raise NotImplementedError

    def activate(self) -> ContextManager[Any]:
        """``with backend.activate():`` runs the block with this backend's device current (nothing on the CPU)."""
        return contextlib.nullcontext()

    def empty(self, shape: Any, dtype: Any) -> Array:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Array:
        return self.xp.zeros(shape, dtype=dtype)

    def is_device_array(self, value: Any) -> bool:
        """True when ``value`` already lives where this backend computes."""
        return isinstance(value, self.xp.ndarray)

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        """A new backend array holding a copy of ``value`` (host or device)."""
        return self.xp.array(value, dtype=dtype, copy=True)

    def copy_into(self, out: Array, value: Any) -> None:
        """``out[...] = value`` with dtype conversion, without allocating a device array."""
        self.xp.copyto(out, value, casting="unsafe")

    def to_host(self, value: Array) -> HostArray:
        """A NumPy copy of a backend array."""
        return np.array(value, copy=True)

    def synchronize(self) -> None:
        """Wait until queued work has finished (a no-op where work is synchronous)."""

    def scratch(self, name: str, shape: Any, dtype: Any) -> Array:
        """A buffer of ``shape`` owned by this backend for the calling thread (contents undefined).

        One allocation per (thread, name, dtype), grown when a larger one is
        asked for; smaller requests get a view of its first elements. Threads
        never share one, so networks trained in parallel threads do not race.
        """
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        local = self._local.__dict__
        views: dict[tuple[str, tuple[int, ...], Any], Array] = local.setdefault("views", {})
        key = (name, shape, dtype)
        view = views.get(key)
        if view is not None:
            return view
        buffers: dict[tuple[str, np.dtype], Array] = local.setdefault("buffers", {})
        size, kind = math.prod(shape), (name, np.dtype(dtype))
        buffer = buffers.get(kind)
        if buffer is None or buffer.size < size:
            buffer = buffers[kind] = self.empty((size,), kind[1])
            for stale in [k for k in views if k[0] == name and np.dtype(k[2]) == kind[1]]:
                del views[stale]  # views of the smaller buffer: let it go
        view = views[key] = buffer[:size].reshape(shape)
        return view

    def elementwise(self, function: Callable[..., None], arrays: list[Any], passes: int = 1) -> None:
        """``function(*arrays)``, for an elementwise ``function`` that makes about ``passes`` passes over its
        arrays (the NumPy backend splits it over threads when that pays)."""
        function(*arrays)

    def all_finite(self, value: Array) -> bool:
        return bool(self.xp.isfinite(value).all())

    def take_rows(self, source: Array, index: Array, out: Array) -> None:
        """``out = source[index]`` along the first axis, into a preallocated buffer."""
        self.xp.take(source, index, axis=0, out=out)

    def one_hot(self, labels: Array, row_index: Array, out: Array) -> None:
        """``out[n, k] = 1 if labels[n] == k else 0``; ``row_index`` is ``arange(N)``."""
        out.fill(0)
        out[row_index, labels] = 1

    # --- the layer's linear map ---------------------------------------------------------------
    def matmul(self, a: Array, b: Array, out: Array, precision: str = "highest") -> None:
        """``out = a @ b`` (one GEMM; ``a`` or ``b`` may be transposed views). ``precision`` is the GPU's
        business (:class:`~gpubp.backends.cupy_backend.CupyBackend`); the reference computes exactly."""
        self.xp.matmul(a, b, out=out)

    def add_bias(self, z: Array, b: Array) -> None:
        """``z += b``, broadcast over the rows (the ``+ b`` of ``Z = A·W + b``)."""
        self.xp.add(z, b, out=z)

    def bias_grad(self, delta: Array, ones: Array, out: Array) -> None:
        """BP3: ``∂L/∂b = Σ_rows δ = 1ᵀ·δ``, overwriting ``out``.

        Written as a GEMV against a vector of ones: BLAS parallelises it and
        it measured 5–10× faster than ``sum(axis=0)`` on the CPU.
        """
        self.xp.matmul(ones, delta, out=out)

    # --- activations and losses ---------------------------------------------------------------
    def bias_activation_forward(self, activation: Activation, z: Array, b: Array, a: Array, tmp: Array) -> None:
        """``z += b`` then ``a = σ(z)``: the rest of a layer's forward pass after its GEMM. An ensemble's
        ``(K, 1, width)`` biases are split over the threads with their members' rows, both passes in one
        elementwise call (so the NumPy backend runs them on a block while it is in cache)."""
        if b.ndim != z.ndim:
            self.add_bias(z, b)
            self.activation_forward(activation, z, a, tmp)
            return
        xp = self.xp

        def forward(z_: Array, a_: Array, tmp_: Array, b_: Array) -> None:
            xp.add(z_, b_, out=z_)
            activation.forward(xp, z_, a_, tmp_)

        self.elementwise(forward, [z, a, tmp, b], passes=2)

    def bias_loss_output(self, loss: Loss, z: Array, b: Array, a: Array, tmp: Array, rows: Array) -> None:
        """``z += b`` then the probabilities of a loss that fuses its output activation (softmax, sigmoid)."""
        self.add_bias(z, b)
        # an ensemble's (K, N, width) buffers as its members' rows one after the other
        z_rows, a_rows, tmp_rows = (x.reshape(-1, x.shape[-1]) for x in (z, a, tmp))
        self.loss_output(loss, z_rows, a_rows, tmp_rows, rows)

    def activation_forward(self, activation: Activation, z: Array, a: Array, tmp: Array) -> None:
        """``a = σ(z)``; ``a`` may be ``z`` itself when σ' does not need ``z``."""
        xp = self.xp
        self.elementwise(lambda z_, a_, tmp_: activation.forward(xp, z_, a_, tmp_), [z, a, tmp])

    def activation_backward(self, activation: Activation, delta: Array, z: Array, a: Array,
                            tmp: Array, tmp2: Array) -> None:
        """``delta ← delta ⊙ σ'(z)`` in place (the last factor of BP1 and BP2)."""
        xp = self.xp
        self.elementwise(lambda *block: activation.backward(xp, *block), [delta, z, a, tmp, tmp2])

    def loss_output(self, loss: Loss, z: Array, a: Array, tmp: Array, rows: Array) -> None:
        """Probabilities from logits for the losses that fuse their output activation."""
        assert loss.output is not None
        loss.output(self.xp, z, a, tmp, rows)

    def loss_value_and_delta(self, loss: Loss, z: Array, a: Array, y: Array, delta: Array,
                             tmp: Array, rows: Array, weight: Array | None = None, members: int = 1) -> Array:
        """The loss as a 0-d array; writes the output error into ``delta`` (BP1).

        ``weight``: None, or ``(N, 1)`` row weights of mean 1 (see :mod:`gpubp.losses`). ``members`` > 1:
        the rows are that many networks' batches, stacked; the loss is then each member's mean, ``(K,)``."""
        extra = {} if members == 1 else {"members": members}  # (users' own losses may not know the arguments)
        if weight is None:
            return self.xp.asarray(loss.value_and_delta(self.xp, z, a, y, delta, tmp, rows, **extra))
        return self.xp.asarray(loss.value_and_delta(self.xp, z, a, y, delta, tmp, rows, weight, **extra))

    # --- divergence guard ---------------------------------------------------------------------
    def nonfinite_flag(self, values: Array, loss: Array, flag: Array, carry: Array | None = None) -> None:
        """``flag[0] = carry[0] or (loss or any of values is NaN/Inf)``; ``flag`` is a 1-element int32 array.

        Written without a host synchronisation (on CuPy everything stays on the
        device). The reference tests ``values.sum()``, one pass without
        temporaries: NaN and ±Inf propagate through a sum; it also flags finite
        values whose sum overflows (|Σ| > 3.4e38 in float32), which only a run
        that is diverging anyway produces. The fused kernel tests each element.
        """
        xp = self.xp
        if carry is None:
            flag.fill(0)
        else:
            xp.copyto(flag, carry)
        bad = xp.logical_not(xp.logical_and(xp.isfinite(values.sum()), xp.isfinite(loss)))
        xp.maximum(flag, bad, out=flag)

    # --- optimizer updates: one pass over the flat parameter buffer ----------------------------
    def _count_step(self, steps: Array, skip: Array | None) -> bool:
        """The one place the reference reads the guard's flag: False (and nothing counted) when
        ``skip[0]`` is set, else ``steps[0] += 1`` and True. Reads the flag on the host."""
        if skip is not None and bool(skip[0]):
            return False
        steps += 1
        return True

    def sgd_update(self, params: Array, grads: Array, velocity: Array | None, steps: Array, skip: Array | None,
                   *, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
        """One SGD step (:func:`sgd_math`), counted in ``steps``; nothing when ``skip[0]`` is set."""
        if not self._count_step(steps, skip):
            return
        scratch = self.scratch("update", params.shape, params.dtype)
        update = functools.partial(sgd_math, self.xp, lr=lr, momentum=momentum, nesterov=nesterov,
                                   weight_decay=weight_decay)
        self.elementwise(update, [params, grads, velocity, scratch], passes=UPDATE_PASSES)

    def adam_update(self, params: Array, grads: Array, m: Array, v: Array, steps: Array, skip: Array | None,
                    *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                    decoupled: bool) -> None:
        """One Adam/AdamW step (:func:`adam_math`) at step ``steps[0]`` after counting it; nothing when
        ``skip[0]`` is set."""
        if not self._count_step(steps, skip):
            return
        scratch = self.scratch("update", params.shape, params.dtype)
        scratch2 = self.scratch("update2", params.shape, params.dtype) if weight_decay and not decoupled else None
        update = functools.partial(adam_math, self.xp, step=int(steps[0]), lr=lr, beta1=beta1, beta2=beta2,
                                   eps=eps, weight_decay=weight_decay, decoupled=decoupled)
        self.elementwise(update, [params, grads, m, v, scratch, scratch2], passes=UPDATE_PASSES)

    # --- an ensemble's updates: K members, each a row of a (K, P) buffer -----------------------------
    def nonfinite_flags(self, values: Array, losses: Array, flags: Array) -> None:
        """``flags[k] = 1`` where member k's loss or any of ``values[k]`` is NaN/Inf (by the sum of its row, as
        :meth:`nonfinite_flag`), else 0."""
        xp = self.xp
        good = xp.logical_and(xp.isfinite(values.sum(axis=1)), xp.isfinite(losses))
        xp.logical_not(good, out=good)
        xp.copyto(flags, good, casting="unsafe")

    def _active_members(self, steps: Array, skip: Array | None) -> HostArray:
        """The members to update (``skip[k]`` 0), their steps counted; reads the flags on the host, as
        :meth:`_count_step` does."""
        members = int(steps.shape[0])
        active = np.arange(members) if skip is None else np.flatnonzero(self.to_host(skip) == 0)
        if active.size:
            steps[self.xp.asarray(active)] += 1
        return active

    def _update_members(self, math: Callable[..., None], active: HostArray, buffers: list[Array | None],
                        per_member: dict[str, Any], fixed: dict[str, Any]) -> None:
        """``math(xp, *buffers, **hyperparameters)`` on the rows ``active`` of ``(K, P)`` buffers: all of them
        in place, or copies of the active rows written back. A hyperparameter alike for every updated member
        is passed as a number (as for one network); else as a ``(K, 1)`` column."""
        params = buffers[0]
        assert params is not None
        xp, members = self.xp, params.shape[0]
        every = active.size == members
        index = None if every else xp.asarray(active)
        rows = list(buffers) if every else [None if b is None else b[index] for b in buffers]
        columns: dict[str, Any] = {}
        for name, values in per_member.items():
            chosen = np.broadcast_to(np.asarray(values, dtype=np.float64), (members,))[active]
            if np.all(chosen == chosen[0]):
                fixed = {**fixed, name: float(chosen[0])}
            else:  # (the step count in float64, as the bias corrections of one network are computed)
                columns[name] = self.asarray(chosen.reshape(-1, 1), np.float64 if name == "step" else params.dtype)
        names = list(columns)

        def update(*arrays: Any) -> None:
            math(xp, *arrays[:len(rows)], **dict(zip(names, arrays[len(rows):])), **fixed)

        self.elementwise(update, [*rows, *columns.values()], passes=UPDATE_PASSES)
        if not every:
            for buffer, row in zip(buffers, rows):
                if buffer is not None and row is not buffer:
                    buffer[index] = row

    def sgd_update_members(self, params: Array, grads: Array, velocity: Array | None, steps: Array,
                           skip: Array | None, *, lr: Any, momentum: Any, nesterov: bool, weight_decay: Any) -> None:
        """One SGD step (:func:`sgd_math`) of every member k whose ``skip[k]`` is 0, with its own ``lr[k]``,
        ``momentum[k]`` and ``weight_decay[k]``, counted in ``steps[k]``; the others are left as they were."""
        active = self._active_members(steps, skip)
        if active.size:
            scratch = self.scratch("update", params.shape, params.dtype)
            self._update_members(sgd_math, active, [params, grads, velocity, scratch],
                                 {"lr": lr, "momentum": momentum, "weight_decay": weight_decay},
                                 {"nesterov": nesterov})

    def adam_update_members(self, params: Array, grads: Array, m: Array, v: Array, steps: Array,
                            skip: Array | None, *, lr: Any, beta1: float, beta2: float, eps: float,
                            weight_decay: Any, decoupled: bool) -> None:
        """One Adam/AdamW step (:func:`adam_math`) of every member k whose ``skip[k]`` is 0, at its own step
        ``steps[k]`` (counted first), with its own ``lr[k]`` and ``weight_decay[k]``."""
        active = self._active_members(steps, skip)
        if not active.size:
            return
        scratch = self.scratch("update", params.shape, params.dtype)
        scratch2 = self.scratch("update2", params.shape, params.dtype) \
            if np.any(np.asarray(weight_decay) != 0) and not decoupled else None
        self._update_members(adam_math, active, [params, grads, m, v, scratch, scratch2],
                             {"lr": lr, "weight_decay": weight_decay, "step": self.to_host(steps)},
                             {"beta1": beta1, "beta2": beta2, "eps": eps, "decoupled": decoupled})


def _used(value: Any) -> bool:
    """Whether a hyperparameter — a number, or an ensemble's column of them — is nonzero anywhere."""
    return bool((value != 0).any()) if hasattr(value, "shape") else bool(value)


def sgd_math(xp: Any, params: Array, grads: Array, velocity: Array | None, scratch: Array, *,
             lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
    """One SGD step in place (torch.optim.SGD with dampening 0).

    g ← ∇ + wd·θ;  v ← μ·v + g;  d ← g + μ·v (Nesterov) or v (momentum) or g;  θ ← θ − lr·d
    """
    g = grads
    if _used(weight_decay):
        xp.multiply(params, weight_decay, out=scratch)
        xp.add(scratch, grads, out=scratch)
        g = scratch
    if _used(momentum):
        assert velocity is not None
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


def adam_math(xp: Any, params: Array, grads: Array, m: Array, v: Array, scratch: Array, scratch2: Array | None, *,
              step: Any, lr: Any, beta1: float, beta2: float, eps: float,
              weight_decay: float, decoupled: bool) -> None:
    """One Adam / AdamW step in place (torch.optim.Adam / AdamW, amsgrad off); ``step`` counts from 1.

    g ← ∇ (+ wd·θ for Adam);  θ ← θ·(1 − lr·wd) for AdamW;
    m ← β₁m + (1 − β₁)g;  v ← β₂v + (1 − β₂)g²;
    θ ← θ − lr/(1 − β₁ᵗ) · m / (√v / √(1 − β₂ᵗ) + ε)
    """
    g = grads
    if _used(weight_decay) and decoupled:
        xp.multiply(params, 1.0 - lr * weight_decay, out=params)
    elif _used(weight_decay):
        assert scratch2 is not None
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
    bias_correction1 = 1.0 - beta1**step  # (an ensemble's members may each be at their own step: a column)
    bias_correction2_sqrt = math.sqrt(1.0 - beta2**step) if isinstance(step, (int, float)) \
        else xp.sqrt(1.0 - beta2**step)
    xp.sqrt(v, out=scratch)
    xp.multiply(scratch, 1.0 / bias_correction2_sqrt, out=scratch)
    xp.add(scratch, eps, out=scratch)
    xp.divide(m, scratch, out=scratch)
    xp.multiply(scratch, lr / bias_correction1, out=scratch)
    xp.subtract(params, scratch, out=params)
