"""The CPU backend: NumPy, in place, preallocated buffers, ``out=`` everywhere.

Everything is inherited from the reference :class:`~gpubp.backends.base.Backend`,
which is already written without temporaries; this class adds what is
specific to host memory.
"""

from __future__ import annotations

import platform
from typing import Any

import numpy as np

from .base import Backend


class NumpyBackend(Backend):
    """NumPy on the CPU (BLAS for the GEMMs)."""

    name = "numpy"
    is_gpu = False

    def __init__(self) -> None:
        super().__init__(np)

    def device_name(self) -> str:
        return platform.processor() or platform.machine() or "cpu"

    def asarray(self, value: Any, dtype: Any = None) -> np.ndarray:
        return np.array(value, dtype=dtype, copy=True, order="C")
