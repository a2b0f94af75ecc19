"""Activation functions σ and their derivatives σ', side by side.

Each activation is two functions written against an array module ``xp``
(NumPy or CuPy), which makes this file the executable reference that the GPU
kernels are checked against:

``forward(xp, z, a, tmp)``
    ``a = σ(z)``. When the activation does not need ``z`` for its derivative
    (``needs_z`` is false) the network passes the same buffer as ``z`` and
    ``a`` and the activation is applied in place, so ``z`` is never kept.

``backward(xp, delta, z, a, tmp, tmp2)``
    ``delta ← delta ⊙ σ'(z)``, in place: the ``⊙ σ'(Z[l])`` of BP1 and BP2.
    σ' is computed from ``a`` wherever that is possible (it is already in
    memory and usually cheaper); ``z`` is ``None`` unless ``needs_z``.

``tmp`` and ``tmp2`` are scratch buffers of the same shape, so nothing is
allocated. Every formula is chosen so that float32 inputs up to |z| = 1e4 give
no overflow and no NaN.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from .errors import GpubpTypeError, GpubpValueError

LEAKY_RELU_SLOPE = 0.01
ELU_ALPHA = 1.0
_GELU_C = math.sqrt(2.0 / math.pi)
_GELU_K = 0.044715


@dataclass(frozen=True)
class Activation:
    """An elementwise activation: σ, σ', and what σ' needs."""

    name: str
    forward: Callable[..., None]
    backward: Callable[..., None]
    needs_z: bool
    """True when σ' must be computed from ``z`` (so ``z`` is kept beside ``a``)."""
    init: str
    """The weight initialisation ``init="auto"`` picks for layers feeding this activation."""

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"


# --- sigmoid: σ(z) = 1 / (1 + e^-z) = ½·(1 + tanh(z/2)); σ' = a·(1 − a) -------------------
# The tanh form never overflows (e^-z does for z < -88 in float32) and costs one
# transcendental per element.
def _sigmoid_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.multiply(z, 0.5, out=a)
    xp.tanh(a, out=a)
    xp.multiply(a, 0.5, out=a)
    xp.add(a, 0.5, out=a)


