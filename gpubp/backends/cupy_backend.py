"""The GPU backend: CuPy on the current CUDA device.

Complete and correct through CuPy operations inherited from the reference
backend (cuBLAS for the GEMMs through ``cupy.matmul(out=)``, CuPy's elementwise
ufuncs with ``out=`` for the rest). The fused CUDA kernels in ``kernels/``
replace the hot elementwise operations by overriding the methods of the same
names (``activation_forward``, ``activation_backward``, ``loss_value_and_delta``,
``sgd_update``, ``adam_update``, ``bias_grad``).

Nothing here is imported before the backend is asked for, so ``import gpubp``
never initialises CUDA.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .base import Backend


class CupyBackend(Backend):
    """CuPy on one CUDA device; host arrays are copied into preallocated device buffers."""

    name = "cupy"
    is_gpu = True

    def __init__(self, device: int | None = None) -> None:
        import cupy

        super().__init__(cupy)
        self.device = cupy.cuda.Device(device) if device is not None else cupy.cuda.Device()

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
