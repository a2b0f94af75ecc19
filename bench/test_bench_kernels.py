"""Each fused operation, per backend: the CUDA kernel on CuPy, its NumPy twin on the CPU.

The cases (and the check that fused and reference agree) are those of ``bench/kernels_gpu.py``,
at 4 M elements per array (16 MB in float32).
"""

from __future__ import annotations

import kernels_gpu
import numpy as np
import pytest

from gpubp.backends.base import Backend

N = 4 * 2**20


class _AnyFused(Backend):
    bias_grad_method = "gemv"  # makes cases() list the fused-only ones too, for the names


NAMES = [case[0] for case in kernels_gpu.cases(np, _AnyFused(np), Backend(np), N, np.float32)]


@pytest.mark.parametrize("name", NAMES)
def test_fused_operation(benchmark, backend, name):
    xp = backend.xp
    cases = {case[0]: case for case in kernels_gpu.cases(xp, backend, Backend(xp), N, np.float32)}
    if name not in cases:
        pytest.skip(f"{name!r} compares two GPU methods; there is nothing to time on {backend.name}")
    name, moved, setup, run, reference, output = cases[name]
    state, _, error, written = kernels_gpu.check(xp, setup, run, reference, output)
    assert written and error < 1e-4, (name, error)
    benchmark.group = name
    benchmark.extra_info["bytes_moved"] = moved
    benchmark(lambda: (run(state), backend.synchronize()))
