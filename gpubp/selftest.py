"""``gpubp selftest``: prove that a backend computes what the NumPy reference computes, on this machine.

Each check runs real work on the backend and compares it with
:class:`~gpubp.backends.base.Backend` over NumPy (the executable spec):

* the backend and why it was chosen;
* every CUDA kernel compiled and loaded (backends with kernels);
* every fused operation — σ and σ' of each activation, each loss with its
  output error, the bias gradient, SGD and Adam, the non-finite flag — on
  odd-sized float32 and float64 data on the device, against the reference,
  within stated tolerances;
* 50 training steps of a small float64 network against the NumPy reference;
* no host synchronisation inside a step (where CuPy can tell);
* memory flat across steps (a one-output network included);
* the bias gradient bit-for-bit deterministic;
* a short timing: the GEMM rate and one configuration's step time.

:func:`run` returns :class:`Check` records; :func:`table` formats them. A check
whose result is ``None`` does not apply to the backend (it is not a failure).
"""

from __future__ import annotations

import time
import tracemalloc
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from .activations import ACTIVATIONS
from .backends import Backend, FusedBackend, HostArray, cupy_status
from .backends._kernels import KERNELS
from .benchmark import Clock, Config, gemm_rate, gpubp_step
from .guard import Guard
from .losses import LOSSES
from .mlp import MLP
from .optim import SGD, Adam
from .training import Step

TOLERANCE = {np.dtype(np.float32): 5e-5, np.dtype(np.float64): 1e-11}
"""Largest |fused − reference| / (1 + |reference|) accepted per element, by dtype."""
SHAPE = (257, 33)
"""Odd sizes: partial blocks in every grid-stride loop."""
PACKAGE = str(Path(__file__).resolve().parent)


@dataclass
class Check:
    name: str
    passed: bool | None
    """True, False, or None where the check does not apply to this backend."""
    detail: str
    seconds: float = 0.0


class _Reference(Backend):
    """The executable spec: every operation as written in :mod:`gpubp.backends.base`, over NumPy."""

    name = "reference"

    def __init__(self) -> None:
        super().__init__(np)

    def device_name(self) -> str:
        return "NumPy reference"


def _timed(name: str, function: Callable[[], tuple[bool | None, str]]) -> Check:
    started = time.perf_counter()
    try:
        passed, detail = function()
    except Exception as error:  # a check that crashes has failed, and says how
        passed, detail = False, f"{type(error).__name__}: {error}"
    return Check(name, passed, detail, time.perf_counter() - started)


def run(backend: Backend, quick: bool = False) -> list[Check]:
    """Every check on ``backend``; ``quick`` uses a smaller timing configuration."""
    with backend.activate():
        return [
            _timed("backend", lambda: (True, f"{backend.name} on {backend.device_name()}; CuPy: {cupy_status()[1]}")),
            _timed("kernels compile and load", lambda: _kernels_load(backend)),
            _timed("fused operations = reference", lambda: _operations(backend)),
            _timed("50 float64 training steps = reference", lambda: _training(backend)),
            _timed("no host synchronisation in a step", lambda: _no_sync(backend)),
            _timed("memory flat across steps", lambda: _memory_flat(backend)),
            _timed("bias gradient deterministic", lambda: _deterministic(backend)),
            _timed("TF32 matmuls take effect", lambda: _tf32(backend)),
            _timed("timing", lambda: _timing(backend, quick)),
        ]


def _kernels_load(backend: Backend) -> tuple[bool | None, str]:
    if not isinstance(backend, FusedBackend):
        return None, "this backend runs no CUDA kernels"
    names = [(filename, name) for filename, names in KERNELS.items() for name in names]
    for filename, name in names:
        backend.ops.provider.get(filename, name, backend.ops.device)
    return True, f"{len(names)} instantiations from {len(KERNELS)} sources"


