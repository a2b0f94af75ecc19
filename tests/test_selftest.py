"""gpubp selftest: passes on NumPy and on the host build of the kernels, and fails when an operation is wrong."""

from __future__ import annotations

import json

import numpy as np
import pytest

import gpubp
from gpubp import selftest
from gpubp.cli import main


def _by_name(checks):
    return {check.name: check for check in checks}


def test_every_check_passes_or_does_not_apply_on_numpy():
    checks = _by_name(selftest.run(gpubp.get_backend("numpy"), quick=True))
    assert len(checks) == 9 and not [c for c in checks.values() if c.passed is False]
    assert checks["kernels compile and load"].passed is None
    assert checks["no host synchronisation in a step"].passed is None
    assert "54 operations" in checks["fused operations = reference"].detail


def test_every_check_passes_on_the_host_build_of_the_kernels(host_kernels):
    import kernel_host

    backend = kernel_host.HostFusedBackend(host_kernels, max_blocks=64)
    checks = _by_name(selftest.run(backend, quick=True))
    assert not [c.name for c in checks.values() if c.passed is False], selftest.table(list(checks.values()))
    assert checks["kernels compile and load"].passed is True
    deterministic = checks["bias gradient deterministic"]
    assert deterministic.passed is True and "(kernel)" in deterministic.detail


def test_a_wrong_kernel_is_caught_and_named(host_kernels, monkeypatch):
    import kernel_host

    backend = kernel_host.HostFusedBackend(host_kernels, max_blocks=64)
    real = backend.ops.act_backward

    def off_by_a_little(activation, delta, z, a):
        real(activation, delta, z, a)
        if activation == "silu":
            delta *= 1.001  # a 0.1 % error in one σ'

    monkeypatch.setattr(backend.ops, "act_backward", off_by_a_little)
    check = _by_name(selftest.run(backend, quick=True))["fused operations = reference"]
    assert check.passed is False and "FAILED: silu backward (float32), silu backward (float64)" in check.detail


def test_the_command_writes_json_and_its_exit_code_says_pass_or_fail(tmp_path, capsys, monkeypatch):
    path = tmp_path / "selftest.json"
    assert main(["selftest", "--backend", "numpy", "--quick", "--json", str(path)]) == 0
    report = json.loads(path.read_text())
    assert report["backend"] == "numpy" and len(report["checks"]) == 9
    assert "all checks passed" in capsys.readouterr().out
    monkeypatch.setattr(selftest, "run", lambda backend, quick: [selftest.Check("made up", False, "broken")])
    assert main(["selftest", "--backend", "numpy"]) == 1
    assert "FAILED: made up" in capsys.readouterr().out


def test_a_crashing_check_is_a_failure_with_its_reason():
    check = selftest._timed("crashes", lambda: 1 / 0)
    assert check.passed is False and check.detail.startswith("ZeroDivisionError")


@pytest.mark.parametrize("actual,expected,error", [
    ([1.0, 2.0], [1.0, 2.0], 0.0), ([1.0, np.nan], [1.0, 2.0], float("inf")), ([2.0], [1.0], 0.5),
])
def test_the_error_measure(actual, expected, error):
    assert selftest._error(np.array(actual), np.array(expected)) == error
