"""Loss functions: the value L and the output error ∂L/∂(output), side by side.

All losses use PyTorch's definitions with ``reduction="mean"``. With ``M`` the
number of elements of the output (batch × outputs) and ``N`` the batch size:

====================  =============================================  =================================
loss                  L                                              what ``value_and_delta`` writes
====================  =============================================  =================================
``mse``               Σ (a − y)² / M                                 ∂L/∂a = 2 (a − y) / M
``l1``                Σ |a − y| / M                                  ∂L/∂a = sign(a − y) / M
``huber`` (δ = 1)     Σ h(a − y) / M, h(d) = ½d² if |d| ≤ 1           ∂L/∂a = clip(a − y, −1, 1) / M
                      else |d| − ½
``cross_entropy``     Σₙ (logsumexp(zₙ) − Σₖ yₙₖ zₙₖ) / N             δ = ∂L/∂z = (P − Y) / N
``bce``               Σ (softplus(z) − y·z) / M                      δ = ∂L/∂z = (sigmoid(z) − Y) / M
====================  =============================================  =================================

``cross_entropy`` and ``bce`` fuse their output activation (softmax, sigmoid)
into the loss: the network's last layer produces logits ``z``, ``output``
turns them into probabilities ``a``, and the error is taken with respect to
``z`` directly, which is both cheaper and exact (BP1 without a Jacobian). For
the other losses the network multiplies ∂L/∂a by σ'(z) of its output activation.

Every function works in place on buffers the network preallocates: ``tmp`` has
the output's shape and ``rows`` is ``(2, N, 1)``.

**Members.** ``members=K`` says the rows are K networks' batches of ``N/K`` rows each,
stacked (an ensemble's output layer); every mean above is then each member's own, the
error is that of each member's loss, and the value is a ``(K,)`` array of the members' losses.

**Sample weights.** ``weight`` is ``None`` or one weight per row, shaped ``(N, 1)`` and
scaled by the caller to mean 1 over the batch (``w̃ₙ = N·wₙ / Σw``). Each row's loss
terms and output error are multiplied by ``w̃ₙ``, so the mean reductions above become
the weighted mean ``Σₙ wₙ ℓₙ / Σₙ wₙ`` and the gradient is that of the weighted mean.
With all weights equal it is the unweighted loss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .activations import ACTIVATIONS
from .errors import GpubpTypeError, GpubpValueError


@dataclass(frozen=True)
class Loss:
    """A loss: its value and output error, and the output activation it fuses (if any)."""

    name: str
    value_and_delta: Callable[..., Any]
    """``value_and_delta(xp, z, a, y, delta, tmp, rows, weight=None, members=1) -> 0-d array`` (``(members,)``
    for stacked members); writes the output error into ``delta``."""
    fused_activation: str | None = None
    """``"softmax"`` or ``"sigmoid"`` when the loss includes the output activation."""
    output: Callable[..., None] | None = None
    """``output(xp, z, a, tmp, rows)``: probabilities from logits, for fused losses."""
    classification: bool = False

    def __repr__(self) -> str:
        return f"Loss({self.name!r})"


def _total(terms: Any, members: int) -> Any:
    """The sum of the loss terms: over the whole batch, or — for ``members`` networks' batches stacked — per
    member, a ``(members,)`` array."""
    return terms.sum() if members == 1 else terms.reshape(members, -1).sum(axis=1)


def _weigh(xp: Any, weight: Any, elem: Any, delta: Any) -> None:
    """Row weights (mean 1 over the batch) times each row's loss terms and output error."""
    xp.multiply(elem, weight, out=elem)
    xp.multiply(delta, weight, out=delta)


def _mse(xp: Any, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any, weight: Any = None,
         members: int = 1) -> Any:
    scale = members / a.size
    xp.subtract(a, y, out=delta)
    if weight is None and members == 1:
        loss = xp.vdot(delta.ravel(), delta.ravel()) * scale
    else:
        xp.multiply(delta, delta, out=tmp)
        if weight is not None:
            _weigh(xp, weight, tmp, delta)
        loss = _total(tmp, members) * scale
    xp.multiply(delta, 2.0 * scale, out=delta)
    return loss


def _l1(xp: Any, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any, weight: Any = None,
        members: int = 1) -> Any:
    scale = members / a.size
    xp.subtract(a, y, out=delta)
    xp.abs(delta, out=tmp)
    xp.sign(delta, out=delta)
    if weight is not None:
        _weigh(xp, weight, tmp, delta)
    loss = _total(tmp, members) * scale
    xp.multiply(delta, scale, out=delta)
    return loss


def _huber(xp: Any, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any, weight: Any = None,
           members: int = 1) -> Any:
    # With d = a − y and c = clip(d, −1, 1): h(d) = c·d − ½c², for both branches.
    scale = members / a.size
    xp.subtract(a, y, out=tmp)
    xp.clip(tmp, -1.0, 1.0, out=delta)
    if weight is None and members == 1:
        loss = (xp.vdot(delta.ravel(), tmp.ravel()) - 0.5 * xp.vdot(delta.ravel(), delta.ravel())) * scale
    else:  # tmp ← c·(2d − c) = 2·h(d), in place, then weighted
        xp.multiply(tmp, 2.0, out=tmp)
        xp.subtract(tmp, delta, out=tmp)
        xp.multiply(tmp, delta, out=tmp)
        if weight is not None:
            _weigh(xp, weight, tmp, delta)
        loss = _total(tmp, members) * (0.5 * scale)
    xp.multiply(delta, scale, out=delta)
    return loss


