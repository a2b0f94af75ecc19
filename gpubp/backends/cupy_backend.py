"""The GPU backend: CuPy on one CUDA device, with gpubp's fused CUDA kernels.

Per layer and step: one cuBLAS GEMM forward (``cupy.matmul`` with ``out=``)
and one fused kernel for ``z += b, a = σ(z)``; backward, one fused kernel
for ``δ ⊙ σ'`` and two GEMMs; the loss and BP1 in one kernel; the optimizer
one launch over the flat parameter buffer. The kernels come from
``kernels/*.cu`` (see :mod:`gpubp.backends.fused` for the table and
:mod:`gpubp.backends._kernels` for loading), compiled by NVRTC on first use
and cached per device by CuPy. Nothing here is imported before the backend
is asked for, so ``import gpubp`` never initialises CUDA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._kernels import CudaModules, FusedOps
from .base import Backend
from .fused import FusedKernels

_MODULES = CudaModules()
"""One set of compiled modules per process, cached per device."""

BLOCKS_PER_SM = 32
"""Grid-stride kernels launch at most this many 256-thread blocks per multiprocessor."""


class CupyBackend(FusedKernels, Backend):
    """CuPy on one CUDA device; host arrays are copied into preallocated device buffers.

    ``bias_grad`` picks how BP3's column sums run: ``"gemv"`` (cuBLAS, against
    a ones vector) or ``"kernel"`` (gpubp's deterministic two-pass kernel).
    """

    name = "cupy"
    is_gpu = True

    def __init__(self, device: int | None = None, bias_grad: str = "gemv") -> None:
        import cupy

        Backend.__init__(self, cupy)
        self.device = cupy.cuda.Device(device) if device is not None else cupy.cuda.Device()
        sm_count = cupy.cuda.runtime.getDeviceProperties(self.device.id)["multiProcessorCount"]
        self._init_fused(FusedOps(_MODULES, max_blocks=sm_count * BLOCKS_PER_SM), bias_grad)

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

    def asarray(self, value: Any, dtype: Any = None) -> Any:
        return self.xp.array(value, dtype=dtype, copy=True)

    def copy_into(self, out: Any, value: Any) -> None:
        if isinstance(value, self.xp.ndarray):
            self.xp.copyto(out, value, casting="unsafe")
        else:  # one host-to-device copy into the existing buffer, no device allocation
            out.set(np.ascontiguousarray(value, dtype=out.dtype))

    def to_host(self, value: Any) -> np.ndarray:
        return self.xp.asnumpy(value)

    def synchronize(self) -> None:
        self.xp.cuda.get_current_stream().synchronize()
