"""The reference backend: every operation the network needs, written against ``self.xp``.

The network never calls NumPy or CuPy directly; it calls these methods. The
base class implements each of them with array-module calls that work on both
NumPy and CuPy (``out=`` everywhere, nothing allocated per call), which makes
it the executable specification. A backend subclass overrides only what it
can do better — the CuPy backend replaces the hot elementwise operations with
fused CUDA kernels of the same names — and every backend is tested against it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .. import optim
from ..activations import Activation
from ..losses import Loss


class Backend:
    """Array operations for one array module (``xp``) and one device."""

    name = "base"
    is_gpu = False
    needs_optimizer_scratch = True
    """Whether the optimizer updates need scratch buffers the size of the parameters (fused ones do not)."""

    def __init__(self, xp: Any):
        self.xp = xp

    def __repr__(self) -> str:
        return f"<gpubp backend {self.name!r} on {self.device_name()}>"

    # --- memory and transfers ---------------------------------------------------------------
    def device_name(self) -> str:
        raise NotImplementedError

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self.xp.empty(shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return self.xp.zeros(shape, dtype=dtype)

    def is_device_array(self, value: Any) -> bool:
        """True when ``value`` already lives where this backend computes."""
        return isinstance(value, self.xp.ndarray)

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        """A new backend array holding a copy of ``value`` (host or device)."""
        return self.xp.array(value, dtype=dtype, copy=True)

    def copy_into(self, out: Any, value: Any) -> None:
        """``out[...] = value`` with dtype conversion, without allocating a device array."""
        self.xp.copyto(out, value, casting="unsafe")

    def to_host(self, value: Any) -> np.ndarray:
        """A NumPy copy of a backend array."""
        return np.array(value, copy=True)

    def synchronize(self) -> None:
        """Wait until queued work has finished (a no-op where work is synchronous)."""

    def all_finite(self, value: Any) -> bool:
        return bool(self.xp.isfinite(value).all())

    def take_rows(self, source: Any, index: Any, out: Any) -> None:
        """``out = source[index]`` along the first axis, into a preallocated buffer."""
        self.xp.take(source, index, axis=0, out=out)

    def one_hot(self, labels: Any, row_index: Any, out: Any) -> None:
        """``out[n, k] = 1 if labels[n] == k else 0``; ``row_index`` is ``arange(N)``."""
        out.fill(0)
        out[row_index, labels] = 1

    # --- the layer's linear map ---------------------------------------------------------------
    def matmul(self, a: Any, b: Any, out: Any) -> None:
        """``out = a @ b`` (one GEMM; ``a`` or ``b`` may be transposed views)."""
        self.xp.matmul(a, b, out=out)

    def add_bias(self, z: Any, b: Any) -> None:
        """``z += b``, broadcast over the rows (the ``+ b`` of ``Z = A·W + b``)."""
        self.xp.add(z, b, out=z)

    def bias_grad(self, delta: Any, ones: Any, out: Any) -> None:
        """BP3: ``∂L/∂b = Σ_rows δ = 1ᵀ·δ``, overwriting ``out``.

        Written as a GEMV against a vector of ones: BLAS parallelises it and
        it measured 5–10× faster than ``sum(axis=0)`` on the CPU.
        """
        self.xp.matmul(ones, delta, out=out)

    # --- activations and losses ---------------------------------------------------------------
    def bias_activation_forward(self, activation: Activation, z: Any, b: Any, a: Any, tmp: Any) -> None:
        """``z += b`` then ``a = σ(z)``: the rest of a layer's forward pass after its GEMM."""
        self.add_bias(z, b)
        self.activation_forward(activation, z, a, tmp)

    def bias_loss_output(self, loss: Loss, z: Any, b: Any, a: Any, tmp: Any, rows: Any) -> None:
        """``z += b`` then the probabilities of a loss that fuses its output activation (softmax, sigmoid)."""
        self.add_bias(z, b)
        self.loss_output(loss, z, a, tmp, rows)

    def activation_forward(self, activation: Activation, z: Any, a: Any, tmp: Any) -> None:
        """``a = σ(z)``; ``a`` may be ``z`` itself when σ' does not need ``z``."""
        activation.forward(self.xp, z, a, tmp)

    def activation_backward(self, activation: Activation, delta: Any, z: Any, a: Any,
                            tmp: Any, tmp2: Any) -> None:
        """``delta ← delta ⊙ σ'(z)`` in place (the last factor of BP1 and BP2)."""
        activation.backward(self.xp, delta, z, a, tmp, tmp2)

    def loss_output(self, loss: Loss, z: Any, a: Any, tmp: Any, rows: Any) -> None:
        """Probabilities from logits for the losses that fuse their output activation."""
        assert loss.output is not None
        loss.output(self.xp, z, a, tmp, rows)

    def loss_value_and_delta(self, loss: Loss, z: Any, a: Any, y: Any, delta: Any,
                             tmp: Any, rows: Any) -> Any:
        """The loss as a 0-d array; writes the output error into ``delta`` (BP1)."""
        return self.xp.asarray(loss.value_and_delta(self.xp, z, a, y, delta, tmp, rows))

    # --- divergence guard ---------------------------------------------------------------------
    def nonfinite_flag(self, values: Any, loss: Any, flag: Any, carry: Any = None) -> None:
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

    # --- optimizers ---------------------------------------------------------------------------
    def sgd_update(self, params: Any, grads: Any, velocity: Any, scratch: Any, skip: Any = None,
                   **hyper: Any) -> None:
        """One SGD step, or nothing when the 1-element flag ``skip`` is set (this reads it on the host)."""
        if skip is not None and bool(skip[0]):
            return
        optim.sgd_update(self.xp, params, grads, velocity, scratch, **hyper)

    def adam_update(self, params: Any, grads: Any, m: Any, v: Any, scratch: Any, scratch2: Any,
                    skip: Any = None, **hyper: Any) -> None:
        """One Adam/AdamW step, or nothing when the 1-element flag ``skip`` is set."""
        if skip is not None and bool(skip[0]):
            return
        optim.adam_update(self.xp, params, grads, m, v, scratch, scratch2, **hyper)
