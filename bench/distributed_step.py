"""Data-parallel step time on this machine: 1 and 2 ranks (MPI), and the share spent in communication.

    python bench/distributed_step.py [--ranks 1,2] [--sizes 784,1024,1024,10] [--batch 512] [--steps 30]
                                     [--backend numpy|cupy] [--overlap] [--json PATH]

For each rank count it starts ``mpiexec -n R python bench/distributed_step.py --worker …``. Each rank
holds ``batch / R`` rows of every global batch of ``batch`` rows and runs ``training.ReducedStep`` —
the step ``fit(distributed=comm)`` runs: forward, backward, the gradient as a sum, one allreduce of the
flat gradient buffer and one of four numbers, the division, the update — in float32. On NumPy the
cores are divided between the ranks (``OPENBLAS_NUM_THREADS`` and ``GPUBP_NUM_THREADS`` = cores / R),
so every configuration uses the whole machine; on CuPy the ranks share the current GPU and talk over
MPI (through pinned host buffers unless the MPI is CUDA-aware), each timing waits for the device.
Timed: the median of ``--steps`` steps, and, separately in the same process, the two allreduces alone
(their share of the step). The one-rank row goes through the same code with the one-process
communicator (its allreduce is free). Rank counts above 1 need ``mpiexec`` (skipped, saying so, without).
``--overlap`` adds, for each rank count above 1, the step with each layer's allreduce started during the
backward pass (``init(overlap=True)``; its "allreduce" column is then the blocking allreduce's, for scale).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(sizes: list[int], batch: int, steps: int, backend: str, overlap: bool, out: Path) -> None:
    sys.path.insert(0, str(ROOT))
    import numpy as np

    import gpubp
    from gpubp import distributed, training
    from gpubp.guard import Guard

    comm = distributed.init("mpi", overlap) if distributed.launched_size() > 1 else distributed.Communicator()
    net = gpubp.MLP(sizes, activation="relu", loss="cross_entropy", backend=backend, dtype="float32", seed=0)
    comm.broadcast(net.params)
    local = (comm.rank + 1) * batch // comm.size - comm.rank * batch // comm.size
    rng = np.random.default_rng(comm.rank)
    ws = net.workspace(local)
    ws.load_targets(True, rng.integers(0, sizes[-1], local))
    net.backend.copy_into(ws.x, rng.standard_normal((local, sizes[0]), dtype=np.float32))
    step = training.ReducedStep(net, gpubp.optim.SGD(1e-3, momentum=0.9),
                                Guard(net.backend, net.grads, "raise", None), comm)

    def timed(function, repeats: int) -> float:
        times = []
        for _ in range(repeats):
            comm.barrier()
            started = time.perf_counter()
            function()
            net.backend.synchronize()
            times.append(time.perf_counter() - started)
        return statistics.median(comm.allgather(statistics.median(times)))  # the ranks' medians, their median

    for _ in range(3):
        step(ws)
    step_s = timed(lambda: step(ws), steps)
    reduce_s = timed(lambda: (comm.allreduce(net.grads), comm.allreduce(step.sums)), steps)
    if comm.rank == 0:
        row = {"ranks": comm.size, "kind": comm.kind, "overlap": comm.overlap, "backend": net.backend.name,
               "device": net.backend.device_name(), "sizes": sizes, "batch": batch, "rows_per_rank": local,
               "params": net.n_params, "gradient_bytes": int(net.grads.nbytes), "step_ms": step_s * 1e3,
               "allreduce_ms": reduce_s * 1e3, "samples_per_s": batch / step_s,
               "communication_share": reduce_s / step_s, "threads_per_rank": os.environ.get("GPUBP_NUM_THREADS")}
        out.write_text(json.dumps(row))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", default="1,2")
    parser.add_argument("--sizes", default="784,1024,1024,10")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--backend", default="numpy", choices=["numpy", "cupy"])
    parser.add_argument("--overlap", action="store_true", help="also time the overlapped step")
    parser.add_argument("--json", metavar="PATH")
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.worker:
        worker(sizes, args.batch, args.steps, args.backend, args.overlap, Path(args.worker))
        return 0
    mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
    cores = len(os.sched_getaffinity(0))
    print(f"# {time.strftime('%Y-%m-%d')}  {cores} cores; {sizes}, global batch {args.batch}, float32, NumPy, "
          f"SGD, {args.backend}; median of {args.steps} steps")
    print(f"{'ranks':>5} {'overlap':>7} {'rows/rank':>9} {'step ms':>8} {'allreduce ms':>12} {'comm share':>10} "
          f"{'samples/s':>10}")
    rows = []
    runs = [(int(r), False) for r in args.ranks.split(",")]
    runs += [(ranks, True) for ranks, _ in runs if ranks > 1 and args.overlap]
    for ranks, overlap in runs:
        threads = str(max(1, cores // ranks))
        env = {**os.environ, "OPENBLAS_NUM_THREADS": threads, "GPUBP_NUM_THREADS": threads,
               "OMP_NUM_THREADS": threads}
        out = Path(f"/tmp/gpubp_distributed_step_{os.getpid()}_{ranks}.json")
        command = [sys.executable, __file__, "--worker", str(out), "--sizes", args.sizes, "--batch", str(args.batch),
                   "--steps", str(args.steps), "--backend", args.backend] + (["--overlap"] if overlap else [])
        if ranks > 1:
            if mpiexec is None:
                print(f"{ranks:>5} ranks: skipped: no mpiexec here (pip install \".[mpi]\")", flush=True)
                continue
            command = [mpiexec, "-n", str(ranks), *command]
        subprocess.run(command, check=True, env=env, timeout=600)
        row = json.loads(out.read_text())
        out.unlink()
        rows.append(row)
        print(f"{ranks:>5} {'yes' if overlap else 'no':>7} {row['rows_per_rank']:>9} {row['step_ms']:8.2f} "
              f"{row['allreduce_ms']:12.3f} "
              f"{row['communication_share']:10.1%} {row['samples_per_s']:10.0f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "cores": cores, "rows": rows},
                                              indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
