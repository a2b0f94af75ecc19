"""The training loop of ``fit``: epochs of minibatch steps, metrics, schedule, early stopping, checkpoints.

:class:`FitConfig` holds every argument of a run, each checked when it is
built (before any state changes). :func:`fit` drives a *model* through the
step surface of :class:`TrainableModel` — load a batch into a workspace,
compute the loss and gradients, count correct answers, evaluate — so the loop
knows nothing of layers and the network nothing of epochs. A model is
anything with that surface and one flat parameter and gradient buffer
(:class:`gpubp.MLP`; a stack of networks trained together fits the same mould).

One step is :class:`Step`: gradients, the divergence guard's flag, the
optimizer's update (which reads the flag on the device). Where gradients of
several processes are to be combined, it is between the first two: one
reduction of the flat gradient buffer.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

import numpy as np

from . import _validate as check
from . import checkpoint as checkpoints
from . import inputs
from .backends import Array, Backend
from .distributed import Communicator, Partition, agreed, check_communicator, check_identical, overlaps
from .errors import DivergenceError, GpubpTypeError, GpubpValueError, GpubpWarning
from .guard import Guard, check_mode
from .history import History
from .losses import Loss
from .optim import Adam, Optimizer
from .schedules import Schedule, checked_lr, get_schedule
from .serialization import check_output_path, check_path, read_metadata
from .workspace import Workspace


class TrainableModel(Protocol):
    """What the loop needs of a model (see :class:`gpubp.MLP` for each)."""

    backend: Backend
    params: Array
    grads: Array
    dtype: np.dtype
    loss: Loss

    def config(self) -> dict[str, Any]: ...
    def check_x(self, X: Any, name: str = "X") -> Array: ...
    def check_y(self, Y: Any, n: int, name: str = "Y") -> tuple[bool, Array]: ...
    def workspace(self, batch: int) -> Workspace: ...
    def compute_gradients(self, ws: Workspace) -> Array: ...
    def feedforward(self, ws: Workspace) -> Array: ...
    def compute_loss(self, ws: Workspace) -> Array: ...
    def backpropagate(self, ws: Workspace, after_layer: Callable[[int], None] | None = None) -> None: ...
    def layer_gradient(self, layer: int) -> Array: ...
    @property
    def n_layers(self) -> int: ...
    def count_correct(self, ws: Workspace) -> Array: ...
    def accuracy_denominator(self, n: Any) -> Any: ...
    def evaluate_checked(self, X: Array, is_labels: bool, Y: Array, batch_size: int = ...,
                         weight: Array | None = None) -> dict[str, float]: ...
    def find_nonfinite(self, ws: Workspace) -> str: ...


@dataclass(frozen=True)
class FitConfig:
    """Every setting of a ``fit`` run, checked.

    ``epochs`` (the total, also when resuming), ``batch_size``, ``optimizer``
    (default ``Adam(1e-3)``), ``shuffle`` (a new permutation each epoch, drawn
    from ``seed``), ``progress`` (True: a tqdm bar per epoch on a terminal, one line per epoch on stderr
    elsewhere; ``"lines"``: one line per epoch on stdout, as each ends; False: nothing), ``seed``;
    ``validation_split``: a fraction of the data held out, drawn with ``seed``
    (with ``seed=None`` a seed is drawn and kept in the checkpoint, so a resumed
    run holds out the same rows); ``lr_schedule``: ``"constant"``, ``"step"``,
    ``"cosine"``, a :class:`~gpubp.schedules.Schedule` or ``function(epoch) -> lr``,
    applied per epoch; ``early_stopping`` (patience in epochs), ``monitor``
    (default ``val_loss`` with validation data, else ``loss``), ``min_delta``,
    ``restore_best``; ``on_nonfinite`` (``"raise"`` or ``"skip_step"``) and
    ``check_every`` for the divergence guard (:mod:`gpubp.guard`);
    ``checkpoint`` (a path), ``checkpoint_every`` (epochs) and ``resume``;
    ``callback(epoch, record) -> bool``, called after each epoch with its metrics (it may
    add entries, which the history keeps; True stops the run after that epoch);
    ``distributed`` (a :class:`~gpubp.distributed.Communicator`: every batch split between its
    ranks, one allreduce of the gradients per step) and ``shard`` (``"replicated"``: every rank
    passes the whole training set; ``"local"``: each rank its own rows) — see :mod:`gpubp.distributed`.
    A resume must be the same run: same data size, batch size, shuffling,
    ``epochs``, seed, schedule, optimizer class and hyperparameters.
    """

    epochs: int
    batch_size: int
    optimizer: Optimizer
    shuffle: bool
    progress: bool | str
    seed: int | None
    validation_split: float
    schedule: Schedule
    early_stopping: int | None
    monitor: str | None
    min_delta: float
    restore_best: bool
    on_nonfinite: str
    check_every: int | None
    checkpoint: Path | None
    resume: bool
    checkpoint_every: int
    callback: Callable[[int, dict[str, float]], Any] | None = None
    distributed: Communicator | None = None
    shard: str = "replicated"

    @classmethod
    def build(cls, *, epochs: int = 10, batch_size: int = 64, optimizer: Optimizer | None = None,
              shuffle: bool = True, progress: bool | str = True, seed: int | None = None, validation_split: float = 0.0,
              lr_schedule: Any = None, early_stopping: int | None = None, monitor: str | None = None,
              min_delta: float = 0.0, restore_best: bool = True, on_nonfinite: str = "raise",
              check_every: int | None = None, checkpoint: Any = None, resume: bool = False,
              checkpoint_every: int = 1, callback: Any = None, distributed: Any = None,
              shard: str = "replicated", members: int | None = None) -> FitConfig:
        """The checked settings; raises naming the first bad argument. ``members``: the run trains an
        ensemble of that many (the optimizer may hold per-member values; ``on_nonfinite`` may be
        ``"freeze_member"``)."""
        epochs = check.positive_int("epochs", epochs)
        if callback is not None and not callable(callback):
            raise GpubpTypeError(f"callback must be a function(epoch, record) or None, got {type(callback).__name__}")
        if progress not in PROGRESS or (progress != "lines" and not isinstance(progress, bool)):
            raise GpubpValueError(f"progress must be True, False or 'lines', got {progress!r}")
        for name, flag in (("shuffle", shuffle), ("restore_best", restore_best), ("resume", resume)):
            if not isinstance(flag, bool):
                raise GpubpTypeError(f"{name} must be True or False, got {flag!r}")
        check.seed("seed", seed)
        comm = check_communicator(distributed, shard)
        if comm is not None and comm.rank != 0:
            progress = False  # rank 0 alone shows progress
        return cls(
            epochs=epochs, batch_size=check.positive_int("batch_size", batch_size),
            optimizer=inputs.check_optimizer(optimizer if optimizer is not None else Adam(), members),
            shuffle=shuffle, progress=progress, seed=None if seed is None else int(seed),
            validation_split=check.fraction("validation_split", validation_split),
            schedule=get_schedule(lr_schedule, epochs),
            early_stopping=None if early_stopping is None else check.positive_int("early_stopping", early_stopping),
            monitor=monitor, min_delta=check.positive_float("min_delta", min_delta, allow_zero=True),
            restore_best=restore_best, on_nonfinite=check_mode(on_nonfinite, members is not None),
            check_every=None if check_every is None else check.positive_int("check_every", check_every),
            checkpoint=_checkpoint_path(checkpoint, resume, writer=comm is None or comm.rank == 0), resume=resume,
            checkpoint_every=check.positive_int("checkpoint_every", checkpoint_every), callback=callback,
            distributed=comm, shard=shard)


def _checkpoint_path(checkpoint: Any, resume: bool, writer: bool = True) -> Path | None:
    """The checkpoint's path, checked as a file the ``writer`` (rank 0 of a distributed run) can write."""
    if checkpoint is None:
        if resume:
            raise GpubpValueError("resume=True needs checkpoint=PATH, the file to resume from")
        return None
    return check_output_path(checkpoint, "checkpoint") if writer else check_path(checkpoint)


