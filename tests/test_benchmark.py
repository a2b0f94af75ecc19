"""gpubp bench: the sweep, the FLOP count, the ratios, the report schema and the outputs — tiny configs, CPU."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import gpubp
from gpubp import benchmark
from gpubp.benchmark import Config, flops_per_step, largest_within_budget, make_row, speedups, sweep, validate_report
from gpubp.cli import main


def test_flop_count():
    assert flops_per_step([784, 128, 10], 100) == 6 * 100 * (784 * 128 + 128 * 10)
    assert flops_per_step([5, 5], 1) == 150
    assert Config((784, 128, 10), 100).flops == flops_per_step([784, 128, 10], 100)
    assert Config((784, 128, 10), 1).params == 784 * 128 + 128 + 128 * 10 + 10


def test_sweep_shapes():
    quick, full = sweep(quick=True), sweep()
    assert len(quick) == 3 * 2 * 2 and len(full) == 6 * 3 * 5
    assert {c.sizes[0] for c in full} == {64, 256, 1024, 2048, 4096, 8192}
    assert {len(c.sizes) - 1 for c in full} == {2, 4, 6} and {c.batch for c in full} == {256, 1024, 4096, 16384, 65536}
    assert all(len(set(c.sizes)) == 1 for c in full)  # square networks
    assert [c.flops for c in full] == sorted(c.flops for c in full)  # cheapest first
    custom = sweep(widths=[8, 16], depths=[3], batches=[4])
    assert [c.sizes for c in custom] == [(8, 8, 8, 8), (16, 16, 16, 16)]


def test_row_ratios():
    config = Config((100, 100, 100), 50)
    row = make_row("numpy", "cpu", config, "float32", {"step": 0.002, "gemm": 0.0016, "torch": 0.0025})
    assert row["step_ms"] == pytest.approx(2.0) and row["gemm_ms"] == pytest.approx(1.6)
    assert row["step_over_gemm"] == pytest.approx(1.25) and row["step_over_torch"] == pytest.approx(0.8)
    assert row["samples_per_s"] == pytest.approx(25000) and row["tflops"] == pytest.approx(config.flops / 0.002 / 1e12)
    assert "torch_ms" not in make_row("numpy", "cpu", config, "float32", {"step": 1.0, "gemm": 1.0})


def _row(backend, width, batch, step_ms):
    return make_row(backend, "d", Config((width,) * 3, batch), "float32",
                    {"step": step_ms / 1e3, "gemm": step_ms / 2e3})


def test_speedups_pair_only_configs_both_backends_ran():
    rows = [_row("numpy", 64, 256, 10.0), _row("cupy", 64, 256, 0.5), _row("numpy", 128, 256, 40.0),
            _row("cupy", 256, 256, 1.0)]
    out = speedups(rows)
    assert out == [{"sizes": [64, 64, 64], "batch": 256, "numpy_ms": 10.0, "cupy_ms": 0.5, "speedup": 20.0}]


def test_largest_network_within_budget():
    rows = [_row("numpy", 64, 256, 1.0), _row("numpy", 1024, 256, 100.0), _row("numpy", 256, 1024, 30.0),
            _row("cupy", 1024, 1024, 2.0)]
    # numpy: [1024]x3 at 256/0.1 s = 2,560 samples/s -> 23 s per 60,000: over budget; [256]x3 at 1024/0.03 s fits
    out = {entry["backend"]: entry for entry in largest_within_budget(rows, 60000, 10.0)}
    assert out["numpy"]["sizes"] == [256, 256, 256] and out["numpy"]["epoch_s"] == pytest.approx(60000 / (1024 / 0.03))
    assert out["cupy"]["sizes"] == [1024] * 3
    assert largest_within_budget([_row("numpy", 1024, 256, 100.0)], 60000, 1.0)[0]["sizes"] is None


def test_run_on_tiny_configs_produces_a_valid_report(capsys, monkeypatch):
    backend = gpubp.get_backend("numpy")
    monkeypatch.setattr(benchmark, "gemm_rate", lambda backend, dtype, clock, precision="highest": 1e10)
    configs = sweep(widths=[8, 16], depths=[2], batches=[4, 32]) + [Config((8192,) * 3, 65536)]
    report = benchmark.run([backend], configs, repeats=2, with_torch=False, log=lambda line: None)
    validate_report(report)
    assert len(report["rows"]) == 4 and len(report["skipped"]) == 1
    assert "estimated step" in report["skipped"][0]["reason"] or "GiB" in report["skipped"][0]["reason"]
    assert all(row["step_ms"] > 0 and row["gemm_ms"] > 0 for row in report["rows"])
    assert report["speedups"] == [] and report["largest_within_budget"][0]["backend"] == "numpy"
    json.loads(json.dumps(report))  # serialisable


def test_memory_limit_skips(monkeypatch):
    monkeypatch.setattr(benchmark, "available_bytes", lambda backend: 1000)
    monkeypatch.setattr(benchmark, "gemm_rate", lambda backend, dtype, clock, precision="highest": 1e10)
    report = benchmark.run([gpubp.get_backend("numpy")], sweep(widths=[8], depths=[2], batches=[4]), repeats=1,
                           with_torch=False, log=lambda line: None)
    assert report["rows"] == [] and "GiB available" in report["skipped"][0]["reason"]


@pytest.mark.parametrize("damage,message", [
    (lambda r: r.pop("rows"), "lacks 'rows'"),
    (lambda r: r.update(schema_version=2), "schema_version 2"),
    (lambda r: r["rows"][0].pop("tflops"), r"rows\[0\] lacks \['tflops'\]"),
    (lambda r: r["rows"][0].update(colour="red"), "unknown fields"),
    (lambda r: r["rows"][0].update(step_ms=-1.0), "step_ms must be a positive number"),
    (lambda r: r["rows"][0].pop("step_over_torch"), "go together"),
])
def test_schema_validation_catches(damage, message):
    report = {"schema_version": 1, "date": "2026-11-28", "command": "gpubp bench", "gpubp": "0", "machine": {},
              "settings": {}, "rows": [make_row("numpy", "d", Config((4, 4), 2), "float32",
                                                 {"step": 1e-3, "gemm": 5e-4, "torch": 2e-3})],
              "skipped": [], "speedups": [], "largest_within_budget": []}
    validate_report(report)
    damage(report)
    with pytest.raises(ValueError, match=message):
        validate_report(report)


def test_rows_compare_with_torch_where_installed():
    torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install torch): it is the comparison")
    row = benchmark.measure(gpubp.get_backend("numpy"), Config((8, 8, 8), 4), "float32", repeats=1)
    assert row["torch_ms"] > 0 and row["step_over_torch"] == pytest.approx(row["step_ms"] / row["torch_ms"])
    assert torch.__version__


def test_cli_bench_end_to_end(tmp_path, capsys):
    pytest.importorskip("matplotlib", reason="--plot needs matplotlib")
    paths = {key: tmp_path / f"bench.{key}" for key in ("json", "md", "png")}
    code = main(["bench", "--backend", "numpy", "--widths", "8,16", "--depths", "2", "--batches", "4",
                 "--repeats", "1", "--no-torch", "--json", str(paths["json"]), "--markdown", str(paths["md"]),
                 "--plot", str(paths["png"])])
    assert code == 0
    out = capsys.readouterr().out
    assert "step/GEMM" in out and "Largest network measured that trains 60000 samples" in out
    report = json.loads(paths["json"].read_text())
    validate_report(report)
    assert len(report["rows"]) == 2 and report["machine"]["numpy"] == np.__version__
    assert "| numpy | [8]×3 | 4 |" in paths["md"].read_text()
    assert paths["png"].read_bytes()[:4] == b"\x89PNG"


def test_cli_bench_without_a_gpu_says_why(capsys):
    if gpubp.cupy_status()[0]:
        pytest.skip("a GPU is usable here")
    assert main(["bench", "--backend", "cupy", "--quick"]) == 2
    assert "gpubp: error:" in capsys.readouterr().err


def test_a_config_that_runs_out_of_memory_is_skipped_not_fatal(monkeypatch):
    from gpubp.errors import DeviceMemoryError

    def measure(backend, config, dtype, repeats, with_torch, precision="highest"):
        if config.batch == 32:
            raise DeviceMemoryError("out of GPU memory: 1 bytes were asked for\nsecond line")
        return make_row(backend.name, "d", config, dtype, {"step": 1e-3, "gemm": 5e-4})

    monkeypatch.setattr(benchmark, "measure", measure)
    monkeypatch.setattr(benchmark, "gemm_rate", lambda backend, dtype, clock, precision="highest": 1e10)
    report = benchmark.run([gpubp.get_backend("numpy")], sweep(widths=[8], depths=[2], batches=[4, 32]), repeats=1,
                           with_torch=False, log=lambda line: None)
    assert len(report["rows"]) == 1
    assert report["skipped"][0]["reason"] == "out of memory: out of GPU memory: 1 bytes were asked for"


def test_the_plot_names_series_as_the_tables_do_and_labels_the_widths_measured():
    pytest.importorskip("matplotlib", reason="plots need matplotlib")
    from gpubp.benchmark import make_figure
    from gpubp.plot import pyplot

    rows = [_row("numpy", w, b, 1.0 + w / 1000) for w in (64, 256, 1024) for b in (256, 1024)]
    rows += [make_row("numpy", "d", Config((w,) * 5, 256), "float32", {"step": 2e-3, "gemm": 1e-3})
             for w in (64, 256, 1024)]
    report = {"rows": rows, "speedups": [], "date": "2026-11-29"}
    figure = make_figure(report)
    try:
        axis = figure.axes[0]
        legend = axis.get_legend()
        labels = [text.get_text() for text in legend.get_texts()]
        assert "numpy, [w]×3, batch 256" in labels and "numpy, [w]×5, batch 256" in labels
        assert legend.handlelength >= 4  # long enough to show the dash pattern of each depth
        assert [tick.get_text() for tick in axis.get_xticklabels()] == ["64", "256", "1024"]
        styles = {line.get_label(): line.get_linestyle() for line in axis.get_lines()}
        assert styles["numpy, [w]×3, batch 256"] != styles["numpy, [w]×5, batch 256"]
    finally:
        pyplot().close(figure)


@pytest.mark.parametrize("option,name,message", [
    ("--json", "missing/b.json", "directory .*missing' does not exist"),
    ("--markdown", "b.txt", "--markdown must name a .md file"),
    ("--plot", "b.svg", "--plot must name a .png file"),
])
def test_bench_outputs_are_checked_before_measuring(tmp_path, capsys, option, name, message):
    assert main(["bench", "--quick", "--no-torch", option, str(tmp_path / name)]) == 2
    captured = capsys.readouterr()
    assert re.search(message, captured.err) and captured.out == ""  # nothing was measured
