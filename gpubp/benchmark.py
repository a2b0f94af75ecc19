"""``gpubp bench``: training-step speed per backend against the hardware's GEMM rate and PyTorch.

For every network in a sweep (square layers ``[width] * (depth + 1)``, ReLU,
identity output, MSE, plain SGD) and every batch size, on each backend:

* ``step_ms``: one training step as :meth:`gpubp.MLP.fit` runs it per batch
  (forward, loss, backward, update; the batch already in the workspace),
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
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

SCHEMA_VERSION = 1
ROW_FIELDS = ("backend", "device", "sizes", "batch", "dtype", "params", "flops", "step_ms", "gemm_ms",
              "step_over_gemm", "samples_per_s", "tflops")
OPTIONAL_ROW_FIELDS = ("torch_ms", "step_over_torch")

FULL_WIDTHS = (64, 256, 1024, 2048, 4096, 8192)
FULL_DEPTHS = (2, 4, 6)
FULL_BATCHES = (256, 1024, 4096, 16384, 65536)
QUICK_WIDTHS = (64, 256, 1024)
QUICK_DEPTHS = (2, 3)
QUICK_BATCHES = (256, 1024)


@dataclass(frozen=True)
class Config:
    """One network and batch size of the sweep."""

    sizes: tuple[int, ...]
    batch: int

    @property
    def params(self) -> int:
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops(self) -> int:
        return flops_per_step(self.sizes, self.batch)


def flops_per_step(sizes: Sequence[int], batch: int) -> int:
    """Floating-point operations of a training step's GEMMs: 6·batch·Σ fan_in·fan_out.

    Forward ``A·W`` is 2·batch·fan_in·fan_out per layer; backward ``Aᵀ·δ`` and
    ``δ·Wᵀ`` are as much again each (the first layer's ``δ·Wᵀ`` is not needed,
    which the convention ignores, as PyTorch's and most papers' counts do).
    """
    return 6 * int(batch) * sum(int(i) * int(o) for i, o in zip(sizes[:-1], sizes[1:]))


def sweep(quick: bool = False, widths: Sequence[int] | None = None, depths: Sequence[int] | None = None,
          batches: Sequence[int] | None = None) -> list[Config]:
    """The sweep's configurations, smallest step first: square networks ``[width] * (depth + 1)``."""
    widths = widths or (QUICK_WIDTHS if quick else FULL_WIDTHS)
    depths = depths or (QUICK_DEPTHS if quick else FULL_DEPTHS)
    batches = batches or (QUICK_BATCHES if quick else FULL_BATCHES)
    configs = {Config((w,) * (d + 1), b) for w in widths for d in depths for b in batches}
    return sorted(configs, key=lambda c: (c.flops, c.sizes, c.batch))


def workspace_bytes(config: Config, itemsize: int) -> int:
    """Device memory a step needs: parameters, gradients, the workspace (activations, deltas, scratch), data."""
    widths = config.sizes[1:]
    per_sample = config.sizes[0] + 2 * widths[-1] + 2 * sum(widths) + 2 * max(widths) + 3
    return itemsize * (2 * config.params + config.batch * per_sample)


# --- timing ----------------------------------------------------------------------------------------------
class Clock:
    """Times a callable: host clock on the CPU; CUDA events after a device synchronisation on the GPU."""

    def __init__(self, gpu: bool) -> None:
        self.gpu = gpu

    def seconds(self, function: Callable[[], Any], inner: int) -> float:
        """Mean seconds per call over ``inner`` back-to-back calls."""
        if not self.gpu:
            started = time.perf_counter()
            for _ in range(inner):
                function()
            return (time.perf_counter() - started) / inner
        import cupy

        cupy.cuda.Device().synchronize()
        start, end = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        for _ in range(inner):
            function()
        end.record()
        end.synchronize()
        return cupy.cuda.get_elapsed_time(start, end) / 1e3 / inner

    def medians(self, functions: dict[str, Callable[[], Any]], repeats: int, target_s: float = 0.05) -> dict[str, float]:
        """Median seconds per call of each function, interleaved round by round (drift hits all alike)."""
        for function in functions.values():  # warm-up: workspaces, kernels, BLAS threads, allocators
            for _ in range(2):
                function()
        once = min(self.seconds(f, 1) for f in functions.values())
        inner = max(1, min(50, int(target_s / max(once, 1e-7))))
        samples: dict[str, list[float]] = {name: [] for name in functions}
        for _ in range(repeats):
            for name, function in functions.items():
                samples[name].append(self.seconds(function, inner))
        return {name: statistics.median(values) for name, values in samples.items()}


