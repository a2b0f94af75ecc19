"""The one-page summary of ``bench/gpu_acceptance.sh``: every step's status and time, and the figures.

    python bench/acceptance_summary.py OUTDIR SECONDS DRY_RUN > OUTDIR/summary.md

Reads what the steps left in OUTDIR (status.tsv, selftest.json, gpu_tests.xml, kernels.json,
bench.json, bench_tf32.json, fashion_mnist.json, sklearn.json, distributed.json, ensemble.json, info.txt); whatever is
missing is said to be missing.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ElementTree
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gpubp import benchmark  # noqa: E402


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def steps(out: Path) -> list[str]:
    lines = ["| step | status | seconds | log |", "| --- | --- | ---: | --- |"]
    for row in (out / "status.tsv").read_text(encoding="utf-8").splitlines():
        name, status, seconds, log = row.split("\t")
        lines.append(f"| {name} | {status} | {seconds} | {log} |")
    return lines


def gpu_tests(out: Path) -> list[str]:
    """Counts from the JUnit XML: tests that ran, not only those that passed."""
    try:
        root = ElementTree.parse(out / "gpu_tests.xml").getroot()
    except (OSError, ElementTree.ParseError):
        return ["GPU tests: no JUnit XML (the step did not get that far)."]
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return ["GPU tests: the JUnit XML has no test suite."]
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    ran = counts["tests"] - counts["skipped"]
    passed = ran - counts["failures"] - counts["errors"]
    return [f"GPU tests: {counts['tests']} collected, {ran} ran, {passed} passed, {counts['failures']} failed, "
            f"{counts['errors']} errors, {counts['skipped']} skipped."]


def selftest(out: Path) -> list[str]:
    report = _json(out / "selftest.json")
    if report is None:
        return ["selftest: no JSON."]
    marks = {True: "pass", False: "FAIL", None: "n/a"}
    return [f"selftest on {report['device']}:", ""] + [
        f"- {c['name']}: {marks[c['passed']]} — {c['detail']}" for c in report["checks"]]


def bench(out: Path, name: str, title: str) -> list[str]:
    report = _json(out / name)
    if report is None:
        return [f"{title}: no JSON."]
    return [f"{title}:", "```", benchmark.summary(report).strip(), "```"]


def kernels(out: Path) -> list[str]:
    report = _json(out / "kernels.json")
    if report is None:
        return ["kernel benchmark: no JSON."]
    rows = report["rows"]
    worst = min(rows, key=lambda r: r["percent_of_copy"]) if rows else None
    unwritten = [r["operation"] for r in rows if not r["all_written"]]
    lines = [f"kernel benchmark on {report['device']}: {len(rows)} rows, copy ceiling "
             f"{report['copy_ceiling_gb_s']:.0f} GB/s"]
    if worst is not None:
        largest_error = max(r["max_rel_err"] for r in rows)
        lines.append(f"lowest bandwidth: {worst['operation']} at {worst['mb_per_array']:.0f} MB, "
                     f"{worst['percent_of_copy']:.0f} % of a copy; largest error {largest_error:.1e}")
    if unwritten:
        lines.append(f"UNWRITTEN OUTPUTS: {', '.join(unwritten)}")
    return lines


def fashion(out: Path) -> list[str]:
    history = _json(out / "fashion_mnist.json")
    if history is None:
        return ["Fashion-MNIST: not run or no history."]
    summary = history["summary"]
    return [f"Fashion-MNIST recipe: test accuracy {summary.get('test_accuracy', float('nan')):.4f}, "
            f"{summary['epochs']} epochs, {summary['train_samples_per_s']:.0f} training samples/s, "
            f"wall {summary['wall_s']:.1f} s."]


def _table(title: str, columns: list[tuple[str, str]], rows: list[list[str]]) -> list[str]:
    """A titled markdown table: ``columns`` as (heading, alignment: "l" or "r"), then the rows' cells."""
    return [title, "", "| " + " | ".join(name for name, _ in columns) + " |",
            "| " + " | ".join("---:" if align == "r" else "---" for _, align in columns) + " |",
            *("| " + " | ".join(cells) + " |" for cells in rows)]


