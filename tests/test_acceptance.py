"""bench/gpu_acceptance.sh: every step wired (a dry run on the CPU), and the summary's arithmetic."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
STEPS = ["gpubp info", "gpubp selftest", "GPU tests", "kernel benchmark", "gpubp bench (CPU and GPU)",
         "gpubp bench, TF32", "Fashion-MNIST recipe", "scikit-learn comparison", "distributed step", "ensemble step"]


@pytest.mark.slow
def test_the_dry_run_wires_every_step(tmp_path):
    from test_datasets import _fake_fashion_mnist

    pytest.importorskip("matplotlib", reason="the bench step draws a plot (gpubp[plot])")
    _fake_fashion_mnist(tmp_path / "data" / "fashion-mnist", n_train=300, n_test=50)
    env = {**os.environ, "GPUBP_ACCEPTANCE_DRY_RUN": "1", "GPUBP_DATA": str(tmp_path / "data"),
           "PYTHON": sys.executable}
    env.pop("GPUBP_REQUIRE_GPU", None)
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), str(out)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    status = [line.split("\t") for line in (out / "status.tsv").read_text().splitlines()]
    assert [row[0] for row in status] == STEPS and all(row[1] == "ok" for row in status), status
    summary = (out / "summary.md").read_text()
    assert "DRY RUN on the CPU" in summary and "Fashion-MNIST recipe: test accuracy" in summary
    assert "| digits | float32 |" in summary and "| 1 | no | numpy | 256 |" in summary
    assert (out / "selftest.json").is_file() and (out / "bench.json").is_file() and (out / "gpu_tests.xml").is_file()


@pytest.mark.slow
def test_a_failing_step_is_recorded_and_the_rest_still_run(tmp_path):
    """A step that fails (the kernel benchmark, through a Python that refuses to run it) does not stop the
    script: its status says so, the later steps run, and the exit code is not 0."""
    pytest.importorskip("matplotlib", reason="the bench step draws a plot (gpubp[plot])")
    python = tmp_path / "python"
    python.write_text("#!/usr/bin/env bash\n"
                      'case "$*" in *kernels_gpu.py*) exit 3;; esac\n'
                      f'exec {sys.executable} "$@"\n')
    python.chmod(0o755)
    env = {**os.environ, "GPUBP_ACCEPTANCE_DRY_RUN": "1", "GPUBP_DATA": str(tmp_path / "nowhere"),
           "PYTHON": str(python)}
    out = tmp_path / "out"
    result = subprocess.run(["bash", str(ROOT / "bench" / "gpu_acceptance.sh"), str(out)], capture_output=True,
                            text=True, env=env, cwd=tmp_path, timeout=300)
    status = {row.split("\t")[0]: row.split("\t")[1] for row in (out / "status.tsv").read_text().splitlines()}
    assert result.returncode != 0 and list(status) == STEPS
    assert status["kernel benchmark"] == "failed (exit code 3)"
    assert status["gpubp bench (CPU and GPU)"] == "ok" and status["gpubp bench, TF32"] == "ok"
    assert "| kernel benchmark | failed (exit code 3) |" in (out / "summary.md").read_text()


def test_the_summary_counts_gpu_tests_that_ran(tmp_path):
    (tmp_path / "status.tsv").write_text("GPU tests\tok\t3\tgpu_tests.txt\n")
    (tmp_path / "gpu_tests.xml").write_text(
        '<testsuites><testsuite name="pytest" tests="10" failures="1" errors="0" skipped="4"/></testsuites>')
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "acceptance_summary.py"), str(tmp_path), "42", "0"],
                            capture_output=True, text=True, check=True)
    assert "GPU tests: 10 collected, 6 ran, 5 passed, 1 failed, 0 errors, 4 skipped." in result.stdout
    assert re.search(r"\| GPU tests \| ok \| 3 \|", result.stdout) and "DRY RUN" not in result.stdout
    assert "kernel benchmark: no JSON." in result.stdout


def test_one_unreadable_report_does_not_cost_the_rest_of_the_summary(tmp_path):
    (tmp_path / "status.tsv").write_text("gpubp bench (CPU and GPU)\tok\t9\tbench.txt\n")
    (tmp_path / "bench.json").write_text('{"rows": []}')  # no speedups, no settings: not a report
    (tmp_path / "fashion_mnist.json").write_text(
        '{"summary": {"test_accuracy": 0.9, "epochs": 30, "train_samples_per_s": 1e6, "wall_s": 12.0}}')
    result = subprocess.run([sys.executable, str(ROOT / "bench" / "acceptance_summary.py"), str(tmp_path), "9", "0"],
                            capture_output=True, text=True, check=True)
    assert "gpubp bench: could not be summarised: KeyError" in result.stdout
    assert "Fashion-MNIST recipe: test accuracy 0.9000, 30 epochs" in result.stdout
