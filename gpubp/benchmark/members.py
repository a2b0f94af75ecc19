"""``gpubp bench --members``: K networks as one :class:`gpubp.Ensemble` step against K separate steps.

For each network (default: ``[64, 64, 64, 10]`` at batch 256 and ``[784, 256, 10]`` at
batch 128; ReLU, softmax cross-entropy on integer labels, Adam), each number of members K
and each backend, in one run:

* ``ensemble_ms``: one training step of an ensemble of K as its ``fit`` runs it (the batched
  step, the per-member guard flags, the update of every member in one pass);
* ``separate_ms``: K networks' :class:`gpubp.MLP` steps one after the other, as ``fit`` runs
  each (the same data and optimizer settings);
* ``speedup`` = separate / ensemble, and ``member_samples_per_s`` = K · batch / ensemble step;
* the same through the public single-step API: ``ensemble_train_step_ms`` (one
  :meth:`gpubp.Ensemble.train_step`) against ``separate_train_step_ms`` (K calls of
  :meth:`gpubp.MLP.train_step`, each checking and loading its batch), and ``train_step_speedup``.

Both are medians over interleaved rounds after a warm-up (:class:`~gpubp.benchmark.timing.Clock`;
CUDA events on a GPU). JSON (``schema`` ``gpubp.bench.members``, version 1)::

    {"schema": "gpubp.bench.members", "schema_version": 1, "date", "command", "gpubp", "machine",
     "settings": {"dtype", "repeats"},
     "rows": [{"backend", "device", "sizes", "batch", "members", "ensemble_ms", "separate_ms",
               "speedup", "member_samples_per_s", "separate_samples_per_s", "ensemble_train_step_ms",
               "separate_train_step_ms", "train_step_speedup"}]}
"""

from __future__ import annotations

import datetime
import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .._version import __version__
from ..ensemble import Ensemble
from ..guard import Guard, MemberGuard
from ..mlp import MLP
from ..optim import Adam
from ..training import Step
from .timing import Clock, as_fit_runs, machine_info, random_array, release_memory

NETWORKS: tuple[tuple[tuple[int, ...], int], ...] = (((64, 64, 64, 10), 256), ((784, 256, 10), 128))
"""(sizes, batch) of the networks ``gpubp bench --members`` measures by default."""
SCHEMA = "gpubp.bench.members"
SCHEMA_VERSION = 1


def _batch(backend: Any, sizes: Sequence[int], batch: int, dtype: str, rng: np.random.Generator) -> tuple[Any, Any]:
    return random_array(backend, (batch, sizes[0]), dtype, rng), rng.integers(0, sizes[-1], batch)


def ensemble_step(backend: Any, sizes: Sequence[int], batch: int, members: int, dtype: str,
                  rng: np.random.Generator) -> Callable[[], None]:
    """One step of an ensemble of ``members`` as its ``fit`` runs it, the batch already loaded."""
    ensemble = Ensemble(sizes, members, activation="relu", loss="cross_entropy", backend=backend, dtype=dtype,
                        seeds=list(range(members)))
    ws = ensemble.load_batch(*_batch(backend, sizes, batch, dtype, rng))
    guard = MemberGuard(backend, ensemble.grads, "raise", None, members)
    step = Step(ensemble, Adam(lr=[1e-3] * members), guard)  # type: ignore[arg-type]
    return as_fit_runs(step, ws, lambda batch, member: ensemble.find_nonfinite(ws, member))


def separate_steps(backend: Any, sizes: Sequence[int], batch: int, members: int, dtype: str,
                   rng: np.random.Generator) -> Callable[[], None]:
    """``members`` networks' steps one after the other, each as ``MLP.fit`` runs it."""
    x, y = _batch(backend, sizes, batch, dtype, rng)
    runs = []
    for seed in range(members):
        net = MLP(sizes, activation="relu", loss="cross_entropy", backend=backend, dtype=dtype, seed=seed)
        ws = net.load_batch(x, y)
        step = Step(net, Adam(lr=1e-3), Guard(backend, net.grads, "raise", None))
        runs.append(as_fit_runs(step, ws, functools.partial(_diagnose, net, ws)))

    def run() -> None:
        for one in runs:
            one()

    return run


def _diagnose(net: MLP, ws: Any, batch: int) -> str:
    return net.find_nonfinite(ws)