def sklearn_comparison(out: Path) -> list[str]:
    report = _json(out / "sklearn.json")
    if report is None:
        return ["scikit-learn comparison: not run or no report."]
    columns = [("dataset", "l"), ("dtype", "l"), ("scikit-learn fit s", "r"), ("gpubp fit s", "r"), ("speedup", "r"),
               ("scikit-learn acc", "r"), ("gpubp acc", "r")]
    return _table(f"scikit-learn comparison (gpubp on {report['device']}, scikit-learn on the CPU):", columns, [
        [row["dataset"], row["dtype"], f"{row['sklearn_fit_s']:.2f}", f"{row['gpubp_fit_s']:.2f}",
         f"{row['speedup']:.1f}×", f"{row['sklearn_accuracy']:.4f}", f"{row['gpubp_accuracy']:.4f}"]
        for row in report["rows"]])


def distributed_step(out: Path) -> list[str]:
    report = _json(out / "distributed.json")
    if report is None:
        return ["distributed step: not run or no report."]
    columns = [("ranks", "r"), ("overlap", "l"), ("backend", "l"), ("rows/rank", "r"), ("step ms", "r"),
               ("allreduce ms", "r"), ("share", "r"), ("samples/s", "r")]
    return _table("distributed step (bench/distributed_step.py):", columns, [
        [str(row["ranks"]), "yes" if row.get("overlap") else "no", row["backend"], str(row["rows_per_rank"]),
         f"{row['step_ms']:.3f}", f"{row['allreduce_ms']:.3f}", f"{row['communication_share']:.1%}",
         f"{row['samples_per_s']:.0f}"] for row in report["rows"]])


def ensemble_step(out: Path) -> list[str]:
    report = _json(out / "ensemble.json")
    if report is None:
        return ["ensemble step: not run or no report."]
    columns = [("backend", "l"), ("network", "l"), ("batch", "r"), ("K", "r"), ("ensemble step ms", "r"),
               ("K fit steps ms", "r"), ("speedup", "r"), ("members × samples/s", "r"), ("train_step speedup", "r")]
    return _table("ensemble step (bench/ensemble_step.py; the issue's GPU target: 50× at K = 128):", columns, [
        [row["backend"], str(row["sizes"]), str(row["batch"]), str(row["members"]), f"{row['ensemble_ms']:.3f}",
         f"{row['separate_ms']:.3f}", f"{row['speedup']:.1f}×", f"{row['member_samples_per_s']:.0f}",
         f"{row['train_step_speedup']:.1f}×"] for row in report["rows"]])


def main(argv: list[str]) -> int:
    out, seconds, dry = Path(argv[1]), int(argv[2]), argv[3] == "1"
    info = (out / "info.txt").read_text(encoding="utf-8") if (out / "info.txt").exists() else ""
    lines = [f"# gpubp GPU acceptance{' (DRY RUN on the CPU: nothing here is a GPU figure)' if dry else ''}", "",
             f"Total {seconds} s. Machine, as `gpubp info` saw it:", "", "```", info.strip(), "```", ""]
    parts: list[tuple[str, Callable[[], list[str]]]] = [
        ("steps", lambda: steps(out)), ("selftest", lambda: selftest(out)), ("GPU tests", lambda: gpu_tests(out)),
        ("kernel benchmark", lambda: kernels(out)),
        ("gpubp bench", lambda: bench(out, "bench.json", "gpubp bench, CPU and GPU")),
        ("gpubp bench, TF32", lambda: bench(out, "bench_tf32.json", "gpubp bench, TF32")),
        ("Fashion-MNIST", lambda: fashion(out)), ("scikit-learn", lambda: sklearn_comparison(out)),
        ("distributed", lambda: distributed_step(out)), ("ensemble", lambda: ensemble_step(out))]
    for name, part in parts:
        try:  # one unexpected file must not cost the rest of the page
            lines += [*part(), ""]
        except Exception as error:
            lines += [f"{name}: could not be summarised: {type(error).__name__}: {error}", ""]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
