"""K networks of one shape trained together: deep ensembles, repeated seeds and hyperparameter sweeps.

An :class:`Ensemble` of K members stacks them: the parameters are one ``(K, P)``
buffer whose row k is member k's flat parameter buffer, laid out exactly as
:class:`gpubp.MLP`'s (so member k *is* an MLP's parameters), and a layer's weights
are the ``(K, fan_in, fan_out)`` view of it. Every step of backpropagation then runs
once for all members:

* forward, layer l: ``Z[l] = A[l-1]·W[l] + b[l]`` as one batched GEMM over the member
  dimension (``matmul`` of ``(K, N, fan_in)`` by ``(K, fan_in, fan_out)``: cuBLAS's
  strided-batched GEMM on a GPU, NumPy's stacked matmul on the CPU; the first layer's
  ``A[0]`` is the batch, ``(N, fan_in)``, shared by every member), then one fused
  kernel for ``+ b`` and σ over all members;
* BP1: the loss kernels over the K batches stacked, each member's own mean;
* BP2: ``δ[l-1] = (δ[l]·W[l]ᵀ) ⊙ σ'(Z[l-1])``, BP4: ``∂W = A[l-1]ᵀ·δ[l]``: batched GEMMs;
  BP3: ``∂b = Σ_rows δ[l]`` for each member;
* the update: one kernel over the ``(K, P)`` buffer, each member with its own learning
  rate, weight decay and momentum (:mod:`gpubp.optim` takes lists), step count and skip
  flag (a member frozen by early stopping or by divergence is left as it was).

Trained with the same seeds, rates and data order, member k follows exactly the path
of ``MLP(..., seed=seeds[k])`` trained alone (tested to 1e-9 in float64): the members
never mix. :meth:`Ensemble.fit` is in :mod:`gpubp.ensemble_training`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _validate as check
from . import ensemble_training, inputs, serialization, training
from .backends import Array, Backend, HostArray
from .backends._kernels import MAX_MEMBERS
from .errors import GpubpTypeError, GpubpValueError
from .history import EnsembleHistory
from .losses import LOSSES, Loss
from .mlp import MLP, PREDICT_BATCH, Network, initial_parameters
from .optim import Optimizer
from .workspace import Workspace, WorkspaceCache

ENSEMBLE_FORMAT = "gpubp.ensemble"
OVERFLOW_CAUSE = ("the inputs are finite, so a member's arithmetic overflowed: a member frozen by "
                  "on_nonfinite='freeze_member' keeps its last finite weights, which may be near overflow (leave it "
                  "out with ensemble.select([...])), or the inputs are too large (scale them)")
ENSEMBLE_VERSION = 1


def member_seeds(seeds: Any, members: int) -> list[int]:
    """The seed of each member: drawn (``None``), derived from one int (K different seeds from
    ``numpy.random.SeedSequence(seed)``), or a list of K ints given."""
    if seeds is None or isinstance(seeds, (int, np.integer)) and not isinstance(seeds, bool):
        check.seed("seeds", seeds)
        return [int(s) for s in np.random.SeedSequence(seeds).generate_state(members, np.uint32)]
    if not isinstance(seeds, (list, tuple, np.ndarray)):
        raise GpubpTypeError(f"seeds must be None, an int or a list of {members} ints, got {type(seeds).__name__}")
    if len(seeds) != members:
        raise GpubpValueError(f"seeds must hold one seed per member ({members}), got {len(seeds)}")
    for k, seed in enumerate(seeds):
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise GpubpTypeError(f"seeds[{k}] must be an int, got {type(seed).__name__} {seed!r}")
        check.seed(f"seeds[{k}]", seed)
    return [int(seed) for seed in seeds]


class Ensemble(Network):
    """``n_members`` fully-connected networks of one architecture, trained together in batched GEMMs.

    The architecture arguments are :class:`gpubp.MLP`'s. ``seeds``: None (drawn), an int
    (member k gets the k-th seed derived from it) or a list of K ints; member k is
    initialised exactly as ``gpubp.MLP(sizes, ..., seed=seeds[k])`` (:attr:`seeds` holds them).
    """

    def __init__(self, sizes: Sequence[int], n_members: int, activation: str | Sequence[str] = "sigmoid",
                 output_activation: str | None = None, loss: str | Loss = "mse", backend: str | Backend = "auto",
                 dtype: str = "float32", seeds: Any = None, init: str = "auto", matmul_precision: str = "highest"):
        self.n_members = check.positive_int("n_members", n_members)
        if self.n_members > MAX_MEMBERS:
            raise GpubpValueError(f"n_members must be at most {MAX_MEMBERS}, got {n_members}")
        seed_list = member_seeds(seeds, self.n_members)
        super().__init__(sizes, activation, output_activation, loss, backend, dtype, init, matmul_precision)
        self.seeds: list[int | None] = list(seed_list)
        with self.backend.activate():
            self._build_parameters(np.stack([initial_parameters(self.sizes, self._activations, self.init, seed)
                                             for seed in seed_list]))
        self._workspaces = WorkspaceCache(self.backend, self.sizes, self.dtype, self._keep_z(),
                                          members=self.n_members)

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture (the members' and their number)."""
        return {**super().config(), "n_members": self.n_members}

    def __repr__(self) -> str:
        return (f"Ensemble(n_members={self.n_members}, sizes={list(self.sizes)}, activation={self.activations}, "
                f"output_activation={self.output_activation!r}, loss={self.loss.name!r}, "
                f"backend={self.backend.name!r}, dtype={self.dtype.name!r}, params={self.n_params} per member)")

    # --- members --------------------------------------------------------------------------------------
    def _member_index(self, k: Any) -> int:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise GpubpTypeError(f"k must be a member index (an int), got {type(k).__name__} {k!r}")
        if not -self.n_members <= k < self.n_members:
            raise GpubpValueError(f"k must be a member index in [0, {self.n_members}) (or from the end, down to "
                                  f"-{self.n_members}), got {k}")
        return int(k) % self.n_members

    def member(self, k: int) -> MLP:
        """Member ``k`` as a standalone :class:`gpubp.MLP` (a copy of its weights, on the same backend)."""
        k = self._member_index(k)
        net = MLP(self.sizes, activation=self.activations, output_activation=self.output_activation,
                  loss=self.loss, backend=self.backend, dtype=self.dtype.name, seed=0, init=self.init,
                  matmul_precision=self.matmul_precision)
        with self.backend.activate():
            self.backend.copy_into(net.params, self.params[k])
        return net

    @classmethod
    def from_members(cls, nets: Sequence[MLP]) -> Ensemble:
        """The ensemble of ``nets`` (networks of one architecture, dtype and backend), their weights copied."""
        if not isinstance(nets, (list, tuple)) or not nets:
            raise GpubpTypeError("nets must be a non-empty list of gpubp.MLP networks")
        for i, net in enumerate(nets):
            if not isinstance(net, MLP):
                raise GpubpTypeError(f"nets[{i}] must be a gpubp.MLP, got {type(net).__name__}")
            if net.config() != nets[0].config():
                raise GpubpValueError(f"nets[{i}] is {net.config()}, nets[0] is {nets[0].config()}: the members of "
                                      f"an ensemble share one architecture and dtype")
            if net.backend is not nets[0].backend:
                raise GpubpValueError(f"nets[{i}] is on backend {net.backend!r}, nets[0] on {nets[0].backend!r}")
        first = nets[0]
        ensemble = cls(first.sizes, len(nets), activation=first.activations, output_activation=first.output_activation,
                       loss=first.loss, backend=first.backend, dtype=first.dtype.name, seeds=0,
                       init=first.init, matmul_precision=first.matmul_precision)
        with ensemble.backend.activate():
            for k, net in enumerate(nets):
                ensemble.backend.copy_into(ensemble.params[k], net.params)
        ensemble.seeds = [None] * len(nets)
        return ensemble

    def select(self, members: Sequence[int]) -> Ensemble:
        """A new ensemble of the members ``members`` (indices, in that order), their weights and seeds copied: to
        leave out members that diverged (``history.frozen``) or keep the best of a sweep."""
        if not isinstance(members, (list, tuple, range, np.ndarray)) or len(members) == 0:
            raise GpubpTypeError(f"members must be a non-empty list of member indices, got {members!r}")
        chosen = [self._member_index(k) for k in members]
        ensemble = Ensemble.from_members([self.member(k) for k in chosen])
        ensemble.seeds = [self.seeds[k] for k in chosen]
        return ensemble

    def get_weights(self) -> list[HostArray]:
        """NumPy copies ``[W1, b1, W2, b2, …]`` with the members first: ``W`` ``(K, fan_in, fan_out)``,
        ``b`` ``(K, fan_out)``."""
        host = self.backend.to_host(self.params)
        parts = [self.split(row) for row in host]
        return [np.stack([member[i] for member in parts]) for i in range(2 * self.n_layers)]

    # --- save and load --------------------------------------------------------------------------------
    def save(self, path: Any) -> None:
        """Write the architecture, the members' seeds and their weights to ``path`` (``.npz``, atomic);
        :func:`gpubp.load` reads it back."""
        metadata = {"format": ENSEMBLE_FORMAT, "version": ENSEMBLE_VERSION, "model": self.config(),
                    "seeds": self.seeds}
        serialization.write_npz(path, {"params": self.backend.to_host(self.params)}, metadata)

    @classmethod
    def from_config(cls, config: dict[str, Any], params: Any, backend: str | Backend = "auto",
                    seeds: Any = None) -> Ensemble:
        """The ensemble described by ``config`` (what :meth:`config` returns) with the ``(K, P)`` host ``params``."""
        config = dict(config)
        members = config.pop("n_members", None)
        ensemble = cls(config["sizes"], members, activation=config["activation"],
                       output_activation=config["output_activation"], loss=config["loss"], backend=backend,
                       dtype=config["dtype"], seeds=0, init=config["init"])
        params = check.host_array("params", params)
        if params.shape != tuple(ensemble.params.shape) or params.dtype != ensemble.dtype:
            raise GpubpValueError(f"params has shape {params.shape} and dtype {params.dtype}, the ensemble needs "
                                  f"shape {tuple(ensemble.params.shape)} and dtype {ensemble.dtype}")
        check.finite("params", params)
        with ensemble.backend.activate():
            ensemble.backend.copy_into(ensemble.params, params)
        ensemble.seeds = list(seeds) if isinstance(seeds, list) and len(seeds) == members else [None] * members
        return ensemble

    # --- the step surface (with Network's: the training loop drives it) -------------------------------
    def compute_loss(self, ws: Workspace) -> Array:
        """Each member's loss, a ``(K,)`` backend array; writes each member's δ[L] (or ∂L/∂A[L])."""
        last = self.n_layers
        stacked = ws.stacked
        weight = None if ws.weight is None else stacked(ws.weight)
        losses = self.backend.loss_value_and_delta(self.loss, stacked(ws.output_z(last)), stacked(ws.a[last]),
                                                   stacked(ws.y), stacked(ws.delta[last]), stacked(ws.tmp[last]),
                                                   ws.rows, weight, members=self.n_members)
        return losses.reshape(self.n_members)  # (an ensemble of one: the network's 0-d loss, as (1,))

    def find_nonfinite(self, ws: Workspace, k: int = 0) -> str:
        """Where member ``k``'s first NaN/Inf appears on the workspace's batch (the failure path only)."""
        net = self.member(k)
        rows = net.workspace(ws.batch)
        be = self.backend
        be.copy_into(rows.x, ws.x if ws.shared_input else ws.x[k])
        be.copy_into(rows.y, ws.y[k])
        rows.load_weights(None if ws.weight is None else ws.weight[k, :, 0])
        return net.find_nonfinite(rows)

    # --- public API ------------------------------------------------------------------------------------
    def train_step(self, X: Any, Y: Any, optimizer: Optimizer, sample_weight: Any = None) -> Array:
        """One gradient-descent step of every member on the batch ``(X, Y)``; returns the K losses as a
        ``(K,)`` backend array (no host synchronisation). ``optimizer`` may hold one learning rate, weight
        decay or momentum per member. Like :meth:`MLP.train_step`, a single step has no divergence guard."""
        optimizer = inputs.check_optimizer(optimizer, self.n_members)
        with self.backend.activate():
            loss = self.compute_gradients(self.load_batch(X, Y, sample_weight))
            optimizer.update(self.backend, self.params, self.grads)
        return loss

    def forward(self, X: Any, batch_size: int | None = None) -> Array:
        """Every member's output for ``X``, ``(K, n, outputs)``, as a backend array."""
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else PREDICT_BATCH
        with self.backend.activate(), inputs.quiet_overflow():
            X = self.check_x(X)
            n = X.shape[0]
            out = self.backend.empty((self.n_members, n, self.sizes[-1]), self.dtype)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                ws = self.workspace(stop - start)
                self.backend.copy_into(ws.x, X[start:stop])
                self.backend.copy_into(out[:, start:stop], self.feedforward(ws))
        return out

    def predict(self, X: Any, members: bool = False, batch_size: int | None = None) -> HostArray:
        """The mean of the members' outputs for ``X`` (probabilities for cross_entropy/bce), ``(n, outputs)``;
        with ``members=True`` every member's, ``(K, n, outputs)``. NumPy arrays."""
        if not isinstance(members, bool):
            raise GpubpTypeError(f"members must be True or False, got {members!r}")
        outputs = self.forward(X, batch_size)
        result = self.backend.to_host(outputs if members else outputs.mean(axis=0))
        bad = int(result.size - np.count_nonzero(np.isfinite(result)))
        if bad:
            inputs.warn_overflow("predict", bad, OVERFLOW_CAUSE)
        return result

    def evaluate(self, X: Any, Y: Any, batch_size: int | None = None,
                 sample_weight: Any = None) -> dict[str, Any]:
        """Each member's ``"loss"`` (and ``"accuracy"`` for cross_entropy/bce) as ``(K,)`` NumPy arrays, and
        ``"ensemble_loss"`` (``"ensemble_accuracy"``) of the mean prediction — for a classifier, the loss of the
        averaged probabilities, what a deep ensemble is judged by (for gpubp's own losses; a loss built by the
        user has no ensemble metrics)."""
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else PREDICT_BATCH
        with self.backend.activate():
            X = self.check_x(X)
            is_labels, Y = self.check_y(Y, X.shape[0])
            weight = inputs.check_sample_weight(self.backend, sample_weight, X.shape[0])
            return self.evaluate_checked(X, is_labels, Y, batch_size, weight, mean=True)

    def evaluate_checked(self, X: Array, is_labels: bool, Y: Array, batch_size: int = PREDICT_BATCH,
                         weight: Array | None = None, mean: bool = False) -> dict[str, Any]:
        """:meth:`evaluate` on checked inputs; the metrics of the mean prediction only with ``mean``."""
        be, xp, n = self.backend, self.backend.xp, X.shape[0]
        sums: dict[str, Any] = {}
        with be.activate(), inputs.quiet_overflow():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                ws = self._fill(X, is_labels, Y, weight, start, stop)
                self.feedforward(ws)
                size = ws.batch if ws.weight_total is None else ws.weight_total
                parts = {"loss": self.compute_loss(ws) * size, "size": size}
                if self.loss.classification:
                    parts["correct"] = self.count_correct(ws)
                if mean and LOSSES.get(self.loss.name) is self.loss:  # (a loss of the user's own: no formula here)
                    parts.update(zip(("ensemble_loss", "ensemble_correct"), ensemble_terms(self.loss, xp, ws)))
                for key, value in parts.items():
                    sums[key] = sums.get(key, 0) + value
            total = np.asarray(be.to_host(xp.asarray(sums.pop("size"))), dtype=np.float64)
            host = {key: np.asarray(be.to_host(xp.asarray(value)), dtype=np.float64) for key, value in sums.items()}
        result: dict[str, Any] = {"loss": host["loss"] / total}
        if self.loss.classification:
            result["accuracy"] = host["correct"] / self.accuracy_denominator(total)
        if "ensemble_loss" in host:
            shared = float(np.max(total))  # every member saw the same rows and weights
            result["ensemble_loss"] = float(host["ensemble_loss"]) / shared
            if self.loss.classification:
                result["ensemble_accuracy"] = float(host["ensemble_correct"]) / self.accuracy_denominator(shared)
        if not np.all(np.isfinite(result["loss"])):
            inputs.warn_overflow("evaluate: the loss", int(np.sum(~np.isfinite(result["loss"]))), OVERFLOW_CAUSE)
        return result

    def fit(self, X: Any, Y: Any, epochs: int = 10, batch_size: int = 64, optimizer: Optimizer | None = None,
            validation_data: tuple[Any, ...] | None = None, shuffle: bool = True, progress: bool | str = True,
            seed: int | None = None, *, validation_split: float = 0.0, lr_schedule: Any = None,
            early_stopping: int | None = None, monitor: str | None = None, min_delta: float = 0.0,
            restore_best: bool = True, on_nonfinite: str = "raise", check_every: int | None = None,
            checkpoint: Any = None, resume: bool = False, checkpoint_every: int = 1,
            sample_weight: Any = None, callback: Any = None, bootstrap: bool = False) -> EnsembleHistory:
        """Train every member by minibatch gradient descent; returns the :class:`~gpubp.history.EnsembleHistory`.

        The arguments are :meth:`MLP.fit`'s, and mean the same for each member: with the same ``seed``, every
        member sees the batches an MLP would, in the same order. ``optimizer`` may hold one ``lr``,
        ``weight_decay`` (and SGD ``momentum``) per member (a sweep); a schedule scales each. Early stopping
        is per member: a member whose monitor stops improving is frozen (its best weights kept, with
        ``restore_best``) while the others go on; the run ends when every member has stopped, or at
        ``epochs``. ``on_nonfinite``: ``"raise"``, ``"skip_step"`` (per member) or ``"freeze_member"`` (a
        member that produces NaN/Inf is frozen at its last finite weights and reported in the history and
        by a warning; the others go on). ``bootstrap=True`` trains each member on its own resample of the
        training rows (n draws with replacement, for bagging), shuffled every epoch.
        """
        build = functools.partial(
            training.FitConfig.build,
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, shuffle=shuffle, progress=progress,
            seed=seed, validation_split=validation_split, lr_schedule=lr_schedule, early_stopping=early_stopping,
            monitor=monitor, min_delta=min_delta, restore_best=restore_best, on_nonfinite=on_nonfinite,
            check_every=check_every, checkpoint=checkpoint, resume=resume, checkpoint_every=checkpoint_every,
            callback=callback, members=self.n_members)
        config = build()
        if not isinstance(bootstrap, bool):
            raise GpubpTypeError(f"bootstrap must be True or False, got {bootstrap!r}")
        with self.backend.activate():
            return ensemble_training.fit(self, X, Y, config, validation_data, sample_weight, bootstrap)


