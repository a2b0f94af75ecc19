"""``gpubp bench``: training-step speed per backend against the hardware's GEMM rate and PyTorch.

For every network in a sweep (square layers ``[width] * (depth + 1)``, ReLU,
identity output, MSE, plain SGD) and every batch size, on each backend:

* ``step_ms``: one training step as :meth:`gpubp.MLP.fit` runs it per batch
  (:class:`gpubp.training.Step`: forward, loss, backward, the divergence
  guard's flag, the update; and the guard's host check once per window: every
  step on the CPU, every 32 on a GPU), the batch already in the workspace,
  median over repeats after a warm-up; on the GPU timed with CUDA events
  after synchronising the device;
* ``gemm_ms``: the same step's matrix products alone on the same backend
  (forward ``A·W``, ``Aᵀ·δ`` and ``δ·Wᵀ``): the floor a step cannot beat;
* ``torch_ms``: the same step in PyTorch eager, same device and precision,
  where PyTorch is installed (and has CUDA, for the GPU);
* derived: ``samples_per_s``, ``tflops`` = 6·batch·Σ fan_in·fan_out / step,
  ``step_over_gemm``, ``step_over_torch``.

Configurations that would not fit in memory, or whose step would take longer
than ``max_step_s`` at the backend's measured GEMM rate, are listed as skipped
with the reason instead of run.

JSON report (``schema_version`` 1)::

    {"schema_version": 1, "date": "YYYY-MM-DD", "command": "...", "gpubp": "...",
     "machine": {"python", "numpy", "cpu", "cores", "torch", "cupy", "gpu", ...},
     "settings": {"quick", "dtype", "repeats", "max_step_s", "budget_samples", "budget_s"},
     "rows": [{"backend", "device", "sizes", "batch", "dtype", "params", "flops",
               "step_ms", "gemm_ms", "step_over_gemm", "samples_per_s", "tflops",
               "torch_ms"?, "step_over_torch"?}],
     "skipped": [{"backend", "sizes", "batch", "reason"}],
     "speedups": [{"sizes", "batch", "numpy_ms", "cupy_ms", "speedup"}],
     "largest_within_budget": [{"backend", "sizes", "batch", "params", "epoch_s"}]}

(``?``: only where measured.)

The code is split by job: :mod:`.sweep` (what is measured), :mod:`.timing`
(how), :mod:`.report` (what is written); :func:`run` ties them together.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any, Callable

import numpy as np

from .._version import __version__
from .report import (
    OPTIONAL_ROW_FIELDS,
    ROW_FIELDS,
    SCHEMA_VERSION,
    format_row,
    header,
    largest_within_budget,
    make_figure,
    make_row,
    markdown,
    plot,
    speedups,
    summary,
    validate_report,
    write_json,
)
from .sweep import Config, flops_per_step, sweep, workspace_bytes
from .timing import (
    Clock,
    available_bytes,
    gemm_rate,
    gemm_step,
    gpubp_step,
    machine_info,
    release_memory,
    torch_precision,
    torch_step,
)

__all__ = ["OPTIONAL_ROW_FIELDS", "ROW_FIELDS", "SCHEMA_VERSION", "Clock", "Config", "available_bytes",
           "flops_per_step", "format_row", "gemm_rate", "gemm_step", "gpubp_step", "header",
           "largest_within_budget", "machine_info", "make_figure", "make_row", "markdown", "measure", "plot",
           "release_memory", "run", "speedups", "summary", "sweep", "torch_precision", "torch_step", "validate_report",
           "workspace_bytes", "write_json"]


def measure(backend: Any, config: Config, dtype: str, repeats: int, with_torch: bool = True,
            precision: str = "highest") -> dict[str, Any]:
    """One row of the report: the step, its GEMM floor and (where available) PyTorch, side by side, all
    three with float32 GEMMs in ``precision``."""
    clock = Clock(backend.is_gpu)
    rng = np.random.default_rng(0)
    # the clock's events and synchronisation on the backend's device; PyTorch's TF32 setting as gpubp's
    with backend.activate(), torch_precision(precision):
        functions: dict[str, Callable[[], Any]] = {"step": gpubp_step(backend, config, dtype, rng, precision),
                                                   "gemm": gemm_step(backend, config, dtype, rng, precision)}
        if with_torch:
            torch_function = torch_step(config, dtype, backend.is_gpu, rng)
            if torch_function is not None:
                functions["torch"] = torch_function
        seconds = clock.medians(functions, repeats)
    return make_row(backend.name, backend.device_name(), config, dtype, seconds)


def run(backends: Sequence[Any], configs: Sequence[Config], dtype: str = "float32", repeats: int = 5,
        max_step_s: float = 2.0, with_torch: bool = True, budget: tuple[int, float] = (60000, 10.0),
        log: Callable[[str], None] = print, command: str = "gpubp bench", quick: bool = False,
        precision: str = "highest") -> dict[str, Any]:
    """Measure every configuration on every backend; returns the report (see the module docstring)."""
    itemsize = np.dtype(dtype).itemsize
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for backend in backends:
        rate = gemm_rate(backend, dtype, Clock(backend.is_gpu), precision)
        memory = available_bytes(backend)
        log(f"# {backend.name} on {backend.device_name()}: GEMM rate {rate / 1e12:.3g} TFLOP/s ({dtype}), "
            f"memory for the sweep {memory / 2**30:.1f} GiB")
        log(header())
        for config in configs:
            needed = workspace_bytes(config, itemsize)
            estimate = config.flops / rate
            reason = None
            if needed > memory:
                reason = f"needs ~{needed / 2**30:.1f} GiB, {memory / 2**30:.1f} GiB available"
            elif estimate > max_step_s:
                reason = f"estimated step {estimate:.1f} s > max_step_s {max_step_s} s"
            if reason:
                skipped.append({"backend": backend.name, "sizes": list(config.sizes), "batch": config.batch,
                                "reason": reason})
                continue
            try:
                row = measure(backend, config, dtype, repeats, with_torch, precision)
            except MemoryError as error:  # DeviceMemoryError, or torch's / NumPy's own
                skipped.append({"backend": backend.name, "sizes": list(config.sizes), "batch": config.batch,
                                "reason": f"out of memory: {str(error).splitlines()[0][:200]}"})
                continue
            finally:
                release_memory(backend)
            rows.append(row)
            log(format_row(row))
    report = {"schema_version": SCHEMA_VERSION, "date": datetime.date.today().isoformat(), "command": command,
              "gpubp": __version__, "machine": machine_info(backends),
              "settings": {"quick": quick, "dtype": dtype, "repeats": repeats, "max_step_s": max_step_s,
                           "budget_samples": budget[0], "budget_s": budget[1], "matmul_precision": precision},
              "rows": rows, "skipped": skipped, "speedups": speedups(rows),
              "largest_within_budget": largest_within_budget(rows, *budget)}
    validate_report(report)
    return report


