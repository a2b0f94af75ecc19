"""One CPU training step of gpubp through its public ``train_step`` against PyTorch eager and the GEMMs alone.

    python bench/step_vs_torch.py [--repeats 15] [--json PATH]

The fixed configurations of the engine issue (float32, sigmoid hidden and
output layers, MSE, plain SGD). ``gpubp`` is ``net.train_step(X, Y, opt)`` —
the public call, input checks and the copy into the workspace included —
unlike ``gpubp bench``, which times the step ``fit`` runs per batch. ``torch``
and ``gemm`` are :func:`gpubp.benchmark.torch_step` and
:func:`gpubp.benchmark.gemm_step`; the three are timed interleaved, round by
round (:class:`gpubp.benchmark.Clock`), and the table gives medians and the
ratios gpubp/torch and gpubp/gemm.
"""

from __future__ import annotations

import argparse
import json
import os
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
from gpubp.benchmark import Clock, Config, gemm_step, machine_info, torch_step  # noqa: E402

CONFIGS = [
    ([64, 64, 64, 64, 64, 16], 4096),
    ([784, 128, 10], 128),
    ([784, 1024, 1024, 10], 256),
    ([2048] * 5, 512),
]
WIDE = {2, 3}  # the configs whose GEMMs dominate: the gpubp/gemm target applies to these


def _public_step(sizes: list[int], batch: int, rng: np.random.Generator) -> Callable[[], Any]:
    net = gpubp.MLP(sizes, activation="sigmoid", output_activation="sigmoid", loss="mse",
                    backend="numpy", dtype="float32", seed=0)
    optimizer = gpubp.optim.SGD(lr=0.01)
    X = rng.standard_normal((batch, sizes[0]), dtype=np.float32)
    Y = rng.uniform(0, 1, (batch, sizes[-1])).astype(np.float32)
    return lambda: net.train_step(X, Y, optimizer)


def measure(sizes: list[int], batch: int, repeats: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    backend = gpubp.get_backend("numpy")
    config = Config(tuple(sizes), batch)
    steps = {"gpubp": _public_step(sizes, batch, rng), "gemm": gemm_step(backend, config, "float32", rng)}
    torch = torch_step(config, "float32", False, rng, activation="sigmoid", output_activation="sigmoid")
    if torch is not None:
        steps["torch"] = torch
    seconds = Clock(gpu=False).medians(steps, repeats)
    row: dict[str, Any] = {"sizes": sizes, "batch": batch, **{f"{k}_ms": v * 1e3 for k, v in seconds.items()}}
    row["gpubp_over_gemm"] = row["gpubp_ms"] / row["gemm_ms"]
    if "torch_ms" in row:
        row["gpubp_over_torch"] = row["gpubp_ms"] / row["torch_ms"]
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--json", metavar="PATH", help="also write the rows and machine info as JSON")
    args = parser.parse_args()
    info = machine_info([])
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
