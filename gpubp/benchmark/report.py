"""The report of ``gpubp bench``: rows, speedups, the largest network per budget, and its outputs
(text table, JSON with a validated schema, markdown, PNG)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import GpubpValueError
from ..plot import pyplot
from .sweep import Config

SCHEMA_VERSION = 1
ROW_FIELDS = ("backend", "device", "sizes", "batch", "dtype", "params", "flops", "step_ms", "gemm_ms",
              "step_over_gemm", "samples_per_s", "tflops")
OPTIONAL_ROW_FIELDS = ("torch_ms", "step_over_torch")


def make_row(backend: str, device: str, config: Config, dtype: str, seconds: dict[str, float]) -> dict[str, Any]:
    """A report row from measured seconds per step (``step``, ``gemm`` and optionally ``torch``)."""
    step = seconds["step"]
    row: dict[str, Any] = {
        "backend": backend, "device": device, "sizes": list(config.sizes), "batch": config.batch, "dtype": dtype,
        "params": config.params, "flops": config.flops, "step_ms": step * 1e3, "gemm_ms": seconds["gemm"] * 1e3,
        "step_over_gemm": step / seconds["gemm"], "samples_per_s": config.batch / step,
        "tflops": config.flops / step / 1e12,
    }
    if "torch" in seconds:
        row["torch_ms"] = seconds["torch"] * 1e3
        row["step_over_torch"] = step / seconds["torch"]
    return row


def speedups(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For every configuration both NumPy and CuPy ran: CPU time / GPU time."""
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for row in rows:
        by_key.setdefault((tuple(row["sizes"]), row["batch"]), {})[row["backend"]] = row
    out = []
    for (sizes, batch), pair in sorted(by_key.items(), key=lambda item: (item[0][0], item[0][1])):
        if "numpy" in pair and "cupy" in pair:
            out.append({"sizes": list(sizes), "batch": batch, "numpy_ms": pair["numpy"]["step_ms"],
                        "cupy_ms": pair["cupy"]["step_ms"],
                        "speedup": pair["numpy"]["step_ms"] / pair["cupy"]["step_ms"]})
    return out


def largest_within_budget(rows: list[dict[str, Any]], samples: int = 60000,
                          seconds: float = 10.0) -> list[dict[str, Any]]:
    """Per backend, the largest network (by parameters) that trains ``samples`` in at most ``seconds``."""
    out = []
    for backend in sorted({row["backend"] for row in rows}):
        fitting = [row for row in rows if row["backend"] == backend and samples / row["samples_per_s"] <= seconds]
        if not fitting:
            out.append({"backend": backend, "sizes": None, "batch": None, "params": 0, "epoch_s": None})
            continue
        best = max(fitting, key=lambda row: (row["params"], row["samples_per_s"]))
        out.append({"backend": backend, "sizes": best["sizes"], "batch": best["batch"], "params": best["params"],
                    "epoch_s": samples / best["samples_per_s"]})
    return out


def header() -> str:
    return (f"{'backend':<7} {'sizes':<20} {'batch':>6} {'step ms':>9} {'GEMMs ms':>9} {'step/GEMM':>9} "
            f"{'samples/s':>10} {'TFLOP/s':>8} {'torch ms':>9} {'step/torch':>10}")


def _sizes_text(sizes: Sequence[int]) -> str:
    sizes = list(sizes)
    return f"[{sizes[0]}]×{len(sizes)}" if len(set(sizes)) == 1 else str(sizes)


def format_row(row: dict[str, Any]) -> str:
    torch_ms = f"{row['torch_ms']:9.3f}" if "torch_ms" in row else f"{'-':>9}"
    over = f"{row['step_over_torch']:10.2f}" if "step_over_torch" in row else f"{'-':>10}"
    return (f"{row['backend']:<7} {_sizes_text(row['sizes']):<20} {row['batch']:>6} {row['step_ms']:9.3f} "
            f"{row['gemm_ms']:9.3f} {row['step_over_gemm']:9.2f} {row['samples_per_s']:10.4g} "
            f"{row['tflops']:8.3f} {torch_ms} {over}")


