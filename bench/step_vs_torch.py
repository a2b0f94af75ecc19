"""One CPU training step of gpubp against PyTorch eager and against the step's GEMMs alone.

    python bench/step_vs_torch.py [--repeats 15] [--json PATH]

Each config is a float32 MLP with sigmoid hidden and output layers, MSE loss
and plain SGD. Three things are timed in the same process, interleaved round
by round so that drift on a shared machine hits all three alike:

* ``gpubp``: ``net.train_step(X, Y, optimizer)`` on the NumPy backend;
* ``torch``: the same step in PyTorch eager on the CPU (``zero_grad``,
  forward, ``MSELoss``, ``backward``, ``SGD.step``), when torch is installed;
* ``gemm``: the step's matrix products alone with ``numpy.matmul(out=)``: the
  forward ``A·W`` of every layer, ``Aᵀ·δ`` of every layer and ``δ·Wᵀ`` of
  every layer but the first — the floor an explicit NumPy step cannot beat.

The table gives the median time of each and the ratios gpubp/torch and
gpubp/gemm. Timings are medians over ``--repeats`` rounds of several steps.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# Before NumPy loads OpenBLAS: without a short spin, OpenBLAS's idle threads keep
# the cores busy between GEMMs and slow down whatever runs next, PyTorch included.
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

import gpubp  # noqa: E402

CONFIGS = [
    ([64, 64, 64, 64, 64, 16], 4096),
    ([784, 128, 10], 128),
    ([784, 1024, 1024, 10], 256),
    ([2048] * 5, 512),
]
WIDE = {2, 3}  # the configs whose GEMMs dominate: the gpubp/gemm target applies to these


def _gpubp_step(sizes: list[int], batch: int, rng: np.random.Generator) -> Callable[[], None]:
    net = gpubp.MLP(sizes, activation="sigmoid", output_activation="sigmoid", loss="mse",
                    backend="numpy", dtype="float32", seed=0)
    optimizer = gpubp.optim.SGD(lr=0.01)
    X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    Y = rng.uniform(0, 1, (batch, sizes[-1])).astype(np.float32)
    return lambda: net.train_step(X, Y, optimizer)


def _gemm_step(sizes: list[int], batch: int, rng: np.random.Generator) -> Callable[[], None]:
    weights = [rng.standard_normal((i, o), dtype=np.float32) for i, o in zip(sizes[:-1], sizes[1:])]
    acts = [rng.standard_normal((batch, w), dtype=np.float32) for w in sizes]
    deltas = [rng.standard_normal((batch, w), dtype=np.float32) for w in sizes]
    grads = [np.empty_like(w) for w in weights]

    def step() -> None:
        for layer, w in enumerate(weights):
            np.matmul(acts[layer], w, out=acts[layer + 1])
        for layer in range(len(weights), 0, -1):
            np.matmul(acts[layer - 1].T, deltas[layer], out=grads[layer - 1])
            if layer > 1:
                np.matmul(deltas[layer], weights[layer - 1].T, out=deltas[layer - 1])

    return step


def _torch_step(sizes: list[int], batch: int, rng: np.random.Generator) -> Callable[[], None] | None:
    try:
        import torch
    except ImportError:
        return None
    torch.manual_seed(0)
    layers: list[Any] = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out), torch.nn.Sigmoid()]
    model = torch.nn.Sequential(*layers)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    loss_fn = torch.nn.MSELoss()
    X = torch.from_numpy(rng.standard_normal((batch, sizes[0]), dtype=np.float32))
    Y = torch.from_numpy(rng.uniform(0, 1, (batch, sizes[-1])).astype(np.float32))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(X), Y)
        loss.backward()
        optimizer.step()

    return step


def _time(step: Callable[[], None], inner: int) -> float:
    started = time.perf_counter()
    for _ in range(inner):
        step()
    return (time.perf_counter() - started) / inner


def measure(sizes: list[int], batch: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    candidates = {"gpubp": _gpubp_step(sizes, batch, rng), "gemm": _gemm_step(sizes, batch, rng),
                  "torch": _torch_step(sizes, batch, rng)}
    steps = {name: step for name, step in candidates.items() if step is not None}
    for step in steps.values():  # warm-up: workspaces, BLAS thread pools, torch's allocator
        for _ in range(3):
            step()
    once = min(_time(step, 1) for step in steps.values())
    inner = max(1, min(50, int(0.05 / max(once, 1e-6))))
    samples: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(repeats):
        for name, step in steps.items():
            samples[name].append(_time(step, inner))
    row: dict[str, Any] = {"sizes": sizes, "batch": batch}
    for name, values in samples.items():
        row[f"{name}_ms"] = statistics.median(values) * 1e3
    row["gpubp_over_gemm"] = row["gpubp_ms"] / row["gemm_ms"]
    if "torch_ms" in row:
        row["gpubp_over_torch"] = row["gpubp_ms"] / row["torch_ms"]
    return row


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            names = [line.split(":", 1)[1].strip() for line in handle if line.startswith("model name")]
        if names:
            info["cpu"] = names[0]
    except OSError:
        pass
    try:
        import torch

        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        info["torch"] = None
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", metavar="PATH", help="also write the rows and machine info as JSON")
    args = parser.parse_args()
    info = machine()
    print(f"# {time.strftime('%Y-%m-%d')}  {info['cpu']}, {info['cores']} cores; numpy {info['numpy']}, "
          f"torch {info['torch']}; float32, sigmoid, mse, SGD")
    header = f"{'sizes':<26} {'batch':>6} {'gpubp ms':>9} {'torch ms':>9} {'gemm ms':>9} {'/torch':>7} {'/gemm':>7}"
    print(header)
    print("-" * len(header))
    rows = []
    for index, (sizes, batch) in enumerate(CONFIGS):
        row = measure(sizes, batch, args.repeats)
        row["wide"] = index in WIDE
        rows.append(row)
        torch_ms = f"{row['torch_ms']:9.3f}" if "torch_ms" in row else f"{'-':>9}"
        over_torch = f"{row['gpubp_over_torch']:7.2f}" if "torch_ms" in row else f"{'-':>7}"
        print(f"{str(sizes):<26} {batch:>6} {row['gpubp_ms']:9.3f} {torch_ms} {row['gemm_ms']:9.3f} "
              f"{over_torch} {row['gpubp_over_gemm']:7.2f}", flush=True)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump({"machine": info, "date": time.strftime("%Y-%m-%d"), "rows": rows}, handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
