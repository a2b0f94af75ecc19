"""Backend selection: names, aliases, the auto choice, and that importing gpubp leaves CUDA alone."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from conftest import CUPY_USABLE

import gpubp
from gpubp.errors import BackendUnavailableError, GpubpTypeError, GpubpValueError


@pytest.mark.parametrize("name", ["numpy", "cpu", "NumPy"])
def test_numpy_names(name):
    backend = gpubp.get_backend(name)
    assert backend.name == "numpy" and backend.xp is np and not backend.is_gpu


def test_backend_objects_pass_through():
    backend = gpubp.get_backend("numpy")
    assert gpubp.get_backend(backend) is backend
    assert gpubp.MLP([2, 2], backend=backend).backend is backend


def test_unknown_backend():
    with pytest.raises(GpubpValueError, match=r"unknown backend 'tpu'; expected one of \['auto', 'cpu', 'cuda'"):
        gpubp.get_backend("tpu")
    with pytest.raises(GpubpTypeError, match="backend must be a name"):
        gpubp.get_backend(3)


def test_status_is_a_reason():
    usable, reason = gpubp.cupy_status()
    assert isinstance(usable, bool) and isinstance(reason, str) and reason
    assert ("cupy" in gpubp.available_backends()) == usable
    assert gpubp.available_backends()[0] == "numpy"


@pytest.mark.skipif(CUPY_USABLE, reason="this machine has a usable CUDA device")
@pytest.mark.parametrize("name", ["cupy", "gpu", "cuda"])
def test_cupy_without_device_is_a_clear_error(name):
    with pytest.raises(BackendUnavailableError, match=f"backend '{name}' is not available: "):
        gpubp.get_backend(name)


@pytest.mark.skipif(CUPY_USABLE, reason="this machine has a usable CUDA device")
def test_auto_falls_back_to_numpy_and_says_why(caplog):
    gpubp.backends._fall_back.cache_clear()
    with caplog.at_level("INFO", logger="gpubp"):
        assert gpubp.get_backend("auto").name == "numpy"
    assert gpubp.cupy_status()[1] in caplog.text


class _FakeRuntime:
    def __init__(self, driver=13000, runtime=13000, devices=1, count_error=None):
        self.driver, self.runtime, self.devices, self.count_error = driver, runtime, devices, count_error

    def driverGetVersion(self):  # noqa: N802 (CuPy's names)
        return self.driver

    def runtimeGetVersion(self):  # noqa: N802
        return self.runtime

    def getDevice(self):  # noqa: N802
        return 0

    def getDeviceCount(self):  # noqa: N802
        if self.count_error:
            raise RuntimeError(self.count_error)
        return self.devices


def _fake_cupy(runtime, computes=True):
    import contextlib
    import types

    def arange(n, dtype=None):
        if not computes:
            raise RuntimeError("cudaErrorUnsupportedPtxVersion: the provided PTX was compiled with an "
                               "unsupported toolchain")
        return np.arange(n, dtype=dtype)

    return types.SimpleNamespace(__version__="13.6.0", float32=np.float32, arange=arange,
                                 cuda=types.SimpleNamespace(runtime=runtime,
                                                            Device=lambda i: contextlib.nullcontext()))


@pytest.mark.parametrize("cupy,warns", [
    (None, False),  # CuPy not installed
    (_fake_cupy(_FakeRuntime(driver=0)), False),  # no driver
    (_fake_cupy(_FakeRuntime(devices=0)), False),  # no device
    (_fake_cupy(_FakeRuntime(count_error="cudaErrorNoDevice: no CUDA-capable device is detected")), False),
    (_fake_cupy(_FakeRuntime(driver=12040, runtime=13000)), True),  # driver too old for this CuPy
    (_fake_cupy(_FakeRuntime(), computes=False), True),  # a CuPy build that does not run on the device
])
def test_auto_warns_once_only_when_a_gpu_is_there_but_unusable(monkeypatch, cupy, warns):
    import warnings

    from gpubp.errors import GpubpWarning

    monkeypatch.setitem(sys.modules, "cupy", cupy)  # None makes "import cupy" fail with ImportError
    for cached in (gpubp.backends._probe_cupy, gpubp.backends.cupy_status, gpubp.backends._fall_back):
        cached.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert gpubp.get_backend("auto").name == "numpy"
            assert gpubp.get_backend("auto").name == "numpy"
        ours = [w for w in caught if issubclass(w.category, GpubpWarning)]
        assert len(ours) == (1 if warns else 0), [str(w.message) for w in caught]
        if warns:
            assert gpubp.cupy_status()[1] in str(ours[0].message)
    finally:
        for cached in (gpubp.backends._probe_cupy, gpubp.backends.cupy_status, gpubp.backends._fall_back):
            cached.cache_clear()


def test_import_does_not_initialise_cuda():
    code = ("import sys, gpubp; net = gpubp.MLP([2, 2], backend='numpy'); "
            "print('cupy' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_device_arrays_are_accepted(backend, rng):
    net = gpubp.MLP([3, 4, 2], backend=backend, seed=0)
    X = rng.normal(size=(5, 3))
    np.testing.assert_allclose(net.predict(backend.asarray(X)), net.predict(X), rtol=1e-6)


def test_numpy_backend_splits_large_elementwise_work_exactly(rng):
    """Large arrays go through the thread pool in row blocks; results equal the one-thread reference bit for bit."""
    from gpubp.activations import ACTIVATIONS
    from gpubp.backends.numpy_backend import PARALLEL_MIN_ELEMENTS, NumpyBackend

    one, three = NumpyBackend(threads=1), NumpyBackend(threads=3)
    rows, width = 2 * PARALLEL_MIN_ELEMENTS // 64 + 7, 64
    z = rng.normal(0, 3, (rows, width)).astype(np.float32)
    for activation in ACTIVATIONS.values():
        results = []
        for backend in (one, three):
            a, tmp, tmp2 = (np.empty_like(z) for _ in range(3))
            delta = np.ones_like(z)
            backend.activation_forward(activation, z, a, tmp)
            backend.activation_backward(activation, delta, z if activation.needs_z else None, a, tmp, tmp2)
            results.append((a, delta))
        np.testing.assert_array_equal(results[0][0], results[1][0])
        np.testing.assert_array_equal(results[0][1], results[1][1])
    size = PARALLEL_MIN_ELEMENTS * 2 + 3
    params, grads = rng.normal(size=size).astype(np.float32), rng.normal(size=size).astype(np.float32)
    for make in (lambda: gpubp.optim.SGD(0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
                 lambda: gpubp.optim.AdamW(1e-2), lambda: gpubp.optim.Adam(1e-2, weight_decay=0.1)):
        updated = []
        for backend in (one, three):
            p, optimizer = params.copy(), make()
            for _ in range(3):
                optimizer.update(backend, p, grads)
            updated.append(p)
        np.testing.assert_array_equal(updated[0], updated[1])


def test_cupy_installed_but_unimportable_is_said_and_warned(monkeypatch):
    import importlib.util
    import warnings

    from gpubp.errors import GpubpWarning

    monkeypatch.setitem(sys.modules, "cupy", None)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "cupy" else real(name, *a))
    for cached in (gpubp.backends._probe_cupy, gpubp.backends.cupy_status, gpubp.backends._fall_back):
        cached.cache_clear()
    try:
        usable, reason = gpubp.cupy_status()
        assert not usable and "CuPy is installed but failed to import" in reason and "toolkit" in reason
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gpubp.get_backend("auto")
        assert [w for w in caught if issubclass(w.category, GpubpWarning)]
    finally:
        for cached in (gpubp.backends._probe_cupy, gpubp.backends.cupy_status, gpubp.backends._fall_back):
            cached.cache_clear()


def test_one_column_bias_gradient_takes_the_kernel(host_kernels, rng):
    """A one-output last layer: CuPy's GEMV path would allocate a batch-sized temporary every step."""
    import kernel_host

    backend = kernel_host.HostFusedBackend(host_kernels, max_blocks=8, bias_grad="gemv")
    delta = rng.normal(size=(1000, 1))
    out = np.empty(1)
    host_kernels.launches.clear()
    backend.bias_grad(delta, np.ones(1000), out)
    assert [name for name, _, _ in host_kernels.launches][0].startswith("gpubp::column_partials")
    np.testing.assert_allclose(out, delta.sum(axis=0), rtol=1e-12)
    host_kernels.launches.clear()
    backend.bias_grad(rng.normal(size=(1000, 3)), np.ones(1000), np.empty(3))  # more columns: the GEMV
    assert not host_kernels.launches


def test_numpy_overflow_inside_gpubp_still_fails_a_test():
    """The warning filter is scoped to gpubp's code (so CuPy's PerformanceWarning is not an error)."""
    from gpubp.backends.base import sgd_math

    params = np.full(4, 3e38, np.float32)
    with pytest.raises(RuntimeWarning, match="overflow"):
        sgd_math(np, params, params.copy(), None, np.empty(4, np.float32), lr=-10.0, momentum=0.0,
                 nesterov=False, weight_decay=0.0)
