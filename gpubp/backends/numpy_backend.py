"""The CPU backend: NumPy, in place, preallocated buffers, ``out=`` everywhere.

The operations are the reference ones from :class:`~gpubp.backends.base.Backend`.
What this class adds is host-specific: NumPy runs an elementwise operation
on one core, while BLAS runs the GEMMs on all of them, so on large arrays the
elementwise passes (activations, σ', the optimizer update) would become the
bottleneck. Elementwise work on large arrays is therefore split into
contiguous row blocks, one per core, run by a small persistent thread pool
(NumPy releases the GIL inside its loops). Small arrays stay on the calling
thread, where dispatching would cost more than it saves.
"""

from __future__ import annotations

import os
import platform
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from .base import Backend
from .blas import BLAS

PARALLEL_MIN_ELEMENTS = 1 << 19
"""Below this many elements × passes, an elementwise function runs on the calling thread: handing a block
to another thread costs about 0.1 ms. Measured break-even (2-core Xeon, 2026-11-29): ~300k elements for a
one-pass activation; for Adam's ~15 passes, ~150k float32 / ~65k float64 elements."""


PARALLEL_MIN_PRODUCTS = 1 << 23
"""Below this many multiply-adds, a batched GEMM runs as one stacked ``matmul`` (BLAS's own threads): handing
members to another thread costs about 0.1 ms. Measured on a 2-core Xeon (2026-11-29) for 32 members of
[64, 64, 64, 10]: at batch 256 (33M per 64-wide layer) the split step took 6.0 ms against 7.3 ms stacked;
at batch 32 (4.2M) splitting cost more than it saved (2.2 ms against 1.5 ms)."""


def _thread_count() -> int:
    configured = os.environ.get("GPUBP_NUM_THREADS")
    if configured:
        return max(1, int(configured))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def cpu_name() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


class NumpyBackend(Backend):
    """NumPy on the CPU: BLAS for the GEMMs, NumPy ufuncs split over the cores for the rest."""

    name = "numpy"
    is_gpu = False

    def __init__(self, threads: int | None = None) -> None:
        super().__init__(np)
        self.threads = threads if threads is not None else _thread_count()
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def device_name(self) -> str:
        return cpu_name()

    def asarray(self, value: Any, dtype: Any = None) -> np.ndarray:
        return np.array(value, dtype=dtype, copy=True, order="C")

    def matmul(self, a: Any, b: Any, out: Any, precision: str = "highest") -> None:
        """``out = a @ b``; a batched product (an ensemble's ``(K, …)`` members) is split over the pool's
        threads, ``K/threads`` members each, with BLAS single-threaded meanwhile (see :mod:`.blas`)."""
        members = out.shape[0] if out.ndim == 3 else 0
        if self.threads == 1 or members < 2 or (members % self.threads and members < 4 * self.threads) \
                or out.size * a.shape[-1] < PARALLEL_MIN_PRODUCTS or not BLAS.available:
            np.matmul(a, b, out=out)
            return
        bounds = [members * i // self.threads for i in range(self.threads + 1)]

        def part(lo: int, hi: int) -> None:
            np.matmul(a[lo:hi] if a.ndim == 3 else a, b[lo:hi] if b.ndim == 3 else b, out=out[lo:hi])

        with BLAS.single():
            futures = [self._thread_pool().submit(part, lo, hi) for lo, hi in zip(bounds[1:-1], bounds[2:])]
            part(bounds[0], bounds[1])
            for future in futures:
                future.result()

    def elementwise(self, function: Callable[..., None], arrays: list[Any], passes: int = 1) -> None:
        """``function(*arrays)``, over row blocks of ``arrays`` in parallel when they are large.

        Only for elementwise functions (row blocks are independent); ``None``
        entries in ``arrays`` are passed through unchanged. The pool is shared
        by every caller of this backend (each waits only for its own blocks).
        """
        reference = next(a for a in arrays if a is not None)
        if self.threads == 1 or reference.size * passes < PARALLEL_MIN_ELEMENTS:
            function(*arrays)
            return
        rows = reference.shape[0]
        bounds = [rows * i // self.threads for i in range(self.threads + 1)]
        blocks = [[a if a is None else a[lo:hi] for a in arrays] for lo, hi in zip(bounds[:-1], bounds[1:])]
        futures = [self._thread_pool().submit(function, *block) for block in blocks[1:]]
        function(*blocks[0])
        for future in futures:
            future.result()

    def _thread_pool(self) -> ThreadPoolExecutor:
        if self._pool is None:
            with self._pool_lock:
                if self._pool is None:
                    self._pool = ThreadPoolExecutor(self.threads - 1, thread_name_prefix="gpubp")
        return self._pool
