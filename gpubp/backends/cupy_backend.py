"""The GPU backend: CuPy on one CUDA device, with gpubp's fused CUDA kernels.

Per layer and step: one cuBLAS GEMM forward (``cupy.matmul`` with ``out=``)
and one fused kernel for ``z += b, a = σ(z)``; backward, one fused kernel
for ``δ ⊙ σ'`` and two GEMMs; the loss and BP1 in one kernel; the optimizer
one launch over the flat parameter buffer. The kernels come from
``kernels/*.cu`` (see :mod:`gpubp.backends.fused` for the table and
:mod:`gpubp.backends._kernels` for loading), compiled by NVRTC on first use
and cached per device by CuPy. CuPy itself is imported only when a backend is
built, so ``import gpubp`` never initialises CUDA.

A backend is pinned to one device: every operation (allocations, GEMMs,
kernel launches, transfers) runs with that device made current, whichever
device the caller has current, and :meth:`CupyBackend.activate` does the same
for a block of code (the network enters it around each public call).
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import Any, Callable, ContextManager

import numpy as np

from ..errors import DeviceMemoryError, format_bytes
from ._kernels import CudaModules, FusedOps
from .fused import FusedBackend
from .spec import Array, BackendSpec, HostArray

_MODULES = CudaModules()
"""One set of compiled modules per process, cached per device."""

BLOCKS_PER_SM = 32
"""Grid-stride kernels launch at most this many 256-thread blocks per multiprocessor."""


class DeviceScope:
    """``with scope:`` makes device ``device_id`` current and restores the previous one on exit.

    Re-entrant and safe to share between threads: each thread keeps its own
    stack of previous devices (CUDA's current device is per thread).
    """

    def __init__(self, runtime: Any, device_id: int) -> None:
        self.runtime, self.id = runtime, device_id
        self._local = threading.local()

    def __enter__(self) -> DeviceScope:
        previous = self.runtime.getDevice()
        if previous != self.id:
            self.runtime.setDevice(self.id)
        self._local.__dict__.setdefault("stack", []).append(previous)
        return self

    def __exit__(self, *exc: object) -> None:
        previous = self._local.stack.pop()
        if previous != self.id:
            self.runtime.setDevice(previous)


class CupyBackend(FusedBackend):
    """CuPy on one CUDA device; host arrays are copied into preallocated device buffers.

    ``device`` is the device's number (default: the device current when the
    backend is built; the backend stays on it). ``bias_grad`` picks how BP3's
    column sums run: ``"gemv"`` (cuBLAS, against a ones vector) or
    ``"kernel"`` (gpubp's deterministic two-pass kernel).
    """

    name = "cupy"
    is_gpu = True

    def __init__(self, device: int | None = None, bias_grad: str = "gemv") -> None:
        import cupy

        runtime = cupy.cuda.runtime
        self.device = cupy.cuda.Device(device if device is not None else runtime.getDevice())
        self.scope = DeviceScope(runtime, self.device.id)
        with self.scope:
            properties = cupy.cuda.runtime.getDeviceProperties(self.device.id)
            sm_count = properties["multiProcessorCount"]
            self.tf32_capable = int(properties.get("major", 0)) >= 8
            """TF32 tensor cores need compute capability 8.0 or newer (A100, H100, H200, RTX 30 series on)."""
            ops = FusedOps(_MODULES, max_blocks=sm_count * BLOCKS_PER_SM, device=self.device.id)
            super().__init__(cupy, ops, bias_grad)

    def matmul(self, a: Array, b: Array, out: Array, precision: str = "highest") -> None:
        """One cuBLAS GEMM. ``precision="tf32"`` on float32 allows TF32 tensor-core math for this call only
        (10-bit mantissa in the products, float32 accumulation) and puts the previous setting back.

        CuPy's float32 GEMM passes cuBLAS an explicit compute type, which the handle's math mode does
        not override; so both are switched: the thread's cuBLAS handle math mode and CuPy's float32
        GEMM compute type. The latter is process-wide: while gpubp queues a TF32 GEMM (microseconds,
        under a lock), another thread's CuPy float32 matmul could also be queued in TF32.
        """
        if not out.flags.c_contiguous:  # an ensemble's gradient views of its (K, P) buffer: a contiguous result first
            result = self.scratch("matmul_result", out.shape, out.dtype)
            self.matmul(a, b, result, precision)
            self.xp.copyto(out, result)
            return
        if precision != "tf32" or out.dtype != np.float32 or not self.tf32_capable:
            if precision == "tf32" and not self.tf32_capable:
                _no_tf32(self.device_name())
            self.xp.matmul(a, b, out=out)
            return
        cublas, linalg = _tf32_switches(self.xp)
        handle = self.xp.cuda.device.get_cublas_handle()
        with _TF32_LOCK:
            previous_mode = cublas.getMathMode(handle)
            previous_type = linalg.get_compute_type(np.float32)
            cublas.setMathMode(handle, getattr(cublas, "CUBLAS_TF32_TENSOR_OP_MATH", 3))
            linalg.set_compute_type(np.float32, getattr(linalg, "COMPUTE_TYPE_TF32", 7))
            try:
                self.xp.matmul(a, b, out=out)
            finally:
                linalg.set_compute_type(np.float32, previous_type)
                cublas.setMathMode(handle, previous_mode)

    def activate(self) -> ContextManager[Any]:
        """``with backend.activate():`` runs the block with this backend's device current."""
        return self.scope

    def device_name(self) -> str:
        props = self.xp.cuda.runtime.getDeviceProperties(self.device.id)
        name = props["name"]
        return name.decode() if isinstance(name, bytes) else str(name)

    def memory_info(self) -> tuple[int, int]:
        """(free, total) bytes on the device."""
        free, total = self.device.mem_info
        return int(free), int(total)

    def is_device_array(self, value: Any) -> bool:
        return isinstance(value, self.xp.ndarray)

    # --- allocation, with out-of-memory errors that say what to do --------------------------------
    def _allocate(self, nbytes: int, function: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except self.xp.cuda.memory.OutOfMemoryError:
            raise self.out_of_memory(nbytes) from None

    def out_of_memory(self, requested: int) -> DeviceMemoryError:
        """The error for a failed allocation of ``requested`` bytes, with the device's memory state."""
        free, total = self.memory_info()  # CuPy has already freed its pool's cached blocks and retried
        return DeviceMemoryError(
            f"out of GPU memory on {self.device_name()}: {format_bytes(requested)} were asked for, "
            f"{format_bytes(free)} are free of {format_bytes(total)}", requested=requested, free=free, total=total)

    def empty(self, shape: Any, dtype: Any) -> Any:
        return self._allocate(_nbytes(shape, dtype), self.xp.empty, shape, dtype=dtype)

    def zeros(self, shape: Any, dtype: Any) -> Any:
        return self._allocate(_nbytes(shape, dtype), self.xp.zeros, shape, dtype=dtype)

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        nbytes = _nbytes(np.shape(value), dtype if dtype is not None else getattr(value, "dtype", np.float64))
        return self._allocate(nbytes, self.xp.array, value, dtype=dtype, copy=True)

    def copy_into(self, out: Any, value: Any) -> None:
        if isinstance(value, self.xp.ndarray):
            self.xp.copyto(out, value, casting="unsafe")
        else:  # one host-to-device copy into the existing buffer, no device allocation
            out.set(np.ascontiguousarray(value, dtype=out.dtype))

    def to_host(self, value: Array) -> HostArray:
        return self.xp.asnumpy(value)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()


_TF32_LOCK = threading.Lock()


@functools.lru_cache(maxsize=None)
def _no_tf32(device: str) -> None:
    logging.getLogger("gpubp").info("gpubp: %s has no TF32 tensor cores (compute capability < 8.0): "
                                    "matmul_precision='tf32' computes exact float32 GEMMs there", device)


def _tf32_switches(cupy: Any) -> tuple[Any, Any]:
    """CuPy's cuBLAS bindings and its GEMM compute-type setting (``cupy._core._routines_linalg``)."""
    try:
        from cupy_backends.cuda.libs import cublas
    except ImportError:
        cublas = cupy.cuda.cublas
    try:
        from cupy._core import _routines_linalg as linalg
    except ImportError:
        linalg = cupy._core._routines_linalg
    return cublas, linalg


def _on_device(method: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(method)
    def run(self: CupyBackend, *args: Any, **kwargs: Any) -> Any:
        with self.scope:
            return method(self, *args, **kwargs)

    return run


DEVICE_OPERATIONS = tuple(name for name, value in vars(BackendSpec).items()
                          if callable(value) and not name.startswith("_") and name not in ("device_name", "activate"))
"""Every operation of the backend surface: each runs with the backend's device current."""

for _name in (*DEVICE_OPERATIONS, "memory_info", "out_of_memory"):
    setattr(CupyBackend, _name, _on_device(getattr(CupyBackend, _name)))


def _nbytes(shape: Any, dtype: Any) -> int:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize

