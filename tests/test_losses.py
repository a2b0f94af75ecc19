"""Each loss's value and output error against formulas written here, and against PyTorch where installed."""

from __future__ import annotations

import numpy as np
import pytest

from gpubp.errors import GpubpValueError
from gpubp.losses import LOSSES, get_loss

N, K = 7, 3


def _run(name, z, y):
    """(loss, delta, probabilities) from gpubp's implementation."""
    loss = LOSSES[name]
    a = z.copy()
    rows = np.empty((2, z.shape[0], 1))
    if loss.output is not None:
        loss.output(np, z, a, np.empty_like(z), rows)
    delta = np.empty_like(z)
    value = loss.value_and_delta(np, z, a, y, delta, np.empty_like(z), rows)
    return float(value), delta, a


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _reference(name, z, y):
    """(loss, ∂L/∂z) from the definitions; for the unfused losses the output is z itself."""
    d = z - y
    m = z.size
    if name == "mse":
        return np.mean(d**2), 2 * d / m
    if name == "l1":
        return np.mean(np.abs(d)), np.sign(d) / m
    if name == "huber":
        small = np.abs(d) <= 1
        return np.mean(np.where(small, 0.5 * d**2, np.abs(d) - 0.5)), np.where(small, d, np.sign(d)) / m
    if name == "cross_entropy":
        p = _softmax(z)
        return -np.mean(np.sum(y * np.log(p), axis=1)), (p - y) / z.shape[0]
    if name == "bce":
        p = 1 / (1 + np.exp(-z))
        return -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)), (p - y) / m
    raise AssertionError(name)


def _targets(name, rng):
    if name == "cross_entropy":
        return np.eye(K)[rng.integers(0, K, N)]
    if name == "bce":
        return rng.uniform(0, 1, (N, K))
    return rng.normal(0, 2, (N, K))


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_value_and_delta_match_formula(name, rng):
    z = rng.normal(0, 2, (N, K))
    y = _targets(name, rng)
    value, delta, _ = _run(name, z, y)
    ref_value, ref_delta = _reference(name, z, y)
    assert value == pytest.approx(ref_value, rel=1e-12)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-12, atol=1e-15)


def test_cross_entropy_with_soft_targets(rng):
    z = rng.normal(0, 2, (N, K))
    y = rng.dirichlet(np.ones(K), N)
    value, delta, probabilities = _run("cross_entropy", z, y)
    ref_value, ref_delta = _reference("cross_entropy", z, y)
    assert value == pytest.approx(ref_value, rel=1e-12)
    np.testing.assert_allclose(delta, ref_delta, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-12)


@pytest.mark.parametrize("name", ["cross_entropy", "bce"])
def test_fused_losses_stable_for_huge_logits(name):
    z = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, 1e4]], dtype=np.float32)
    y = np.array([[1.0, 0, 0], [0, 0, 1.0]], dtype=np.float32)
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        value, delta, probabilities = _run(name, z, y)
    assert np.isfinite(value) and np.isfinite(delta).all() and np.isfinite(probabilities).all()
    if name == "cross_entropy":
        assert value == pytest.approx(0.0, abs=1e-6)  # confident and right


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_against_pytorch(name, rng):
    torch = pytest.importorskip("torch")
    z = rng.normal(0, 2, (N, K))
    y = _targets(name, rng)
    zt, yt = torch.tensor(z, requires_grad=True), torch.tensor(y)
    functions = {
        "mse": torch.nn.functional.mse_loss, "l1": torch.nn.functional.l1_loss,
        "huber": lambda a, b: torch.nn.functional.huber_loss(a, b, delta=1.0),
        "cross_entropy": torch.nn.functional.cross_entropy,
        "bce": torch.nn.functional.binary_cross_entropy_with_logits,
    }
    expected = functions[name](zt, yt)
    expected.backward()
    value, delta, _ = _run(name, z, y)
    assert value == pytest.approx(expected.item(), rel=1e-10)
    np.testing.assert_allclose(delta, zt.grad.numpy(), rtol=1e-10, atol=1e-14)


