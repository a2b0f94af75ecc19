"""Backprop against central finite differences in float64: every activation × every loss, depths 1–4."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import targets_for

import gpubp
from gpubp.activations import ACTIVATIONS
from gpubp.losses import LOSSES

DEPTH_SIZES = {1: [3, 2], 2: [3, 5, 2], 3: [3, 5, 4, 2], 4: [3, 6, 5, 4, 2]}
TOLERANCE = 2e-5  # right gradients stay below ~1e-5 (see gpubp.gradcheck); a wrong one gives > 1e-2


@pytest.mark.parametrize("loss", sorted(LOSSES))
@pytest.mark.parametrize("activation", sorted(ACTIVATIONS))
@pytest.mark.parametrize("depth", sorted(DEPTH_SIZES))
@pytest.mark.parametrize("batch", [1, 7])
def test_every_activation_and_loss(backend, activation, loss, depth, batch):
    rng = np.random.default_rng(depth * 100 + batch)
    sizes = DEPTH_SIZES[depth]
    net = gpubp.MLP(sizes, activation=activation, loss=loss, backend=backend, dtype="float64", seed=depth)
    X = rng.normal(0, 1, (batch, sizes[0]))
    Y = targets_for(loss, batch, sizes[-1], rng)
    assert gpubp.gradcheck(net, X, Y) < TOLERANCE


@pytest.mark.parametrize("output_activation", sorted(ACTIVATIONS))
def test_every_output_activation_with_mse(backend, output_activation, rng):
    net = gpubp.MLP([4, 5, 3], activation="tanh", output_activation=output_activation, loss="mse",
                    backend=backend, dtype="float64", seed=3)
    X = rng.normal(0, 1, (5, 4))
    assert gpubp.gradcheck(net, X, rng.normal(0, 1, (5, 3))) < TOLERANCE


def test_mixed_activations_and_odd_batch(backend, rng):
    net = gpubp.MLP([5, 7, 6, 5, 4], activation=["gelu", "sigmoid", "elu"], loss="cross_entropy",
                    backend=backend, dtype="float64", seed=1)
    X = rng.normal(0, 1, (13, 5))
    assert gpubp.gradcheck(net, X, rng.integers(0, 4, 13)) < TOLERANCE


def test_float32_network_is_checked_in_float64(backend, rng):
    net = gpubp.MLP([4, 6, 3], activation="silu", loss="bce", backend=backend, dtype="float32", seed=2)
    before = net.get_weights()
    X = rng.normal(0, 1, (9, 4))
    assert gpubp.gradcheck(net, X, rng.uniform(0, 1, (9, 3))) < TOLERANCE
    for old, new in zip(before, net.get_weights()):
        np.testing.assert_array_equal(old, new)  # the network itself is untouched
        assert new.dtype == np.float32


def test_detects_a_wrong_gradient(backend, rng, monkeypatch):
    """The check can fail: a backward pass with a wrong σ' is caught."""
    net = gpubp.MLP([3, 5, 2], activation="tanh", loss="mse", backend=backend, dtype="float64", seed=0)
    X, Y = rng.normal(0, 1, (6, 3)), rng.normal(0, 1, (6, 2))
    wrong = gpubp.activations.Activation("tanh", ACTIVATIONS["tanh"].forward, ACTIVATIONS["sigmoid"].backward,
                                         needs_z=False, init="xavier")
    monkeypatch.setitem(ACTIVATIONS, "tanh", wrong)
    assert gpubp.gradcheck(net, X, Y) > 1e-2


def test_max_params_samples_a_subset(backend, rng):
    net = gpubp.MLP([20, 30, 5], activation="relu", loss="mse", backend=backend, dtype="float64", seed=0)
    X, Y = rng.normal(0, 1, (8, 20)), rng.normal(0, 1, (8, 5))
    assert gpubp.gradcheck(net, X, Y, max_params=50) < TOLERANCE