def gpubp_step(backend: Any, config: Config, dtype: str, rng: np.random.Generator) -> Callable[[], Any]:
    """The step ``fit`` runs per batch, with the batch loaded into its workspace once."""
    from .mlp import MLP
    from .optim import SGD

    net = MLP(list(config.sizes), activation="relu", output_activation="identity", loss="mse", backend=backend,
              dtype=dtype, seed=0)
    X = rng.standard_normal((config.batch, config.sizes[0])).astype(dtype)
    Y = rng.standard_normal((config.batch, config.sizes[-1])).astype(dtype)
    ws = net._load_batch(X, Y)
    optimizer = SGD(1e-3)
    return lambda: net._step(ws, optimizer)


def gemm_step(backend: Any, config: Config, dtype: str, rng: np.random.Generator) -> Callable[[], None]:
    """The step's matrix products alone, on the same backend, into preallocated outputs."""
    sizes, batch = config.sizes, config.batch
    weights = [backend.asarray(rng.standard_normal((i, o)), dtype) for i, o in zip(sizes[:-1], sizes[1:])]
    acts = [backend.asarray(rng.standard_normal((batch, w)), dtype) for w in sizes]
    deltas = [backend.asarray(rng.standard_normal((batch, w)), dtype) for w in sizes]
    grads = [backend.empty(w.shape, dtype) for w in weights]

    def step() -> None:
        for layer, w in enumerate(weights):
            backend.matmul(acts[layer], w, out=acts[layer + 1])
        for layer in range(len(weights), 0, -1):
            backend.matmul(acts[layer - 1].T, deltas[layer], out=grads[layer - 1])
            if layer > 1:
                backend.matmul(deltas[layer], weights[layer - 1].T, out=deltas[layer - 1])

    return step


def torch_step(config: Config, dtype: str, gpu: bool, rng: np.random.Generator,
               activation: str = "relu", output_activation: str | None = None) -> Callable[[], None] | None:
    """The same step in PyTorch eager (Linear + ``activation``, MSELoss, SGD), or None without a usable torch.

    ``activation`` is ``"relu"`` or ``"sigmoid"``; ``output_activation`` (default none) likewise.
    """
    try:
        import torch
    except ImportError:
        return None
    if gpu and not torch.cuda.is_available():
        return None
    device = torch.device("cuda" if gpu else "cpu")
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    torch.manual_seed(0)
    layers: list[Any] = []
    pairs = list(zip(config.sizes[:-1], config.sizes[1:]))
    modules = {"relu": torch.nn.ReLU, "sigmoid": torch.nn.Sigmoid}
    for index, (fan_in, fan_out) in enumerate(pairs):
        layers.append(torch.nn.Linear(fan_in, fan_out))
        if index < len(pairs) - 1:
            layers.append(modules[activation]())
        elif output_activation is not None:
            layers.append(modules[output_activation]())
    model = torch.nn.Sequential(*layers).to(device=device, dtype=torch_dtype)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    loss_fn = torch.nn.MSELoss()
    X = torch.as_tensor(rng.standard_normal((config.batch, config.sizes[0])), dtype=torch_dtype, device=device)
    Y = torch.as_tensor(rng.standard_normal((config.batch, config.sizes[-1])), dtype=torch_dtype, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X), Y).backward()
        optimizer.step()

    return step


# --- machine and limits -----------------------------------------------------------------------------------
def machine_info(backends: Sequence[Any]) -> dict[str, Any]:
    from .backends.numpy_backend import cpu_name

    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__, "cpu": cpu_name(),
                            "cores": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    for backend in backends:
        if backend.is_gpu:
            import cupy

            info["cupy"] = cupy.__version__
            info["gpu"] = backend.device_name()
            info["gpu_memory_bytes"] = backend.memory_info()[1]
    return info


def available_bytes(backend: Any) -> int:
    """Memory a sweep may use: 80 % of the GPU's free memory, or half of the host's physical memory."""
    if backend.is_gpu:
        return int(0.8 * backend.memory_info()[0])
    try:
        return int(0.5 * os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):
        return 4 * 2**30