def ensemble_terms(loss: Any, xp: Any, ws: Workspace) -> tuple[Any, Any]:
    """(Σ loss·weight, Σ correct) of the members' mean output on the workspace's batch: the ensemble's own
    prediction. Classification losses take the mean probabilities (clipped away from 0 and 1)."""
    mean = ws.a[-1].mean(axis=0)
    y = ws.y[0]
    tiny = float(np.finfo(mean.dtype).tiny)
    if loss.name == "cross_entropy":
        terms = -(y * xp.log(xp.maximum(mean, tiny))).sum(axis=1)
        hits = xp.argmax(mean, axis=1) == xp.argmax(y, axis=1)
    elif loss.name == "bce":
        terms = -(y * xp.log(xp.maximum(mean, tiny)) + (1 - y) * xp.log(xp.maximum(1 - mean, tiny))).mean(axis=1)
        hits = ((mean > 0.5) == (y > 0.5)).sum(axis=1)
    else:
        d = mean - y
        if loss.name == "mse":
            elem = d * d
        elif loss.name == "l1":
            elem = xp.abs(d)
        else:  # huber, δ = 1
            c = xp.clip(d, -1.0, 1.0)
            elem = c * d - 0.5 * c * c
        terms = elem.mean(axis=1)
        hits = xp.zeros_like(terms)
    if ws.weight is None or ws.weight_total is None:
        return terms.sum(), hits.sum()
    w = ws.weight[0, :, 0] * (ws.weight_total[0] / ws.batch)  # the rows' weights at their own scale
    return (terms * w).sum(), (hits * w).sum()
