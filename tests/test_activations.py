"""Each activation against a formula written independently here, and against PyTorch where installed."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpubp.activations import ACTIVATIONS, get_activation
from gpubp.errors import GpubpTypeError, GpubpValueError


def _erf_free_gelu_tanh(z):
    return 0.5 * z * (1 + np.tanh(math.sqrt(2 / math.pi) * (z + 0.044715 * z**3)))


# Reference σ written directly from the textbook definitions (float64, small |z| so the naive forms are exact).
REFERENCE = {
    "sigmoid": lambda z: 1 / (1 + np.exp(-z)),
    "tanh": np.tanh,
    "relu": lambda z: np.where(z > 0, z, 0.0),
    "leaky_relu": lambda z: np.where(z > 0, z, 0.01 * z),
    "gelu": _erf_free_gelu_tanh,
    "silu": lambda z: z / (1 + np.exp(-z)),
    "softplus": lambda z: np.log(1 + np.exp(z)),
    "elu": lambda z: np.where(z > 0, z, np.exp(z) - 1),
    "identity": lambda z: z,
}
NAMES = sorted(ACTIVATIONS)


def _apply(name, z):
    act = ACTIVATIONS[name]
    a = np.empty_like(z)
    act.forward(np, z, a, np.empty_like(z))
    return a


def _derivative(name, z):
    act = ACTIVATIONS[name]
    a = _apply(name, z)
    delta = np.ones_like(z)
    act.backward(np, delta, z if act.needs_z else None, a, np.empty_like(z), np.empty_like(z))
    return delta


@pytest.fixture
def z(rng):
    values = rng.normal(0, 3, 301)
    return values[np.abs(values) > 1e-3]  # keep away from the kinks of relu-likes


def test_reference_covers_every_activation():
    assert set(REFERENCE) == set(ACTIVATIONS)


@pytest.mark.parametrize("name", NAMES)
def test_forward_matches_formula(name, z):
    np.testing.assert_allclose(_apply(name, z), REFERENCE[name](z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", [n for n in NAMES if not ACTIVATIONS[n].needs_z])
def test_forward_in_place_when_z_not_needed(name, z):
    act = ACTIVATIONS[name]
    buffer = z.copy()
    act.forward(np, buffer, buffer, np.empty_like(z))
    np.testing.assert_allclose(buffer, REFERENCE[name](z), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_matches_central_difference_of_formula(name, z):
    h = 1e-6
    numeric = (REFERENCE[name](z + h) - REFERENCE[name](z - h)) / (2 * h)
    np.testing.assert_allclose(_derivative(name, z), numeric, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_multiplies_delta(name, z, rng):
    act = ACTIVATIONS[name]
    delta = rng.normal(size=z.shape)
    expected = delta * _derivative(name, z)
    a = _apply(name, z)
    act.backward(np, delta, z if act.needs_z else None, a, np.empty_like(z), np.empty_like(z))
    np.testing.assert_allclose(delta, expected, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", NAMES)
def test_derivative_at_zero_follows_pytorch(name):
    # PyTorch's subgradients at z = 0: relu 0, leaky_relu 0.01; smooth ones their limit.
    expected = {"relu": 0.0, "leaky_relu": 0.01, "sigmoid": 0.25, "tanh": 1.0, "gelu": 0.5, "silu": 0.5,
                "softplus": 0.5, "elu": 1.0, "identity": 1.0}[name]
    np.testing.assert_allclose(_derivative(name, np.zeros(3)), expected, rtol=1e-12)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_stable_for_huge_inputs(name, dtype):
    z = np.array([-1e4, -1e3, -100, -30, 0, 30, 100, 1e3, 1e4], dtype=dtype)
    with np.errstate(over="raise", invalid="raise", divide="raise"):  # underflow to 0 is expected
        a = _apply(name, z)
        d = _derivative(name, z)
    assert np.isfinite(a).all() and np.isfinite(d).all()
    assert a.dtype == dtype


def test_saturation_values():
    z = np.array([-1e4, 1e4], dtype=np.float32)
    np.testing.assert_array_equal(_apply("sigmoid", z), [0, 1])
    np.testing.assert_array_equal(_apply("softplus", z), [0, 1e4])
    np.testing.assert_array_equal(_apply("elu", z), [-1, 1e4])
    np.testing.assert_array_equal(_derivative("softplus", z), [0, 1])


def test_lookup_errors():
    with pytest.raises(GpubpValueError, match="unknown activation 'sigmod'"):
        get_activation("sigmod")
    with pytest.raises(GpubpTypeError, match="activation must be"):
        get_activation(3)
    assert get_activation("ReLU").name == "relu"
    assert get_activation("linear").name == "identity"


@pytest.mark.parametrize("name", NAMES)
def test_against_pytorch(name, z):
    torch = pytest.importorskip("torch")
    functions = {
        "sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
        "leaky_relu": lambda t: torch.nn.functional.leaky_relu(t, 0.01),
        "gelu": lambda t: torch.nn.functional.gelu(t, approximate="tanh"),
        "silu": torch.nn.functional.silu, "softplus": torch.nn.functional.softplus,
        "elu": torch.nn.functional.elu, "identity": lambda t: t,
    }
    zt = torch.tensor(z, requires_grad=True)
    out = functions[name](zt)
    out.backward(torch.ones_like(out))
    np.testing.assert_allclose(_apply(name, z), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_derivative(name, z), zt.grad.numpy(), rtol=1e-9, atol=1e-12)
