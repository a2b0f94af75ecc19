"""Compile gpubp's kernels for a GPU architecture without a GPU: NVRTC through ctypes, or nvcc.

NVRTC is what CuPy compiles with at run time, so :func:`nvrtc_compile` takes
the same text (:func:`gpubp.backends._kernels.read_source`), the same options
and the same name expressions, and returns the lowered (mangled) name of each
instantiation and the size of the cubin. The library comes from NVIDIA's pip
wheel (``nvidia-cuda-nvrtc``, a test dependency on Linux) or a CUDA toolkit.
"""

from __future__ import annotations

import ctypes
import glob
import os
import shutil
import site
import sys
from pathlib import Path


def find_nvrtc() -> str | None:
    """The path of a loadable libnvrtc, or None."""
    roots = list(site.getsitepackages()) + [site.getusersitepackages()] + sys.path
    patterns = [os.path.join(r, "nvidia", sub, "lib", "libnvrtc.so*") for r in roots
                for sub in ("cu13", "cu12", "cuda_nvrtc")]
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        if os.environ.get(variable):
            patterns.append(os.path.join(os.environ[variable], "lib64", "libnvrtc.so*"))
    patterns.append("/usr/local/cuda/lib64/libnvrtc.so*")
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)):
            if "builtins" in path or "alt" in path:
                continue
            try:
                ctypes.CDLL(path)
            except OSError:
                continue
            return path
    return None


def find_nvcc() -> str | None:
    found = shutil.which("nvcc")
    if found:
        return found
    for variable in ("CUDA_PATH", "CUDA_HOME"):
        candidate = Path(os.environ.get(variable, "/nonexistent")) / "bin" / "nvcc"
        if candidate.is_file():
            return str(candidate)
    return None


class NvrtcError(RuntimeError):
    pass


class Nvrtc:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lib = ctypes.CDLL(path)
        self.lib.nvrtcGetErrorString.restype = ctypes.c_char_p

    def version(self) -> tuple[int, int]:
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(self.lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        return major.value, minor.value

    def _check(self, result: int, what: str, log: str = "") -> None:
        if result != 0:
            raise NvrtcError(f"{what}: {self.lib.nvrtcGetErrorString(result).decode()}\n{log}")

    def compile(self, source: str, name: str, name_expressions: list[str],
                options: list[str]) -> tuple[dict[str, str], int, str]:
        """(lowered name per expression, cubin size in bytes, compiler log); raises NvrtcError with the log."""
        program = ctypes.c_void_p()
        self._check(self.lib.nvrtcCreateProgram(ctypes.byref(program), source.encode(), name.encode(),
                                                0, None, None), "nvrtcCreateProgram")
        try:
            for expression in name_expressions:
                self._check(self.lib.nvrtcAddNameExpression(program, expression.encode()),
                            f"nvrtcAddNameExpression({expression})")
            encoded = [o.encode() for o in options]
            array = (ctypes.c_char_p * len(encoded))(*encoded)
            result = self.lib.nvrtcCompileProgram(program, len(encoded), array)
            size = ctypes.c_size_t()
            self.lib.nvrtcGetProgramLogSize(program, ctypes.byref(size))
            buffer = ctypes.create_string_buffer(size.value)
            self.lib.nvrtcGetProgramLog(program, buffer)
            log = buffer.value.decode(errors="replace")
            self._check(result, f"nvrtcCompileProgram({name})", log)
            lowered = {}
            for expression in name_expressions:
                out = ctypes.c_char_p()
                self._check(self.lib.nvrtcGetLoweredName(program, expression.encode(), ctypes.byref(out)),
                            f"nvrtcGetLoweredName({expression})")
                lowered[expression] = out.value.decode()
            cubin = ctypes.c_size_t()
            self._check(self.lib.nvrtcGetCUBINSize(program, ctypes.byref(cubin)), "nvrtcGetCUBINSize")
            return lowered, cubin.value, log
        finally:
            self.lib.nvrtcDestroyProgram(ctypes.byref(program))
