"""One rank of the distributed tests, started by tests/test_distributed.py through ``mpiexec -n N``.

    python mpi_worker.py SCENARIO OUTDIR [OPTIONS as JSON]

Every rank writes what it ended with to ``OUTDIR/SCENARIO.RANK.npz``; an expected error is printed as
``rank R raised TYPE: MESSAGE`` and ends the rank with exit code 3 (after MPI is finalised normally).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

import gpubp
from gpubp import distributed, training
from gpubp.errors import GpubpError


def data(n: int = 203, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The test problem: 5 features, 3 classes, and sample weights; the same on every rank."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 5))
    return X, rng.integers(0, 3, n), rng.uniform(0.5, 2.0, n)


def network(options: dict, rank: int) -> gpubp.MLP:
    hidden = options.get("hidden_by_rank", {}).get(str(rank), 16)
    return gpubp.MLP([5, hidden, 3], activation="tanh", loss="cross_entropy", dtype=options.get("dtype", "float64"),
                     seed=rank + 1, backend=options.get("backend", "numpy"))  # a seed per rank: rank 0's must win


def optimizer(options: dict) -> gpubp.optim.Optimizer:
    if options.get("optimizer") == "adam":
        return gpubp.optim.Adam(0.01)
    return gpubp.optim.SGD(0.05, momentum=0.9)


def fit_settings(options: dict, rank: int = 0) -> dict:
    epochs = options.get("epochs_by_rank", {}).get(str(rank), options.get("epochs", 6))
    settings = dict(epochs=epochs, batch_size=options.get("batch_size", 32), seed=5,
                    progress=options.get("progress", False), validation_split=options.get("validation_split", 0.2),
                    early_stopping=options.get("early_stopping", 3), shuffle=options.get("shuffle", True))
    checkpoint = options.get("checkpoint_by_rank", {}).get(str(rank), options.get("checkpoint"))
    if checkpoint:
        settings.update(checkpoint=checkpoint, resume=options.get("resume", False))
    if options.get("stop_rank") is not None:  # a callback that wants to stop on one rank only
        settings["callback"] = lambda epoch, record: rank == options["stop_rank"] and epoch == 2
    if options.get("callback_on_rank_0_only") and rank == 0:  # the others pass none
        settings["callback"] = lambda epoch, record: epoch == 2
    return settings


def run(scenario: str, out: Path, options: dict, comm: distributed.Communicator) -> dict:
    X, y, weight = data()
    net = network(options, comm.rank)
    if scenario == "step":  # train_step does not broadcast: the ranks start from the same weights themselves
        net = network(options, 0)
        step_optimizer = "sgd" if options.get("bad_optimizer_rank") == comm.rank else optimizer(options)
        losses = [float(net.train_step(X[:64], y[:64], step_optimizer, sample_weight=weight[:64], distributed=comm))
                  for _ in range(3)]
        return {"params": net.backend.to_host(net.params), "loss": np.array(losses)}
    if scenario == "shard":  # each rank its own rows: every size-th row from its rank on
        X, y = X[comm.rank::comm.size], y[comm.rank::comm.size]
        weight = weight[comm.rank::comm.size]
        options = {**options, "validation_split": 0.0, "early_stopping": None}
    if scenario == "bad_data" and comm.rank == 1:
        X = X[:, :4]
    if options.get("other_rows_on_rank_1") and comm.rank == 1:  # the same shape, other rows: forgot shard="local"
        X, y = X[::-1].copy(), y[::-1].copy()
    if scenario == "fail":
        _fail_on(net, comm, options["fail_rank"], options["fail_step"])
    if scenario == "interrupt":
        _interrupt_at(options["interrupt_epoch"], comm)
    if options.get("memory_error_rank") == comm.rank:
        def no_memory(*args, **kwargs):
            raise MemoryError("injected: no host memory")
        net.check_x = no_memory  # type: ignore[method-assign]
    validation = None
    if options.get("validation_weights_zero_on_rank_0"):  # rank 0's half of the validation weights is zero
        X, x_val, y, y_val, weight, w_val = X[40:], X[:40], y[40:], y[:40], weight[40:], np.ones(40)
        w_val[:20] = 0
        validation = (x_val, y_val, w_val)
    history = net.fit(X, y, optimizer=optimizer(options), distributed=comm, validation_data=validation,
                      shard="local" if scenario == "shard" else "replicated",
                      sample_weight=weight if options.get("weighted") else None,
                      **{**fit_settings(options, comm.rank), **({"validation_split": 0.0} if validation else {})})
    return {"params": net.backend.to_host(net.params), "loss": np.array(history["loss"]),
            "val_loss": np.array(history["val_loss"] if "val_loss" in history.keys() else []),
            "stopped": np.array(-1 if history.stopped_epoch is None else history.stopped_epoch)}


def _fail_on(net: gpubp.MLP, comm: distributed.Communicator, rank: int, step: int) -> None:
    """Make ``rank`` raise in its ``step``-th gradient computation (the others go on into the allreduce)."""
    if comm.rank != rank:
        return
    real, calls = net.compute_gradients, [0]

    def failing(ws):
        calls[0] += 1
        if calls[0] == step:
            raise RuntimeError(f"injected failure at step {step}")
        return real(ws)

    net.compute_gradients = failing  # type: ignore[method-assign]


def _interrupt_at(epoch: int, comm: distributed.Communicator) -> None:
    """Every rank is interrupted as ``epoch`` begins (rank 0 has written the checkpoint of the one before)."""
    real = training._Run._epoch

    def interrupted(run, number):
        if number == epoch:
            comm.barrier()
            raise KeyboardInterrupt
        return real(run, number)

    training._Run._epoch = interrupted  # type: ignore[method-assign]


def main() -> int:
    scenario, out = sys.argv[1], Path(sys.argv[2])
    options = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    comm = distributed.init(options.get("comm", "auto"), options.get("overlap"))
    if str(comm.rank) in options.get("overlap_by_rank", {}):
        comm.overlap = options["overlap_by_rank"][str(comm.rank)]
    try:
        result = run(scenario, out, options, comm)
    except (GpubpError, MemoryError) as error:
        print(f"rank {comm.rank} raised {type(error).__name__}: {error}", flush=True)
        return 3
    np.savez(out / f"{scenario}.{comm.rank}.npz", size=comm.size, **result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
