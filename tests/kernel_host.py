"""gpubp's CUDA kernels compiled for the host with g++, behind the same provider interface as on a GPU.

:class:`HostKernels` builds one shared library from ``kernels/*.cu`` with
``cuda_host/emulate.h`` (every instantiation in ``gpubp.backends._kernels.KERNELS``),
and its ``get(file, name)`` returns a ``callable(grid, block, args)`` like
CuPy's ``RawModule.get_function``, taking NumPy arrays where CuPy takes
device arrays. Before each launch it checks every argument against the
kernel's C++ parameter types (pointer element type and scalar width), which a
GPU launch would not do. :class:`HostFusedBackend` is the NumPy backend with
the fused-kernel operations of the CuPy backend, running on these.
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np

from gpubp.backends._kernels import KERNELS, FusedOps, kernel_dir
from gpubp.backends.fused import FusedBackend
from gpubp.backends.numpy_backend import cpu_name

HERE = Path(__file__).resolve().parent
_CODES = {np.dtype(np.float32): "f", np.dtype(np.float64): "d", np.dtype(np.int32): "i", np.dtype(np.int64): "q"}
_CTYPES = {"f": ctypes.c_float, "d": ctypes.c_double, "i": ctypes.c_int32, "q": ctypes.c_int64}


def compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


def build(out_dir: Path) -> Path:
    """Compile every kernel instantiation into ``out_dir/gpubp_host_kernels.so``."""
    names = [name for names in KERNELS.values() for name in names]
    lines = ['#include "emulate.h"'] + [f'#include "{filename}"' for filename in KERNELS]
    lines.append('extern "C" {')
    for i, name in enumerate(names):
        lines.append(f"void gpubp_launch_{i}(void** a, unsigned gx, unsigned gy, unsigned bx, unsigned by)"
                     f" {{ emu::launch(&{name}, a, gx, gy, bx, by); }}")
        lines.append(f"const char* gpubp_signature_{i}() {{ return emu::signature(&{name}); }}")
    lines.append("}")
    source = out_dir / "gpubp_host_kernels.cpp"
    source.write_text("\n".join(lines) + "\n")
    library = out_dir / "gpubp_host_kernels.so"
    command = [compiler() or "g++", "-std=c++17", "-O1", "-shared", "-fPIC", "-Wall", "-Werror",
               "-Wno-unused-function", "-I", str(HERE / "cuda_host"), "-I", str(kernel_dir()),
               "-o", str(library), str(source)]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"host build of kernels/*.cu failed:\n{' '.join(command)}\n{result.stderr}")
    return library


class HostKernels:
    """The function provider over the host build (see the module docstring)."""

    def __init__(self, library: Path) -> None:
        self._lib = ctypes.CDLL(str(library))
        self._index = {name: i for i, name in enumerate(n for names in KERNELS.values() for n in names)}
        self.launches: list[tuple[str, tuple[int, ...], tuple[int, ...]]] = []

    def signature(self, name: str) -> str:
        function = getattr(self._lib, f"gpubp_signature_{self._index[name]}")
        function.restype = ctypes.c_char_p
        return function().decode()

    def get(self, filename: str, name: str, device: int = 0):
        assert name in KERNELS[filename], (filename, name)
        launch = getattr(self._lib, f"gpubp_launch_{self._index[name]}")
        signature = self.signature(name)

        def run(grid: tuple[int, ...], block: tuple[int, ...], args: tuple) -> None:
            assert len(args) == len(signature), f"{name} takes {len(signature)} arguments, got {len(args)}"
            keep = []
            for position, (code, arg) in enumerate(zip(signature, args)):
                if code.isupper():
                    assert isinstance(arg, np.ndarray), f"{name} argument {position} must be an array"
                    assert _CODES.get(arg.dtype) == code.lower(), \
                        f"{name} argument {position}: kernel takes {code}*, got an array of {arg.dtype}"
                    assert arg.flags.c_contiguous
                    keep.append(ctypes.c_void_p(arg.ctypes.data))
                else:
                    assert isinstance(arg, np.generic) and _CODES.get(arg.dtype) == code, \
                        f"{name} argument {position}: kernel takes {code}, got {type(arg).__name__}"
                    keep.append(_CTYPES[code](arg.item()))
            pointers = (ctypes.c_void_p * len(keep))(*[ctypes.addressof(k) for k in keep])
            grid3, block3 = tuple(grid) + (1,) * (2 - len(grid)), tuple(block) + (1,) * (2 - len(block))
            assert all(g >= 1 for g in grid3) and all(b >= 1 for b in block3)
            assert block3[0] * block3[1] <= 1024, "more than 1024 threads per block"
            self.launches.append((name, grid3, block3))
            launch(pointers, *(ctypes.c_uint(v) for v in grid3 + block3))

        return run


class HostFusedBackend(FusedBackend):
    """NumPy arrays, fused-kernel operations run on the host build; single-threaded."""

    name = "fused-host"

    def __init__(self, kernels: HostKernels, max_blocks: int = 3, bias_grad: str = "kernel") -> None:
        super().__init__(np, FusedOps(kernels, max_blocks=max_blocks), bias_grad)

    def device_name(self) -> str:
        return f"host build of the CUDA kernels on {cpu_name()}"
