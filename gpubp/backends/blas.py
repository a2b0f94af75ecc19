"""The BLAS library's own threads: found among the loaded libraries, set to one around a split GEMM.

The NumPy backend runs the batched GEMMs of an ensemble (``(K, N, m) @ (K, m, n)``) as
K/threads GEMMs per thread of its pool, each thread's BLAS single-threaded: measured on a
2-core Xeon (2026-11-29), a ``(32, 256, 64) @ (32, 64, 64)`` product took 1.24 ms as one
stacked ``matmul`` with OpenBLAS's two threads (which wake and sleep around each of the 32
small GEMMs) and 0.44 ms split over two threads; two threads each calling a two-threaded
OpenBLAS took 2.2 ms (oversubscribed). So the split needs OpenBLAS's thread count, which
this module reads and sets through the library's C API (``openblas_get_num_threads`` /
``openblas_set_num_threads``, or the ``scipy_openblas…64_`` names of NumPy's wheels).
Where no OpenBLAS is loaded (MKL, Accelerate, a BLAS without the call), :data:`BLAS` is
unavailable and the backend does not split.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
from collections.abc import Iterator
from typing import Any

_PREFIXES = ("scipy_openblas", "openblas")
_SUFFIXES = ("64_", "")


def _loaded_openblas() -> list[str]:
    """Paths of the loaded shared libraries whose name says OpenBLAS (Linux: /proc/self/maps)."""
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as maps:
            paths = {line.split()[-1] for line in maps if "openblas" in line.lower() and ".so" in line}
    except OSError:
        return []
    return sorted(p for p in paths if p.startswith("/"))


def _find_controls() -> tuple[Any, Any] | None:
    """(get, set) of the loaded OpenBLAS's thread count, or None."""
    for path in _loaded_openblas():
        try:
            library = ctypes.CDLL(path)
        except OSError:
            continue
        for prefix in _PREFIXES:
            for suffix in _SUFFIXES:
                get = getattr(library, f"{prefix}_get_num_threads{suffix}", None)
                put = getattr(library, f"{prefix}_set_num_threads{suffix}", None)
                if get is not None and put is not None:
                    get.restype, put.argtypes = ctypes.c_int, [ctypes.c_int]
                    return get, put
    return None


class BlasThreads:
    """OpenBLAS's thread count, lowered to one while any caller is inside :meth:`single` (nested and
    concurrent callers share one lowering; the count is put back when the last leaves)."""

    def __init__(self) -> None:
        self._controls: tuple[Any, Any] | None | bool = False  # False: not looked up yet
        self._lock = threading.Lock()
        self._inside = 0
        self._saved = 1

    def _lookup(self) -> tuple[Any, Any] | None:
        if self._controls is False:
            self._controls = _find_controls()
        return self._controls  # type: ignore[return-value]

    @property
    def available(self) -> bool:
        return self._lookup() is not None

    @contextlib.contextmanager
    def single(self) -> Iterator[None]:
        controls = self._lookup()
        if controls is None:
            yield
            return
        get, put = controls
        with self._lock:
            if self._inside == 0:
                self._saved = int(get())
                put(1)
            self._inside += 1
        try:
            yield
        finally:
            with self._lock:
                self._inside -= 1
                if self._inside == 0:
                    put(self._saved)


BLAS = BlasThreads()