NARROW_ROWS = 32
"""Rows of at most this many columns take their maxima column by column on NumPy (see :func:`_row_max`)."""


def _row_max(xp: Any, x: Any, out: Any) -> None:
    """``out[n] = max_k x[n, k]`` into ``out`` ``(N, 1)`` (a NaN wins, as in NumPy's ``max``).

    NumPy reduces a short row slowly (0.65 ms for the maxima of 8192 rows of 10, measured on a 2-core
    Xeon, 2026-11-29); a loop over the columns, one vectorised ``maximum`` each, takes 0.04 ms. A
    maximum is exact in any order, so the result is NumPy's own. (Sums are left to NumPy: their
    rounding depends on the order.)"""
    columns = x.shape[1]
    if getattr(xp, "__name__", "") != "numpy" or not 1 <= columns <= NARROW_ROWS:
        xp.max(x, axis=1, keepdims=True, out=out)
        return
    xp.copyto(out, x[:, :1])
    for j in range(1, columns):
        xp.maximum(out, x[:, j:j + 1], out=out)


def _softmax(xp: Any, z: Any, a: Any, tmp: Any, rows: Any) -> None:
    """a = softmax(z) row by row, shifted by the row maximum so exp never overflows.
    Leaves the row maxima in rows[0] and the sums of exp(z − max) in rows[1]."""
    row_max, row_sum = rows[0], rows[1]
    _row_max(xp, z, row_max)
    xp.subtract(z, row_max, out=a)
    xp.exp(a, out=a)
    xp.sum(a, axis=1, keepdims=True, out=row_sum)
    xp.divide(a, row_sum, out=a)


def _cross_entropy(xp: Any, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any, weight: Any = None,
                   members: int = 1) -> Any:
    # a already holds softmax(z) (from ``output``), rows the max and the sum of exps. Both are only
    # read, so the loss can be computed again after one forward pass with the same result.
    # Each row's loss, logsumexp(z) − y·z, is ≥ 0 in exact arithmetic (the targets are probabilities);
    # it is clamped at 0 row by row, so rounding of saturated logits cannot make the loss negative.
    n, k = z.shape
    row_max, row_sum = rows[0], rows[1]
    row_loss = tmp.reshape(-1)[:n].reshape(n, 1)
    row_yz = tmp.reshape(-1)[n:2 * n].reshape(n, 1) if k >= 2 else xp.empty((n, 1), z.dtype)
    xp.log(row_sum, out=row_loss)
    xp.add(row_loss, row_max, out=row_loss)  # logsumexp(z) per row
    xp.multiply(y, z, out=delta)  # delta is scratch until BP1 below
    xp.sum(delta, axis=1, keepdims=True, out=row_yz)
    xp.subtract(row_loss, row_yz, out=row_loss)
    xp.maximum(row_loss, 0.0, out=row_loss)
    xp.subtract(a, y, out=delta)  # BP1, fused: δ = (P − Y) / N
    if weight is not None:
        _weigh(xp, weight, row_loss, delta)
    loss = _total(row_loss, members) * (members / n)
    xp.multiply(delta, members / n, out=delta)
    return loss


def _sigmoid_output(xp: Any, z: Any, a: Any, tmp: Any, rows: Any) -> None:
    ACTIVATIONS["sigmoid"].forward(xp, z, a, tmp)


def _bce(xp: Any, z: Any, a: Any, y: Any, delta: Any, tmp: Any, rows: Any, weight: Any = None,
         members: int = 1) -> Any:
    # −[y·log σ(z) + (1 − y)·log(1 − σ(z))] = softplus(z) − y·z, stable for any z.
    # Each element is ≥ 0 in exact arithmetic for y in [0, 1]; clamped so rounding cannot go below.
    scale = members / z.size
    ACTIVATIONS["softplus"].forward(xp, z, tmp, delta)
    xp.multiply(y, z, out=delta)  # delta is scratch until BP1 below
    xp.subtract(tmp, delta, out=tmp)
    xp.maximum(tmp, 0.0, out=tmp)
    xp.subtract(a, y, out=delta)  # BP1, fused: δ = (σ(z) − Y) / M
    if weight is not None:
        _weigh(xp, weight, tmp, delta)
    loss = _total(tmp, members) * scale
    xp.multiply(delta, scale, out=delta)
    return loss


LOSSES: dict[str, Loss] = {
    loss.name: loss
    for loss in (
        Loss("mse", _mse),
        Loss("l1", _l1),
        Loss("huber", _huber),
        Loss("cross_entropy", _cross_entropy, "softmax", _softmax, classification=True),
        Loss("bce", _bce, "sigmoid", _sigmoid_output, classification=True),
    )
}
_ALIASES = {"ce": "cross_entropy", "crossentropy": "cross_entropy", "bce_with_logits": "bce", "mae": "l1"}


def get_loss(name: str | Loss) -> Loss:
    """Look a loss up by name (case-insensitive)."""
    if isinstance(name, Loss):
        return name
    if not isinstance(name, str):
        raise GpubpTypeError(f"loss must be a loss name, one of {sorted(LOSSES)}, got {type(name).__name__} {name!r}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in LOSSES:
        raise GpubpValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[key]