def check_monitor(monitor: str | None, classification: bool, has_validation: bool) -> str:
    """The metric early stopping and ``best_epoch`` judge by, checked against what the run records."""
    options = ["loss"] + (["accuracy"] if classification else [])
    options += [f"val_{key}" for key in options] if has_validation else []
    if monitor is None:
        return "val_loss" if has_validation else "loss"
    if monitor not in options:
        raise GpubpValueError(f"monitor must be one of {options} for this run, got {monitor!r}")
    return monitor


class EarlyStopping:
    """The best value of the monitored metric so far, and epochs waited since; stops after ``patience``.

    With ``patience=None`` it only tracks the best epoch (for ``history.best_epoch``).
    """

    def __init__(self, monitor: str, patience: int | None, min_delta: float) -> None:
        self.monitor, self.patience, self.min_delta = monitor, patience, min_delta
        self.higher_is_better = "accuracy" in monitor
        self.best_value: float | None = None
        self.waited = 0

    def update(self, record: dict[str, float]) -> bool:
        """Take an epoch's record; True when it improved on the best by more than ``min_delta``."""
        value = record[self.monitor]
        best = self.best_value
        improved = best is None or (value - best > self.min_delta if self.higher_is_better
                                    else best - value > self.min_delta)
        if improved:
            self.best_value, self.waited = value, 0
        else:
            self.waited += 1
        return improved

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self.waited >= self.patience

    def state(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "best_value": self.best_value, "waited": self.waited}

    def load_state(self, state: dict[str, Any]) -> None:
        """Continue from ``state`` (what :meth:`state` returned), which must watch the same metric."""
        if state.get("monitor") != self.monitor:
            raise GpubpValueError(f"the checkpoint's early stopping watched {state.get('monitor')!r}, this fit "
                                  f"monitors {self.monitor!r}; resume with the same monitor")
        best, waited = state.get("best_value"), state.get("waited")
        if (best is not None and not isinstance(best, (int, float))) or not isinstance(waited, int) or waited < 0:
            raise GpubpValueError(f"invalid early-stopping state {state!r}")
        self.best_value, self.waited = (None if best is None else float(best)), waited


