"""The training loop of :meth:`gpubp.Ensemble.fit`: :mod:`gpubp.training`'s, with every metric per member.

:class:`EnsembleRun` is the single-network run of :mod:`gpubp.training` (the same checked
settings, data on the device, validation split, data order drawn from ``seed``, schedule,
checkpoints) with what changes when K networks train at once:

* each step's loss, correct answers and guard flags are ``(K,)`` arrays, summed on the device;
* early stopping is per member: a member whose monitor stops improving is *held* (its update
  masked on the device) and its best weights kept, while the others go on;
* the divergence guard is per member (:class:`~gpubp.guard.MemberGuard`);
* ``bootstrap=True`` gives each member its own resample of the training rows.

With the same seed every member sees exactly the batches, in the same order, that
``MLP.fit`` would: the ensemble draws its permutations from the same generator.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Array
from .errors import DivergenceError, GpubpValueError, GpubpWarning
from .guard import MemberGuard
from .history import EnsembleHistory
from .training import EarlyStopping, EpochLine, FitConfig, _Run, metric_text, progress_bar, train_alone
from .workspace import Workspace

BOOTSTRAP_STREAM = 0xB0075
"""Mixed into the run's seed for the bootstrap resamples, so they do not disturb the data order."""


class MemberEarlyStopping:
    """One :class:`~gpubp.training.EarlyStopping` per member, all watching one metric."""

    def __init__(self, monitor: str, patience: int | None, min_delta: float, members: int) -> None:
        self.monitor = monitor
        self.each = [EarlyStopping(monitor, patience, min_delta) for _ in range(members)]

    def state(self) -> dict[str, Any]:
        return {"monitor": self.monitor, "members": [member.state() for member in self.each]}

    def load_state(self, state: dict[str, Any]) -> None:
        if state.get("monitor") != self.monitor:
            raise GpubpValueError(f"the checkpoint's early stopping watched {state.get('monitor')!r}, this fit "
                                  f"monitors {self.monitor!r}; resume with the same monitor")
        states = state.get("members")
        if not isinstance(states, list) or len(states) != len(self.each):
            raise GpubpValueError(f"the checkpoint's early stopping holds {state.get('members')!r}, not one state "
                                  f"per member ({len(self.each)})")
        for member, member_state in zip(self.each, states):
            member.load_state(member_state)


