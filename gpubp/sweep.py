"""The members of a trained :class:`gpubp.Ensemble` side by side: their settings and results, ranked.

What ``gpubp train --members`` prints after a sweep: one row per member — its learning rate,
seed, the epochs it trained, its best epoch, and the metrics of the weights it ended with (those
of its best epoch when early stopping restored them, else of its last epoch) — sorted by the
validation metric, best first.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from .errors import GpubpValueError
from .history import EnsembleHistory


def member_rates(rates: Sequence[float], members: int) -> list[float]:
    """Each member's learning rate in a sweep of ``rates`` over ``members``: the rates in order, each for
    ``members / len(rates)`` consecutive members (repeats of a rate differ by their seeds)."""
    if members % len(rates):
        raise GpubpValueError(f"{members} members cannot share {len(rates)} learning rates evenly: give a multiple of "
                         f"{len(rates)} members")
    repeats = members // len(rates)
    return [float(rates[k // repeats]) for k in range(members)]


def results(history: EnsembleHistory, rates: Sequence[float], seeds: Sequence[int | None],
            restored: bool) -> list[dict[str, Any]]:
    """One row per member: ``member``, ``lr``, ``seed``, ``epochs``, ``best_epoch`` and the metrics of the weights
    it ended with. ``restored``: whether ``fit`` put each member's best weights back (``early_stopping`` with
    ``restore_best=True``): then its best epoch's metrics, else those of the last epoch it trained."""
    if len(rates) != history.members or len(seeds) != history.members:
        raise GpubpValueError(f"rates and seeds must give one value per member ({history.members}), got {len(rates)} "
                         f"rates and {len(seeds)} seeds")
    rows = []
    for k in range(history.members):
        last = history.last_epoch(k)
        best = history.best_epoch[k]
        epoch = best if restored and best is not None else last
        row: dict[str, Any] = {"member": k, "lr": rates[k], "seed": seeds[k], "epochs": last, "best_epoch": best}
        if epoch is not None:
            record = history.records[history.epochs.index(epoch)]
            for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
                if key in record:
                    row[key] = record[key][k]
        if history.frozen[k] is not None:
            row["note"] = f"diverged in epoch {history.frozen[k]}"
        elif history.member_stopped[k] is not None:
            row["note"] = f"stopped after epoch {history.member_stopped[k]}"
        rows.append(row)
    return rows


def ranked(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    """``rows`` best first by ``key`` (higher is better for accuracies, lower otherwise); members without the
    metric (diverged before it was measured) last."""
    known = {name for row in rows for name in row}
    if key not in known:
        raise GpubpValueError(f"key must be one of the rows' metrics {sorted(known)}, got {key!r}")
    sign = -1.0 if "accuracy" in key else 1.0

    def order(row: dict[str, Any]) -> tuple[bool, float]:
        value = row.get(key)
        if value is None or math.isnan(float(value)):
            return True, 0.0
        return False, sign * float(value)

    return sorted(rows, key=order)


def table(rows: list[dict[str, Any]], columns: Sequence[str]) -> str:
    """The rows as a plain-text table, ranked first (``rank`` 1 = best)."""
    def cell(value: Any) -> str:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return "-"
        if isinstance(value, float):
            return f"{value:.4g}"
        return str(value)

    known = {"note", *(name for row in rows for name in row)}
    unknown = [c for c in columns if c not in known]
    if unknown:
        raise GpubpValueError(f"columns {unknown} are not in the rows; they have {sorted(known)}")
    header = ["rank", *columns]
    body = [[str(i), *(cell(row.get(c)) for c in columns)] for i, row in enumerate(rows, start=1)]
    widths = [max(len(line[j]) for line in [header, *body]) for j in range(len(header))]
    return "\n".join("  ".join(text.rjust(width) for text, width in zip(line, widths)) for line in [header, *body])
