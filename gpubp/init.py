"""Weight initialisation: He, Xavier (Glorot) and LeCun, all normal, biases zero.

=========  ==================================  ==========================================
scheme     W ~ N(0, std²)                       suits
=========  ==================================  ==========================================
``he``     std = √(2 / fan_in)                 relu, leaky_relu, elu, gelu, silu, softplus
``xavier`` std = √(2 / (fan_in + fan_out))     sigmoid, tanh, softmax / sigmoid outputs
``lecun``  std = √(1 / fan_in)                 identity (linear) outputs
=========  ==================================  ==========================================

``init="auto"`` picks, for each layer, the scheme of the activation that
follows it (:attr:`gpubp.activations.Activation.init`).
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("he", "xavier", "lecun")


def init_std(scheme: str, fan_in: int, fan_out: int) -> float:
    """The standard deviation of a layer's weights under ``scheme``."""
    if scheme == "he":
        return math.sqrt(2.0 / fan_in)
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "lecun":
        return math.sqrt(1.0 / fan_in)
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {SCHEMES}")


def init_weights(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> np.ndarray:
    """A ``(fan_in, fan_out)`` float64 weight matrix drawn from N(0, std²)."""
    return rng.standard_normal((fan_in, fan_out)) * init_std(scheme, fan_in, fan_out)
