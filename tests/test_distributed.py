"""Data-parallel training: the one-process communicator in this process, and 2 and 3 ranks started with
``mpiexec`` (MPICH from the ``mpi``/``test`` extras; 2 cores oversubscribed), in subprocesses with time limits."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import requires_gpu
from mpi_worker import data, fit_settings, network, optimizer

import gpubp
from gpubp import distributed
from gpubp.errors import GpubpTypeError, GpubpValueError

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "mpi_worker.py"
MPIEXEC = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or shutil.which("mpiexec")
needs_mpi = pytest.mark.skipif(MPIEXEC is None or importlib.util.find_spec("mpi4py") is None,
                               reason='no mpiexec or mpi4py here: pip install ".[mpi]"')


def _environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in distributed.LAUNCHER_SIZE_VARIABLES}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(WORKER.parent), env.get("PYTHONPATH", "")])
    return {**env, **extra}


def launch(ranks: int, scenario: str, out: Path, timeout: float = 120, **options) -> subprocess.CompletedProcess:
    """``mpiexec -n RANKS python mpi_worker.py SCENARIO OUT OPTIONS``."""
    assert MPIEXEC is not None
    command = [MPIEXEC, "-n", str(ranks), sys.executable, str(WORKER), scenario, str(out), json.dumps(options)]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=_environment())


def results(out: Path, scenario: str, ranks: int) -> list[dict[str, np.ndarray]]:
    return [dict(np.load(out / f"{scenario}.{rank}.npz")) for rank in range(ranks)]


def single_process(options: dict, weighted: bool = False) -> tuple[gpubp.MLP, gpubp.History]:
    """The same run in this process, without a communicator: what every rank count must reproduce."""
    X, y, weight = data()
    net = network(options, 0)
    history = net.fit(X, y, optimizer=optimizer(options), sample_weight=weight if weighted else None,
                      **fit_settings(options))
    return net, history


# --- in this process --------------------------------------------------------------------------------------------
def test_init_without_a_launcher_is_one_process_without_mpi4py():
    code = ("import sys; from gpubp import distributed as d; c = d.init(); "
            "print(c.size, c.rank, 'mpi4py' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=_environment(), check=True)
    assert out.stdout.split() == ["1", "0", "False"]


def test_a_launch_without_mpi4py_names_the_extra(tmp_path):
    blocker = tmp_path / "mpi4py"
    blocker.mkdir()
    (blocker / "__init__.py").write_text("raise ImportError('No module named mpi4py (blocked by the test)')\n")
    env = _environment(PMI_SIZE="2")
    env["PYTHONPATH"] = f"{tmp_path}{os.pathsep}{env['PYTHONPATH']}"
    result = subprocess.run([sys.executable, "-c", "from gpubp import distributed; distributed.init()"],
                            capture_output=True, text=True, env=env)
    assert result.returncode != 0 and "OptionalDependencyError" in result.stderr
    assert 'pip install "gpubp[mpi]"' in result.stderr


def test_the_one_process_communicator_trains_as_plain_fit(backend):
    """The reduced step (gradients as sums, the division by the batch's size) through the one-process
    communicator, on every backend, against the plain step."""
    X, y, weight = data()
    options = {"optimizer": "adam", "backend": backend}
    plain, reduced = network(options, 0), network(options, 0)
    h1 = plain.fit(X, y, optimizer=optimizer(options), sample_weight=weight, **fit_settings(options))
    h2 = reduced.fit(X, y, optimizer=optimizer(options), sample_weight=weight, distributed=distributed.Communicator(),
                     **fit_settings(options))
    for a, b in zip(plain.get_weights(), reduced.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(h1["val_loss"], h2["val_loss"], rtol=1e-10)


def test_the_overlapped_step_trains_as_plain_fit(backend):
    """Each layer's gradient sent during the backward pass (here through the one-process communicator, where
    sending is immediate): the same training as the plain step."""
    X, y, weight = data()
    options = {"optimizer": "sgd", "backend": backend}
    plain, overlapped = network(options, 0), network(options, 0)
    comm = distributed.init(overlap=True)
    assert comm.overlap and not distributed.init().overlap
    plain.fit(X, y, optimizer=optimizer(options), sample_weight=weight, **fit_settings(options))
    overlapped.fit(X, y, optimizer=optimizer(options), sample_weight=weight, distributed=comm,
                   **fit_settings(options))
    for a, b in zip(plain.get_weights(), overlapped.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-13)


def test_backpropagate_reports_each_layer_when_its_gradient_is_final(rng):
    net = gpubp.MLP([4, 6, 5, 3], activation="tanh", loss="mse", dtype="float64", backend="numpy", seed=0)
    X, Y = rng.normal(size=(7, 4)), rng.normal(size=(7, 3))
    _, expected = net.loss_and_grads(X, Y)
    seen = []
    ws = net.load_batch(X, Y)
    net.feedforward(ws)
    net.compute_loss(ws)
    net.grads.fill(np.nan)
    net.backpropagate(ws, after_layer=lambda layer: seen.append((layer, net.layer_gradient(layer).copy())))
    assert [layer for layer, _ in seen] == [3, 2, 1]
    for layer, gradient in seen:  # final when reported: equal to the complete gradients of that layer
        np.testing.assert_array_equal(gradient, np.concatenate([expected[2 * layer - 2].ravel(),
                                                                expected[2 * layer - 1]]))


def test_fit_checks_distributed_and_shard():
    X, y, _ = data(20)
    net = network({}, 0)
    with pytest.raises(GpubpTypeError, match="distributed must be a communicator.*got str"):
        net.fit(X, y, epochs=1, progress=False, distributed="mpi")
    with pytest.raises(GpubpValueError, match="shard='local' needs distributed"):
        net.fit(X, y, epochs=1, progress=False, shard="local")
    with pytest.raises(GpubpValueError, match="shard must be one of"):
        net.fit(X, y, epochs=1, progress=False, distributed=distributed.Communicator(), shard="mine")
    with pytest.raises(GpubpValueError, match="backend must be one of"):
        distributed.init("gloo")


class _Ranks(distributed.Communicator):
    """Rank ``rank`` of ``size``, whose allgather returns what the test says the ranks hold."""

    def __init__(self, rank: int, size: int, gathered: list | None = None) -> None:
        super().__init__()
        self.rank, self.size, self.gathered = rank, size, gathered

    def allgather(self, value):
        return self.gathered if self.gathered is not None else [value] * self.size


def test_partition_splits_every_batch_and_every_shard():
    for size in (1, 2, 3):  # replicated: the ranks' parts of each batch tile it
        parts = [distributed.Partition(_Ranks(rank, size), 103, 32, sharded=False) for rank in range(size)]
        assert {p.n_batches for p in parts} == {4}
        for batch in range(4):
            spans = [p.rows(batch) for p in parts]
            assert spans[0][0] == batch * 32 and spans[-1][1] == min(batch * 32 + 32, 103)
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))
    shards = [(10, 4), (7, 3)]  # local: 10 and 7 rows, batch 7 split 4 + 3; the longer shard sets the epoch
    first = distributed.Partition(_Ranks(0, 2, shards), 10, 7, sharded=True)
    second = distributed.Partition(_Ranks(1, 2, shards), 7, 7, sharded=True)
    assert (first.local_batch, second.local_batch, first.n_batches, first.n_global) == (4, 3, 3, 17)
    assert [first.rows(b) for b in range(3)] == [(0, 4), (4, 8), (8, 10)]
    assert [second.rows(b) for b in range(3)] == [(0, 3), (3, 6), (6, 7)]
    with pytest.raises(GpubpValueError, match="smaller than the 3 ranks"):
        distributed.Partition(_Ranks(2, 3), 10, 2, sharded=True)


def test_settings_that_differ_are_named_with_every_ranks_value():
    mine = {"network": {"sizes": [5, 16, 3]}, "batch_size": 32}
    theirs = {"network": {"sizes": [5, 17, 3]}, "batch_size": 32}
    gathered = [distributed._canonical(mine), distributed._canonical(theirs)]
    comm = _Ranks(0, 2)
    comm.allgather = lambda value: gathered  # type: ignore[method-assign]
    with pytest.raises(GpubpValueError, match=r"the ranks differ in network \(rank 0: .*16.*rank 1: .*17"):
        distributed.check_identical(comm, mine)
    distributed.check_identical(_Ranks(0, 2), mine)  # the same everywhere: no error


# --- 2 and 3 ranks under mpiexec ---------------------------------------------------------------------------------
@needs_mpi
@pytest.mark.parametrize("ranks", [2, 3])
@pytest.mark.parametrize("options", [{"optimizer": "sgd"}, {"optimizer": "adam", "weighted": True},
                                     {"optimizer": "sgd", "weighted": True, "overlap": True}],
                         ids=["sgd", "adam", "sgd-overlapped"])
def test_ranks_reproduce_one_process(ranks, options, tmp_path):
    """float64, SGD with momentum / Adam with sample weights, a validation split and early stopping: every
    rank ends with bit-identical weights, equal to one process's to 1e-9."""
    result = launch(ranks, "fit", tmp_path, **options)
    assert result.returncode == 0, result.stdout + result.stderr
    outs = results(tmp_path, "fit", ranks)
    for other in outs[1:]:
        np.testing.assert_array_equal(other["params"], outs[0]["params"])
        np.testing.assert_array_equal(other["val_loss"], outs[0]["val_loss"])
    net, history = single_process(options, weighted=options.get("weighted", False))
    np.testing.assert_allclose(outs[0]["params"], net.backend.to_host(net.params), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(outs[0]["val_loss"], history["val_loss"], rtol=1e-9)
    assert int(outs[0]["stopped"]) == (-1 if history.stopped_epoch is None else history.stopped_epoch)


@needs_mpi
def test_train_step_across_ranks(tmp_path):
    result = launch(3, "step", tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    outs = results(tmp_path, "step", 3)
    X, y, weight = data()
    net, opt = network({}, 0), optimizer({})
    losses = [float(net.train_step(X[:64], y[:64], opt, sample_weight=weight[:64])) for _ in range(3)]
    for out in outs:
        np.testing.assert_allclose(out["params"], net.backend.to_host(net.params), rtol=1e-10, atol=1e-13)
        np.testing.assert_allclose(out["loss"], losses, rtol=1e-10)


@needs_mpi
def test_only_rank_0_writes_and_prints(tmp_path):
    checkpoint = tmp_path / "run.ckpt.npz"
    result = launch(2, "fit", tmp_path, checkpoint=str(checkpoint), progress="lines", epochs=3, early_stopping=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert checkpoint.is_file() and sorted(p.name for p in tmp_path.iterdir() if "ckpt" in p.name) == [checkpoint.name]
    assert sum(line.startswith("epoch ") for line in result.stdout.splitlines()) == 3


@needs_mpi
def test_an_interrupted_job_resumes_from_rank_0s_checkpoint(tmp_path):
    checkpoint = str(tmp_path / "run.ckpt.npz")
    settings = {"checkpoint": checkpoint, "epochs": 5, "early_stopping": None}
    interrupted = launch(2, "interrupt", tmp_path, interrupt_epoch=3, **settings)
    assert interrupted.returncode != 0 and "ending every rank" in interrupted.stderr
    assert gpubp.io.load_checkpoint(checkpoint).progress["epoch"] == 2
    resumed = launch(3, "fit", tmp_path, resume=True, **settings)  # replicated: another rank count may resume
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    net, _ = single_process({"epochs": 5, "early_stopping": None})
    for out in results(tmp_path, "fit", 3):
        np.testing.assert_allclose(out["params"], net.backend.to_host(net.params), rtol=1e-9, atol=1e-12)


@needs_mpi
def test_local_shards_train_the_whole_set(tmp_path):
    """Each rank passes its own third of the rows; with a batch as large as the set and no shuffling, every
    step's gradient is the whole set's: the weights are one process's full-batch weights."""
    options = {"batch_size": 1000, "shuffle": False, "epochs": 4}
    result = launch(3, "shard", tmp_path, **options)
    assert result.returncode == 0, result.stdout + result.stderr
    outs = results(tmp_path, "shard", 3)
    net, _ = single_process({**options, "validation_split": 0.0, "early_stopping": None})
    for out in outs:
        np.testing.assert_allclose(out["params"], net.backend.to_host(net.params), rtol=1e-9, atol=1e-12)


@needs_mpi
def test_a_sharded_checkpoint_refuses_another_rank_count(tmp_path):
    checkpoint = str(tmp_path / "shard.ckpt.npz")
    options = {"batch_size": 1000, "shuffle": False, "epochs": 2, "checkpoint": checkpoint}
    assert launch(2, "shard", tmp_path, **options).returncode == 0
    result = launch(3, "shard", tmp_path, **{**options, "epochs": 2, "resume": True})
    assert result.returncode != 0 and "world_size=2" in result.stdout and "world_size=3" in result.stdout


@needs_mpi
def test_settings_that_differ_between_ranks_raise_the_same_error_everywhere(tmp_path):
    result = launch(2, "fit", tmp_path, hidden_by_rank={"1": 17})
    errors = re.findall(r"rank (\d) raised (GpubpValueError: the ranks differ in network .*?settings)", result.stdout)
    assert result.returncode != 0 and sorted(rank for rank, _ in errors) == ["0", "1"], result.stdout + result.stderr
    assert errors[0][1] == errors[1][1] and "'sizes': [5, 16, 3]" in errors[0][1] and "[5, 17, 3]" in errors[0][1]


@needs_mpi
def test_bad_data_on_one_rank_stops_every_rank_before_training(tmp_path):
    result = launch(2, "bad_data", tmp_path)
    assert result.returncode != 0, result.stdout + result.stderr
    assert "rank 0 raised GpubpValueError: rank 1 could not start training: GpubpValueError: X has 4 features" \
        in result.stdout
    assert "rank 1 raised GpubpValueError: X has 4 features" in result.stdout


@needs_mpi
def test_a_rank_that_fails_mid_training_ends_the_job(tmp_path):
    started = time.monotonic()
    result = launch(3, "fail", tmp_path, timeout=60, fail_rank=1, fail_step=5)
    assert result.returncode != 0 and time.monotonic() - started < 30, result.stdout + result.stderr
    assert not list(tmp_path.glob("fail.*.npz")), "a rank finished training"
    # what the failing rank said (a launcher under load may end the job before it forwards the line)
    assert not result.stderr or "rank 1 of 3 failed during training (RuntimeError: injected failure at step 5)" \
        in result.stderr, result.stderr


@needs_mpi
def test_cli_train_distributed(tmp_path):
    command = [MPIEXEC, "-n", "2", sys.executable, "-m", "gpubp.cli", "train", "--distributed", "--epochs", "2",
               "--samples", "600", "--no-progress", "--backend", "numpy", "--save", "m.npz", "--history", "h.json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=tmp_path, env=_environment())
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("final: ") == 1 and "data-parallel over 2 ranks (mpi)" in result.stdout
    assert (tmp_path / "m.npz").is_file() and json.loads((tmp_path / "h.json").read_text())["epoch"] == [1, 2]


@needs_mpi
@pytest.mark.parametrize("options, words", [
    ({"epochs_by_rank": {"1": 0}}, "rank 1 could not check its fit arguments: GpubpValueError: epochs"),
    ({"memory_error_rank": 1}, "rank 1 could not start training: MemoryError: injected"),
    ({"checkpoint_by_rank": {"1": "/nonexistent-dir/ck.npz"}, "hidden_by_rank": {}},
     "the ranks differ in checkpoint"),
], ids=["bad-argument", "memory-error", "checkpoint-path"])
def test_a_rank_that_fails_before_training_makes_every_rank_raise(options, words, tmp_path):
    result = launch(2, "fit", tmp_path, timeout=60, **options)
    assert result.returncode != 0, result.stdout + result.stderr
    assert result.stdout.count("raised") == 2 and words in result.stdout, result.stdout + result.stderr


@needs_mpi
@pytest.mark.parametrize("scenario", ["fit", "step"])
def test_ranks_that_exchange_gradients_differently_are_refused(scenario, tmp_path):
    result = launch(2, scenario, tmp_path, timeout=60, overlap_by_rank={"1": True})
    assert result.returncode != 0 and result.stdout.count("the ranks differ in gradient exchange") == 2, \
        result.stdout + result.stderr


@needs_mpi
def test_other_rows_on_one_rank_are_refused_unless_sharded(tmp_path):
    result = launch(2, "fit", tmp_path, timeout=60, other_rows_on_rank_1=True)
    assert result.returncode != 0 and result.stdout.count("the ranks differ in training data sample") == 2, \
        result.stdout + result.stderr


@needs_mpi
def test_train_step_with_a_bad_optimizer_on_one_rank_raises_everywhere(tmp_path):
    result = launch(2, "step", tmp_path, timeout=60, bad_optimizer_rank=1)
    assert result.returncode != 0 and "rank 1 could not load its part of the batch: GpubpTypeError" in result.stdout
    assert result.stdout.count("raised") == 2, result.stdout + result.stderr


@needs_mpi
def test_a_callback_on_one_rank_only_does_not_hang(tmp_path):
    result = launch(2, "fit", tmp_path, timeout=60, callback_on_rank_0_only=True, early_stopping=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [int(out["loss"].size) for out in results(tmp_path, "fit", 2)] == [2, 2]


@needs_mpi
def test_a_batch_smaller_than_the_ranks_is_refused_by_every_rank(tmp_path):
    result = launch(3, "shard", tmp_path, timeout=60, batch_size=2)
    assert result.returncode != 0 and result.stdout.count("smaller than the 3 ranks") == 3, result.stdout


@needs_mpi
def test_a_callback_that_stops_on_one_rank_stops_every_rank(tmp_path):
    result = launch(2, "fit", tmp_path, timeout=60, stop_rank=1, early_stopping=None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert [int(out["loss"].size) for out in results(tmp_path, "fit", 2)] == [2, 2]


@needs_mpi
def test_a_resume_reads_rank_0s_checkpoint_on_every_rank(tmp_path):
    """Only rank 0 writes; a rank that cannot see its file (another machine's disk) resumes from its bytes."""
    own = tmp_path / "rank0.ckpt.npz"
    settings = {"epochs": 5, "early_stopping": None, "checkpoint_by_rank": {"0": str(own), "1": str(tmp_path / "x")}}
    assert launch(2, "interrupt", tmp_path, interrupt_epoch=3, **settings).returncode != 0
    resumed = launch(2, "fit", tmp_path, resume=True, **settings)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    assert not (tmp_path / "x").exists()
    net, _ = single_process({"epochs": 5, "early_stopping": None})
    for out in results(tmp_path, "fit", 2):
        np.testing.assert_allclose(out["params"], net.backend.to_host(net.params), rtol=1e-9, atol=1e-12)


@needs_mpi
def test_a_validation_part_whose_weights_are_zero_adds_nothing(tmp_path):
    result = launch(2, "fit", tmp_path, timeout=60, validation_weights_zero_on_rank_0=True, epochs=2,
                    early_stopping=None)
    assert result.returncode == 0, result.stdout + result.stderr
    X, y, weight = data()
    net = network({}, 0)
    net.fit(X[40:], y[40:], optimizer=optimizer({}), **{**fit_settings({"epochs": 2, "early_stopping": None}),
                                                     "validation_split": 0.0})
    expected = net.evaluate(X[20:40], y[20:40])["loss"]
    assert float(results(tmp_path, "fit", 2)[0]["val_loss"][-1]) == pytest.approx(expected, rel=1e-9)


@needs_mpi
def test_a_sharded_checkpoint_does_not_resume_as_a_replicated_run(tmp_path):
    checkpoint = str(tmp_path / "shard.ckpt.npz")
    options = {"batch_size": 1000, "shuffle": False, "epochs": 2, "checkpoint": checkpoint}
    assert launch(2, "shard", tmp_path, **options).returncode == 0
    result = launch(2, "fit", tmp_path, timeout=60, resume=True, validation_split=0.0, early_stopping=None,
                    **options)
    assert result.returncode != 0 and "resume it with shard='local'" in result.stdout, result.stdout


# --- GPU ---------------------------------------------------------------------------------------------------------
@pytest.mark.gpu
@requires_gpu
def test_nccl_with_one_rank_trains_as_plain_fit():
    comm = distributed.init("nccl")
    assert isinstance(comm, distributed.NCCLCommunicator) and comm.size == 1
    options = {"backend": "cupy", "optimizer": "adam"}
    X, y, _ = data()
    plain, reduced = network(options, 0), network(options, 0)
    plain.fit(X, y, optimizer=optimizer(options), **fit_settings(options))
    reduced.fit(X, y, optimizer=optimizer(options), distributed=comm, **fit_settings(options))
    for a, b in zip(plain.get_weights(), reduced.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)


@pytest.mark.gpu
@requires_gpu
@needs_mpi
def test_two_ranks_share_one_gpu_over_mpi(tmp_path):
    result = launch(2, "fit", tmp_path, backend="cupy", comm="mpi")
    assert result.returncode == 0, result.stdout + result.stderr
    outs = results(tmp_path, "fit", 2)
    np.testing.assert_array_equal(outs[0]["params"], outs[1]["params"])
    net, _ = single_process({})
    np.testing.assert_allclose(outs[0]["params"], net.backend.to_host(net.params), rtol=1e-9, atol=1e-12)