def test_lookup():
    assert get_loss("CE").name == "cross_entropy"
    with pytest.raises(GpubpValueError, match="unknown loss 'msee'"):
        get_loss("msee")


@pytest.mark.parametrize("name", sorted(LOSSES))
def test_the_loss_is_the_same_when_computed_twice_after_one_forward(name, backend, rng):
    """Computing the loss reads the forward pass's buffers and never overwrites them (every backend)."""
    from conftest import targets_for

    import gpubp

    net = gpubp.MLP([4, 6, 3], activation="tanh", loss=name, backend=backend, seed=0)
    ws = net.load_batch(rng.normal(size=(9, 4)), targets_for(name, 9, 3, rng))
    net.feedforward(ws)
    first, second = float(net.compute_loss(ws)), float(net.compute_loss(ws))
    assert first == second
    assert first == pytest.approx(net.evaluate(*_last_batch(ws, net, name))["loss"], rel=1e-5)


def _last_batch(ws, net, name):
    X = net.backend.to_host(ws.x)
    Y = net.backend.to_host(ws.labels) if name == "cross_entropy" else net.backend.to_host(ws.y)
    return X, Y


@pytest.mark.parametrize("name", ["cross_entropy", "bce"])
def test_saturated_float32_logits_never_give_a_negative_loss(name, backend):
    """Saturated float32 logits, right every time: the exact loss is about 1e-11. Summing the terms before
    subtracting, as gpubp once did, gave -1.9e-06 (cross entropy: seed 4; BCE: seeds 0 and 5); each row
    (cross entropy) or element (BCE) is now clamped at 0."""
    from gpubp.losses import LOSSES

    loss = LOSSES[name]
    n, k = 4096, 4
    for seed in range(6):
        rng = np.random.default_rng(seed)
        if name == "cross_entropy":
            onehot = np.eye(k, dtype=np.float32)[rng.integers(0, k, n)]
            z = (np.where(onehot > 0, 30.0, -30.0) + rng.normal(0, 3, (n, k))).astype(np.float32)
        else:  # multi-label targets, logits of magnitude 20 to 60 with the right sign
            onehot = (rng.random((n, k)) > 0.5).astype(np.float32)
            z = (np.where(onehot > 0, 1, -1) * rng.uniform(20, 60, (n, k))).astype(np.float32)
        z_dev, y_dev = backend.asarray(z), backend.asarray(onehot)
        a, tmp, delta = (backend.empty((n, k), np.float32) for _ in range(3))
        rows = backend.empty((2, n, 1), np.float32)
        backend.bias_loss_output(loss, z_dev, backend.zeros(k, np.float32), a, tmp, rows)
        value = float(backend.loss_value_and_delta(loss, z_dev, a, y_dev, delta, tmp, rows))
        assert 0.0 <= value < 1e-6, (seed, value)


@pytest.mark.parametrize("name", ["cross_entropy", "bce"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_the_clamp_keeps_nan_for_the_divergence_guard(name, bad, backend):
    """max(loss, 0) must not turn a NaN (from NaN or infinite logits) into 0: the guard needs to see it."""
    import warnings

    from gpubp.losses import LOSSES

    loss = LOSSES[name]
    z = np.zeros((5, 3), np.float32)
    z[2, 1] = bad
    y = np.eye(3, dtype=np.float32)[[0, 1, 2, 0, 1]]
    z_dev, y_dev = backend.asarray(z), backend.asarray(y)
    a, tmp, delta = (backend.empty((5, 3), np.float32) for _ in range(3))
    rows = backend.empty((2, 5, 1), np.float32)
    with warnings.catch_warnings(), np.errstate(invalid="ignore", over="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)
        backend.bias_loss_output(loss, z_dev, backend.zeros(3, np.float32), a, tmp, rows)
        value = float(backend.loss_value_and_delta(loss, z_dev, a, y_dev, delta, tmp, rows))
    assert not np.isfinite(value) or not backend.all_finite(delta), (value,)
