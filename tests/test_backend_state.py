"""A backend on device k runs everything on k; a backend shared by threads keeps their state apart.

No GPU is needed: the CuPy backend is built over a stand-in CuPy (NumPy arrays, a "current device"
that the stand-in tracks) and the fused kernels run from their host build; every array call and
kernel launch records which device was current.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

import gpubp
from gpubp.backends import NumpyBackend, numpy_backend
from gpubp.optim import SGD, Adam


class FakeCupy:
    """Just enough of CuPy for the backend: NumPy underneath, and a current device."""

    ndarray = np.ndarray

    def __init__(self, devices: int = 2) -> None:
        self.current = 0
        self.calls: list[tuple[str, int]] = []
        fake = self

        class Device:
            def __init__(self, device: int | None = None) -> None:
                self.id = fake.current if device is None else int(device)
                assert 0 <= self.id < devices, f"no device {self.id}"
                self._saved: list[int] = []
                self.mem_info = (2**30, 2**31)

            def __enter__(self) -> Device:
                self._saved.append(fake.current)
                fake.current = self.id
                return self

            def __exit__(self, *exc: object) -> None:
                fake.current = self._saved.pop()

        class OutOfMemoryError(Exception):
            pass

        def set_device(device: int) -> None:
            assert 0 <= device < devices, f"no device {device}"
            fake.current = device

        runtime = type("runtime", (), {"getDevice": staticmethod(lambda: fake.current),
                                       "setDevice": staticmethod(set_device),
                                       "getDeviceProperties": staticmethod(lambda i: {"multiProcessorCount": 2,
                                                                                      "name": b"Stand-in",
                                                                                      "major": 9, "minor": 0})})
        self.cuda = type("cuda", (), {"Device": Device, "runtime": runtime,
                                      "memory": type("memory", (), {"OutOfMemoryError": OutOfMemoryError})})

    def asnumpy(self, value: np.ndarray) -> np.ndarray:
        self.calls.append(("asnumpy", self.current))
        return np.array(value, copy=True)

    def __getattr__(self, name: str):
        value = getattr(np, name)
        if not callable(value) or isinstance(value, type):
            return value

        def call(*args, **kwargs):
            self.calls.append((name, self.current))
            return value(*args, **kwargs)

        return call


class RecordingKernels:
    """The host build of the kernels, recording the current device at every launch."""

    def __init__(self, host_kernels, fake: FakeCupy) -> None:
        self.host, self.fake = host_kernels, fake
        self.launches: list[tuple[str, int, int]] = []

    def get(self, filename: str, name: str, device: int):
        function = self.host.get(filename, name)

        def launch(grid, block, args):
            self.launches.append((name, device, self.fake.current))
            function(grid, block, args)

        return launch


@pytest.fixture
def device_one(monkeypatch, host_kernels):
    """A CuPy backend on device 1 of a stand-in CuPy whose current device is 0."""
    import sys

    from gpubp.backends import cupy_backend

    fake = FakeCupy()
    monkeypatch.setitem(sys.modules, "cupy", fake)
    kernels = RecordingKernels(host_kernels, fake)
    monkeypatch.setattr(cupy_backend, "_MODULES", kernels)
    backend = cupy_backend.CupyBackend(device=1)
    return backend, fake, kernels


def _spirals_run(backend, epochs=3):
    X, y = gpubp.data.spirals(300, n_classes=3, seed=0)
    net = gpubp.MLP([2, 16, 3], activation="gelu", loss="cross_entropy", backend=backend, seed=0)
    history = net.fit(X, y, epochs=epochs, batch_size=32, optimizer=Adam(0.01), validation_split=0.2, seed=0,
                      progress=False, early_stopping=5)
    return net, history, X, y


def test_every_operation_runs_on_the_backends_device(device_one):
    backend, fake, kernels = device_one
    assert backend.device.id == 1 and fake.current == 0
    fake.calls.clear()
    net, history, X, y = _spirals_run(backend)
    net.predict(X)
    net.evaluate(X, y)
    net.train_step(X[:10], y[:10], SGD(0.1))
    net.get_weights()
    assert fake.current == 0, "the caller's current device is left as it was"
    assert fake.calls and kernels.launches
    elsewhere = sorted({name for name, device in fake.calls if device != 1})
    assert not elsewhere, f"array calls made on another device: {elsewhere}"
    launched_elsewhere = sorted({name for name, device, current in kernels.launches if device != 1 or current != 1})
    assert not launched_elsewhere, f"kernels loaded or launched for another device: {launched_elsewhere}"
    assert {"gpubp::adam_step<float>", "gpubp::count_step", "gpubp::any_nonfinite<float>"} <= {
        name for name, _, _ in kernels.launches}


def test_the_device_backend_trains_like_the_host_build(device_one, host_kernels):
    import kernel_host

    backend = device_one[0]
    on_device, _, _, _ = _spirals_run(backend)
    on_host, _, _, _ = _spirals_run(kernel_host.HostFusedBackend(host_kernels, bias_grad="gemv"))
    for a, b in zip(on_device.get_weights(), on_host.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_kernel_functions_are_cached_per_device(device_one, monkeypatch):
    from gpubp.backends import cupy_backend

    backend_one, fake, kernels = device_one
    backend_zero = cupy_backend.CupyBackend(device=0)
    for backend in (backend_one, backend_zero):
        net = gpubp.MLP([3, 4, 2], activation="tanh", backend=backend, seed=0)
        net.train_step(np.ones((5, 3)), np.zeros((5, 2)), SGD(0.1))
    devices = {(name, device) for name, device, _ in kernels.launches}
    assert ("gpubp::sgd_step<float>", 0) in devices and ("gpubp::sgd_step<float>", 1) in devices
    assert all(device == current for _, device, current in kernels.launches)


def _train_pair(backend, parallel: bool) -> list[list[np.ndarray]]:
    """Two networks on one backend object, trained one after the other or in two threads at once."""
    results: list[list[np.ndarray]] = [[], []]

    def train(k: int) -> None:
        X, y = gpubp.data.spirals(2000, n_classes=3, seed=k)
        net = gpubp.MLP([2, 64, 64, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=k)
        net.fit(X, y, epochs=4, batch_size=500, optimizer=Adam(0.01, weight_decay=1e-3), seed=k, progress=False)
        results[k] = net.get_weights()

    if parallel:
        threads = [threading.Thread(target=train, args=(k,)) for k in (0, 1)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    else:
        train(0)
        train(1)
    return results


@pytest.mark.parametrize("kind", ["numpy-threads", "fused-host"])
def test_two_networks_trained_in_two_threads_match_one_after_the_other(kind, host_kernels, monkeypatch):
    import kernel_host

    if kind == "numpy-threads":  # the elementwise passes split over a shared pool, even on small arrays
        monkeypatch.setattr(numpy_backend, "PARALLEL_MIN_ELEMENTS", 1000)
        backend = NumpyBackend(threads=3)
    else:  # kernels with scratch (the bias gradient's column partials) and the update's never-skip flag
        backend = kernel_host.HostFusedBackend(host_kernels, bias_grad="kernel")
    sequential = _train_pair(backend, parallel=False)
    for _ in range(3):
        concurrent = _train_pair(backend, parallel=True)
        for one, other in zip(sequential, concurrent):
            for a, b in zip(one, other):
                np.testing.assert_array_equal(a, b)


def test_tf32_sets_the_cublas_math_mode_around_this_networks_gemms_only(device_one):
    backend, fake, _ = device_one
    modes: list[int] = []
    state = {"mode": 0}
    fake.cuda.cublas = type("cublas", (), {
        "CUBLAS_TF32_TENSOR_OP_MATH": 3,
        "getMathMode": staticmethod(lambda handle: state["mode"]),
        "setMathMode": staticmethod(lambda handle, mode: state.update(mode=mode)),
    })
    fake.cuda.device = type("device", (), {"get_cublas_handle": staticmethod(lambda: 42)})
    compute = {np.float32: 0}  # CuPy's float32 GEMM compute type (0: default, 7: TF32)
    fake._core = type("core", (), {"_routines_linalg": type("linalg", (), {
        "COMPUTE_TYPE_TF32": 7,
        "get_compute_type": staticmethod(lambda dtype: compute[dtype]),
        "set_compute_type": staticmethod(lambda dtype, value: compute.update({dtype: value})),
    })})
    real_matmul = np.matmul

    def matmul(a, b, **kwargs):
        if a.ndim == 2:  # the GEMMs (BP3's GEMV against the ones vector is not a float32 GEMM to speed up)
            modes.append((state["mode"], compute[np.float32]))
        return real_matmul(a, b, **kwargs)

    fake.matmul = matmul
    X, y = gpubp.data.spirals(64, n_classes=3, seed=0)
    tf32 = gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0,
                     matmul_precision="tf32")
    tf32.train_step(X, y, SGD(0.1))
    assert modes and set(modes) == {(3, 7)}  # TF32 math mode and compute type during each GEMM
    assert state["mode"] == 0 and compute[np.float32] == 0  # both restored after
    modes.clear()
    gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0).train_step(X, y, SGD(0.1))
    assert set(modes) == {(0, 0)}  # another network in the same process: exact
    modes.clear()
    double = gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0, dtype="float64",
                       matmul_precision="tf32")
    double.train_step(X, y, SGD(0.1))
    assert set(modes) == {(0, 0)}  # TF32 is for float32 only


def test_tf32_on_a_gpu_without_tensor_cores_computes_exactly(device_one, caplog):
    backend, fake, _ = device_one
    backend.tf32_capable = False  # compute capability 7.x
    net = gpubp.MLP([2, 8, 3], activation="tanh", loss="cross_entropy", backend=backend, seed=0,
                    matmul_precision="tf32")
    X, y = gpubp.data.spirals(64, n_classes=3, seed=0)
    with caplog.at_level("INFO", logger="gpubp"):
        net.train_step(X, y, SGD(0.1))  # no cuBLAS or CuPy switches touched (the stand-in has none here)
    assert "has no TF32 tensor cores" in caplog.text