PROGRESS = (True, False, "lines")


def metric_text(value: Any) -> str:
    """A metric for a progress line: ``0.1234``; an ensemble's per-member values as their mean and range,
    ``0.1234 [0.1101–0.1502]`` (members that stopped left out)."""
    if np.ndim(value) == 0:
        return f"{float(value):.4g}"
    values = np.asarray(value, dtype=np.float64)
    values = values[~np.isnan(values)]
    if values.size == 0:
        return "-"
    return f"{values.mean():.4g} [{values.min():.4g}–{values.max():.4g}]"


def epoch_line(description: str, record: dict[str, Any]) -> str:
    """``epoch 3/30: loss 0.1234, accuracy 0.95, …`` — one epoch's record as one line."""
    return f"{description}: " + ", ".join(f"{key} {metric_text(value)}" for key, value in record.items())


class EpochLine:
    """Progress as one plain line per epoch, written when the epoch ends: where stderr is not a terminal
    (a file, a pipe, a CI log), or on stdout with ``progress="lines"``."""

    def __init__(self, description: str, stream: Any) -> None:
        self.description, self.stream = description, stream
        self.record: dict[str, float] = {}

    def update(self, n: int) -> None:
        """Batches done: nothing to show until the epoch ends."""

    def close(self) -> None:
        if self.record:  # an epoch that ended by an error has nothing to report
            print(epoch_line(self.description, self.record), file=self.stream, flush=True)


def _progress_stream(progress: bool | str) -> Any:
    """Where progress lines go: stdout for ``"lines"``, stderr (tqdm's stream) otherwise."""
    return sys.stdout if progress == "lines" else sys.stderr


@contextlib.contextmanager
def progress_bar(progress: bool | str, total: int, description: str) -> Iterator[Any]:
    """A tqdm bar on a terminal, an :class:`EpochLine` elsewhere or with ``progress="lines"``, None when
    disabled; closed however the block ends."""
    if not progress:
        yield None
        return
    if progress is True and (sys.stderr.isatty() or "ipykernel" in sys.modules):  # a terminal, a notebook
        from tqdm.auto import tqdm

        bar = tqdm(total=total, desc=description, unit="batch", leave=True, dynamic_ncols=True)
    else:
        bar = EpochLine(description, _progress_stream(progress))
    try:
        yield bar
    finally:
        bar.close()


class Step:
    """One training step as ``fit`` runs it on a loaded workspace: gradients, guard flag, update."""

    def __init__(self, model: TrainableModel, optimizer: Optimizer, guard: Guard) -> None:
        self.model, self.optimizer, self.guard = model, optimizer, guard

    def __call__(self, ws: Workspace) -> tuple[Array, Array]:
        """(the loss, the guard's flag for this step), both on the device."""
        model = self.model
        loss = model.compute_gradients(ws)
        flag = self.guard.flag(loss)
        self.optimizer.update(model.backend, model.params, model.grads, skip=flag)
        return loss, flag

    def totals(self, ws: Workspace, loss: Array) -> tuple[Any, Any, Any, Any]:
        """What the step adds to the epoch's metrics: (Σ loss, size, correct answers, rows), a size being
        the rows, or the sum of their sample weights."""
        size = ws.batch if ws.weight_total is None else ws.weight_total
        correct = self.model.count_correct(ws) if self.model.loss.classification else 0
        return loss * size, size, correct, ws.batch


