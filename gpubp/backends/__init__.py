"""Backends: where arrays live and how the network's operations run on them.

``get_backend("auto")`` returns the CuPy backend when a CUDA device is usable
and the NumPy backend otherwise; :func:`cupy_status` says why. Nothing here
imports CuPy or touches CUDA until a backend is asked for.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import warnings
from typing import Any

from ..errors import BackendUnavailableError, GpubpTypeError, GpubpValueError, GpubpWarning
from .base import Backend
from .cupy_backend import CupyBackend
from .fused import FusedBackend
from .numpy_backend import NumpyBackend
from .spec import Array, BackendSpec, HostArray

__all__ = ["Array", "Backend", "BackendSpec", "CupyBackend", "FusedBackend", "HostArray", "NumpyBackend",
           "available_backends", "cupy_status", "get_backend"]

logger = logging.getLogger("gpubp")

_NAMES = {"numpy": "numpy", "cpu": "numpy", "cupy": "cupy", "gpu": "cupy", "cuda": "cupy", "auto": "auto"}


def _cuda_version(encoded: int) -> str:
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


@functools.lru_cache(maxsize=None)
def cupy_status() -> tuple[bool, str]:
    """Whether the CuPy backend can run here, and a sentence saying why (or why not).

    Checks, in order: CuPy importable, an NVIDIA driver present, the driver
    new enough for CuPy's CUDA runtime, at least one device, and a small
    computation on the current device (0 unless one was chosen) that really runs.
    """
    usable, reason, _ = _probe_cupy()
    return usable, reason


@functools.lru_cache(maxsize=None)
def _probe_cupy() -> tuple[bool, str, bool]:
    """(usable, reason, whether a CUDA set-up is there but broken — worth a warning when "auto" falls back).

    Nothing to warn about: CuPy not installed, no NVIDIA driver, no device. Worth a warning: CuPy
    that fails to import, a driver too old for CuPy's CUDA, a device that fails a computation.
    """
    try:
        import cupy
    except ImportError as error:
        if importlib.util.find_spec("cupy") is None:
            return False, (
                f"CuPy is not installed ({error}); install gpubp[cuda12] or gpubp[cuda13] to match your driver"
            ), False
        return False, (
            f"CuPy is installed but failed to import ({error}); the CUDA toolkit libraries it loads (cudart, "
            f"NVRTC, cuBLAS) may be missing: install gpubp[cuda12] or gpubp[cuda13], which bring them"
        ), True
    except Exception as error:  # a broken CuPy install raises all sorts of things
        return False, f"CuPy failed to import: {type(error).__name__}: {error}", True
    runtime = cupy.cuda.runtime
    try:
        driver_version = runtime.driverGetVersion()
        runtime_version = runtime.runtimeGetVersion()
    except Exception as error:
        return False, f"CUDA driver could not be queried: {error}", True
    if driver_version == 0:
        return False, "no NVIDIA driver found (libcuda could not be loaded)", False
    if driver_version // 1000 < runtime_version // 1000:
        return False, (
            f"NVIDIA driver too old: it supports CUDA {_cuda_version(driver_version)}, CuPy "
            f"{cupy.__version__} was built for CUDA {_cuda_version(runtime_version)}; "
            f"update the driver or install the CuPy package for CUDA {driver_version // 1000}"
        ), True
    return _probe_devices(cupy, runtime_version, driver_version)


def _probe_devices(cupy: Any, runtime_version: int, driver_version: int) -> tuple[bool, str, bool]:
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as error:
        return False, f"no usable CUDA device: {error}", "NoDevice" not in str(error)
    if count == 0:
        return False, "no CUDA device found", False
    device = cupy.cuda.runtime.getDevice()  # 0, unless chosen first (gpubp.distributed.init picks each rank's)
    try:
        with cupy.cuda.Device(device):
            probe = cupy.arange(8, dtype=cupy.float32)
            if float((probe * 2).sum()) != 56.0:
                return False, f"a test computation on CUDA device {device} returned a wrong result", True
    except Exception as error:
        return False, f"a test computation on CUDA device {device} failed: {type(error).__name__}: {error}", True
    return True, (
        f"CuPy {cupy.__version__}, CUDA runtime {_cuda_version(runtime_version)}, "
        f"driver CUDA {_cuda_version(driver_version)}, {count} device(s)"
    ), False


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine, e.g. ``["numpy", "cupy"]``."""
    return ["numpy", "cupy"] if cupy_status()[0] else ["numpy"]


def get_backend(name: str | Backend = "auto") -> Backend:
    """A backend by name: ``"auto"``, ``"numpy"`` (alias ``"cpu"``) or ``"cupy"`` (``"gpu"``, ``"cuda"``).

    ``"auto"`` picks CuPy when :func:`cupy_status` says a CUDA device is usable,
    and NumPy otherwise (logging why once). Asking for ``"cupy"`` where it
    cannot run raises :class:`~gpubp.errors.BackendUnavailableError` with the reason.
    """
    if isinstance(name, Backend):
        return name
    if not isinstance(name, str):
        raise GpubpTypeError(f"backend must be a name, one of {sorted(_NAMES)}, got {type(name).__name__} {name!r}")
    key = _NAMES.get(name.lower())
    if key is None:
        raise GpubpValueError(f"unknown backend {name!r}; expected one of {sorted(_NAMES)}")
    if key == "numpy":
        return _numpy_backend()
    usable, reason, broken = _probe_cupy()
    if key == "cupy":
        if not usable:
            raise BackendUnavailableError(f"backend {name!r} is not available: {reason}")
        return _cupy_backend()
    if usable:
        return _cupy_backend()
    _fall_back(reason, broken)
    return _numpy_backend()


@functools.lru_cache(maxsize=None)
def _numpy_backend() -> Backend:
    return NumpyBackend()


@functools.lru_cache(maxsize=None)
def _cupy_backend() -> Backend:
    return CupyBackend()


@functools.lru_cache(maxsize=None)
def _fall_back(reason: str, broken: bool) -> None:
    """Say once per process why "auto" runs on the CPU: a warning when a CUDA set-up is there but cannot
    be used, a log line (``gpubp -v``) when there is simply no CuPy, driver or device."""
    if broken:
        warnings.warn(f"gpubp: backend 'auto' uses NumPy on the CPU because the GPU cannot be used: {reason}",
                      GpubpWarning, stacklevel=4)
    else:
        logger.info("gpubp: backend 'auto' uses NumPy on the CPU: %s", reason)