def summary(report: dict[str, Any]) -> str:
    """The speedup and budget tables, as text."""
    lines = []
    if report["speedups"]:
        lines.append("\nCPU vs GPU (same step): speedup = NumPy ms / CuPy ms")
        lines += [f"  {_sizes_text(s['sizes']):<20} batch {s['batch']:>6}: {s['numpy_ms']:10.3f} ms vs "
                  f"{s['cupy_ms']:8.3f} ms = {s['speedup']:7.1f}x" for s in report["speedups"]]
    settings = report["settings"]
    lines.append(f"\nLargest network measured that trains {settings['budget_samples']} samples in "
                 f"<= {settings['budget_s']:g} s:")
    for entry in report["largest_within_budget"]:
        if entry["sizes"] is None:
            lines.append(f"  {entry['backend']}: none of the measured configurations")
        else:
            lines.append(f"  {entry['backend']}: {_sizes_text(entry['sizes'])} ({entry['params']:,} parameters), "
                         f"batch {entry['batch']}, one epoch in {entry['epoch_s']:.2f} s")
    if report["skipped"]:
        lines.append(f"\n{len(report['skipped'])} configurations skipped (memory or time limits; see the JSON).")
    return "\n".join(lines)


def markdown(report: dict[str, Any]) -> str:
    """A markdown table of the rows (for the README), with the machine and command above it."""
    machine = report["machine"]
    where = f"{machine['cpu']}, {machine['cores']} cores" + (f"; {machine['gpu']}" if machine.get("gpu") else "")
    lines = [f"Measured {report['date']} on {where}; numpy {machine['numpy']}, torch {machine['torch']}"
             + (f", cupy {machine['cupy']}" if machine.get("cupy") else "") + f"; `{report['command']}`; "
             f"{report['settings']['dtype']}, median of {report['settings']['repeats']} rounds.", "",
             "| backend | sizes | batch | step ms | GEMMs ms | step / GEMMs | samples/s | TFLOP/s | torch ms "
             "| step / torch |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in report["rows"]:
        torch_ms = f"{row['torch_ms']:.3g}" if "torch_ms" in row else "–"
        over = f"{row['step_over_torch']:.2f}" if "step_over_torch" in row else "–"
        lines.append(f"| {row['backend']} | {_sizes_text(row['sizes'])} | {row['batch']} | {row['step_ms']:.3g} | "
                     f"{row['gemm_ms']:.3g} | {row['step_over_gemm']:.2f} | {row['samples_per_s']:.3g} | "
                     f"{row['tflops']:.3g} | {torch_ms} | {over} |")
    if report["speedups"]:
        lines += ["", "| sizes | batch | NumPy ms | CuPy ms | GPU speedup |", "| --- | ---: | ---: | ---: | ---: |"]
        lines += [f"| {_sizes_text(s['sizes'])} | {s['batch']} | {s['numpy_ms']:.3g} | {s['cupy_ms']:.3g} | "
                  f"{s['speedup']:.1f}× |" for s in report["speedups"]]
    settings = report["settings"]
    lines += ["", f"| backend | largest network measured for {settings['budget_samples']} samples in "
                  f"≤ {settings['budget_s']:g} s | parameters | batch | epoch s |",
              "| --- | --- | ---: | ---: | ---: |"]
    for entry in report["largest_within_budget"]:
        if entry["sizes"] is None:
            lines.append(f"| {entry['backend']} | none | – | – | – |")
        else:
            lines.append(f"| {entry['backend']} | {_sizes_text(entry['sizes'])} | {entry['params']:,} | "
                         f"{entry['batch']} | {entry['epoch_s']:.2f} |")
    return "\n".join(lines) + "\n"


def plot(report: dict[str, Any], path: str | os.PathLike) -> Path:
    """PNG: step / GEMM floor against width per backend, and the GPU speedup against width (when measured)."""
    plt = pyplot()
    figure = make_figure(report)
    figure.savefig(Path(path), dpi=110)
    plt.close(figure)
    return Path(path)


def _width_axis(axis: Any, widths: Sequence[int]) -> None:
    """A log axis labelled at exactly the widths measured."""
    from matplotlib.ticker import NullFormatter, NullLocator

    axis.set_xscale("log")
    axis.xaxis.set_minor_locator(NullLocator())
    axis.xaxis.set_minor_formatter(NullFormatter())
    axis.set_xticks(list(widths), [str(w) for w in widths])
    axis.set_xlabel("width w")


def make_figure(report: dict[str, Any]) -> Any:
    """The figure of :func:`plot` (a matplotlib Figure); series named as the tables name networks,
    ``[w]×3`` for three layers' widths of w (two weight layers)."""
    plt = pyplot()
    if not report["rows"]:
        raise GpubpValueError("the report has no measured rows to plot")
    panels = 2 if report["speedups"] else 1
    figure, axes = plt.subplots(1, panels, figsize=(6.5 * panels, 4.6), squeeze=False)
    axis = axes[0][0]
    series = _series(report["rows"], "step_over_gemm")
    batches = sorted({key[2] for key in series})
    depths = sorted({key[1] for key in series})
    colours = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(batches)))
    styles = ["-", "--", ":", "-."]
    markers = {"numpy": "o", "cupy": "s"}
    for (backend, depth, batch), points in series.items():
        axis.plot(*zip(*points), marker=markers.get(backend, "o"), markersize=4,
                  color=colours[batches.index(batch)], linestyle=styles[depths.index(depth) % len(styles)],
                  label=f"{backend}, [w]×{depth + 1}, batch {batch}")
    _width_axis(axis, sorted({row["sizes"][0] for row in report["rows"]}))
    axis.set(ylabel="step time / GEMM time", title="Overhead over the GEMM floor")
    axis.axhline(1.0, color="grey", linestyle=":")
    axis.legend(fontsize=6, ncol=2, handlelength=4)
    if panels == 2:
        axis = axes[0][1]
        pairs: dict[tuple, list] = {}
        for s in report["speedups"]:
            pairs.setdefault((len(s["sizes"]) - 1, s["batch"]), []).append((s["sizes"][0], s["speedup"]))
        for (depth, batch), points in sorted(pairs.items()):
            axis.plot(*zip(*sorted(points)), marker="o", linestyle=styles[depths.index(depth) % len(styles)]
                      if depth in depths else "-", label=f"[w]×{depth + 1}, batch {batch}")
        _width_axis(axis, sorted({s["sizes"][0] for s in report["speedups"]}))
        axis.set(yscale="log", ylabel="NumPy time / CuPy time", title="GPU speedup of a training step")
        axis.legend(fontsize=7, handlelength=4)
    figure.suptitle(f"gpubp bench, {report['date']}", fontsize=10)
    figure.tight_layout()
    return figure


