"""The GPU kernel benchmark's cases and checks, run on the host build of the kernels (small sizes)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from gpubp.backends.base import Backend

ROOT = Path(__file__).resolve().parents[1]


def _load_bench():
    spec = importlib.util.spec_from_file_location("kernels_gpu", ROOT / "bench" / "kernels_gpu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_every_benchmark_case_checks_out_on_the_host(host_kernels, dtype):
    import kernel_host

    bench = _load_bench()
    fused = kernel_host.HostFusedBackend(host_kernels, max_blocks=64)
    cases = bench.cases(np, fused, Backend(np), 4 * bench.COLS * 10, np.dtype(dtype))
    assert len(cases) >= 12
    for name, moved, setup, run_fused, run_ref, output in cases:
        assert moved > 0
        _, _, error, written = bench.check(np, setup, run_fused, run_ref, output)
        assert written, name
        assert error < (1e-5 if dtype == "float32" else 1e-12), (name, error)


def test_the_check_catches_a_wrong_kernel(host_kernels):
    bench = _load_bench()
    import kernel_host

    fused = kernel_host.HostFusedBackend(host_kernels)
    name, _, setup, run_fused, run_ref, output = bench.cases(np, fused, Backend(np), bench.COLS * 8,
                                                             np.dtype("float64"))[0]
    _, _, error, _ = bench.check(np, setup, lambda s: None, run_ref, output)  # a "kernel" that does nothing
    assert error > 1e-3 or np.isnan(error)