class ReducedStep(Step):
    """One step across the ranks of ``comm``: each rank's gradient as a sum over its rows, one allreduce of
    the flat gradient buffer and one of ``[Σ loss, size, correct, rows]``, the division by the whole
    batch's size; then the guard's flag and the update, computed from the same numbers on every rank.
    With ``comm.overlap`` the gradient goes layer by layer during the backward pass instead.

    A rank with no rows in the batch (``ws`` None) contributes zeros.
    """

    def __init__(self, model: TrainableModel, optimizer: Optimizer, guard: Guard, comm: Communicator) -> None:
        super().__init__(model, optimizer, guard)
        self.comm = comm
        self.sums = model.backend.zeros((4,), np.float64)  # counts stay exact past float32's 2²⁴
        self.pending: list[Any] = []
        self.overlap = overlaps(comm, model.backend.is_gpu)

    def __call__(self, ws: Workspace | None) -> tuple[Array, Array]:
        model, xp, sums = self.model, self.model.backend.xp, self.sums
        self.pending.clear()  # (left by a step that failed: never waited on again)
        if ws is None:  # no rows here: zeros, sent as every other rank sends its gradients
            model.grads.fill(0)
            sums.fill(0)
            for layer in range(model.n_layers, 0, -1) if self.overlap else ():
                self._send(layer, 1)
        else:
            size = ws.batch if ws.weight_total is None else ws.weight_total
            if self.overlap:  # each layer's gradient sent as soon as it is final (layer L first, DDP's buckets)
                model.feedforward(ws)
                loss = model.compute_loss(ws)
                model.backpropagate(ws, after_layer=lambda layer: self._send(layer, size))
            else:
                loss = model.compute_gradients(ws)
                xp.multiply(model.grads, size, out=model.grads)  # the mean over this rank's rows, as a sum
            sums[0], sums[1], sums[2], sums[3] = super().totals(ws, loss)
        if not self.overlap:
            self.comm.allreduce(model.grads)
        self.comm.allreduce(sums)
        for pending in self.pending:
            pending.wait()
        self.pending.clear()
        total = xp.where(sums[1] > 0, sums[1], 1)
        xp.divide(model.grads, total, out=model.grads)
        loss = sums[0] / total
        flag = self.guard.flag(loss)
        self.optimizer.update(model.backend, model.params, model.grads, skip=flag)
        return loss, flag

    def _send(self, layer: int, size: Any) -> None:
        """Layer ``layer``'s gradient as a sum over this rank's rows (× ``size``), its allreduce started: it
        runs while the layers below are computed."""
        gradient = self.model.layer_gradient(layer)
        self.model.backend.xp.multiply(gradient, size, out=gradient)
        self.pending.append(self.comm.start_allreduce(gradient, layer))

    def totals(self, ws: Workspace | None, loss: Array) -> tuple[Any, Any, Any, Any]:
        return self.sums[0], self.sums[1], self.sums[2], self.sums[3]


def fit(model: TrainableModel, X: Any, Y: Any, config: FitConfig,
        validation_data: tuple[Any, ...] | None = None, sample_weight: Any = None) -> History:
    """Train ``model`` as ``config`` says; returns the per-epoch :class:`~gpubp.history.History`.

    ``validation_data`` is ``(X_val, Y_val)`` or ``(X_val, Y_val, sample_weight_val)``;
    ``sample_weight`` (``(n,)``, ≥ 0) makes every batch's loss the weighted mean and the
    epoch's metrics weighted means (held-out rows of ``validation_split`` keep their weights).

    With ``config.distributed``, every rank calls this with the same settings: a rank that fails
    its checks makes every rank raise; settings that differ between ranks make every rank raise,
    naming them; rank 0's weights are broadcast; and a rank that fails during training ends the
    job (:meth:`~gpubp.distributed.Communicator.abort`) rather than leave the others waiting.
    """
    comm = config.distributed
    if comm is None:
        return train_alone(_Run(model, X, Y, config, validation_data, sample_weight))
    given_seed = config.seed
    seed = comm.broadcast_object(agreed(comm, lambda: _resolve_seed(config) if comm.rank == 0 else None,
                                        "choose the seed"))
    config = dataclasses.replace(config, seed=seed)  # one seed for all: the same permutations and split
    run = agreed(comm, lambda: _Run(model, X, Y, config, validation_data, sample_weight), "start training")
    check_identical(comm, {**run.settings(), "seed given": given_seed})
    agreed(comm, lambda: run.connect(comm), "set up its part of the training")
    copy = _checkpoint_of_rank_0(comm, config)  # rank 0's file's bytes, whether or not the others see it
    agreed(comm, lambda: run.restore_from(copy, comm.rank), "resume from the checkpoint")
    comm.broadcast(model.params)  # a rank whose network was initialised from another seed trains rank 0's
    try:
        return run.train()
    except DivergenceError:  # raised on every rank alike: the guard reads the reduced gradients
        raise
    except BaseException as failure:
        if comm.size > 1:
            print(f"gpubp: rank {comm.rank} of {comm.size} failed during training ({type(failure).__name__}: "
                  f"{failure}); ending every rank", file=sys.stderr, flush=True)
            comm.abort(1)
        raise


def checked_rates(schedule: Schedule, epoch: int, base_lr: float | tuple[float, ...],
                  epochs: int) -> float | tuple[float, ...]:
    """:func:`~gpubp.schedules.checked_lr` of a rate, or of each member's rate of an ensemble's sweep."""
    if isinstance(base_lr, tuple):
        return tuple(checked_lr(schedule, epoch, base, epochs) for base in base_lr)
    return checked_lr(schedule, epoch, base_lr, epochs)


def train_alone(run: _Run) -> Any:
    """Train a run of one process: set up, resume when asked (and the checkpoint exists), the epochs."""
    run.connect(Communicator())
    checkpoint = run.config.checkpoint
    run.restore(checkpoint if run.config.resume and checkpoint is not None and checkpoint.exists() else None)
    return run.train()


def _exchange(comm: Communicator | None, on_gpu: bool) -> list[Any]:
    """How a step exchanges gradients: the communicator's kind and whether it overlaps (every rank must
    make the same collectives in the same order)."""
    return [None, False] if comm is None else [comm.kind, overlaps(comm, on_gpu)]