def _series(rows: list[dict[str, Any]], key: str) -> dict[tuple, list]:
    series: dict[tuple, list] = {}
    for row in rows:
        series.setdefault((row["backend"], len(row["sizes"]) - 1, row["batch"]), []).append((row["sizes"][0], row[key]))
    return {k: sorted(v) for k, v in sorted(series.items())}


def validate_report(report: dict[str, Any]) -> None:
    """Raise ``ValueError`` naming the first field that does not follow the schema."""
    for key in ("schema_version", "date", "command", "gpubp", "machine", "settings", "rows", "skipped",
                "speedups", "largest_within_budget"):
        if key not in report:
            raise ValueError(f"report lacks {key!r}")
    if report["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"schema_version {report['schema_version']!r}, expected {SCHEMA_VERSION}")
    for index, row in enumerate(report["rows"]):
        missing = [field for field in ROW_FIELDS if field not in row]
        if missing:
            raise ValueError(f"rows[{index}] lacks {missing}")
        extra = set(row) - set(ROW_FIELDS) - set(OPTIONAL_ROW_FIELDS)
        if extra:
            raise ValueError(f"rows[{index}] has unknown fields {sorted(extra)}")
        if ("torch_ms" in row) != ("step_over_torch" in row):
            raise ValueError(f"rows[{index}]: torch_ms and step_over_torch go together")
        for field in ("step_ms", "gemm_ms", "samples_per_s", "tflops"):
            if not (isinstance(row[field], float) and row[field] > 0 and np.isfinite(row[field])):
                raise ValueError(f"rows[{index}].{field} must be a positive number, got {row[field]!r}")


def write_json(report: dict[str, Any], path: str | os.PathLike) -> None:
    validate_report(report)
    Path(path).write_text(json.dumps(report, indent=1) + "\n", encoding="utf-8")
