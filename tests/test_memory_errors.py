"""Out-of-memory on the GPU becomes an error with the size asked for, the free memory, and what to try.

No GPU is needed: the CuPy backend's allocation is driven with a stand-in CuPy that runs out of
memory, and the network's message is checked with a backend that runs out past a limit.
"""

from __future__ import annotations

import contextlib
import types

import numpy as np
import pytest

import gpubp
from gpubp.backends import NumpyBackend
from gpubp.errors import DeviceMemoryError, GpubpError


def _fake_cupy_backend(free=3 * 2**20, total=80 * 2**30, cached=2**20):
    from gpubp.backends.cupy_backend import CupyBackend

    class OutOfMemoryError(Exception):
        pass

    def empty(shape, dtype=None):
        raise OutOfMemoryError("cudaErrorMemoryAllocation")

    fake = types.SimpleNamespace(
        empty=empty, zeros=empty, array=lambda *a, **k: empty(None),
        cuda=types.SimpleNamespace(memory=types.SimpleNamespace(OutOfMemoryError=OutOfMemoryError)),
        get_default_memory_pool=lambda: types.SimpleNamespace(free_bytes=lambda: cached))
    backend = object.__new__(CupyBackend)
    backend.xp = fake
    backend.scope = contextlib.nullcontext()  # every operation runs "on" it
    backend.memory_info = lambda: (free, total)
    backend.device_name = lambda: "Stand-in GPU"
    return backend


def test_cupy_allocation_failure_says_sizes():
    backend = _fake_cupy_backend()
    with pytest.raises(DeviceMemoryError) as info:
        backend.empty((1024, 4096), np.float32)
    message = str(info.value)
    assert "out of GPU memory on Stand-in GPU: 16.0 MiB were asked for, 3.0 MiB are free of 80.0 GiB" in message
    assert "pool" not in message  # CuPy frees its pool's cached blocks before it gives up: nothing to add
    assert info.value.requested == 16 * 2**20 and info.value.free == 3 * 2**20 and info.value.total == 80 * 2**30
    assert isinstance(info.value, MemoryError) and isinstance(info.value, GpubpError)
    with pytest.raises(DeviceMemoryError, match="8.0 KiB were asked for"):
        backend.zeros(1024, np.float64)
    with pytest.raises(DeviceMemoryError, match="800 bytes were asked for"):
        backend.asarray(np.zeros((10, 20)), np.float32)


class SmallDevice(NumpyBackend):
    """A NumPy backend that pretends to be a device with ``free`` bytes once ``limit`` is switched on."""

    def __init__(self, free):
        super().__init__(threads=1)
        self.free, self.limit = free, False

    def _check(self, shape, dtype):
        nbytes = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.limit and nbytes > self.free:
            raise DeviceMemoryError(f"out of GPU memory: {nbytes} bytes were asked for", requested=nbytes,
                                    free=self.free, total=10 * self.free)

    def empty(self, shape, dtype):
        self._check(shape, dtype)
        return super().empty(shape, dtype)

    def asarray(self, value, dtype=None):
        self._check(np.shape(value), dtype or np.float64)
        return super().asarray(value, dtype)


def test_a_workspace_too_big_suggests_a_batch_that_fits():
    backend = SmallDevice(free=2**20)
    net = gpubp.MLP([784, 256, 10], activation="relu", loss="cross_entropy", backend=backend, seed=0)
    before = net.get_weights()
    backend.limit = True
    X, y = np.zeros((4096, 784), np.float32), np.zeros(4096, np.int64)
    with pytest.raises(DeviceMemoryError) as info:
        net.loss_and_grads(X, y)
    message = str(info.value)
    assert "while allocating the workspace of a batch of 4096" in message
    per_sample = 4 * (784 + 10 + 2 * 266 + 2 * 256 + 3 + 10) + 16  # + int64 labels and row index
    suggestion = 1 << (int(0.8 * 2**20 / per_sample).bit_length() - 1)
    assert f"try batch_size={suggestion} or smaller" in message and suggestion < 4096
    backend.limit = False
    for a, b in zip(before, net.get_weights()):
        np.testing.assert_array_equal(a, b)
    backend.limit = True
    net.loss_and_grads(X[:suggestion], y[:suggestion])  # the suggested batch fits


def test_a_training_set_too_big_for_the_device_says_so():
    backend = SmallDevice(free=2**20)
    net = gpubp.MLP([784, 16, 10], activation="relu", loss="cross_entropy", backend=backend, seed=0)
    backend.limit = True
    X, y = np.zeros((2000, 784)), np.zeros(2000, np.int64)  # float64: copied to float32 on the "device"
    with pytest.raises(DeviceMemoryError, match=r"while copying the training set \(6.0 MiB of inputs\) to the GPU"):
        net.fit(X, y, epochs=1, progress=False)


@pytest.mark.parametrize("activation,loss,labels", [("relu", "cross_entropy", True), ("relu", "mse", False),
                                                    ("gelu", "mse", False),
                                                    (["silu", "tanh"], "bce", False)])
def test_bytes_per_sample_is_what_a_workspace_allocates(activation, loss, labels):
    """One formula (gpubp.workspace.bytes_per_sample) for the advice and for gpubp bench, checked against
    the bytes a workspace really holds once training has used every buffer."""
    from gpubp.benchmark import Config, workspace_bytes
    from gpubp.workspace import bytes_per_sample

    sizes = [7, 12, 5, 3] if isinstance(activation, list) else [7, 12, 3]
    net = gpubp.MLP(sizes, activation=activation, loss=loss, backend="numpy", seed=0)
    batch = 16
    ws = net.workspace(batch)
    ws.delta  # noqa: B018  (allocated on the first backward pass)
    if labels:
        ws.labels  # noqa: B018
    arrays = [ws.x, ws.y, ws.rows, ws.ones, *ws.a[1:], *ws.delta[1:], *(z for z in ws.z if z is not None),
              ws.tmp[1].base, *([ws._labels, ws._row_index] if labels else [])]
    held = sum(a.nbytes for a in arrays)
    keep_z = [z is not None for z in ws.z[1:]]
    assert bytes_per_sample(net.sizes, 4, keep_z, labels=labels) * batch == held
    if activation == "relu" and not labels:
        assert workspace_bytes(Config(tuple(sizes), batch), 4) == held + 2 * net.n_params * 4