class EnsembleRun(_Run):
    """One call of :meth:`gpubp.Ensemble.fit`: the checked data and settings, then the epochs."""

    def __init__(self, model: Any, X: Any, Y: Any, config: FitConfig, validation_data: tuple[Any, ...] | None,
                 sample_weight: Any, bootstrap: bool) -> None:
        self.members = model.n_members
        self.ensemble: Any = model  # (the base class knows it as a TrainableModel)
        self.bootstrap = bootstrap
        super().__init__(model, X, Y, config, validation_data, sample_weight)
        self.active = np.ones(self.members, dtype=bool)
        """Members still training: not stopped by early stopping, not frozen by divergence."""
        self.best_kept = np.zeros(self.members, dtype=bool)
        """Members whose best weights are in ``best_params``."""
        self.resample: Array | None = None
        self._resumed_seeds: list[Any] | None = None
        if self.best_params is not None:  # rows of members without a best epoch yet: zeros, not leftovers
            self.best_params.fill(0)

    def _guard(self) -> MemberGuard:
        c = self.config
        return MemberGuard(self.backend, self.model.grads, c.on_nonfinite, c.check_every, self.ensemble.n_members)

    def _early_stopping(self, monitor: str) -> MemberEarlyStopping:
        return MemberEarlyStopping(monitor, self.config.early_stopping, self.config.min_delta, self.ensemble.n_members)

    def _new_history(self) -> EnsembleHistory:
        return EnsembleHistory(self.ensemble.n_members)

    def connect(self, comm: Any) -> None:
        super().connect(comm)
        if self.bootstrap:  # each member's n rows drawn with replacement, once for the run
            rng = np.random.default_rng([self.seed, BOOTSTRAP_STREAM])
            self.resample = self.backend.asarray(rng.integers(0, self.n, size=(self.members, self.n)))

    def run_identity(self) -> dict[str, Any]:
        return {**super().run_identity(), "members": self.members, "bootstrap": self.bootstrap}

    def model_progress(self) -> dict[str, Any]:
        """The members' seeds (which drew their first weights), kept so a resumed ensemble reports them."""
        return {"seeds": list(self.ensemble.seeds)}

    def _accept_progress(self, progress: dict[str, Any]) -> None:
        super()._accept_progress(progress)
        seeds = progress.get("seeds")
        if isinstance(seeds, list) and len(seeds) == self.members:
            self._resumed_seeds = seeds

    def _resume(self, path: Path) -> None:
        super()._resume(path)
        if self._resumed_seeds is not None:
            self.ensemble.seeds = [None if s is None else int(s) for s in self._resumed_seeds]
        history = self.history
        self.active = np.array([history.member_stopped[k] is None and history.frozen[k] is None
                                for k in range(self.members)])
        self.best_kept = np.array([self.best_saved and epoch is not None for epoch in history.best_epoch])

    def _restore_best(self) -> None:
        """Each member's best weights back, unless they are those of the last epoch it trained in."""
        if self.best_params is None:
            return
        for k in range(self.members):
            if self.best_kept[k] and self.history.best_epoch[k] != self.history.last_epoch(k):
                self.backend.copy_into(self.model.params[k], self.best_params[k])

    # --- the data of a step ---------------------------------------------------------------------------
    def _order(self, epoch: int) -> Array:
        """The epoch's order of the rows: the run's permutation (the one MLP.fit draws); with bootstrap,
        that permutation of each member's resample, ``(K, n)``."""
        order = super()._order(epoch)
        return order if self.resample is None else self.resample[:, order]

    def _load(self, order: Array, batch: int) -> Workspace | None:
        assert self.partition is not None
        start, stop = self.partition.rows(batch)
        ws = self.ensemble.workspace(stop - start, shared_input=self.resample is None)
        ws.gather(self.x_all, self.y_all, order[..., start:stop], self.is_labels, self.weight_all)
        return ws

    # --- an epoch ----------------------------------------------------------------------------------------
    def _batches(self, epoch: int, order: Array, n_batches: int, bar: Any) -> tuple[Any, Any, Any, Any, Any]:
        """The steps of one epoch; per member (Σ loss·size, Σ size, Σ correct, rows used, steps skipped) — a
        size being the rows or the sum of their weights, as :meth:`Step.totals` says — a member's skipped or
        held steps left out of its sums on the device."""
        xp = self.backend.xp
        sums: list[Any] = [0.0, 0.0, 0, 0]
        skipped = np.zeros(self.members, dtype=np.int64)

        def diagnose(batch: int, member: int) -> str:
            ws = self._load(order, batch)
            assert ws is not None
            return self.ensemble.find_nonfinite(ws, member)

        for batch in range(n_batches):
            ws = self._load(order, batch)
            self.steps_done += 1
            loss, skip = self.step(ws)  # type: ignore[arg-type]
            keep = skip == 0
            for i, value in enumerate(self.step.totals(ws, loss)):  # type: ignore[arg-type]
                sums[i] = sums[i] + xp.where(keep, value, 0)
            if self.guard.record(self.steps_done, epoch, batch) or batch == n_batches - 1:
                skipped += self._check_guard(epoch, diagnose)
            if bar is not None:
                bar.update(1)
        return sums[0], sums[1], sums[2], sums[3], skipped

    def _check_guard(self, epoch: int, diagnose: Any) -> np.ndarray:
        """Read the guard's window; members that diverged under ``freeze_member`` are frozen and reported."""
        skipped, first_bad = self.guard.check(diagnose, self.config.optimizer.lr)
        if self.config.on_nonfinite != "freeze_member":
            return skipped
        for member, step in first_bad:
            if self.active[member]:
                self.active[member] = False
                self.history.frozen[member] = epoch
                warnings.warn(f"ensemble member {member} produced NaN or Inf at step {step} (epoch {epoch}) and is "
                              f"frozen at its weights after step {step - 1}; the other members train on",
                              GpubpWarning, stacklevel=2)
        return np.zeros(self.members, dtype=np.int64)

    def _epoch(self, epoch: int) -> None:
        """Train one epoch (the held members masked), validate, record, and judge each member."""
        c = self.config
        assert self.partition is not None
        started_with = self.active.copy()
        self.guard.hold(~self.active)
        order = self._order(epoch)
        started = time.perf_counter()
        with progress_bar(c.progress, self.partition.n_batches, f"epoch {epoch}/{c.epochs}") as bar:
            sums = self._batches(epoch, order, self.partition.n_batches, bar)
            train_time = time.perf_counter() - started
            record = self._record(epoch, sums, started_with)
            validation_time = self._validate(record)
            for key in ("val_loss", "val_accuracy"):
                if key in record:
                    record[key] = np.where(started_with, record[key], np.nan)
            rates = np.broadcast_to(np.asarray(c.optimizer.lr, dtype=np.float64), (self.members,))
            record.update(lr=rates, time=train_time,
                          samples_per_s=self.partition.n_global * int(started_with.sum()) / train_time)
            if validation_time is not None:
                record["val_time"] = validation_time
            if isinstance(bar, EpochLine):
                bar.record = {**record, "training": self.active.sum()}
            elif bar is not None:
                bar.set_postfix({k: metric_text(v) for k, v in record.items() if k in ("loss", "val_loss")})
        stop = bool(c.callback(epoch, record)) if c.callback is not None else False
        self.history.append(epoch, record)
        self._judge(epoch, record, started_with)
        if stop or not self.active.any():
            self.history.stopped_epoch = epoch

    def _record(self, epoch: int, sums: tuple[Any, ...], started_with: np.ndarray) -> dict[str, Any]:
        """The epoch's per-member training metrics (NaN for members held from its start)."""
        xp, ones = self.backend.xp, np.ones(self.members)
        total_loss, weight_used, correct, used = (np.asarray(self.backend.to_host(xp.asarray(s)), np.float64) * ones
                                                  for s in sums[:4])
        skipped = sums[4]
        frozen_now = started_with & ~self.active
        diverged = started_with & ~frozen_now & (used == 0)
        if diverged.any():
            k = int(np.flatnonzero(diverged)[0])
            rates = self.config.optimizer.lr
            raise DivergenceError(
                f"training diverged: every step of epoch {epoch} had NaN or Inf in member {k}'s loss or gradients "
                f"and was skipped. Lower its learning rate (it was "
                f"{rates[k] if isinstance(rates, tuple) else rates:g}), or pass on_nonfinite='freeze_member'.")
        measure = used if self.weight_all is None else np.where(weight_used > 0, weight_used, 1.0)
        counted = started_with & (used > 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            record: dict[str, Any] = {"loss": np.where(counted, total_loss / measure, np.nan)}
            if self.model.loss.classification:
                record["accuracy"] = np.where(counted, correct / self.model.accuracy_denominator(measure), np.nan)
        if self.config.on_nonfinite == "skip_step":
            record["skipped_steps"] = np.where(started_with, skipped, np.nan)
        return record

    def _validate(self, record: dict[str, Any]) -> float | None:
        if self.validation is None:
            return None
        started = time.perf_counter()
        x_val, is_labels, y_val, w_val = self.validation
        for key, value in self.model.evaluate_checked(x_val, is_labels, y_val, weight=w_val).items():
            record[f"val_{key}"] = value
        return time.perf_counter() - started

    def _judge(self, epoch: int, record: dict[str, Any], started_with: np.ndarray) -> None:
        """Early stopping, member by member: the best epoch (its weights kept), and who stops now."""
        for k in np.flatnonzero(started_with & self.active):
            member = self.early.each[k]
            if member.update({self.early.monitor: float(record[self.early.monitor][k])}):
                self.history.best_epoch[k] = epoch
                if self.best_params is not None:
                    self.backend.copy_into(self.best_params[k], self.model.params[k])
                    self.best_kept[k] = self.best_saved = True
            elif member.should_stop:
                self.history.member_stopped[k] = epoch
                self.active[k] = False


def fit(model: Any, X: Any, Y: Any, config: FitConfig, validation_data: tuple[Any, ...] | None = None,
        sample_weight: Any = None, bootstrap: bool = False) -> EnsembleHistory:
    """Train the members of ``model`` as ``config`` says; returns the :class:`~gpubp.history.EnsembleHistory`."""
    if config.distributed is not None:
        raise GpubpValueError("an Ensemble trains in one process: distributed is for gpubp.MLP")
    history: EnsembleHistory = train_alone(EnsembleRun(model, X, Y, config, validation_data, sample_weight,
                                                       bootstrap))
    return history
