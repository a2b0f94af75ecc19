"""CPU↔GPU parity and GPU resource behaviour. Marked ``gpu``; skipped where no CUDA device is usable."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import interrupted_before, requires_gpu

import gpubp
from gpubp.guard import Guard
from gpubp.optim import SGD, Adam, AdamW
from gpubp.training import Step

pytestmark = [pytest.mark.gpu, requires_gpu]

OPTIMIZERS = {
    "sgd": lambda: SGD(0.05),
    "sgd_nesterov_wd": lambda: SGD(0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda: Adam(1e-3, weight_decay=1e-4),
    "adamw": lambda: AdamW(1e-3),
}


def _pair(dtype, loss="cross_entropy", activation=("gelu", "relu")):
    kwargs = dict(activation=list(activation), loss=loss, dtype=dtype, seed=7)
    return (gpubp.MLP([20, 33, 17, 5], backend="numpy", **kwargs),
            gpubp.MLP([20, 33, 17, 5], backend="cupy", **kwargs))


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-10), ("float32", 2e-4)])
@pytest.mark.parametrize("loss", ["cross_entropy", "mse", "bce"])
def test_loss_and_grads_match_numpy(dtype, rtol, loss):
    cpu, gpu = _pair(dtype, loss)
    rng = np.random.default_rng(0)
    X = rng.normal(size=(37, 20))
    Y = rng.integers(0, 5, 37) if loss == "cross_entropy" else rng.uniform(0, 1, (37, 5))
    loss_cpu, grads_cpu = cpu.loss_and_grads(X, Y)
    loss_gpu, grads_gpu = gpu.loss_and_grads(X, Y)
    assert loss_gpu == pytest.approx(loss_cpu, rel=rtol)
    for a, b in zip(grads_cpu, grads_gpu):
        np.testing.assert_allclose(b, a, rtol=rtol, atol=rtol * np.abs(a).max())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
@pytest.mark.parametrize("steps", [1, 50])
def test_training_matches_numpy(name, steps):
    cpu, gpu = _pair("float64")
    rng = np.random.default_rng(1)
    X = rng.normal(size=(64, 20))
    y = rng.integers(0, 5, 64)
    opt_cpu, opt_gpu = OPTIMIZERS[name](), OPTIMIZERS[name]()
    for _ in range(steps):
        loss_cpu = cpu.train_step(X, y, opt_cpu)
        loss_gpu = gpu.train_step(X, y, opt_gpu)
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-9)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-8, atol=1e-10)


def test_gradcheck_on_gpu_float64():
    net = gpubp.MLP([6, 9, 7, 4], activation=["silu", "tanh"], loss="cross_entropy", backend="cupy",
                    dtype="float64", seed=3)
    rng = np.random.default_rng(2)
    assert gpubp.gradcheck(net, rng.normal(size=(11, 6)), rng.integers(0, 4, 11)) < 2e-5


def test_memory_pool_flat_across_steps():
    import cupy

    net = gpubp.MLP([256, 512, 512, 10], activation="gelu", loss="cross_entropy", backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    X = cupy.asarray(rng.normal(size=(1024, 256)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, 1024))
    optimizer = Adam(1e-3)
    net.train_step(X, y, optimizer)
    cupy.cuda.get_current_stream().synchronize()
    pool = cupy.get_default_memory_pool()
    used = pool.used_bytes()
    for _ in range(20):
        net.train_step(X, y, optimizer)
    cupy.cuda.get_current_stream().synchronize()
    assert pool.used_bytes() <= used + 64 * 1024  # a few 0-d loss scalars at most, never a workspace


def test_train_step_returns_device_scalar_without_sync():
    import cupy

    net = gpubp.MLP([8, 16, 2], loss="cross_entropy", backend="cupy", seed=0)
    loss = net.train_step(np.zeros((4, 8)), np.array([0, 1, 0, 1]), SGD(0.1))
    assert isinstance(loss, cupy.ndarray) and loss.shape == ()


def test_auto_picks_cupy():
    assert gpubp.get_backend("auto").name == "cupy"
    assert gpubp.MLP([2, 2]).backend.name == "cupy"
    assert "cupy" in gpubp.available_backends()


def test_fit_on_gpu_learns_spirals():
    X, y = gpubp.data.spirals(2000, seed=1)
    net = gpubp.MLP([2, 64, 64, 2], activation="relu", loss="cross_entropy", backend="cupy", seed=1)
    net.fit(X, y, epochs=60, batch_size=64, optimizer=Adam(0.01), progress=False, seed=1)
    assert net.evaluate(X, y)["accuracy"] >= 0.995


def test_every_kernel_instantiation_compiles_and_loads_on_the_device():
    from gpubp.backends._kernels import KERNELS, CudaModules

    modules = CudaModules()
    for filename, names in KERNELS.items():
        for name in names:
            assert modules.get(filename, name) is not None


@pytest.mark.parametrize("activation", sorted(gpubp.ACTIVATIONS))
@pytest.mark.parametrize("loss", ["mse", "bce", "cross_entropy", "huber", "l1"])
def test_one_step_of_every_activation_and_loss_matches_numpy(activation, loss):
    from conftest import targets_for

    kwargs = dict(activation=activation, loss=loss, dtype="float64", seed=5)
    cpu = gpubp.MLP([9, 17, 6], backend="numpy", **kwargs)
    gpu = gpubp.MLP([9, 17, 6], backend="cupy", **kwargs)
    rng = np.random.default_rng(3)
    X, Y = rng.normal(size=(29, 9)), targets_for(loss, 29, 6, rng)
    (loss_cpu, grads_cpu), (loss_gpu, grads_gpu) = cpu.loss_and_grads(X, Y), gpu.loss_and_grads(X, Y)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-11)
    for a, b in zip(grads_cpu, grads_gpu):
        np.testing.assert_allclose(b, a, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_float32_training_with_kernel_bias_grad_tracks_numpy(name):
    from gpubp.backends.cupy_backend import CupyBackend

    kwargs = dict(activation=["gelu", "relu"], loss="cross_entropy", dtype="float32", seed=7)
    cpu = gpubp.MLP([20, 33, 17, 5], backend="numpy", **kwargs)
    gpu = gpubp.MLP([20, 33, 17, 5], backend=CupyBackend(bias_grad="kernel"), **kwargs)
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(300, 20)), rng.integers(0, 5, 300)
    opt_cpu, opt_gpu = OPTIMIZERS[name](), OPTIMIZERS[name]()
    for _ in range(20):
        loss_cpu, loss_gpu = cpu.train_step(X, y, opt_cpu), gpu.train_step(X, y, opt_gpu)
    assert float(loss_gpu) == pytest.approx(float(loss_cpu), rel=1e-3)
    for a, b in zip(cpu.get_weights(), gpu.get_weights()):
        np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-4)


def test_training_step_never_synchronises_with_the_host():
    """Inside a step (what ``fit`` runs per batch once data is on the device) nothing waits for the GPU."""
    import cupy
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):  # deprecated since CuPy 10; gone in some release
        pytest.skip(f"cupyx.allow_synchronize is not in CuPy {cupy.__version__}")
    net = gpubp.MLP([32, 64, 10], activation="gelu", loss="cross_entropy", backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    X = cupy.asarray(rng.normal(size=(128, 32)).astype(np.float32))
    y = cupy.asarray(rng.integers(0, 10, 128))
    optimizer = AdamW(1e-3)
    ws = net.load_batch(X, y)
    guard = Guard(net.backend, net.grads, "raise", None)
    step = Step(net, optimizer, guard)
    step(ws)
    with cupyx.allow_synchronize(False):  # the guard's flag, the update, the step count: all on the device
        for _ in range(3):
            step(ws)
    cupy.cuda.get_current_stream().synchronize()


def test_kernel_bias_grad_is_deterministic_and_pool_flat():
    import cupy

    from gpubp.backends.cupy_backend import CupyBackend

    be = CupyBackend(bias_grad="kernel")
    delta = cupy.asarray(np.random.default_rng(0).normal(size=(65536, 64)).astype(np.float32))
    out1, out2 = cupy.empty(64, np.float32), cupy.empty(64, np.float32)
    be.bias_grad(delta, None, out1)
    used = cupy.get_default_memory_pool().used_bytes()
    be.bias_grad(delta, None, out2)
    assert cupy.get_default_memory_pool().used_bytes() == used  # partials allocated once per shape
    np.testing.assert_array_equal(cupy.asnumpy(out1), cupy.asnumpy(out2))
    np.testing.assert_allclose(cupy.asnumpy(out1), cupy.asnumpy(delta).astype(np.float64).sum(0), rtol=1e-4,
                               atol=1e-3)


@pytest.mark.parametrize("check_every", [None, 1])
def test_divergence_guard_on_the_gpu(check_every):
    """The guard's flags, the kernels' skip and the window check on a real device."""
    from gpubp.errors import DivergenceError

    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 20)).astype(np.float32)
    X[43] = 3e38
    y = rng.integers(0, 2, 80)
    make = lambda backend: gpubp.MLP([20, 8, 2], activation="identity", loss="cross_entropy",  # noqa: E731
                                     backend=backend, seed=1)
    net, optimizer = make("cupy"), Adam(0.01)
    with pytest.raises(DivergenceError, match=r"at step 5 \(epoch 1, batch 5\), first in the forward pass of layer 1"):
        net.fit(X, y, epochs=2, batch_size=10, optimizer=optimizer, shuffle=False, progress=False,
                check_every=check_every)
    reference, reference_optimizer = make("numpy"), Adam(0.01)
    reference.fit(X[:40], y[:40], epochs=1, batch_size=10, optimizer=reference_optimizer, shuffle=False,
                  progress=False)
    assert optimizer.steps == 4
    for a, b in zip(net.get_weights(), reference.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    history = make("cupy").fit(X, y, epochs=2, batch_size=10, optimizer=Adam(0.01), shuffle=False, progress=False,
                               on_nonfinite="skip_step", check_every=check_every)
    assert history["skipped_steps"] == [1, 1] and np.isfinite(history["loss"]).all()


def test_resume_on_the_gpu_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    """What the README claims for the GPU: resume is bit-identical on the same device and libraries."""
    X, y = gpubp.data.spirals(2000, n_classes=3, seed=0)

    def run(epochs, checkpoint=None, resume=False):
        net = gpubp.MLP([2, 64, 64, 3], activation="gelu", loss="cross_entropy", backend="cupy", seed=0)
        net.fit(X, y, epochs=epochs, batch_size=64, optimizer=Adam(1e-2), seed=3, progress=False,
                checkpoint=checkpoint, resume=resume)
        return net.get_weights()

    path = tmp_path / "ck.npz"
    interrupted_before(3, lambda: run(4, path), monkeypatch)  # the first run dies in its third epoch
    resumed, straight = run(4, path, resume=True), run(4)
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(a, b)


def test_out_of_memory_on_the_gpu_names_sizes_and_a_batch():
    from gpubp.errors import DeviceMemoryError

    backend = gpubp.get_backend("cupy")
    free, total = backend.memory_info()
    with pytest.raises(DeviceMemoryError, match="were asked for"):
        backend.empty((int(total // 4) * 2,), np.float32)  # twice the whole device
    net = gpubp.MLP([4096, 4096, 10], backend="cupy", seed=0)
    batch = int(total // (4 * 4096 * 4)) + 1  # a workspace larger than the device
    with pytest.raises(DeviceMemoryError, match=r"try batch_size=\d+ or smaller"):
        net.workspace(batch)


def test_a_large_step_is_queued_far_faster_than_the_gpu_runs_it():
    """Stronger than allow_synchronize (which sees only ndarray.get and Device.synchronize): if a step
    waited for the GPU anywhere, queueing ten large steps would take as long as running them."""
    import time

    import cupy

    net = gpubp.MLP([4096, 4096, 4096, 10], activation="relu", loss="cross_entropy", backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    ws = net.load_batch(cupy.asarray(rng.normal(size=(8192, 4096)).astype(np.float32)),
                        cupy.asarray(rng.integers(0, 10, 8192)))
    step = Step(net, SGD(1e-3), Guard(net.backend, net.grads, "raise", None))
    step(ws)
    cupy.cuda.get_current_stream().synchronize()
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    start.record()
    queued = time.perf_counter()
    for _ in range(10):
        step(ws)
    host_seconds = time.perf_counter() - queued
    end.record()
    end.synchronize()
    gpu_seconds = cupy.cuda.get_elapsed_time(start, end) / 1e3
    assert host_seconds < 0.5 * gpu_seconds, (host_seconds, gpu_seconds)


def test_memory_pool_is_flat_with_a_one_output_network():
    """BP3 over one column takes gpubp's kernel: no batch-sized temporary per step."""
    import cupy

    net = gpubp.MLP([64, 128, 1], activation="relu", loss="bce", backend="cupy", seed=0)
    rng = np.random.default_rng(0)
    ws = net.load_batch(rng.normal(size=(4096, 64)), rng.integers(0, 2, (4096, 1)).astype(np.float32))
    step = Step(net, SGD(1e-3), Guard(net.backend, net.grads, "raise", None))
    for _ in range(3):
        step(ws)
    pool = cupy.get_default_memory_pool()
    cupy.cuda.get_current_stream().synchronize()
    before = pool.used_bytes()
    for _ in range(5):
        step(ws)
    cupy.cuda.get_current_stream().synchronize()
    assert pool.used_bytes() - before <= 4096


def test_selftest_passes_on_the_gpu():
    """Every check of gpubp selftest on the CuPy backend, TF32 taking effect included."""
    from gpubp import selftest

    checks = selftest.run(gpubp.get_backend("cupy"), quick=True)
    assert not [c for c in checks if c.passed is False], selftest.table(checks)
    allowed = {"no host synchronisation in a step", "TF32 matmuls take effect"}  # CuPy-version / GPU-age dependent
    assert {c.name for c in checks if c.passed is None} <= allowed, selftest.table(checks)
