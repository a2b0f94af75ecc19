"""The fused-kernel backend: the hot operations as one kernel launch each.

:class:`FusedBackend` overrides the hot operations of the reference
:class:`~gpubp.backends.base.Backend` with one kernel launch each (through a
:class:`~gpubp.backends._kernels.FusedOps`):

====================================  ==============================================  =========
operation                             kernel (one pass over memory)                     reference
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
                                      (after a one-thread ``count_step`` /
                                      ``adam_prepare<T>`` that counts the step on the
                                      device and computes Adam's bias corrections)
``nonfinite_flag``                    ``any_nonfinite<T>``                              2
``sgd_update_members`` /              ``sgd_step_members<T>`` / ``adam_step_members``   (K rows)
``adam_update_members`` (ensembles)   (after ``count_steps`` / ``adam_prepare_members``)
====================================  ==============================================  =========

An ensemble's layers are ``(K, N, width)``: ``bias_act_forward`` and ``bias_softmax`` take
the members' biases (a grid K blocks tall), the loss kernels take the K stacked batches with
each member's own mean, ``act_backward`` is elementwise and needs nothing more, and the
optimizer kernels take each member's hyperparameters, step count and skip flag.

The last column counts the passes over memory (ufunc calls) of the reference
operation in :class:`~gpubp.backends.base.Backend` that the kernel replaces.

An activation or loss the kernels do not know (one a user built from
:class:`~gpubp.activations.Activation` themselves) falls back to the
reference operation, so every network still runs.

The CuPy backend is a ``FusedBackend`` over CUDA modules; the test suite also
runs it over NumPy arrays with the kernels compiled for the host, which
checks the kernels' arithmetic and the launch code on machines without a GPU.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..activations import ACTIVATIONS, Activation
from ..errors import GpubpValueError
from ..losses import LOSSES, Loss
from ._kernels import ACTIVATION_FUNCTORS, POINTWISE_LOSSES, FusedOps
from .base import Backend
from .spec import Array

BIAS_GRAD_METHODS = ("gemv", "kernel")

_BUILTIN_ACTIVATIONS = {name: ACTIVATIONS[name] for name in ACTIVATION_FUNCTORS}
_BUILTIN_LOSSES = dict(LOSSES)
"""The activations and losses the kernels implement, as defined when gpubp was imported: an object
with the same name but other functions (built by a user, or patched into the registry) is not them."""


def _address(array: Any) -> int:
    """Where an array's data starts (NumPy or CuPy)."""
    return int(array.data.ptr) if hasattr(array.data, "ptr") else int(array.ctypes.data)


