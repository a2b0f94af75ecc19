"""Weight initialisation: He, Xavier (Glorot) and LeCun, normal, and Glorot's uniform; biases zero.

==================  ==========================================  ==========================================
scheme              W ~                                         suits
==================  ==========================================  ==========================================
``he``              N(0, std²), std = √(2 / fan_in)             relu, leaky_relu, elu, gelu, silu, softplus
``xavier``          N(0, std²), std = √(2 / (fan_in + fan_out))  sigmoid, tanh, softmax / sigmoid outputs
``lecun``           N(0, std²), std = √(1 / fan_in)             identity (linear) outputs
``glorot_uniform``  U(−a, a), a = √(6 / (fan_in + fan_out))     what scikit-learn's MLPs draw (Keras's
                                                                default): smaller than He for ReLU
==================  ==========================================  ==========================================

``init="auto"`` picks, for each layer, the scheme of the activation that
follows it (:attr:`gpubp.activations.Activation.init`).
"""

from __future__ import annotations

import math

import numpy as np

SCHEMES = ("he", "xavier", "lecun", "glorot_uniform")


def init_std(scheme: str, fan_in: int, fan_out: int) -> float:
    """The standard deviation of a layer's weights under ``scheme``."""
    if scheme == "he":
        return math.sqrt(2.0 / fan_in)
    if scheme == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if scheme == "lecun":
        return math.sqrt(1.0 / fan_in)
    if scheme == "glorot_uniform":  # U(−a, a) has std a/√3
        return math.sqrt(2.0 / (fan_in + fan_out))
    raise ValueError(f"unknown init scheme {scheme!r}; expected one of {SCHEMES}")


def init_weights(rng: np.random.Generator, scheme: str, fan_in: int, fan_out: int) -> np.ndarray:
    """A ``(fan_in, fan_out)`` float64 weight matrix drawn as ``scheme`` says."""
    if scheme == "glorot_uniform":
        bound = math.sqrt(6.0 / (fan_in + fan_out))
        return rng.uniform(-bound, bound, (fan_in, fan_out))
    return rng.standard_normal((fan_in, fan_out)) * init_std(scheme, fan_in, fan_out)
