"""Per-batch-size buffers of a network, and the one formula for how much memory they take.

A training step allocates nothing: the input batch, every layer's activations,
errors and scratch live in a :class:`Workspace` allocated once per batch size
and kept in a small :class:`WorkspaceCache`. :func:`bytes_per_sample` counts
exactly what a workspace allocates, and is what both the out-of-memory advice
(the batch size that fits) and ``gpubp bench`` (which configurations fit) use.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from .backends import Array, Backend
from .errors import DeviceMemoryError, format_bytes

CACHED_WORKSPACES = 4
"""Workspaces a network keeps (the training batch, the last partial batch, evaluation batches)."""

LABEL_BYTES = 2 * np.dtype(np.int64).itemsize
"""Per sample, for integer class labels: ``labels`` and ``row_index`` (int64 each)."""


def bytes_per_sample(sizes: Sequence[int], itemsize: int, keep_z: Sequence[bool], labels: bool = True) -> int:
    """Bytes a :class:`Workspace` allocates per sample of its batch, deltas and label buffers included.

    Per sample, in elements: the input and target rows; A[l] for every layer;
    Z[l] where σ' needs it; δ[l] for every layer; two scratch rows of the
    widest layer; two row-reduction slots and the ones vector of BP3. With
    integer labels, ``labels`` and ``row_index`` (int64) on top.
    """
    widths = list(sizes[1:])
    elements = (sizes[0] + sizes[-1] + 2 * sum(widths) + sum(w for w, keep in zip(widths, keep_z) if keep)
                + 2 * max(widths) + 3)
    return itemsize * elements + (LABEL_BYTES if labels else 0)


class Workspace:
    """Every buffer one forward and backward pass needs, for one batch size.

    ``a[0]`` is the input batch; for layer l ≥ 1, ``a[l]`` holds A[l] (and Z[l]
    before σ is applied in place, unless σ' needs Z, which is then kept in
    ``z[l]``); ``delta[l]`` holds δ[l]; ``tmp[l]``/``tmp2[l]`` are scratch
    views of layer l's shape; ``rows`` is a ``(2, N, 1)`` scratch for row-wise
    reductions; ``ones`` is the vector 1 of BP3's ``1ᵀ·δ``; ``y`` holds the
    dense targets and ``labels`` integer labels. ``weight`` is None (every sample
    counts the same) or the batch's sample weights, ``(N, 1)``, scaled to mean 1
    (the losses then take the weighted mean), and ``weight_total`` their sum before
    scaling (a 0-d array) — both set by :meth:`load_weights` or :meth:`gather`.

    **An ensemble's workspace** (``members=K``): every layer's buffers are ``(K, N, width)``,
    one batch per member; the input is ``(N, sizes[0])``, shared by every member
    (``shared_input``), or ``(K, N, sizes[0])`` when each member has its own rows
    (bootstrap resamples). Targets and weights are ``(K, N, …)`` either way (the loss
    kernels read each member's own rows), ``rows`` is ``(2, K·N, 1)``, and
    ``weight_total`` is ``(K,)``.
    """

    def __init__(self, backend: Backend, sizes: Sequence[int], batch: int, dtype: Any, keep_z: Sequence[bool],
                 members: int = 0, shared_input: bool = True):
        self.batch = batch
        self.members = members
        self.shared_input = shared_input or not members
        self._backend = backend
        self._sizes = tuple(sizes)
        self._dtype = dtype
        lead = (members,) if members else ()
        self._lead = lead
        stacked = max(members, 1) * batch  # rows of all members together
        self.x = backend.empty((batch, sizes[0]) if self.shared_input else (*lead, batch, sizes[0]), dtype)
        self.y = backend.empty((*lead, batch, sizes[-1]), dtype)
        self.a: list[Array] = [self.x]
        self.z: list[Array | None] = [None]
        for width, keep in zip(sizes[1:], keep_z):
            self.a.append(backend.empty((*lead, batch, width), dtype))
            self.z.append(backend.empty((*lead, batch, width), dtype) if keep else None)
        scratch = backend.empty((2, stacked * max(sizes[1:])), dtype)
        self.tmp: list[Array] = [None] + [scratch[0, : stacked * w].reshape(*lead, batch, w) for w in sizes[1:]]
        self.tmp2: list[Array] = [None] + [scratch[1, : stacked * w].reshape(*lead, batch, w) for w in sizes[1:]]
        self.rows = backend.empty((2, stacked, 1), dtype)
        self.ones = backend.asarray(np.ones(batch), dtype)
        self._delta: list[Array] | None = None
        self._labels: Array = None
        self._row_index: Array = None
        self._weight: Array = None
        self.weight: Array | None = None
        self.weight_total: Array | None = None

    def output_z(self, layer: int) -> Array:
        """Where Z[layer] is written: its own buffer when kept, else the A[layer] buffer."""
        return self.z[layer] if self.z[layer] is not None else self.a[layer]

    @property
    def delta(self) -> list[Array]:
        """δ[l] buffers, allocated on the first backward pass (inference never needs them)."""
        if self._delta is None:
            self._delta = [None] + [self._backend.empty((*self._lead, self.batch, w), self._dtype)
                                    for w in self._sizes[1:]]
        return self._delta

    @property
    def labels(self) -> Array:
        """Integer class labels of the batch (``(K, N)`` for an ensemble), allocated when first used."""
        if self._labels is None:
            self._labels = self._backend.empty((*self._lead, self.batch), np.int64)
            self._row_index = self._backend.asarray(np.arange(self._labels.size))
        return self._labels

    def stacked(self, array: Array) -> Array:
        """A layer's buffer with the members' rows one after the other, ``(K·N, width)`` (itself for one network)."""
        return array if not self.members else array.reshape(-1, array.shape[-1])

    def _first(self, array: Array) -> Array:
        """Where rows shared by every member are written: member 0's part (the whole buffer for one network)."""
        return array[0] if self.members else array

    def _share(self, array: Array) -> None:
        """Copy member 0's part of ``array`` to every other member (nothing for one network)."""
        if self.members > 1:
            self._backend.xp.copyto(array[1:], array[0])

    def load_targets(self, labels: bool, targets: Any) -> None:
        """Copy the batch's targets in: integer ``labels`` (turned into one-hot rows of ``y``) or dense rows
        (an ensemble's members all get them)."""
        if labels:
            self._backend.copy_into(self._first(self.labels), targets)
            self._share(self.labels)
            self.labels_to_targets()
        else:
            self._backend.copy_into(self._first(self.y), targets)
            self._share(self.y)

    def gather(self, x_all: Array, y_all: Array, index: Array, labels: bool, weight_all: Array | None = None) -> None:
        """Fill the batch with rows ``index`` of device-resident inputs, targets and (``(n, 1)``) weights.
        For an ensemble, ``index`` is ``(N,)`` (every member the same rows) or ``(K, N)`` (each its own)."""
        be = self._backend
        own = index.ndim == 2  # an ensemble's members with rows of their own
        assert not (own and self.shared_input), "members with their own rows need a workspace with their own inputs"
        if own or self.shared_input:
            be.take_rows(x_all, index, out=self.x)
        else:
            be.take_rows(x_all, index, out=self.x[0])
            self._share(self.x)
        first = (lambda array: array) if own else self._first
        if labels:
            be.take_rows(y_all, index, out=first(self.labels))
            if not own:
                self._share(self.labels)
            self.labels_to_targets()
        else:
            be.take_rows(y_all, index, out=first(self.y))
            if not own:
                self._share(self.y)
        if weight_all is None:
            self.weight = self.weight_total = None
        else:
            be.take_rows(weight_all, index, out=first(self._weight_buffer()))
            if not own:
                self._share(self._weight)
            self._scale_weights()

    def load_weights(self, weight: Any) -> None:
        """Copy the batch's ``(N,)`` sample weights in (None: unweighted) and scale them to mean 1."""
        if weight is None:
            self.weight = self.weight_total = None
            return
        self._backend.copy_into(self._first(self._weight_buffer()), weight.reshape(self.batch, 1))
        self._share(self._weight)
        self._scale_weights()

    def _weight_buffer(self) -> Array:
        if self._weight is None:
            self._weight = self._backend.empty((*self._lead, self.batch, 1), self._dtype)
        return self._weight

    def _scale_weights(self) -> None:
        """``w ← N·(w / Σw)`` on the device (no host synchronisation), each member's batch on its own; a
        batch whose weights are all 0 stays 0 (its loss and gradient are then 0). Divided first, so no
        quotient can overflow."""
        xp, w = self._backend.xp, self._weight
        total = w.sum() if not self.members else w.sum(axis=1, keepdims=True)
        xp.divide(w, xp.where(total > 0, total, 1), out=w)
        xp.multiply(w, self.batch, out=w)
        self.weight_total = total if not self.members else total.reshape(self.members)
        self.weight = w

    def labels_to_targets(self) -> None:
        """Fill the dense targets ``y`` with the one-hot rows of ``labels``."""
        self._backend.one_hot(self.labels.reshape(-1), self._row_index, self.stacked(self.y))


class WorkspaceCache:
    """The workspaces of one network, by batch size, the least recently used dropped beyond
    :data:`CACHED_WORKSPACES`; an out-of-memory error names the batch size that would fit."""

    def __init__(self, backend: Backend, sizes: Sequence[int], dtype: np.dtype, keep_z: Sequence[bool],
                 members: int = 0) -> None:
        self.backend, self.sizes, self.dtype, self.keep_z = backend, tuple(sizes), dtype, tuple(keep_z)
        self.members = members
        self._workspaces: OrderedDict[tuple[int, bool], Workspace] = OrderedDict()

    def get(self, batch: int, shared_input: bool = True) -> Workspace:
        """The workspace for ``batch`` samples (of each member, for an ensemble, sharing their input rows or
        not), allocated on first use."""
        key = (batch, shared_input)
        ws = self._workspaces.get(key)
        if ws is not None:
            self._workspaces.move_to_end(key)
            return ws
        try:
            ws = Workspace(self.backend, self.sizes, batch, self.dtype, self.keep_z, self.members, shared_input)
        except DeviceMemoryError as error:
            raise self.too_big(error, batch) from None
        self._workspaces[key] = ws
        while len(self._workspaces) > CACHED_WORKSPACES:
            self._workspaces.popitem(last=False)
        return ws

    def too_big(self, error: DeviceMemoryError, batch: int) -> DeviceMemoryError:
        """The out-of-memory error of a workspace, with the batch size that would fit."""
        per_sample = bytes_per_sample(self.sizes, self.dtype.itemsize, self.keep_z) * max(self.members, 1)
        fits = int(0.8 * error.free / per_sample) if error.free is not None else 0
        suggestion = 1 << (fits.bit_length() - 1) if fits >= 1 else 0
        advice = (f"try batch_size={suggestion} or smaller" if 0 < suggestion < batch else
                  "free GPU memory held elsewhere (other arrays, other processes) or use backend='numpy'")
        return DeviceMemoryError(
            f"{error} while allocating the workspace of a batch of {batch} (about {format_bytes(per_sample * batch)}: "
            f"{format_bytes(per_sample)} per sample for this network's activations, deltas and scratch); {advice}",
            requested=error.requested, free=error.free, total=error.total)