def release_memory(backend: Any) -> None:
    """Give cached device memory back between configurations (CuPy's pool, PyTorch's caching allocator)."""
    if not backend.is_gpu:
        return
    import gc

    import cupy

    gc.collect()
    cupy.get_default_memory_pool().free_all_blocks()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:
        pass


def gemm_rate(backend: Any, dtype: str, clock: Clock) -> float:
    """Measured FLOP/s of one square GEMM (1024³ on the CPU, 4096³ on a GPU) on the backend."""
    n = 4096 if backend.is_gpu else 1024
    rng = np.random.default_rng(0)
    a, b = backend.asarray(rng.standard_normal((n, n)), dtype), backend.asarray(rng.standard_normal((n, n)), dtype)
    out = backend.empty((n, n), dtype)
    seconds = clock.medians({"gemm": lambda: backend.matmul(a, b, out=out)}, repeats=3, target_s=0.1)["gemm"]
    return 2 * n**3 / seconds


# --- the run ----------------------------------------------------------------------------------------------
def measure(backend: Any, config: Config, dtype: str, repeats: int, with_torch: bool = True) -> dict[str, Any]:
    """One row of the report: the step, its GEMM floor and (where available) PyTorch, side by side."""
    clock = Clock(backend.is_gpu)
    rng = np.random.default_rng(0)
    functions: dict[str, Callable[[], Any]] = {"step": gpubp_step(backend, config, dtype, rng),
                                               "gemm": gemm_step(backend, config, dtype, rng)}
    if with_torch:
        torch_function = torch_step(config, dtype, backend.is_gpu, rng)
        if torch_function is not None:
            functions["torch"] = torch_function
    seconds = clock.medians(functions, repeats)
    return make_row(backend.name, backend.device_name(), config, dtype, seconds)