class FusedBackend(Backend):
    """A :class:`~gpubp.backends.base.Backend` whose hot operations launch the kernels of ``ops``.

    ``bias_grad`` picks how BP3's column sums run: ``"gemv"`` (the reference's
    GEMV against a ones vector) or ``"kernel"`` (the deterministic two-pass kernel).
    """

    def __init__(self, xp: Any, ops: FusedOps, bias_grad: str = "gemv") -> None:
        if bias_grad not in BIAS_GRAD_METHODS:
            raise GpubpValueError(f"bias_grad must be one of {BIAS_GRAD_METHODS}, got {bias_grad!r}")
        super().__init__(xp)
        self.ops = ops
        self.bias_grad_method = bias_grad
        self._never_skip = self.zeros((1,), np.int32)
        """The flag an update without a guard reads: always 0, never written."""

    @staticmethod
    def _kernel_activation(activation: Activation) -> bool:
        return _BUILTIN_ACTIVATIONS.get(activation.name) is activation

    @staticmethod
    def _kernel_loss(loss: Loss) -> bool:
        return _BUILTIN_LOSSES.get(loss.name) is loss

    # --- forward ------------------------------------------------------------------------------------
    def add_bias(self, z: Array, b: Array) -> None:
        self.ops.bias_act_forward("identity", z, b, z)

    def bias_activation_forward(self, activation: Activation, z: Array, b: Array, a: Array, tmp: Array) -> None:
        if not self._kernel_activation(activation):
            return super().bias_activation_forward(activation, z, b, a, tmp)
        self.ops.bias_act_forward(activation.name, z, b, a)

    def bias_loss_output(self, loss: Loss, z: Array, b: Array, a: Array, tmp: Array, rows: Array) -> None:
        if not self._kernel_loss(loss):
            return super().bias_loss_output(loss, z, b, a, tmp, rows)
        if loss.fused_activation == "softmax":
            self.ops.bias_softmax(z, b, a, rows[0], rows[1])
        else:  # sigmoid, keeping z (a different buffer) for the loss
            self.ops.bias_act_forward("sigmoid", z, b, a)

    # --- loss and backward --------------------------------------------------------------------------
    def loss_value_and_delta(self, loss: Loss, z: Array, a: Array, y: Array, delta: Array, tmp: Array,
                             rows: Array, weight: Array | None = None, members: int = 1) -> Array:
        if not self._kernel_loss(loss):
            return super().loss_value_and_delta(loss, z, a, y, delta, tmp, rows, weight, members)
        if loss.name == "cross_entropy":  # rows[0], rows[1] hold the max and Σ exp from bias_softmax
            n = z.shape[0]
            terms = tmp.reshape(-1)[:n]  # not rows[1]: the loss can be computed again after one forward
            self.ops.softmax_xent(z, a, y, delta, rows[0], rows[1], terms, weight, members)
        else:
            terms = tmp
            if loss.name == "bce":
                self.ops.bce(z, a, y, delta, tmp, weight, members)
            else:
                assert loss.name in POINTWISE_LOSSES
                self.ops.pointwise_loss(loss.name, a, y, delta, tmp, weight, members)
        scale = members / max(terms.size, 1)
        if members == 1:
            return self.xp.asarray(terms.sum() * scale)
        return terms.reshape(members, -1).sum(axis=1) * scale  # each member's mean

    def activation_backward(self, activation: Activation, delta: Array, z: Array, a: Array,
                            tmp: Array, tmp2: Array) -> None:
        if not self._kernel_activation(activation):
            return super().activation_backward(activation, delta, z, a, tmp, tmp2)
        if activation.name != "identity":
            self.ops.act_backward(activation.name, delta, z, a)

    def bias_grad(self, delta: Array, ones: Array, out: Array) -> None:
        # One column (a one-output last layer) always takes the kernel: cuBLAS's GEMV path in CuPy
        # turns a single dot product into an elementwise product and a sum with a batch-sized temporary.
        if delta.ndim == 3:  # an ensemble: K GEMVs, into a contiguous buffer, then into the (K, P) buffer's view
            result = self.scratch("member_bias_grad", out.shape, out.dtype)
            super().bias_grad(delta, ones, result)
            self.xp.copyto(out, result)
            return None
        if self.bias_grad_method == "gemv" and delta.shape[1] > 1:
            return super().bias_grad(delta, ones, out)
        rows, cols = delta.shape
        chunks, _ = self.ops.column_sum_plan(rows, cols)
        partials = self.scratch("column_partials", (chunks, cols), delta.dtype) if chunks > 1 else None
        self.ops.column_sums(delta, out, partials)

    def one_hot(self, labels: Array, row_index: Array, out: Array) -> None:
        self.ops.one_hot(labels, out)

    # --- divergence guard and optimizers -------------------------------------------------------------
    def nonfinite_flag(self, values: Array, loss: Array, flag: Array, carry: Array | None = None) -> None:
        if carry is None:
            flag.fill(0)
        else:
            self.xp.copyto(flag, carry)
        loss = self.xp.asarray(loss)
        if loss.dtype != values.dtype:
            loss = loss.astype(values.dtype)
        self.ops.any_nonfinite(values, loss, flag)

    def sgd_update(self, params: Array, grads: Array, velocity: Array | None, steps: Array, skip: Array | None,
                   *, lr: float, momentum: float, nesterov: bool, weight_decay: float) -> None:
        skip = self._never_skip if skip is None else skip
        self.ops.count_step(steps, skip)
        self.ops.sgd_step(params, grads, velocity, skip, lr=lr, momentum=momentum, nesterov=nesterov,
                          weight_decay=weight_decay)

    def adam_update(self, params: Array, grads: Array, m: Array, v: Array, steps: Array, skip: Array | None,
                    *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                    decoupled: bool) -> None:
        skip = self._never_skip if skip is None else skip
        factors = self.scratch("adam_factors", (2,), params.dtype)
        self.ops.adam_prepare(steps, skip, factors, lr=lr, beta1=beta1, beta2=beta2)
        self.ops.adam_step(params, grads, m, v, factors, skip, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
                           weight_decay=weight_decay, decoupled=decoupled)

    # --- an ensemble's updates: one launch for every member, each with its own hyperparameters -------
    def _member_table(self, name: str, rows: list[list[float]], dtype: Any) -> Array:
        """The members' hyperparameters as a device table ``(K, columns)``, uploaded only when they change
        (a schedule changes them once an epoch)."""
        table = np.asarray(rows, dtype=dtype).T.copy()
        device = self.scratch(name, table.shape, dtype)
        # The scratch buffer of ``name`` is shared by every ensemble on this backend (and this thread): what
        # was last written into it, and where, is kept; any other table (another ensemble's) is uploaded.
        uploaded = self._local.__dict__.setdefault("member_tables", {})
        where = (_address(device), table.shape)
        last = uploaded.get(name)
        if last is None or last[0] != where or not np.array_equal(last[1], table):
            self.copy_into(device, table)
            uploaded[name] = (where, table)
        return device

    def _all_members(self, members: int) -> Array:
        """The skip flags of an update without a guard: 0 for every member, never written."""
        flags = self._local.__dict__.setdefault("never_skip_members", {})
        if members not in flags:
            flags[members] = self.zeros((members,), np.int32)
        return flags[members]

    def sgd_update_members(self, params: Array, grads: Array, velocity: Array | None, steps: Array,
                           skip: Array | None, *, lr: Any, momentum: Any, nesterov: bool, weight_decay: Any) -> None:
        members = params.shape[0]
        lr, momentum, weight_decay = (np.broadcast_to(np.asarray(v, np.float64), (members,)) for v in
                                      (lr, momentum, weight_decay))
        skip = self._all_members(members) if skip is None else skip
        hyper = self._member_table("sgd_hyper", [list(lr), list(momentum), list(lr * momentum), list(weight_decay)],
                                   params.dtype)
        self.ops.count_steps(steps, skip)
        self.ops.sgd_step_members(params, grads, velocity, skip, hyper, nesterov=nesterov)

    def adam_update_members(self, params: Array, grads: Array, m: Array, v: Array, steps: Array,
                            skip: Array | None, *, lr: Any, beta1: float, beta2: float, eps: float,
                            weight_decay: Any, decoupled: bool) -> None:
        members = params.shape[0]
        lr, weight_decay = (np.broadcast_to(np.asarray(x, np.float64), (members,)) for x in (lr, weight_decay))
        skip = self._all_members(members) if skip is None else skip
        rates = self._member_table("adam_lr", [list(lr)], np.float64).reshape(members)
        hyper = self._member_table("adam_hyper", [list(weight_decay), list(1.0 - lr * weight_decay)], params.dtype)
        factors = self.scratch("adam_member_factors", (members, 2), params.dtype)
        self.ops.adam_prepare_members(steps, skip, rates, factors, beta1=beta1, beta2=beta2)
        self.ops.adam_step_members(params, grads, m, v, factors, skip, hyper, beta1=beta1, beta2=beta2, eps=eps,
                                   decoupled=decoupled)
