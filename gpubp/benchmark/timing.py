"""Timing for ``gpubp bench``: the clock, and the three things timed per configuration.

* :func:`gpubp_step`: the step ``fit`` runs per batch (:class:`gpubp.training.Step`: gradients,
  the divergence guard's flag, the update, and the guard's window check), the batch already in
  its workspace;
* :func:`gemm_step`: the same step's GEMMs alone, the floor;
* :func:`torch_step`: the same step in PyTorch eager, where installed.
"""

from __future__ import annotations

import contextlib
import os
import platform
import statistics
import time
from collections.abc import Iterator, Sequence
from typing import Any, Callable

import numpy as np

from ..backends import Backend
from ..backends.numpy_backend import cpu_name
from ..guard import Guard
from ..mlp import MLP
from ..optim import SGD
from ..training import Step
from .sweep import Config


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

    def medians(self, functions: dict[str, Callable[[], Any]], repeats: int,
                target_s: float = 0.05) -> dict[str, float]:
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


def gpubp_step(backend: Backend, config: Config, dtype: str, rng: np.random.Generator,
               precision: str = "highest") -> Callable[[], Any]:
    """The step ``fit`` runs per batch — :class:`gpubp.training.Step` and the guard's window check, as in
    the training loop — with the batch loaded into its workspace once."""
    net = MLP(list(config.sizes), activation="relu", output_activation="identity", loss="mse", backend=backend,
              dtype=dtype, seed=0, matmul_precision=precision)
    ws = net.load_batch(random_array(backend, (config.batch, config.sizes[0]), dtype, rng),
                        random_array(backend, (config.batch, config.sizes[-1]), dtype, rng))
    guard = Guard(backend, net.grads, "raise", None)
    return as_fit_runs(Step(net, SGD(1e-3), guard), ws, lambda batch: net.find_nonfinite(ws))


def as_fit_runs(step: Step, ws: Any, diagnose: Callable[..., str]) -> Callable[[], None]:
    """``step(ws)`` as the training loop runs it: the step, then its guard's host check once per window
    (``diagnose`` locates a NaN, should one appear)."""
    guard = step.guard
    count = 0

    def run() -> None:
        nonlocal count
        count += 1
        step(ws)
        if guard.record(count, 1, 0):
            guard.check(diagnose, 1e-3)

    return run


def random_array(backend: Any, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> Any:
    """Standard normal values drawn where the backend computes, in ``dtype`` (a GPU sweep's largest
    operands are gigabytes: drawing them on the host in float64 would take longer than timing them)."""
    seed = int(rng.integers(2**31))
    return backend.xp.random.default_rng(seed).standard_normal(shape, dtype=np.dtype(dtype))


def gemm_step(backend: Any, config: Config, dtype: str, rng: np.random.Generator,
              precision: str = "highest") -> Callable[[], None]:
    """The step's matrix products alone, on the same backend and precision, into preallocated outputs."""
    sizes, batch = config.sizes, config.batch
    weights = [random_array(backend, (i, o), dtype, rng) for i, o in zip(sizes[:-1], sizes[1:])]
    acts = [random_array(backend, (batch, w), dtype, rng) for w in sizes]
    deltas = [random_array(backend, (batch, w), dtype, rng) for w in sizes]
    grads = [backend.empty(w.shape, dtype) for w in weights]

    def step() -> None:
        for layer, w in enumerate(weights):
            backend.matmul(acts[layer], w, out=acts[layer + 1], precision=precision)
        for layer in range(len(weights), 0, -1):
            backend.matmul(acts[layer - 1].T, deltas[layer], out=grads[layer - 1], precision=precision)
            if layer > 1:
                backend.matmul(deltas[layer], weights[layer - 1].T, out=deltas[layer - 1], precision=precision)

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
    generator = torch.Generator(device=device).manual_seed(int(rng.integers(2**31)))
    X = torch.randn((config.batch, config.sizes[0]), generator=generator, dtype=torch_dtype, device=device)
    Y = torch.randn((config.batch, config.sizes[-1]), generator=generator, dtype=torch_dtype, device=device)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(X), Y).backward()
        optimizer.step()

    return step


def machine_info(backends: Sequence[Any]) -> dict[str, Any]:
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


@contextlib.contextmanager
def torch_precision(precision: str) -> Iterator[None]:
    """PyTorch's CUDA float32 matmuls in the same precision as gpubp's (``allow_tf32``), restored after."""
    try:
        import torch
    except ImportError:
        yield
        return
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = precision == "tf32"
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous


def gemm_rate(backend: Any, dtype: str, clock: Clock, precision: str = "highest") -> float:
    """Measured FLOP/s of one square GEMM (1024³ on the CPU, 4096³ on a GPU) on the backend."""
    n = 4096 if backend.is_gpu else 1024
    rng = np.random.default_rng(0)
    a, b = backend.asarray(rng.standard_normal((n, n)), dtype), backend.asarray(rng.standard_normal((n, n)), dtype)
    out = backend.empty((n, n), dtype)
    seconds = clock.medians({"gemm": lambda: backend.matmul(a, b, out=out, precision=precision)}, repeats=3,
                            target_s=0.1)["gemm"]
    return 2 * n**3 / seconds


