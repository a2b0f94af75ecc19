"""The divergence guard: NaN/Inf in a step is found, named, and never reaches the weights."""

from __future__ import annotations

import numpy as np
import pytest

import gpubp
from gpubp.errors import DivergenceError, GpubpError, GpubpValueError
from gpubp.optim import SGD, Adam

BATCH = 10


def _data(bad_row=None, n=80, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 20)).astype(np.float32)
    y = rng.integers(0, 2, n)
    if bad_row is not None:
        X[bad_row] = 3e38  # finite, but the first layer's product overflows float32
    return X, y


def _net(backend="numpy"):
    return gpubp.MLP([20, 8, 2], activation="identity", loss="cross_entropy", backend=backend, seed=1)


@pytest.fixture(params=["numpy", "fused-host", "fused-host-gpu-like"])
def guarded_backend(request):
    """NumPy; the fused kernels on the host; and the same pretending to be a GPU, so that the
    kernels (not the host) skip the update and the guard takes the step count back, as on a GPU."""
    if request.param == "numpy":
        return gpubp.get_backend("numpy")
    import kernel_host

    backend = kernel_host.HostFusedBackend(request.getfixturevalue("host_kernels"))
    if request.param == "fused-host-gpu-like":
        backend.is_gpu = True
    return backend


@pytest.mark.parametrize("check_every", [None, 1, 3, 100])
@pytest.mark.parametrize("make_optimizer", [lambda: SGD(0.1, momentum=0.9), lambda: Adam(0.01)], ids=["sgd", "adam"])
def test_raise_names_the_step_and_keeps_the_weights_before_it(guarded_backend, check_every, make_optimizer):
    X, y = _data(bad_row=43)  # batch 5 (rows 40–49) of epoch 1
    net, optimizer = _net(guarded_backend), make_optimizer()
    with pytest.raises(DivergenceError, match=r"at step 5 \(epoch 1, batch 5\), first in the forward pass of "
                                              r"layer 1 of 2") as info:
        net.fit(X, y, epochs=3, batch_size=BATCH, optimizer=optimizer, shuffle=False, progress=False,
                check_every=check_every)
    assert "the weights are those after step 4" in str(info.value)
    assert isinstance(info.value, GpubpError) and isinstance(info.value, FloatingPointError)
    reference, reference_optimizer = _net(guarded_backend), make_optimizer()
    reference.fit(X[:40], y[:40], epochs=1, batch_size=BATCH, optimizer=reference_optimizer, shuffle=False,
                  progress=False)
    for a, b in zip(net.get_weights(), reference.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert optimizer.steps == reference_optimizer.steps == 4
    for name, buffer in reference_optimizer.state.items():
        if name.startswith("scratch"):
            continue
        np.testing.assert_array_equal(net.backend.to_host(optimizer.state[name]),
                                      reference.backend.to_host(buffer))


@pytest.mark.parametrize("check_every", [1, 3])
def test_skip_step_skips_only_the_bad_batch(guarded_backend, check_every):
    X, y = _data(bad_row=43)
    net, optimizer = _net(guarded_backend), Adam(0.01)
    history = net.fit(X, y, epochs=2, batch_size=BATCH, optimizer=optimizer, shuffle=False, progress=False,
                      on_nonfinite="skip_step", check_every=check_every)
    assert history["skipped_steps"] == [1, 1]
    assert np.isfinite(history["loss"]).all()
    keep = np.r_[0:40, 50:80]  # the same run without batch 5: identical weights and optimizer state
    reference, reference_optimizer = _net(guarded_backend), Adam(0.01)
    reference_history = reference.fit(X[keep], y[keep], epochs=2, batch_size=BATCH, optimizer=reference_optimizer,
                                      shuffle=False, progress=False)
    exact = not guarded_backend.is_gpu or check_every == 1
    # On a GPU, Adam's step count runs one ahead for the steps between a skipped step and the next
    # check (the host counts the step before the device skips it), so there it is close, not equal.
    for a, b in zip(net.get_weights(), reference.get_weights()):
        if exact:
            np.testing.assert_array_equal(a, b)
        else:
            np.testing.assert_allclose(a, b, rtol=0, atol=0.01)
    assert optimizer.steps == reference_optimizer.steps == 14
    if not exact:
        return
    assert history["loss"] == reference_history["loss"]  # the skipped step is left out of the averages
    assert history["accuracy"] == reference_history["accuracy"]


def test_every_step_skipped_raises(guarded_backend):
    X, y = _data()
    net = gpubp.MLP([20, 8, 2], activation="tanh", loss="mse", backend=guarded_backend, seed=1)
    Y = np.full((len(X), 2), 1e30, np.float32)  # the loss overflows on every batch
    with pytest.raises(DivergenceError,
                       match="every step of epoch 1 .* was skipped; the weights are those after step 0"):
        net.fit(X, Y, epochs=2, batch_size=BATCH, optimizer=SGD(0.01), progress=False, on_nonfinite="skip_step")


@pytest.mark.parametrize("case,where", [
    ("loss", "the loss (mse; the network's outputs were finite)"),
    ("weights", "the weights of layer 2 (already non-finite before this step)"),
])
def test_diagnosis_names_the_loss_or_the_weights(case, where):
    X = np.ones((20, 3), np.float32)
    net = gpubp.MLP([3, 4, 2], activation="tanh", loss="mse", backend="numpy", seed=1)
    Y = np.zeros((20, 2), np.float32)
    if case == "loss":
        Y[:] = 3e38  # outputs finite, (a − y)² overflows
    else:
        net.weights[1][0, 0] = np.inf  # set_weights refuses this; the buffer view does not
    with pytest.raises(DivergenceError, match=f"first in {where.replace('(', '[(]').replace(')', '[)]')}"):
        net.fit(X, Y, epochs=1, batch_size=BATCH, optimizer=SGD(0.01), progress=False)


def test_bad_guard_arguments():
    X, y = _data()
    with pytest.raises(GpubpValueError, match=r"on_nonfinite must be one of \['raise', 'skip_step'\]"):
        _net().fit(X, y, epochs=1, on_nonfinite="ignore", progress=False)
    with pytest.raises(GpubpValueError, match="check_every"):
        _net().fit(X, y, epochs=1, check_every=0, progress=False)


def test_a_healthy_run_is_unchanged_by_the_guard():
    X, y = _data()
    a, b = _net(), _net()
    ha = a.fit(X, y, epochs=2, batch_size=BATCH, optimizer=Adam(0.01), progress=False, seed=0)
    hb = b.fit(X, y, epochs=2, batch_size=BATCH, optimizer=Adam(0.01), progress=False, seed=0,
               on_nonfinite="skip_step", check_every=5)
    assert ha["loss"] == hb["loss"] and hb["skipped_steps"] == [0, 0]
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