def make_row(backend: str, device: str, config: Config, dtype: str, seconds: dict[str, float]) -> dict[str, Any]:
    """A report row from measured seconds per step (``step``, ``gemm`` and optionally ``torch``)."""
    step = seconds["step"]
    row: dict[str, Any] = {
        "backend": backend, "device": device, "sizes": list(config.sizes), "batch": config.batch, "dtype": dtype,
        "params": config.params, "flops": config.flops, "step_ms": step * 1e3, "gemm_ms": seconds["gemm"] * 1e3,
        "step_over_gemm": step / seconds["gemm"], "samples_per_s": config.batch / step,
        "tflops": config.flops / step / 1e12,
    }
    if "torch" in seconds:
        row["torch_ms"] = seconds["torch"] * 1e3
        row["step_over_torch"] = step / seconds["torch"]
    return row


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every configuration both NumPy and CuPy ran: CPU time / GPU time."""
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((tuple(row["sizes"]), row["batch"]), {})[row["backend"]] = row
    out = []
    for (sizes, batch), pair in sorted(by_key.items(), key=lambda item: (item[0][0], item[0][1])):
        if "numpy" in pair and "cupy" in pair:
            out.append({"sizes": list(sizes), "batch": batch, "numpy_ms": pair["numpy"]["step_ms"],
                        "cupy_ms": pair["cupy"]["step_ms"],
                        "speedup": pair["numpy"]["step_ms"] / pair["cupy"]["step_ms"]})
    return out


def largest_within_budget(rows: list[dict[str, Any]], samples: int = 60000, seconds: float = 10.0) -> list[dict[str, Any]]:
    """Per backend, the largest network (by parameters) that trains ``samples`` in at most ``seconds``."""
    out = []
    for backend in sorted({row["backend"] for row in rows}):
        fitting = [row for row in rows if row["backend"] == backend and samples / row["samples_per_s"] <= seconds]
        if not fitting:
            out.append({"backend": backend, "sizes": None, "batch": None, "params": 0, "epoch_s": None})
            continue
        best = max(fitting, key=lambda row: (row["params"], row["samples_per_s"]))
        out.append({"backend": backend, "sizes": best["sizes"], "batch": best["batch"], "params": best["params"],
                    "epoch_s": samples / best["samples_per_s"]})
    return out


def run(backends: Sequence[Any], configs: Sequence[Config], dtype: str = "float32", repeats: int = 5,
        max_step_s: float = 2.0, with_torch: bool = True, budget: tuple[int, float] = (60000, 10.0),
        log: Callable[[str], None] = print, command: str = "gpubp bench", quick: bool = False) -> dict[str, Any]:
    """Measure every configuration on every backend; returns the report (see the module docstring)."""
    from . import __version__

    itemsize = np.dtype(dtype).itemsize
    rows: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for backend in backends:
        rate = gemm_rate(backend, dtype, Clock(backend.is_gpu))
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
                row = measure(backend, config, dtype, repeats, with_torch)
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
                           "budget_samples": budget[0], "budget_s": budget[1]},
              "rows": rows, "skipped": skipped, "speedups": speedups(rows),
              "largest_within_budget": largest_within_budget(rows, *budget)}
    validate_report(report)
    return report


# --- output -----------------------------------------------------------------------------------------------
def header() -> str:
    return (f"{'backend':<7} {'sizes':<20} {'batch':>6} {'step ms':>9} {'GEMMs ms':>9} {'step/GEMM':>9} "
            f"{'samples/s':>10} {'TFLOP/s':>8} {'torch ms':>9} {'step/torch':>10}")


def _sizes_text(sizes: Sequence[int]) -> str:
    sizes = list(sizes)
    return f"[{sizes[0]}]×{len(sizes)}" if len(set(sizes)) == 1 else str(sizes)


def format_row(row: dict[str, Any]) -> str:
    torch_ms = f"{row['torch_ms']:9.3f}" if "torch_ms" in row else f"{'-':>9}"
    over = f"{row['step_over_torch']:10.2f}" if "step_over_torch" in row else f"{'-':>10}"
    return (f"{row['backend']:<7} {_sizes_text(row['sizes']):<20} {row['batch']:>6} {row['step_ms']:9.3f} "
            f"{row['gemm_ms']:9.3f} {row['step_over_gemm']:9.2f} {row['samples_per_s']:10.4g} "
            f"{row['tflops']:8.3f} {torch_ms} {over}")


def summary(report: dict[str, Any]) -> str:
    """The speedup and budget tables, as text."""
    lines = []
    if report["speedups"]:
        lines.append("\nCPU vs GPU (same step): speedup = NumPy ms / CuPy ms")
        lines += [f"  {_sizes_text(s['sizes']):<20} batch {s['batch']:>6}: {s['numpy_ms']:10.3f} ms vs "
                  f"{s['cupy_ms']:8.3f} ms = {s['speedup']:7.1f}x" for s in report["speedups"]]
    settings = report["settings"]
    lines.append(f"\nLargest network measured that trains {settings['budget_samples']} samples in "
                 f"<= {settings['budget_s']:g} s:")
    for entry in report["largest_within_budget"]:
        if entry["sizes"] is None:
            lines.append(f"  {entry['backend']}: none of the measured configurations")
        else:
            lines.append(f"  {entry['backend']}: {_sizes_text(entry['sizes'])} ({entry['params']:,} parameters), "
                         f"batch {entry['batch']}, one epoch in {entry['epoch_s']:.2f} s")
    if report["skipped"]:
        lines.append(f"\n{len(report['skipped'])} configurations skipped (memory or time limits; see the JSON).")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """A markdown table of the rows (for the README), with the machine and command above it."""
    machine = report["machine"]
    where = f"{machine['cpu']}, {machine['cores']} cores" + (f"; {machine['gpu']}" if machine.get("gpu") else "")
    lines = [f"Measured {report['date']} on {where}; numpy {machine['numpy']}, torch {machine['torch']}"
             + (f", cupy {machine['cupy']}" if machine.get("cupy") else "") + f"; `{report['command']}`; "
             f"{report['settings']['dtype']}, median of {report['settings']['repeats']} rounds.", "",
             "| backend | sizes | batch | step ms | GEMMs ms | step / GEMMs | samples/s | TFLOP/s | torch ms | step / torch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        torch_ms = f"{row['torch_ms']:.3g}" if "torch_ms" in row else "–"
        over = f"{row['step_over_torch']:.2f}" if "step_over_torch" in row else "–"
        lines.append(f"| {row['backend']} | {_sizes_text(row['sizes'])} | {row['batch']} | {row['step_ms']:.3g} | "
                     f"{row['gemm_ms']:.3g} | {row['step_over_gemm']:.2f} | {row['samples_per_s']:.3g} | "
                     f"{row['tflops']:.3g} | {torch_ms} | {over} |")
    if report["speedups"]:
        lines += ["", "| sizes | batch | NumPy ms | CuPy ms | GPU speedup |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {_sizes_text(s['sizes'])} | {s['batch']} | {s['numpy_ms']:.3g} | {s['cupy_ms']:.3g} | "
                  f"{s['speedup']:.1f}× |" for s in report["speedups"]]
    settings = report["settings"]
    lines += ["", f"| backend | largest network measured for {settings['budget_samples']} samples in "
                  f"≤ {settings['budget_s']:g} s | parameters | batch | epoch s |", "| --- | --- | ---: | ---: | ---: |"]
    for entry in report["largest_within_budget"]:
        if entry["sizes"] is None:
            lines.append(f"| {entry['backend']} | none | – | – | – |")
        else:
            lines.append(f"| {entry['backend']} | {_sizes_text(entry['sizes'])} | {entry['params']:,} | "
                         f"{entry['batch']} | {entry['epoch_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: step / GEMM floor against width per backend, and the GPU speedup against width (when measured)."""
    from .errors import GpubpValueError
    from .plot import pyplot

    plt = pyplot()
    if not report["rows"]:
        raise GpubpValueError("the report has no measured rows to plot")
    path = Path(path)
    panels = 2 if report["speedups"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6 * panels, 4.2), squeeze=False)
    axis = axes[0][0]
    series = _series(report["rows"], "step_over_gemm")
    batches = sorted({key[2] for key in series})
    depths = sorted({key[1] for key in series})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(batches)))
    styles = ["-", "--", ":", "-."]
    markers = {"numpy": "o", "cupy": "s"}
    for (backend, depth, batch), points in series.items():
        axis.plot(*zip(*points), marker=markers.get(backend, "o"), markersize=4,
                  color=colours[batches.index(batch)], linestyle=styles[depths.index(depth) % len(styles)],
                  label=f"{backend}, {depth} layers, batch {batch}")
    axis.set(xscale="log", xlabel="width", ylabel="step time / GEMM time", title="Overhead over the GEMM floor")
    axis.axhline(1.0, color="grey", linestyle=":")
    axis.legend(fontsize=6, ncol=2)
    if panels == 2:
        axis = axes[0][1]
        pairs: dict[tuple, list] = {}
        for s in report["speedups"]:
            pairs.setdefault((len(s["sizes"]) - 1, s["batch"]), []).append((s["sizes"][0], s["speedup"]))
        for (depth, batch), points in sorted(pairs.items()):
            axis.plot(*zip(*sorted(points)), marker="o", label=f"{depth} layers, batch {batch}")
        axis.set(xscale="log", yscale="log", xlabel="width", ylabel="NumPy time / CuPy time",
                 title="GPU speedup of a training step")
        axis.legend(fontsize=7)
    figure.suptitle(f"gpubp bench, {report['date']}", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _series(rows: list[dict[str, Any]], key: str) -> dict[tuple, list]:
    series: dict[tuple, list] = {}
    for row in rows:
        series.setdefault((row["backend"], len(row["sizes"]) - 1, row["batch"]), []).append((row["sizes"][0], row[key]))
    return {k: sorted(v) for k, v in sorted(series.items())}


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that does not follow the schema."""
    for key in ("schema_version", "date", "command", "gpubp", "machine", "settings", "rows", "skipped",
                "speedups", "largest_within_budget"):
        if key not in report:
            raise ValueError(f"report lacks {key!r}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {report['schema_version']!r}, expected {SCHEMA_VERSION}")
    for index, row in enumerate(report["rows"]):
        missing = [field for field in ROW_FIELDS if field not in row]
        if missing:
            raise ValueError(f"rows[{index}] lacks {missing}")
        extra = set(row) - set(ROW_FIELDS) - set(OPTIONAL_ROW_FIELDS)
        if extra:
            raise ValueError(f"rows[{index}] has unknown fields {sorted(extra)}")
        if ("torch_ms" in row) != ("step_over_torch" in row):
            raise ValueError(f"rows[{index}]: torch_ms and step_over_torch go together")
        for field in ("step_ms", "gemm_ms", "samples_per_s", "tflops"):
            if not (isinstance(row[field], float) and row[field] > 0 and np.isfinite(row[field])):
                raise ValueError(f"rows[{index}].{field} must be a positive number, got {row[field]!r}")


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    validate_report(report)
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
