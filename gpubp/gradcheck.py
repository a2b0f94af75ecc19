"""Gradient checking: backpropagated gradients against central finite differences, in float64."""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _validate as check
from .mlp import MLP


def gradcheck(net: MLP, X: Any, Y: Any, *, eps: float = 1e-5, atol: float = 1e-6, max_params: int | None = None,
              seed: int = 0) -> float:
    """The worst relative error between backprop and finite-difference gradients.

    A float64 copy of ``net`` (same architecture, weights and backend) computes
    the analytic gradients by backpropagation (:meth:`MLP.compute_gradients`) and, for every
    parameter θᵢ (or ``max_params`` of them drawn at random),
    ``(L(θ + εeᵢ) − L(θ − εeᵢ)) / 2ε``. The relative error of one parameter is
    ``|g − ĝ| / max(|g| + |ĝ|, atol)``: the floor keeps gradients that are zero
    up to rounding (central differences carry an absolute error near 1e-11)
    from counting as large relative errors. ``net`` is not modified.
    A wrong gradient gives errors of 1e-2 and more; right ones stay below 1e-5.
    """
    eps = check.positive_float("eps", eps)
    atol = check.positive_float("atol", atol)
    twin = MLP.from_config({**net.config(), "dtype": "float64"}, net.backend.to_host(net.params).astype(np.float64),
                           net.backend)
    with twin.backend.activate():
        ws = twin.load_batch(X, Y)
        twin.compute_gradients(ws)
        analytic = twin.backend.to_host(twin.grads)
        return _worst_error(twin, ws, analytic, eps, atol, max_params, seed)


def _worst_error(twin: MLP, ws: Any, analytic: np.ndarray, eps: float, atol: float, max_params: int | None,
                 seed: int) -> float:
    def loss_at(index: int, value: float) -> float:
        twin.params[index] = value
        twin.feedforward(ws)
        return float(twin.compute_loss(ws))

    indices = np.arange(twin.n_params)
    if max_params is not None and check.positive_int("max_params", max_params) < twin.n_params:
        indices = np.sort(np.random.default_rng(seed).choice(twin.n_params, size=max_params, replace=False))
    params = twin.backend.to_host(twin.params)
    worst = 0.0
    for index in map(int, indices):
        original = float(params[index])
        numeric = (loss_at(index, original + eps) - loss_at(index, original - eps)) / (2 * eps)
        twin.params[index] = original
        error = abs(analytic[index] - numeric) / max(abs(analytic[index]) + abs(numeric), atol)
        worst = max(worst, float(error))
    return worst
