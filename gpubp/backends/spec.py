"""What every backend provides: the operations the network, the optimizers and the guard call.

:class:`BackendSpec` is the contract, as a :class:`typing.Protocol`: the
reference :class:`~gpubp.backends.base.Backend` implements all of it with
array-module calls, the fused backend replaces the hot operations with CUDA
kernels, and nothing above the backends calls NumPy or CuPy for these steps.

Conventions of every operation:

* arrays are C-contiguous backend arrays (NumPy on the CPU, CuPy on a GPU)
  of the network's dtype, unless said otherwise;
* outputs are preallocated and passed in (``out=``, or the named buffer is
  written in place); nothing of the size of a batch is allocated per call;
* an operation either **overwrites** its output or says that it updates in
  place (``delta ← delta ⊙ σ'``); nothing accumulates silently;
* ``skip`` is a 1-element int32 flag on the device (the divergence guard's):
  when it is set the update does nothing, and it is read where the update runs
  (by the kernel on a GPU), so deciding costs no host synchronisation;
* ``steps`` is a 1-element int64 array on the device, the number of updates
  an optimizer has applied; the update counts itself there (unless skipped)
  and Adam reads its bias corrections from it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Protocol, TypeAlias

import numpy as np

if TYPE_CHECKING:
    from ..activations import Activation
    from ..losses import Loss

Array: TypeAlias = Any
"""A backend array: ``numpy.ndarray`` on the CPU, ``cupy.ndarray`` on a GPU. CuPy is optional and has no
type stubs, so the alias is not narrower than ``Any`` for a type checker; it says what is meant."""

HostArray: TypeAlias = np.ndarray
"""A NumPy array in host memory (what users pass in and get back)."""


class BackendSpec(Protocol):
    """The operations of a backend (see the module docstring for the conventions)."""

    name: str
    is_gpu: bool
    xp: Any

    # --- memory and transfers
    def device_name(self) -> str:
        """The CPU's or GPU's model name."""

    def activate(self) -> ContextManager[Any]:
        """A context in which this backend's device is current (for array code outside these operations)."""

    def empty(self, shape: Any, dtype: Any) -> Array:
        """An uninitialised array on the device."""

    def zeros(self, shape: Any, dtype: Any) -> Array:
        """A zeroed array on the device."""

    def asarray(self, value: Any, dtype: Any = None) -> Array:
        """A new device array holding a copy of ``value`` (host or device)."""

    def is_device_array(self, value: Any) -> bool:
        """True when ``value`` already lives where this backend computes."""

    def copy_into(self, out: Array, value: Any) -> None:
        """``out[...] = value`` with dtype conversion, without allocating a device array."""

    def to_host(self, value: Array) -> HostArray:
        """A NumPy copy."""

    def synchronize(self) -> None:
        """Wait for queued work (a no-op where work is synchronous)."""

    def scratch(self, name: str, shape: Any, dtype: Any) -> Array:
        """A buffer this backend owns for the calling thread, reused across calls (contents undefined)."""

    def elementwise(self, function: Callable[..., None], arrays: list[Any], passes: int = 1) -> None:
        """``function(*arrays)`` for an elementwise ``function`` of about ``passes`` passes over its arrays;
        may split the rows over threads."""

    # --- data
    def all_finite(self, value: Array) -> bool:
        """Whether every element is finite (host synchronisation; for diagnosis only)."""

    def take_rows(self, source: Array, index: Array, out: Array) -> None:
        """``out = source[index]`` along the first axis."""

    def one_hot(self, labels: Array, row_index: Array, out: Array) -> None:
        """``out[n, k] = [labels[n] == k]``, overwriting ``out``."""

    # --- a layer's forward pass: Z = A·W + b, A = σ(Z)
    def matmul(self, a: Array, b: Array, out: Array, precision: str = "highest") -> None:
        """``out = a @ b``, one GEMM (``a`` or ``b`` may be transposed views), overwriting ``out``.
        ``precision="tf32"`` lets a GPU use TF32 tensor cores for float32 (elsewhere it changes nothing)."""

    def add_bias(self, z: Array, b: Array) -> None:
        """``z += b`` over the rows."""

    def bias_activation_forward(self, activation: Activation, z: Array, b: Array, a: Array, tmp: Array) -> None:
        """``z += b``, ``a = σ(z)`` (``a`` may be ``z``)."""

    def activation_forward(self, activation: Activation, z: Array, a: Array, tmp: Array) -> None:
        """``a = σ(z)``."""

    def bias_loss_output(self, loss: Loss, z: Array, b: Array, a: Array, tmp: Array, rows: Array) -> None:
        """``z += b``, then the probabilities of a loss that fuses softmax or sigmoid."""

    def loss_output(self, loss: Loss, z: Array, a: Array, tmp: Array, rows: Array) -> None:
        """Probabilities from logits for a loss that fuses its output activation."""

    # --- loss and backward: BP1–BP4
    def loss_value_and_delta(self, loss: Loss, z: Array, a: Array, y: Array, delta: Array, tmp: Array,
                             rows: Array, weight: Array | None = None, members: int = 1) -> Array:
        """The loss (0-d array); overwrites ``delta`` with ∂L/∂A[L] or the fused δ[L] (BP1). Idempotent.
        ``weight``: None, or ``(N, 1)`` row weights scaled to mean 1: the weighted mean loss.
        ``members`` > 1: the rows are that many networks' batches stacked; each member's mean, ``(K,)``."""

    def activation_backward(self, activation: Activation, delta: Array, z: Array, a: Array, tmp: Array,
                            tmp2: Array) -> None:
        """``delta ← delta ⊙ σ'(z)`` in place (the last factor of BP1 and BP2)."""

    def bias_grad(self, delta: Array, ones: Array, out: Array) -> None:
        """BP3, ``out = Σ_rows delta``, overwriting ``out``."""

    # --- divergence guard and optimizer updates over the flat buffers
    def nonfinite_flag(self, values: Array, loss: Array, flag: Array, carry: Array | None = None) -> None:
        """``flag[0] = carry[0] or (loss or any of values is NaN/Inf)``, without a host synchronisation."""

    def sgd_update(self, params: Array, grads: Array, velocity: Array | None, steps: Array, skip: Array | None,
                   *, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
        """One SGD step over the flat buffer, counted in ``steps``; nothing when ``skip[0]`` is set."""

    def adam_update(self, params: Array, grads: Array, m: Array, v: Array, steps: Array, skip: Array | None,
                    *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                    decoupled: bool) -> None:
        """One Adam/AdamW step over the flat buffer, counted in ``steps``; nothing when ``skip[0]`` is set."""

    # --- the same for an ensemble: K members, one row of a (K, P) buffer each
    def nonfinite_flags(self, values: Array, losses: Array, flags: Array) -> None:
        """``flags[k] = 1`` where member k's loss or any of ``values[k]`` is NaN/Inf, else 0."""

    def sgd_update_members(self, params: Array, grads: Array, velocity: Array | None, steps: Array,
                           skip: Array | None, *, lr: Sequence[float], momentum: Sequence[float], nesterov: bool,
                           weight_decay: Sequence[float]) -> None:
        """One SGD step of every member whose ``skip[k]`` is 0, with its own hyperparameters."""

    def adam_update_members(self, params: Array, grads: Array, m: Array, v: Array, steps: Array,
                            skip: Array | None, *, lr: Sequence[float], beta1: float, beta2: float, eps: float,
                            weight_decay: Sequence[float], decoupled: bool) -> None:
        """One Adam/AdamW step of every member whose ``skip[k]`` is 0, with its own rate and decay."""
