"""The fused-kernel operations, as a backend mixin.

:class:`FusedKernels` overrides the hot operations of the reference
:class:`~gpubp.backends.base.Backend` with one kernel launch each (through a
:class:`~gpubp.backends._kernels.FusedOps`):

====================================  ==============================================  =========
operation                             kernel (one launch)                               reference
====================================  ==============================================  =========
``bias_activation_forward``           ``bias_act_forward<T, σ>``: z += b, a = σ(z)      2–9
``activation_backward``               ``act_backward<T, σ>``: δ ← δ ⊙ σ'                2–17
``bias_loss_output`` (softmax)        ``bias_softmax<T>``                               6
``bias_loss_output`` (sigmoid)        ``bias_act_forward<T, Sigmoid>``                  5
``loss_value_and_delta``              ``softmax_xent`` / ``bce`` / ``pointwise_loss``   3–10
                                      (+ one sum of the per-row/per-element losses)
``bias_grad`` (``"kernel"``)          ``column_partials`` + ``column_total``            1 GEMV
``one_hot``                           ``one_hot<T>``                                    2
``sgd_update`` / ``adam_update``      ``sgd_step<T>`` / ``adam_step<T>``                2–8 / 13–15
``nonfinite_flag``                    ``any_nonfinite<T>``                              2
====================================  ==============================================  =========

The last column counts the passes over memory (ufunc calls) of the reference
operation in :class:`~gpubp.backends.base.Backend` that the kernel replaces.

An activation or loss the kernels do not know (one a user built from
:class:`~gpubp.activations.Activation` themselves) falls back to the
reference operation, so every network still runs.

The CuPy backend is ``FusedKernels`` over CUDA modules; the test suite also
runs it over NumPy arrays with the kernels compiled for the host, which
checks the kernels' arithmetic and the launch code on machines without a GPU.
"""

from __future__ import annotations

from typing import Any

from ..activations import ACTIVATIONS, Activation
from ..errors import GpubpValueError
from ..losses import LOSSES, Loss
from ._kernels import ACTIVATION_FUNCTORS, POINTWISE_LOSSES, FusedOps

BIAS_GRAD_METHODS = ("gemv", "kernel")

_BUILTIN_ACTIVATIONS = {name: ACTIVATIONS[name] for name in ACTIVATION_FUNCTORS}
_BUILTIN_LOSSES = dict(LOSSES)
"""The activations and losses the kernels implement, as defined when gpubp was imported: an object
with the same name but other functions (built by a user, or patched into the registry) is not them."""


class FusedKernels:
    """Mixin: put it before a :class:`~gpubp.backends.base.Backend` subclass and set ``self.ops``."""

    ops: FusedOps
    needs_optimizer_scratch = False

    def _init_fused(self, ops: FusedOps, bias_grad: str) -> None:
        if bias_grad not in BIAS_GRAD_METHODS:
            raise GpubpValueError(f"bias_grad must be one of {BIAS_GRAD_METHODS}, got {bias_grad!r}")
        self.ops = ops
        self.bias_grad_method = bias_grad
        self._partials: dict[tuple[int, int, str], Any] = {}

    @staticmethod
    def _kernel_activation(activation: Activation) -> bool:
        return _BUILTIN_ACTIVATIONS.get(activation.name) is activation

    @staticmethod
    def _kernel_loss(loss: Loss) -> bool:
        return _BUILTIN_LOSSES.get(loss.name) is loss

    # --- forward ------------------------------------------------------------------------------------
    def add_bias(self, z: Any, b: Any) -> None:
        self.ops.bias_act_forward("identity", z, b, z)

    def bias_activation_forward(self, activation: Activation, z: Any, b: Any, a: Any, tmp: Any) -> None:
        if not self._kernel_activation(activation):
            return super().bias_activation_forward(activation, z, b, a, tmp)  # type: ignore[misc]
        self.ops.bias_act_forward(activation.name, z, b, a)

    def bias_loss_output(self, loss: Loss, z: Any, b: Any, a: Any, tmp: Any, rows: Any) -> None:
        if not self._kernel_loss(loss):
            return super().bias_loss_output(loss, z, b, a, tmp, rows)  # type: ignore[misc]
        if loss.fused_activation == "softmax":
            self.ops.bias_softmax(z, b, a, rows[0], rows[1])
        else:  # sigmoid, keeping z (a different buffer) for the loss
            self.ops.bias_act_forward("sigmoid", z, b, a)

    # --- loss and backward --------------------------------------------------------------------------
    def loss_value_and_delta(self, loss: Loss, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any) -> Any:
        if not self._kernel_loss(loss):
            return super().loss_value_and_delta(loss, z, a, y, delta, tmp, rows)  # type: ignore[misc]
        if loss.name == "cross_entropy":  # rows[0], rows[1] hold the max and Σ exp from bias_softmax
            self.ops.softmax_xent(z, a, y, delta, rows[0], rows[1], rows[1])
            return self.xp.asarray(rows[1].sum() * (1.0 / max(z.shape[0], 1)))
        if loss.name == "bce":
            self.ops.bce(z, a, y, delta, tmp)
        else:
            assert loss.name in POINTWISE_LOSSES
            self.ops.pointwise_loss(loss.name, a, y, delta, tmp)
        return self.xp.asarray(tmp.sum() * (1.0 / max(tmp.size, 1)))

    def activation_backward(self, activation: Activation, delta: Any, z: Any, a: Any,
                            tmp: Any, tmp2: Any) -> None:
        if not self._kernel_activation(activation):
            return super().activation_backward(activation, delta, z, a, tmp, tmp2)  # type: ignore[misc]
        if activation.name != "identity":
            self.ops.act_backward(activation.name, delta, z, a)

    def bias_grad(self, delta: Any, ones: Any, out: Any) -> None:
        if self.bias_grad_method == "gemv":
            return super().bias_grad(delta, ones, out)  # type: ignore[misc]
        rows, cols = delta.shape
        chunks, _ = self.ops.column_sum_plan(rows, cols)
        key = (chunks, cols, str(delta.dtype))
        partials = self._partials.get(key)
        if partials is None and chunks > 1:
            partials = self._partials[key] = self.empty((chunks, cols), delta.dtype)  # type: ignore[attr-defined]
        self.ops.column_sums(delta, out, partials)

    def one_hot(self, labels: Any, row_index: Any, out: Any) -> None:
        self.ops.one_hot(labels, out)

    # --- divergence guard and optimizers -------------------------------------------------------------
    def nonfinite_flag(self, values: Any, loss: Any, flag: Any, carry: Any = None) -> None:
        if carry is None:
            flag.fill(0)
        else:
            self.xp.copyto(flag, carry)
        loss = self.xp.asarray(loss)
        if loss.dtype != values.dtype:
            loss = loss.astype(values.dtype)
        self.ops.any_nonfinite(values, loss, flag)

    def _skip_flag(self, skip: Any) -> Any:
        if skip is not None:
            return skip
        if getattr(self, "_never_skip", None) is None:
            self._never_skip = self.zeros(1, "int32")
        return self._never_skip

    def sgd_update(self, params: Any, grads: Any, velocity: Any, scratch: Any, skip: Any = None,
                   **hyper: Any) -> None:
        self.ops.sgd_step(params, grads, velocity, self._skip_flag(skip), **hyper)

    def adam_update(self, params: Any, grads: Any, m: Any, v: Any, scratch: Any, scratch2: Any,
                    skip: Any = None, **hyper: Any) -> None:
        self.ops.adam_step(params, grads, m, v, self._skip_flag(skip), **hyper)
