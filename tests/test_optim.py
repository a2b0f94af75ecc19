"""Optimizer steps against their update rules written out here, and against torch.optim where installed."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp
from gpubp.errors import GpubpTypeError, GpubpValueError
from gpubp.optim import SGD, Adam, AdamW

SIZE = 37
STEPS = 5


def _reference_sgd(theta, grads, lr, momentum=0.0, nesterov=False, weight_decay=0.0):
    velocity = None
    for g in grads:
        g = g + weight_decay * theta
        if momentum:
            velocity = g.copy() if velocity is None else momentum * velocity + g
            g = g + momentum * velocity if nesterov else velocity
        theta = theta - lr * g
    return theta


def _reference_adam(theta, grads, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, decoupled=False):
    m = np.zeros_like(theta)
    v = np.zeros_like(theta)
    for t, g in enumerate(grads, start=1):
        if decoupled:
            theta = theta * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * theta
        m = betas[0] * m + (1 - betas[0]) * g
        v = betas[1] * v + (1 - betas[1]) * g * g
        m_hat = m / (1 - betas[0] ** t)
        v_hat = v / (1 - betas[1] ** t)
        theta = theta - lr * m_hat / (np.sqrt(v_hat) + eps)
    return theta


def _run(backend, optimizer, theta, grads):
    params = backend.asarray(theta, np.float64)
    for g in grads:
        optimizer.update(backend, params, backend.asarray(g, np.float64))
    return backend.to_host(params)


SGD_CASES = [dict(lr=0.1), dict(lr=0.05, momentum=0.9), dict(lr=0.05, momentum=0.8, nesterov=True),
             dict(lr=0.1, weight_decay=0.01), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=0.1)]
ADAM_CASES = [dict(lr=1e-2), dict(lr=3e-3, betas=(0.8, 0.99), eps=1e-6), dict(lr=1e-2, weight_decay=0.05)]


@pytest.fixture
def problem(rng):
    return rng.normal(size=SIZE), [rng.normal(size=SIZE) for _ in range(STEPS)]


@pytest.mark.parametrize("kwargs", SGD_CASES)
def test_sgd_rule(backend, problem, kwargs):
    theta, grads = problem
    np.testing.assert_allclose(_run(backend, SGD(**kwargs), theta, grads), _reference_sgd(theta, grads, **kwargs),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs", ADAM_CASES)
def test_adam_rule(backend, problem, kwargs):
    theta, grads = problem
    np.testing.assert_allclose(_run(backend, Adam(**kwargs), theta, grads), _reference_adam(theta, grads, **kwargs),
                               rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("kwargs", ADAM_CASES + [dict(lr=1e-2)])
def test_adamw_rule(backend, problem, kwargs):
    theta, grads = problem
    kwargs = {"weight_decay": 1e-2, **kwargs}
    expected = _reference_adam(theta, grads, decoupled=True, **kwargs)
    np.testing.assert_allclose(_run(backend, AdamW(**kwargs), theta, grads), expected, rtol=1e-12, atol=1e-14)


def test_adamw_default_weight_decay_is_pytorchs():
    assert AdamW().weight_decay == 0.01 and Adam().weight_decay == 0.0


@pytest.mark.parametrize("name,kwargs", [("SGD", c) for c in SGD_CASES] + [("Adam", c) for c in ADAM_CASES]
                         + [("AdamW", c) for c in ADAM_CASES])
def test_against_torch_optim(name, kwargs, problem):
    torch = pytest.importorskip("torch")
    theta, grads = problem
    parameter = torch.nn.Parameter(torch.tensor(theta))
    reference = getattr(torch.optim, name)([parameter], **kwargs)
    for g in grads:
        parameter.grad = torch.tensor(g)
        reference.step()
    ours = _run(gpubp.get_backend("numpy"), getattr(gpubp.optim, name)(**kwargs), theta, grads)
    np.testing.assert_allclose(ours, parameter.detach().numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("make,message", [
    (lambda: SGD(lr=0), "lr must be a finite number > 0, got 0.0"),
    (lambda: SGD(lr=float("nan")), "lr must be a finite number > 0"),
    (lambda: SGD(lr=-1), "lr must be a finite number > 0, got -1.0"),
    (lambda: SGD(lr=0.1, momentum=1.0), r"momentum must be in \[0, 1\), got 1.0"),
    (lambda: SGD(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0"),
    (lambda: SGD(lr=0.1, weight_decay=-1), "weight_decay must be a finite number >= 0"),
    (lambda: Adam(betas=(0.9,)), "betas must be a pair"),
    (lambda: Adam(betas=(0.9, 1.5)), r"betas\[1\] must be in \[0, 1\)"),
    (lambda: Adam(eps=0), "eps must be a finite number > 0"),
])
def test_bad_hyperparameters(make, message):
    with pytest.raises(GpubpValueError, match=message):
        make()


def test_bad_hyperparameter_types():
    with pytest.raises(GpubpTypeError, match="lr must be a real number, got str '0.1'"):
        SGD(lr="0.1")
    with pytest.raises(GpubpTypeError, match="nesterov must be True or False"):
        SGD(lr=0.1, momentum=0.9, nesterov="yes")


def test_one_optimizer_per_network(backend):
    optimizer = SGD(0.1, momentum=0.9)
    a = gpubp.MLP([3, 4, 2], backend=backend, seed=0)
    b = gpubp.MLP([3, 5, 2], backend=backend, seed=0)
    X = np.zeros((2, 3))
    a.train_step(X, np.zeros((2, 2)), optimizer)
    before = b.get_weights()
    with pytest.raises(GpubpValueError, match="holds state for 26 parameters but was given a network with 32"):
        b.train_step(X, np.zeros((2, 2)), optimizer)
    for old, new in zip(before, b.get_weights()):
        np.testing.assert_array_equal(old, new)