def _sigmoid_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.subtract(1.0, a, out=tmp)
    xp.multiply(tmp, a, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- tanh: σ' = 1 − a² -------------------------------------------------------------------------
def _tanh_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.tanh(z, out=a)


def _tanh_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.multiply(a, a, out=tmp)
    xp.subtract(1.0, tmp, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- relu: max(z, 0); σ' = [a > 0] (PyTorch's convention: 0 at z = 0) ----------------------------
def _relu_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.maximum(z, 0.0, out=a)


def _relu_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.greater(a, 0.0, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- leaky_relu: max(z, 0.01·z); σ' = 1 if a > 0 else 0.01 (a has the sign of z) ---------------
def _leaky_relu_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.multiply(z, LEAKY_RELU_SLOPE, out=tmp)
    xp.maximum(z, tmp, out=a)


def _leaky_relu_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.greater(a, 0.0, out=tmp)
    xp.multiply(tmp, 1.0 - LEAKY_RELU_SLOPE, out=tmp)
    xp.add(tmp, LEAKY_RELU_SLOPE, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- gelu, the tanh approximation (PyTorch's ``gelu(approximate="tanh")``) ----------------------
# σ(z)  = ½·z·(1 + t),  t = tanh(u),  u = c·(z + k·z³),  c = √(2/π), k = 0.044715
# σ'(z) = ½·(1 + t) + ½·z·(1 − t²)·c·(1 + 3k·z²)
def _gelu_tanh(xp: Any, z: Any, out: Any) -> None:
    """out = tanh(c·(z + k·z³)), computed as tanh(z·(c + c·k·z²))."""
    xp.multiply(z, z, out=out)
    xp.multiply(out, _GELU_C * _GELU_K, out=out)
    xp.add(out, _GELU_C, out=out)
    xp.multiply(out, z, out=out)
    xp.tanh(out, out=out)


def _gelu_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    _gelu_tanh(xp, z, tmp)
    xp.add(tmp, 1.0, out=tmp)
    xp.multiply(tmp, z, out=a)
    xp.multiply(a, 0.5, out=a)


def _gelu_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    _gelu_tanh(xp, z, tmp)  # t
    xp.multiply(z, z, out=tmp2)  # tmp2 = ½·z·c·(1 + 3k·z²)
    xp.multiply(tmp2, 1.5 * _GELU_C * _GELU_K, out=tmp2)
    xp.add(tmp2, 0.5 * _GELU_C, out=tmp2)
    xp.multiply(tmp2, z, out=tmp2)
    xp.multiply(delta, 0.5, out=delta)  # delta·σ' = ½·delta·(1 + t)·(1 + 2·tmp2·(1 − t))
    xp.add(tmp, 1.0, out=tmp)  # tmp = 1 + t
    xp.multiply(delta, tmp, out=delta)
    xp.subtract(2.0, tmp, out=tmp)  # tmp = 1 − t
    xp.multiply(tmp, tmp2, out=tmp)
    xp.multiply(tmp, 2.0, out=tmp)
    xp.add(tmp, 1.0, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- silu (swish): σ(z) = z·s, s = sigmoid(z); σ' = s·(1 + z·(1 − s)) ------------------------
def _silu_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    _sigmoid_forward(xp, z, tmp, None)
    xp.multiply(z, tmp, out=a)


def _silu_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    _sigmoid_forward(xp, z, tmp, None)  # s
    xp.subtract(1.0, tmp, out=tmp2)
    xp.multiply(tmp2, z, out=tmp2)
    xp.add(tmp2, 1.0, out=tmp2)
    xp.multiply(tmp2, tmp, out=tmp2)
    xp.multiply(delta, tmp2, out=delta)


# --- softplus: log(1 + e^z) = max(z, 0) + log1p(e^-|z|); σ' = sigmoid(z) = 1 − e^-a ----------
# From a = log(1 + e^z): e^-a = 1/(1 + e^z), so σ' = 1 − e^-a = −expm1(−a), exact and stable.
def _softplus_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.abs(z, out=tmp)
    xp.negative(tmp, out=tmp)
    xp.exp(tmp, out=tmp)
    xp.log1p(tmp, out=tmp)
    xp.maximum(z, 0.0, out=a)
    xp.add(a, tmp, out=a)


def _softplus_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.negative(a, out=tmp)
    xp.expm1(tmp, out=tmp)
    xp.negative(tmp, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- elu (α = 1): z if z > 0 else e^z − 1; σ' = 1 if a > 0 else a + 1 = min(a + 1, 1) ------------
def _elu_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    xp.maximum(z, 0.0, out=tmp)
    xp.minimum(z, 0.0, out=a)
    xp.expm1(a, out=a)
    xp.add(a, tmp, out=a)


def _elu_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    xp.add(a, 1.0, out=tmp)
    xp.minimum(tmp, 1.0, out=tmp)
    xp.multiply(delta, tmp, out=delta)


# --- identity: σ(z) = z; σ' = 1 ------------------------------------------------------------------
def _identity_forward(xp: Any, z: Any, a: Any, tmp: Any) -> None:
    if a is not z:
        xp.copyto(a, z)


def _identity_backward(xp: Any, delta: Any, z: Any, a: Any, tmp: Any, tmp2: Any) -> None:
    return None


ACTIVATIONS: dict[str, Activation] = {
    act.name: act
    for act in (
        Activation("sigmoid", _sigmoid_forward, _sigmoid_backward, needs_z=False, init="xavier"),
        Activation("tanh", _tanh_forward, _tanh_backward, needs_z=False, init="xavier"),
        Activation("relu", _relu_forward, _relu_backward, needs_z=False, init="he"),
        Activation("leaky_relu", _leaky_relu_forward, _leaky_relu_backward, needs_z=False, init="he"),
        Activation("gelu", _gelu_forward, _gelu_backward, needs_z=True, init="he"),
        Activation("silu", _silu_forward, _silu_backward, needs_z=True, init="he"),
        Activation("softplus", _softplus_forward, _softplus_backward, needs_z=False, init="he"),
        Activation("elu", _elu_forward, _elu_backward, needs_z=False, init="he"),
        Activation("identity", _identity_forward, _identity_backward, needs_z=False, init="lecun"),
    )
}
_ALIASES = {"linear": "identity", "none": "identity", "swish": "silu", "logistic": "sigmoid"}


def get_activation(name: str | Activation, argument: str = "activation") -> Activation:
    """Look an activation up by name (case-insensitive; ``linear`` means ``identity``)."""
    if isinstance(name, Activation):
        return name
    if not isinstance(name, str):
        raise GpubpTypeError(
            f"{argument} must be an activation name, one of {sorted(ACTIVATIONS)}, got {type(name).__name__} {name!r}"
        )
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in ACTIVATIONS:
        raise GpubpValueError(f"unknown {argument} {name!r}; expected one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[key]