def train_steps(backend: Any, sizes: Sequence[int], batch: int, members: int, dtype: str,
                rng: np.random.Generator) -> dict[str, Callable[[], Any]]:
    """``Ensemble.train_step`` once, and ``MLP.train_step`` of ``members`` networks one after the other."""
    x, y = _batch(backend, sizes, batch, dtype, rng)
    ensemble = Ensemble(sizes, members, activation="relu", loss="cross_entropy", backend=backend, dtype=dtype,
                        seeds=list(range(members)))
    sweep = Adam(lr=[1e-3] * members)
    nets = [(MLP(sizes, activation="relu", loss="cross_entropy", backend=backend, dtype=dtype, seed=seed),
             Adam(lr=1e-3)) for seed in range(members)]

    def separate() -> None:
        for net, optimizer in nets:
            net.train_step(x, y, optimizer)

    return {"ensemble_train_step": lambda: ensemble.train_step(x, y, sweep), "separate_train_step": separate}


def measure(backend: Any, sizes: Sequence[int], batch: int, members: int, dtype: str, repeats: int) -> dict[str, Any]:
    """One row: the ensemble's step and the separate steps, timed in the same rounds."""
    rng = np.random.default_rng(0)
    clock = Clock(backend.is_gpu)
    with backend.activate():  # each comparison in rounds of its own: only the pair compared runs in them
        seconds = clock.medians({"ensemble": ensemble_step(backend, sizes, batch, members, dtype, rng),
                                 "separate": separate_steps(backend, sizes, batch, members, dtype, rng)}, repeats)
        release_memory(backend)
        seconds.update(clock.medians(train_steps(backend, sizes, batch, members, dtype, rng), repeats))
    return {"backend": backend.name, "device": backend.device_name(), "sizes": list(sizes), "batch": batch,
            "members": members, "ensemble_ms": seconds["ensemble"] * 1e3, "separate_ms": seconds["separate"] * 1e3,
            "speedup": seconds["separate"] / seconds["ensemble"],
            "member_samples_per_s": members * batch / seconds["ensemble"],
            "separate_samples_per_s": members * batch / seconds["separate"],
            "ensemble_train_step_ms": seconds["ensemble_train_step"] * 1e3,
            "separate_train_step_ms": seconds["separate_train_step"] * 1e3,
            "train_step_speedup": seconds["separate_train_step"] / seconds["ensemble_train_step"]}


def run(backends: Sequence[Any], members: Sequence[int], networks: Sequence[tuple[Sequence[int], int]] = NETWORKS,
        dtype: str = "float32", repeats: int = 5, log: Callable[[str], None] = print,
        command: str = "gpubp bench --members") -> dict[str, Any]:
    """Every network × number of members × backend; returns the report (see the module docstring)."""
    rows = []
    log(header())
    for backend in backends:
        for sizes, batch in networks:
            for k in members:
                try:
                    row = measure(backend, sizes, batch, k, dtype, repeats)
                finally:
                    release_memory(backend)
                rows.append(row)
                log(format_row(row))
    return {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, "date": datetime.date.today().isoformat(),
            "command": command, "gpubp": __version__, "machine": machine_info(backends),
            "settings": {"dtype": dtype, "repeats": repeats}, "rows": rows}


COLUMNS = ("backend", "network", "batch", "K", "ensemble step", "K fit steps", "speedup",
           "members × samples/s", "Ensemble.train_step", "K MLP.train_step", "speedup (train_step)")


def _cells(row: dict[str, Any]) -> list[str]:
    return [row["backend"], "[" + ",".join(map(str, row["sizes"])) + "]", str(row["batch"]), str(row["members"]),
            f"{row['ensemble_ms']:.3g} ms", f"{row['separate_ms']:.3g} ms", f"{row['speedup']:.2f}×",
            f"{row['member_samples_per_s']:,.0f}", f"{row['ensemble_train_step_ms']:.3g} ms",
            f"{row['separate_train_step_ms']:.3g} ms", f"{row['train_step_speedup']:.2f}×"]


WIDTHS = (7, 14, 5, 4, 13, 11, 7, 19, 19, 16, 20)


def header() -> str:
    return "  ".join(f"{name:>{width}}" for name, width in zip(COLUMNS, WIDTHS))


def format_row(row: dict[str, Any]) -> str:
    return "  ".join(f"{cell:>{width}}" for cell, width in zip(_cells(row), WIDTHS))


def markdown(report: dict[str, Any]) -> str:
    """The rows as a markdown table, with the machine and the command."""
    machine = report["machine"]
    lines = [f"`{report['command']}` — gpubp {report['gpubp']}, {report['date']}, {machine.get('cpu')}"
             + (f", {machine['gpu']}" if machine.get("gpu") else "") + f", {report['settings']['dtype']}", "",
             "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(_cells(row)) + " |" for row in report["rows"]]
    return "\n".join(lines) + "\n"