def _error(actual: HostArray, expected: HostArray) -> float:
    """max |actual − expected| / (1 + |expected|), NaN-aware (a NaN where the reference has none is an error)."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    if actual.shape != expected.shape or not np.array_equal(np.isnan(actual), np.isnan(expected)):
        return float("inf")
    ok = ~np.isnan(expected)
    return float((np.abs(actual[ok] - expected[ok]) / (1 + np.abs(expected[ok]))).max(initial=0.0))


def _compare(backend: Backend, dtype: np.dtype, operation: Callable[[Backend, list[Any]], Any],
             inputs: list[HostArray], outputs: list[int]) -> float:
    """Run ``operation(backend, arrays)`` on device copies and on the reference; the worst error of the
    arrays at positions ``outputs`` (and of the returned value, when there is one)."""
    reference = _Reference()
    on_device = [backend.asarray(a, a.dtype) if a is not None else None for a in inputs]
    on_host = [np.array(a, copy=True) if a is not None else None for a in inputs]
    value = operation(backend, on_device)
    expected_value = operation(reference, on_host)
    worst = max(_error(backend.to_host(on_device[i]), on_host[i]) for i in outputs)
    if value is not None:
        worst = max(worst, _error(backend.to_host(backend.asarray(value)), np.asarray(expected_value)))
    return worst


def _operation_cases(dtype: np.dtype, rng: np.random.Generator) -> list[tuple[str, Any, list[Any], list[int]]]:
    """(name, operation, inputs, which inputs are outputs) for every fused operation."""
    rows, cols = SHAPE

    def rand(*shape: int, scale: float = 2.0) -> HostArray:
        return (rng.standard_normal(shape) * scale).astype(dtype)

    cases: list[tuple[str, Any, list[Any], list[int]]] = []
    for name, act in ACTIVATIONS.items():
        cases.append((f"{name} forward", lambda be, a, act=act: be.bias_activation_forward(act, a[0], a[1], a[2], a[3]),
                      [rand(rows, cols), rand(cols), np.empty((rows, cols), dtype), np.empty((rows, cols), dtype)],
                      [2]))
        z = rand(rows, cols)
        out = np.empty_like(z)
        _Reference().activation_forward(act, z.copy(), out, np.empty_like(z))
        cases.append((f"{name} backward", lambda be, a, act=act: be.activation_backward(act, a[0], a[1], a[2], a[3],
                                                                                         a[4]),
                      [rand(rows, cols), z, out, np.empty_like(z), np.empty_like(z)], [0]))
    for name, loss in LOSSES.items():
        y = (np.eye(cols, dtype=dtype)[rng.integers(0, cols, rows)] if name == "cross_entropy" else
             rng.uniform(0, 1, (rows, cols)).astype(dtype) if name == "bce" else rand(rows, cols))

        def loss_case(be: Backend, a: list[Any], loss: Any = loss) -> Any:
            if loss.output is not None:
                be.bias_loss_output(loss, a[0], a[1], a[2], a[4], a[5])
            return be.loss_value_and_delta(loss, a[0], a[2], a[3], a[6], a[4], a[5])

        cases.append((f"{name} loss and BP1", loss_case,
                      [rand(rows, cols), rand(cols), rand(rows, cols), y, np.empty((rows, cols), dtype),
                       np.empty((2, rows, 1), dtype), np.empty((rows, cols), dtype)], [2, 6]))
    cases += _update_cases(dtype, rand)
    return cases


def _update_cases(dtype: np.dtype, rand: Callable[..., HostArray]) -> list[tuple[str, Any, list[Any], list[int]]]:
    n = SHAPE[0] * SHAPE[1]
    steps = np.array([4], np.int64)
    sgd = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3}
    adam = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 1e-2, "decoupled": True}
    return [
        ("bias gradient (BP3)", lambda be, a: be.bias_grad(a[0], a[1], a[2]),
         [rand(*SHAPE), np.ones(SHAPE[0], dtype), np.empty(SHAPE[1], dtype)], [2]),
        ("SGD update", lambda be, a: be.sgd_update(a[0], a[1], a[2], a[3], None, **sgd),
         [rand(n), rand(n), rand(n), steps.copy()], [0, 2, 3]),
        ("Adam update", lambda be, a: be.adam_update(a[0], a[1], a[2], a[3] ** 2, a[4], None, **adam),
         [rand(n), rand(n), rand(n), rand(n), steps.copy()], [0, 2, 4]),
        ("non-finite flag", lambda be, a: be.nonfinite_flag(a[0], a[1], a[2]),
         [np.where(np.arange(n) == n - 7, np.inf, rand(n)).astype(dtype), np.array(1.0, dtype),
          np.zeros(1, np.int32)], [2]),
    ]


def _operations(backend: Backend) -> tuple[bool | None, str]:
    rng = np.random.default_rng(0)
    results = []
    with np.errstate(over="ignore", invalid="ignore"):
        for dtype in (np.dtype(np.float32), np.dtype(np.float64)):
            for name, operation, inputs, outputs in _operation_cases(dtype, rng):
                error = _compare(backend, dtype, operation, inputs, outputs)
                results.append((error / TOLERANCE[dtype], f"{name} ({dtype.name})", error))
    ratio, worst, error = max(results)
    failed = [name for r, name, _ in results if not r <= 1]
    detail = (f"{len(results)} operations × shapes {SHAPE}; worst {worst}: {error:.2g} "
              f"(tolerance {TOLERANCE[np.dtype(worst.split('(')[-1][:-1])]:.0e})")
    return not failed, detail + (f"; FAILED: {', '.join(failed)}" if failed else "")


def _small_run(backend: Backend, steps: int) -> MLP:
    rng = np.random.default_rng(1)
    X, labels = rng.standard_normal((96, 16)), rng.integers(0, 4, 96)
    net = MLP([16, 32, 32, 4], activation=["gelu", "tanh"], loss="cross_entropy", backend=backend,
              dtype="float64", seed=0)
    optimizer = Adam(1e-2)
    for step in range(steps):
        rows = slice(32 * (step % 3), 32 * (step % 3) + 32)
        net.train_step(X[rows], labels[rows], optimizer)
    return net


def _training(backend: Backend) -> tuple[bool | None, str]:
    actual, expected = _small_run(backend, 50), _small_run(_Reference(), 50)
    error = max(_error(a, e) for a, e in zip(actual.get_weights(), expected.get_weights()))
    return error <= 1e-9, f"largest relative difference of the weights {error:.2g} (tolerance 1e-9)"


def _no_sync(backend: Backend) -> tuple[bool | None, str]:
    if not backend.is_gpu:
        return None, "a CPU backend is synchronous"
    import cupyx

    if not hasattr(cupyx, "allow_synchronize"):
        return None, "this CuPy has no cupyx.allow_synchronize to check with"
    net, ws, step = _device_step(backend, outputs=10)
    with cupyx.allow_synchronize(False):
        for _ in range(3):
            step(ws)
    backend.synchronize()
    return True, "3 steps under cupyx.allow_synchronize(False) (catches ndarray.get and device synchronisation)"


def _device_step(backend: Backend, outputs: int) -> tuple[MLP, Any, Step]:
    rng = np.random.default_rng(0)
    net = MLP([64, 128, outputs], activation="relu", loss="mse", backend=backend, seed=0)
    ws = net.load_batch(rng.standard_normal((256, 64)), rng.standard_normal((256, outputs)))
    guard = Guard(backend, net.grads, "raise", None)
    return net, ws, Step(net, SGD(1e-3, momentum=0.9), guard)


def _memory_flat(backend: Backend) -> tuple[bool | None, str]:
    details = []
    for outputs in (10, 1):  # one output: BP3 over a single column
        net, ws, step = _device_step(backend, outputs)
        for _ in range(3):
            step(ws)
        if backend.is_gpu:
            import cupy

            pool = cupy.get_default_memory_pool()
            backend.synchronize()
            before = pool.used_bytes()
            for _ in range(5):
                step(ws)
            backend.synchronize()
            grown = pool.used_bytes() - before
        else:  # what gpubp's own code still holds (not a test harness's records, say)
            tracemalloc.start()
            for _ in range(5):
                step(ws)
            held = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(True, f"{PACKAGE}*")])
            tracemalloc.stop()
            grown = sum(stat.size for stat in held.statistics("filename"))
        details.append((outputs, grown))
    passed = all(grown <= 4096 for _, grown in details)
    return passed, "; ".join(f"{outputs} output(s): memory grew by {grown} bytes over 5 steps" for outputs, grown
                             in details) + " (limit 4096: a few 0-d results, nothing the size of a batch)"


def _deterministic(backend: Backend) -> tuple[bool | None, str]:
    delta = backend.asarray(np.random.default_rng(0).standard_normal((65537, 64)), np.float32)
    ones = backend.asarray(np.ones(65537), np.float32)
    results = []
    for _ in range(3):
        out = backend.empty(64, np.float32)
        backend.bias_grad(delta, ones, out)
        results.append(backend.to_host(out))
    same = all(np.array_equal(results[0], r) for r in results[1:])
    how = getattr(backend, "bias_grad_method", "gemv")
    return same, f"3 runs of BP3 over 65537 × 64 ({how}) {'bit-identical' if same else 'DIFFER'}"


def _tf32(backend: Backend) -> tuple[bool | None, str]:
    """On a GPU, ``precision="tf32"`` must change float32 GEMM results a little (inputs rounded to a 10-bit
    mantissa) and not a lot; and leave the exact GEMM exact afterwards."""
    if not backend.is_gpu:
        return None, "TF32 is a GPU feature; on the CPU matmul_precision='tf32' changes nothing"
    if not getattr(backend, "tf32_capable", True):
        return None, "this GPU has no TF32 tensor cores (compute capability < 8.0): tf32 computes exact float32"
    rng = np.random.default_rng(0)
    a, b = (backend.asarray(rng.standard_normal((512, 512)), np.float32) for _ in range(2))
    exact, tf32, again = (backend.empty((512, 512), np.float32) for _ in range(3))
    backend.matmul(a, b, out=exact)
    backend.matmul(a, b, out=tf32, precision="tf32")
    backend.matmul(a, b, out=again)
    reference = backend.to_host(a).astype(np.float64) @ backend.to_host(b).astype(np.float64)
    scale = float(np.abs(reference).max())
    exact_error = float(np.abs(backend.to_host(exact) - reference).max()) / scale
    tf32_error = float(np.abs(backend.to_host(tf32) - reference).max()) / scale
    restored = bool(np.array_equal(backend.to_host(again), backend.to_host(exact)))
    passed = tf32_error > 4 * exact_error and tf32_error < 1e-2 and restored
    return passed, (f"largest error / largest value: exact {exact_error:.2g}, tf32 {tf32_error:.2g} (expected "
                    f"~1e-3); exact mode restored after: {restored}")


def _timing(backend: Backend, quick: bool) -> tuple[bool | None, str]:
    rate = gemm_rate(backend, "float32", Clock(backend.is_gpu))
    config = Config((256,) * 4, 256) if quick else Config((1024,) * 4, 1024 if not backend.is_gpu else 8192)
    step = gpubp_step(backend, config, "float32", np.random.default_rng(0))
    seconds = Clock(backend.is_gpu).medians({"step": step}, repeats=3)["step"]
    return True, (f"GEMM {rate / 1e12:.3g} TFLOP/s (float32); step [{config.sizes[0]}]×{len(config.sizes)} batch "
                  f"{config.batch}: {seconds * 1e3:.3g} ms = {config.flops / seconds / 1e12:.3g} TFLOP/s")


def table(checks: list[Check]) -> str:
    """The checks as a text table, with a last line saying whether all passed."""
    marks = {True: "pass", False: "FAIL", None: "n/a"}
    lines = [f"{'check':<40} {'result':<6} {'s':>6}  detail"]
    lines += [f"{c.name:<40} {marks[c.passed]:<6} {c.seconds:6.2f}  {c.detail}" for c in checks]
    failed = [c.name for c in checks if c.passed is False]
    lines.append("FAILED: " + ", ".join(failed) if failed else "all checks passed")
    return "\n".join(lines)


def as_json(checks: list[Check]) -> list[dict[str, Any]]:
    return [asdict(check) for check in checks]
