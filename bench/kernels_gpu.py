"""Each fused CUDA kernel against the unfused CuPy expression it replaces and against a copy of its bytes.

    PYTHONPATH=. python bench/kernels_gpu.py [--sizes 1,16,64] [--dtype float32] [--json PATH]

For every operation the CuPy backend runs as one fused kernel, at each size
(millions of elements; 16 M float32 = 64 MB per array):

1. check: the fused kernel's output against the reference operation (the
   unfused CuPy ufunc sequence of ``gpubp.backends.base.Backend``) on fresh
   random data, with the outputs poisoned (NaN) beforehand so an unwritten
   element fails;
2. time, with CUDA events after a warm-up (``cupyx.profiler.benchmark``, median
   GPU time): the fused kernel, the unfused expression, and a device-to-device
   copy moving as many bytes as the kernel must (every input read once, every
   output written once);
3. report: fused/unfused speedup, the kernel's achieved bandwidth, and that
   bandwidth as a percentage of the copy's (the target is ≥ 80 % at ≥ 64 MB).

Needs CuPy and a CUDA device. Prints a table; ``--json`` writes every row.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
from pathlib import Path
from typing import Any, Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import gpubp  # noqa: E402
from gpubp.activations import ACTIVATIONS  # noqa: E402
from gpubp.backends.base import Backend  # noqa: E402
from gpubp.losses import LOSSES  # noqa: E402

COLS = 1024  # width of the (rows × cols) activations; 10 and 1000 for the softmax rows


def median_ms(function: Callable[[], Any], repeats: int) -> float:
    from cupyx.profiler import benchmark

    result = benchmark(function, n_repeat=repeats, n_warmup=10)
    return float(np.median(result.gpu_times[0])) * 1e3


def cases(cp: Any, fused: Any, ref: Backend, n: int, dtype: Any) -> list[tuple[str, int, Callable, Callable, Callable]]:
    """(name, bytes moved, setup → state, fused(state), reference(state), output(state)).

    ``fused`` is the backend under test (the CuPy backend, or on the CPU the NumPy backend, whose
    operations are the kernels' twins); BP3's kernel-vs-GEMV cases exist only for fused backends.
    """
    rng = cp.random.default_rng(0)
    itemsize = np.dtype(dtype).itemsize

    def rand(*shape: int, scale: float = 1.0) -> Any:
        return (rng.standard_normal(shape, dtype=np.float64) * scale).astype(dtype)

    rows = n // COLS
    out: list = []

    def act_forward(name: str, keep_z: bool) -> None:
        act = ACTIVATIONS[name]
        b = rand(COLS)

        def setup() -> dict:
            z = rand(rows, COLS, scale=3)
            return {"z": z, "a": cp.full_like(z, np.nan) if keep_z else z, "tmp": cp.empty_like(z), "z0": z.copy()}

        def run(backend: Any) -> Callable[[dict], None]:
            def go(s: dict) -> None:
                if keep_z:
                    s["z"][...] = s["z0"]
                backend.bias_activation_forward(act, s["z"], b, s["a"], s["tmp"])
            return go

        moved = (3 if keep_z else 2) * rows * COLS * itemsize
        out.append((f"forward z+=b, a={name}(z)" + (" keep z" if keep_z else ""), moved, setup, run(fused), run(ref),
                    lambda s: s["a"]))

    def act_backward(name: str) -> None:
        act = ACTIVATIONS[name]

        def setup() -> dict:
            z = rand(rows, COLS, scale=3)
            a = cp.empty_like(z)
            act.forward(cp, z, a, cp.empty_like(z))
            return {"z": z if act.needs_z else None, "a": a, "delta": rand(rows, COLS), "tmp": cp.empty_like(z),
                    "tmp2": cp.empty_like(z)}

        def run(backend: Any) -> Callable[[dict], None]:
            return lambda s: backend.activation_backward(act, s["delta"], s["z"], s["a"], s["tmp"], s["tmp2"])

        out.append((f"backward δ⊙{name}'", 3 * rows * COLS * itemsize, setup, run(fused), run(ref),
                    lambda s: s["delta"]))

    act_forward("relu", False)
    act_forward("sigmoid", False)
    act_forward("gelu", True)
    act_backward("relu")
    act_backward("sigmoid")
    act_backward("gelu")

    # cross entropy at 10 and 1000 classes: its kernels run one thread per row, so wide rows are the test
    for loss_name, width in (("mse", COLS), ("cross_entropy", 10), ("cross_entropy", 1000)):
        loss = LOSSES[loss_name]
        r = n // width

        def setup(loss=loss, width=width, r=r) -> dict:
            z = rand(r, width, scale=3)
            y = cp.eye(width, dtype=dtype)[rng.integers(0, width, r)] if loss.output else rand(r, width)
            a = cp.empty_like(z)
            rows_buf = cp.empty((2, r, 1), dtype)
            if loss.output:
                ref.loss_output(loss, z, a, cp.empty_like(z), rows_buf)
            else:
                a[...] = z
            return {"z": z, "a": a, "y": y, "delta": cp.full_like(z, np.nan), "tmp": cp.empty_like(z), "rows": rows_buf,
                    "rows0": rows_buf.copy()}

        def run(backend: Any, loss=loss) -> Callable[[dict], None]:
            def go(s: dict) -> None:  # the row max and sums are inputs: every run starts from the same ones
                s["rows"][...] = s["rows0"]
                backend.loss_value_and_delta(loss, s["z"], s["a"], s["y"], s["delta"], s["tmp"], s["rows"])
            return go

        moved = (4 if loss.output else 4) * r * width * itemsize
        out.append((f"loss+BP1 {loss_name} ({width} wide)", moved, setup, run(fused), run(ref), lambda s: s["delta"]))

    def sgd_setup() -> dict:
        return {"p": rand(n), "g": rand(n), "v": rand(n), "steps": cp.zeros(1, np.int64)}

    hyper = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=1e-4)
    out.append(("SGD nesterov+wd", 5 * n * itemsize, sgd_setup,
                lambda s: fused.sgd_update(s["p"], s["g"], s["v"], s["steps"], None, **hyper),
                lambda s: ref.sgd_update(s["p"], s["g"], s["v"], s["steps"], None, **hyper), lambda s: s["p"]))

    def adam_setup() -> dict:
        return {"p": rand(n), "g": rand(n), "m": rand(n), "v": rand(n) ** 2, "steps": cp.full(1, 9, np.int64)}

    ahyper = dict(lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=1e-2, decoupled=True)
    out.append(("AdamW", 7 * n * itemsize, adam_setup,
                lambda s: fused.adam_update(s["p"], s["g"], s["m"], s["v"], s["steps"], None, **ahyper),
                lambda s: ref.adam_update(s["p"], s["g"], s["m"], s["v"], s["steps"], None, **ahyper),
                lambda s: s["p"]))

    for width in (64, COLS) if hasattr(fused, "bias_grad_method") else ():  # fused backends only
        r = n // width

        def colsum_setup(width=width, r=r) -> dict:
            return {"delta": rand(r, width), "ones": cp.ones(r, dtype), "out": cp.full(width, np.nan, dtype)}

        def colsum(method: str) -> Callable[[dict], None]:
            def go(s: dict) -> None:
                saved = fused.bias_grad_method
                fused.bias_grad_method = method
                fused.bias_grad(s["delta"], s["ones"], s["out"])
                fused.bias_grad_method = saved
            return go

        # "unfused" here is cuBLAS GEMV 1ᵀ·δ, the other way the backend can compute BP3
        out.append((f"BP3 column sums kernel vs GEMV ({r}×{width})", r * width * itemsize, colsum_setup,
                    colsum("kernel"), colsum("gemv"), lambda s: s["out"]))
    return out


def check(xp: Any, setup: Callable, run_fused: Callable, run_ref: Callable,
          output: Callable) -> tuple[dict, dict, float, bool]:
    """Run fused and reference once on copies of one fresh state: (states, ‖fused − ref‖/‖ref‖, all written)."""
    state_f = setup()
    state_r = {k: (v.copy() if isinstance(v, xp.ndarray) else v) for k, v in state_f.items()}
    run_fused(state_f)
    run_ref(state_r)
    expected = output(state_r).astype(np.float64)
    got = output(state_f).astype(np.float64)
    error = float(xp.linalg.norm(got - expected) / max(float(xp.linalg.norm(expected)), 1e-30))
    written = bool(xp.isfinite(got).all()) or not bool(xp.isfinite(expected).all())
    return state_f, state_r, error, written


def _measure_case(cp: Any, case: tuple, n: int, dtype: Any, repeats: int) -> dict:
    """Check one case, then time fused, unfused and a copy of the same bytes: one row of the table."""
    name, moved, setup, run_fused, run_ref, output = case
    state_f, state_r, error, written = check(cp, setup, run_fused, run_ref, output)
    fused_ms = median_ms(lambda: run_fused(state_f), repeats)
    ref_ms = median_ms(lambda: run_ref(state_r), repeats)
    src = cp.empty(moved // 2 // 4, np.float32)
    dst = cp.empty_like(src)
    copy_same_ms = median_ms(lambda: cp.copyto(dst, src), repeats)
    copy_gbs = 2 * src.nbytes / copy_same_ms / 1e6
    gbs = moved / fused_ms / 1e6
    return {"operation": name, "elements": n, "mb_per_array": n * dtype.itemsize / 2**20, "dtype": str(dtype),
            "bytes_moved": moved, "fused_ms": fused_ms, "unfused_ms": ref_ms, "speedup": ref_ms / fused_ms,
            "fused_gb_s": gbs, "copy_same_bytes_ms": copy_same_ms, "copy_gb_s": copy_gbs,
            "percent_of_copy": 100 * gbs / copy_gbs, "max_rel_err": error, "all_written": written}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1,16,64", help="millions of elements per array (default 1,16,64)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)

    import cupy as cp

    from gpubp.backends.cupy_backend import CupyBackend

    fused = CupyBackend()
    ref = Backend(cp)
    dtype = np.dtype(args.dtype)
    rows_out: list[dict] = []
    # the copy ceiling: one large device-to-device copy (bytes read + bytes written)
    big = cp.empty(256 * 2**20 // 4, np.float32)
    big_dst = cp.empty_like(big)
    copy_ms = median_ms(lambda: cp.copyto(big_dst, big), args.repeats)
    ceiling = 2 * big.nbytes / copy_ms / 1e6
    print(f"device: {fused.device_name()}   D2D copy ceiling: {ceiling:.0f} GB/s (read+write, 512 MB moved)")
    print(f"{'operation':44s} {'MB/array':>9s} {'fused ms':>9s} {'unfused':>9s} {'speedup':>8s} "
          f"{'GB/s':>7s} {'copy GB/s':>9s} {'% copy':>7s} {'max rel err':>11s}")
    for millions in (float(s) for s in args.sizes.split(",")):
        n = int(millions * 2**20) // COLS * COLS
        for case in cases(cp, fused, ref, n, dtype):
            row = _measure_case(cp, case, n, dtype, args.repeats)  # its arrays are freed when it returns
            rows_out.append(row)
            print(f"{row['operation']:44s} {row['mb_per_array']:9.0f} {row['fused_ms']:9.4f} {row['unfused_ms']:9.4f} "
                  f"{row['speedup']:8.2f} {row['fused_gb_s']:7.0f} {row['copy_gb_s']:9.0f} "
                  f"{row['percent_of_copy']:6.0f}% {row['max_rel_err']:11.1e}"
                  + ("" if row["all_written"] else "  UNWRITTEN OUTPUT"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "date": datetime.date.today().isoformat(), "device": fused.device_name(), "gpubp": gpubp.__version__,
            "cupy": cp.__version__, "copy_ceiling_gb_s": ceiling, "rows": rows_out}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