def _checkpoint_of_rank_0(comm: Communicator, config: FitConfig) -> bytes | None:
    """The bytes of the checkpoint to resume from, read by rank 0 and sent to every rank (only rank 0 writes
    checkpoints; the others may run on machines that do not see its disk); None for a new run."""
    checkpoint = config.checkpoint
    if not (config.resume and checkpoint is not None):
        return None

    def read() -> bytes | None:
        return checkpoint.read_bytes() if comm.rank == 0 and checkpoint.exists() else None

    return comm.broadcast_object(agreed(comm, read, "read the checkpoint"))


def _resolve_seed(config: FitConfig) -> int:
    """The run's seed: the one given, else the resumed checkpoint's, else a fresh one (recorded)."""
    if config.seed is not None:
        return config.seed
    if config.resume and config.checkpoint is not None and config.checkpoint.exists():
        saved = (read_metadata(config.checkpoint) or {}).get("progress", {}).get("seed")
        if isinstance(saved, int):
            return saved
    return int(np.random.SeedSequence().entropy)  # type: ignore[arg-type]


class _Run:
    """One call of :func:`fit`: the checked data and settings, then the epochs."""

    def __init__(self, model: TrainableModel, X: Any, Y: Any, config: FitConfig,
                 validation_data: tuple[Any, ...] | None, sample_weight: Any = None) -> None:
        self.model, self.config, self.backend = model, config, model.backend
        self.rank = config.distributed.rank if config.distributed is not None else 0
        X = model.check_x(X)
        is_labels, Y = model.check_y(Y, X.shape[0])
        weight = inputs.check_sample_weight(self.backend, sample_weight, X.shape[0], scale=False)
        if config.validation_split:
            if validation_data is not None:
                raise GpubpValueError("give validation_data or validation_split, not both")
            inputs.validation_size(X.shape[0], config.validation_split)
        self.validation: tuple[Array, bool, Array, Array | None] | None = None
        if validation_data is not None:
            self.validation = self._check_validation(validation_data)
        has_validation = validation_data is not None or bool(config.validation_split)
        monitor = check_monitor(config.monitor, model.loss.classification, has_validation)
        if config.early_stopping is not None and config.monitor is None and not has_validation:
            warnings.warn("early_stopping watches the training loss ('loss') because there is no validation "
                          "data; pass validation_data or validation_split to stop on held-out data, or "
                          "monitor='loss' to say that the training loss is meant", GpubpWarning, stacklevel=4)
        self.seed = _resolve_seed(config)
        self.rng = np.random.default_rng(self.seed)
        if config.validation_split:
            # each rank holds out its own rows when each has its own (shard="local"); else all the same rows
            split_rng = np.random.default_rng([self.seed, self.rank]) if config.shard == "local" else self.rng
            xp = self.backend.xp if self.backend.is_device_array(X) else np
            if xp is not np:  # device X: Y and the weights indexed by the same device index
                Y, weight = (a if a is None or self.backend.is_device_array(a) else self.backend.asarray(a)
                             for a in (Y, weight))
            (X, Y, weight), (x_val, y_val, w_val) = inputs.split_validation(X, Y, config.validation_split,
                                                                            split_rng, xp, weight)
            if w_val is not None and not float(w_val.max()) > 0:
                raise GpubpValueError("sample_weight is 0 for every row that validation_split held out; "
                                      "the validation metrics would be undefined")
            if weight is not None and not float(weight.max()) > 0:
                raise GpubpValueError("sample_weight is 0 for every row left for training by validation_split")
            self.validation = (x_val, is_labels, y_val, w_val)
        self.is_labels, self.n = is_labels, X.shape[0]
        self.x_all, self.y_all = inputs.training_set_to_device(self.backend, X, Y, model.dtype, is_labels)
        self.weight: Any = weight  # on the device, scaled by the largest of any rank, in connect()
        self.weight_all: Array | None = None
        self.guard: Any = self._guard()
        self.step: Step = Step(model, config.optimizer, self.guard)
        self.partition: Partition | None = None
        self.early: Any = self._early_stopping(monitor)
        keep_best = config.early_stopping is not None and config.restore_best
        self.best_params = self.backend.empty(model.params.shape, model.params.dtype) if keep_best else None
        self.best_saved = False  # whether best_params holds the weights of history.best_epoch
        self.history: Any = self._new_history()
        self.history.monitor = monitor
        self.steps_done, self.first_epoch = 0, 1

    def _guard(self) -> Any:
        """The divergence guard of the run (an ensemble's run keeps one flag per member)."""
        return Guard(self.backend, self.model.grads, self.config.on_nonfinite, self.config.check_every)

    def _early_stopping(self, monitor: str) -> Any:
        return EarlyStopping(monitor, self.config.early_stopping, self.config.min_delta)

    def _new_history(self) -> Any:
        return History()

    def connect(self, comm: Communicator) -> None:
        """The set-up that involves every rank (one, without ``distributed``): this rank's rows of each
        batch, the sample weights scaled by the largest of any rank, the step."""
        config, model = self.config, self.model
        self.partition = Partition(comm, self.n, config.batch_size, config.shard == "local")
        w_val = self.validation[3] if self.validation is not None else None
        maxima = comm.allgather([None if w is None else float(w.max()) for w in (self.weight, w_val)])
        largest = [max((m[i] for m in maxima if m[i] is not None), default=1.0) for i in (0, 1)]
        if self.weight is not None:
            self.weight_all = inputs.to_device(self.backend, self.weight / largest[0], model.dtype).reshape(self.n, 1)
        if self.validation is not None and w_val is not None:
            self.validation = (*self.validation[:3], w_val / largest[1])
        if config.distributed is not None:
            self.step = ReducedStep(model, config.optimizer, self.guard, comm)

    def restore_from(self, copy: bytes | None, rank: int) -> None:
        """:meth:`restore` from rank 0's checkpoint: its own file on rank 0, a temporary copy of its bytes
        elsewhere (errors still name the checkpoint's path)."""
        if copy is None or rank == 0:
            return self.restore(self.config.checkpoint if copy is not None else None)
        with tempfile.TemporaryDirectory(prefix="gpubp-resume-") as directory:
            source = Path(directory) / "checkpoint.npz"
            source.write_bytes(copy)
            self.restore(source)

    def restore(self, source: Path | None) -> None:
        """Resume from ``source`` (the checkpoint, or a copy of rank 0's), or, with None, start a new run
        (warning that it will overwrite an existing checkpoint)."""
        checkpoint = self.config.checkpoint
        if source is not None:
            self._resume(source)
        elif checkpoint is not None and checkpoint.exists() and self.rank == 0:
            warnings.warn(f"checkpoint {str(checkpoint)!r} exists and will be overwritten by this new run "
                          f"after its first epoch; pass resume=True (--resume) to continue it instead",
                          GpubpWarning, stacklevel=4)

    def settings(self) -> dict[str, Any]:
        """What every rank of a distributed fit must have alike (compared before the first step)."""
        c, model = self.config, self.model
        data: dict[str, Any] = {"features": int(self.x_all.shape[1]), "integer labels": self.is_labels,
                                "sample weights": self.weight is not None,
                                "validation data": self.validation is not None}
        if c.shard != "local":  # every rank must pass the same rows: their count and a sample of their bytes
            data["training rows"] = self.n
            data["training data sample"] = self._fingerprint()
        run = {"batch_size": c.batch_size, "shuffle": c.shuffle, "seed": self.seed, "epochs": c.epochs,
               "validation_split": c.validation_split, "lr_schedule": c.schedule.describe(), "shard": c.shard}
        return {"network": model.config(), "optimizer": [type(c.optimizer).__name__, c.optimizer.hyperparameters()],
                **data, **run, "early_stopping": [c.early_stopping, self.early.monitor, c.min_delta, c.restore_best],
                "on_nonfinite": [c.on_nonfinite, self.guard.every],
                "gradient exchange": _exchange(c.distributed, model.backend.is_gpu),
                "checkpoint": [c.checkpoint is not None, c.resume, c.checkpoint_every]}

    def _check_validation(self, validation_data: Any) -> tuple[Array, bool, Array, Array | None]:
        if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
            raise GpubpTypeError("validation_data must be a pair (X_val, Y_val) or a triple (X_val, Y_val, "
                                 "sample_weight_val)")
        x_val = self.model.check_x(validation_data[0], "validation_data[0]")
        is_labels, y_val = self.model.check_y(validation_data[1], x_val.shape[0], "validation_data[1]")
        w_val = (inputs.check_sample_weight(self.backend, validation_data[2], x_val.shape[0], "validation_data[2]")
                 if len(validation_data) == 3 else None)
        return x_val, is_labels, y_val, w_val

    def _fingerprint(self) -> str:
        """A digest of every ⌈n/64⌉-th row of the training inputs and targets (exact bytes, so the same data
        gives the same digest on any device)."""
        step = max(1, self.n // 64)
        digest = hashlib.sha256()
        for array in (self.x_all, self.y_all):
            digest.update(np.ascontiguousarray(self.backend.to_host(array[::step])).tobytes())
        return digest.hexdigest()[:16]

    def run_identity(self) -> dict[str, Any]:
        """What a checkpoint records of the run, and a resume must match. A run whose ranks hold their own
        rows (``shard="local"``) also records how many ranks there were: each rank's shard is its own."""
        c = self.config
        assert self.partition is not None
        identity = {"n_train": self.partition.n_global, "batch_size": c.batch_size, "shuffle": c.shuffle,
                    "seed": self.seed, "validation_split": c.validation_split, "lr_schedule": c.schedule.describe(),
                    "epochs": c.epochs}
        if c.shard == "local":
            identity.update(shard="local", world_size=self.partition.size)
        return identity

    def model_progress(self) -> dict[str, Any]:
        """What a checkpoint keeps of the model beyond its configuration and weights (nothing for one network)."""
        return {}

    def _accept_progress(self, progress: dict[str, Any]) -> None:
        """The checkpoint's early-stopping state, and its kind of run: a checkpoint of ranks that held
        their own rows (``shard="local"``) continues only as such a run."""
        if progress.get("shard") == "local" and self.config.shard != "local":
            raise GpubpValueError("the checkpoint was written by a run whose ranks held their own rows "
                                  "(shard='local'); resume it with shard='local' and the same ranks")
        self.early.load_state(progress["early_stopping"])

    def _resume(self, path: Path) -> None:
        resumed = checkpoints.restore(path, self.model, self.config.optimizer, self.run_identity(),
                                      self._accept_progress, shown=self.config.checkpoint)
        self.rng.bit_generator.state = resumed.rng_state
        self.history, self.steps_done = resumed.history, resumed.step
        self.history.monitor = self.early.monitor
        self.history.resumed_from = resumed.epoch
        self.first_epoch = resumed.epoch + 1
        finished = ""
        if self.history.stopped_epoch is not None:  # that run had already stopped early: it is finished
            self.first_epoch = self.config.epochs + 1
            finished = f"; that run had stopped early after epoch {self.history.stopped_epoch}: nothing left to train"
        if self.config.progress:
            stream = _progress_stream(self.config.progress)
            print(f"resumed from epoch {resumed.epoch} of {self.config.epochs} (checkpoint {str(path)!r}){finished}",
                  file=stream, flush=True)
            if self.config.progress == "lines":  # the earlier epochs, marked, so the lines tell the whole run
                for epoch, record in zip(self.history.epochs, self.history.records):
                    print(epoch_line(f"epoch {epoch}/{self.config.epochs} (before the resume)", record),
                          file=stream, flush=True)
        if self.best_params is not None and resumed.best_params is not None:
            self.backend.copy_into(self.best_params, resumed.best_params)
            self.best_saved = True

    def train(self) -> History:
        optimizer = self.config.optimizer
        base_lr = optimizer.lr
        try:  # overflow is the guard's business: it reports it, NumPy's warnings would only be noise
            with inputs.quiet_overflow():
                for epoch in range(self.first_epoch, self.config.epochs + 1):
                    optimizer.lr = checked_rates(self.config.schedule, epoch, base_lr, self.config.epochs)
                    self._epoch(epoch)
                    if self.config.checkpoint is not None and self._checkpoint_due(epoch):
                        optimizer.lr = base_lr
                        self._save(self.config.checkpoint, epoch)
                    if self.history.stopped_epoch is not None:
                        break
        finally:
            optimizer.lr = base_lr
        self._restore_best()
        return self.history

    def _restore_best(self) -> None:
        """With ``restore_best``: the weights of the best epoch back in the model, unless they are its last."""
        last = self.history.epochs[-1] if self.history.epochs else None
        if self.best_saved and self.history.best_epoch != last:
            self.backend.copy_into(self.model.params, self.best_params)

    def _checkpoint_due(self, epoch: int) -> bool:
        c = self.config
        return epoch % c.checkpoint_every == 0 or epoch == c.epochs or self.history.stopped_epoch is not None

    def _order(self, epoch: int) -> Array:
        """The epoch's order of this rank's rows: a permutation drawn from the run's generator (the same on
        every rank when they hold the same rows), or from (seed, rank, epoch) for a rank's own shard."""
        if not self.config.shuffle:
            return self.backend.asarray(np.arange(self.n))
        if self.config.shard == "local":
            return self.backend.asarray(np.random.default_rng([self.seed, self.rank, epoch]).permutation(self.n))
        return self.backend.asarray(self.rng.permutation(self.n))

    def _epoch(self, epoch: int) -> None:
        """Train one epoch, validate, record, and judge it for early stopping."""
        c, model = self.config, self.model
        assert self.partition is not None
        n_batches = self.partition.n_batches
        order = self._order(epoch)
        started = time.perf_counter()
        with progress_bar(c.progress, n_batches, f"epoch {epoch}/{c.epochs}") as bar:
            total_loss, correct, used, weight_used, skipped = self._batches(epoch, order, n_batches, bar)
            n_used = int(used)
            train_time = time.perf_counter() - started
            if n_used == 0:
                raise DivergenceError(
                    f"training diverged: every step of epoch {epoch} had NaN or Inf in its loss or gradients and "
                    f"was skipped; the weights are those after step {self.steps_done - n_batches}. Lower the "
                    f"learning rate (it was {c.optimizer.lr:g}).")
            measure = n_used if self.weight_all is None else (float(weight_used) or 1.0)  # Σ samples or weights
            record: dict[str, float] = {"loss": float(total_loss) / measure}
            if model.loss.classification:
                record["accuracy"] = float(correct) / model.accuracy_denominator(measure)
            if c.on_nonfinite == "skip_step":
                record["skipped_steps"] = skipped
            validation_time = self._validate(record)
            rate = c.optimizer.lr
            assert not isinstance(rate, tuple)  # (per-member rates are an ensemble's: its own loop)
            record.update(lr=rate, time=train_time, samples_per_s=self.partition.n_global / train_time)
            if validation_time is not None:
                record["val_time"] = validation_time
            if isinstance(bar, EpochLine):
                bar.record = record
            elif bar is not None:
                hidden = ("time", "samples_per_s", "val_time")
                bar.set_postfix({k: metric_text(v) for k, v in record.items() if k not in hidden})
        stop = bool(c.callback(epoch, record)) if c.callback is not None else False
        if c.distributed is not None:  # one decision (whether or not this rank has a callback): any rank's stop
            stop = any(c.distributed.allgather(stop))
        self.history.append(epoch, record)
        if self.early.update(record):
            self.history.best_epoch = epoch
            if self.best_params is not None:
                self.backend.copy_into(self.best_params, model.params)
                self.best_saved = True
        elif self.early.should_stop:
            stop = True
        if stop:
            self.history.stopped_epoch = epoch

    def _validate(self, record: dict[str, float]) -> float | None:
        """Add the validation metrics to ``record``; their time in seconds (None without validation data).
        Distributed, each rank evaluates its part and the sums are reduced: every rank records the same."""
        if self.validation is None:
            return None
        started = time.perf_counter()
        x_val, is_labels, y_val, w_val = self.validation
        comm, model = self.config.distributed, self.model
        if comm is None:
            for key, value in model.evaluate_checked(x_val, is_labels, y_val, weight=w_val).items():
                record[f"val_{key}"] = value
            return time.perf_counter() - started
        assert self.partition is not None
        start, stop = self.partition.validation_rows(int(x_val.shape[0]))
        sums = np.zeros(3)  # Σ loss·size, Σ correct, Σ size
        part = None if w_val is None else w_val[start:stop]
        size = float(stop - start) if part is None else float(part.sum())
        if size > 0:  # (a part whose weights are all zero adds nothing)
            metrics = model.evaluate_checked(x_val[start:stop], is_labels, y_val[start:stop], weight=part)
            sums[:] = metrics["loss"] * size, metrics.get("accuracy", 0.0) * model.accuracy_denominator(size), size
        comm.allreduce(sums)
        record["val_loss"] = float(sums[0] / sums[2])
        if model.loss.classification:
            record["val_accuracy"] = float(sums[1] / model.accuracy_denominator(sums[2]))
        return time.perf_counter() - started

    def _load(self, order: Array, batch: int) -> Workspace | None:
        """This rank's rows of batch number ``batch`` of the epoch's ``order``, gathered into their workspace
        (None when it has none in this batch)."""
        assert self.partition is not None
        start, stop = self.partition.rows(batch)
        if stop <= start:
            return None
        index = order[start:stop]
        ws = self.model.workspace(int(index.shape[0]))
        ws.gather(self.x_all, self.y_all, index, self.is_labels, self.weight_all)
        return ws

    def _batches(self, epoch: int, order: Array, n_batches: int, bar: Any) -> tuple[Any, Any, Any, Any, int]:
        """The steps of one epoch: (Σ loss·size, Σ correct, samples used, Σ sample weights used, steps skipped),
        a batch's size being its samples, or the sum of their weights with sample weights.

        The sums stay backend arrays (no host synchronisation); with
        ``skip_step`` the skipped steps are left out of them on the device.
        """
        xp, model = self.backend.xp, self.model
        skipping = self.config.on_nonfinite == "skip_step"
        total_loss: Any = 0.0
        correct: Any = 0
        used: Any = 0
        weight_used: Any = 0.0
        skipped = 0

        def diagnose(batch: int) -> str:
            ws = self._load(order, batch)
            return model.find_nonfinite(ws) if ws is not None else "another rank (this one had no rows in the batch)"

        for batch in range(n_batches):
            ws = self._load(order, batch)
            self.steps_done += 1
            loss, flag = self.step(ws)  # type: ignore[arg-type]  # None only reaches a ReducedStep
            loss_sum, size, batch_correct, rows = self.step.totals(ws, loss)  # type: ignore[arg-type]
            if skipping:
                keep = flag[0] == 0
                total_loss = total_loss + xp.where(keep, loss_sum, 0.0)
                correct = correct + xp.where(keep, batch_correct, 0)
                used = used + xp.where(keep, rows, 0)
                weight_used = weight_used + xp.where(keep, size, 0.0)
            else:
                total_loss = total_loss + loss_sum
                correct = correct + batch_correct
                used = used + rows
                weight_used = weight_used + size
            if self.guard.record(self.steps_done, epoch, batch) or batch == n_batches - 1:
                skipped += self.guard.check(diagnose, self.config.optimizer.lr)
            if bar is not None:
                bar.update(1)
        return total_loss, correct, used, weight_used, skipped

    def _save(self, path: Path, epoch: int) -> None:
        if self.rank != 0:  # rank 0 alone writes; every rank holds the same weights and progress
            return
        progress = {"epoch": epoch, "step": self.steps_done, "rng_state": self.rng.bit_generator.state,
                    "history": self.history.to_state(), "early_stopping": self.early.state(),
                    **self.run_identity(), **self.model_progress()}
        best = self.best_params if self.best_saved else None
        checkpoints.save_checkpoint(path, self.model, self.config.optimizer, progress, best)
