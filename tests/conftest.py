"""Shared fixtures: one suite over every available backend."""

from __future__ import annotations

import os

import numpy as np
import pytest

import gpubp

CUPY_USABLE, CUPY_REASON = gpubp.cupy_status()
REQUIRE_GPU = os.environ.get("GPUBP_REQUIRE_GPU") == "1"
"""GPUBP_REQUIRE_GPU=1 (the GPU acceptance script sets it): a GPU test that cannot run fails instead of
skipping, so a run without a usable GPU cannot pass for a GPU run."""
requires_gpu = pytest.mark.skipif(not CUPY_USABLE and not REQUIRE_GPU, reason=f"no usable CUDA device: {CUPY_REASON}")


def pytest_runtest_setup(item: pytest.Item) -> None:
    if REQUIRE_GPU and not CUPY_USABLE and item.get_closest_marker("gpu") is not None:
        pytest.fail(f"GPUBP_REQUIRE_GPU=1 but there is no usable CUDA device: {CUPY_REASON}", pytrace=False)


def _backend_params() -> list:
    return ["numpy", "fused-host", pytest.param("cupy", marks=[pytest.mark.gpu, requires_gpu])]


@pytest.fixture(scope="session")
def host_kernels(tmp_path_factory: pytest.TempPathFactory):
    """gpubp's CUDA kernels built for the host with g++ (see kernel_host.py); skipped without a C++ compiler."""
    import kernel_host

    if kernel_host.compiler() is None:
        pytest.skip("no C++ compiler (g++) to build the kernels for the host")
    return kernel_host.HostKernels(kernel_host.build(tmp_path_factory.mktemp("host_kernels")))


@pytest.fixture(params=_backend_params())
def backend(request: pytest.FixtureRequest) -> gpubp.backends.Backend:
    """Each backend in turn: NumPy; NumPy with the fused kernels run on the host
    (``fused-host``: the CuPy backend's operations, checked without a GPU); CuPy
    (marked ``gpu``, skipped without a device)."""
    if request.param == "fused-host":
        import kernel_host

        return kernel_host.HostFusedBackend(request.getfixturevalue("host_kernels"))
    return gpubp.get_backend(request.param)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


def interrupted_before(epoch: int, run, monkeypatch: pytest.MonkeyPatch):
    """``run()``, with the training loop stopped by a KeyboardInterrupt before ``epoch`` (as a killed
    or interrupted run stops: its checkpoint holds the epochs before). The interrupt propagates out of
    ``fit``; what ``run`` returns (the CLI catches it and returns 130) is returned."""
    from gpubp import training

    real_lr = training.checked_lr
    raised = []

    def interrupted(schedule, e, base_lr, epochs):
        if e == epoch:
            raised.append(e)
            raise KeyboardInterrupt(f"interrupted before epoch {epoch}")
        return real_lr(schedule, e, base_lr, epochs)

    with monkeypatch.context() as patch:
        patch.setattr(training, "checked_lr", interrupted)
        try:
            result = run()
        except KeyboardInterrupt:
            result = None
    assert raised == [epoch], "the run never reached the epoch it was to be interrupted before"
    return result


def targets_for(loss: str, n: int, outputs: int, rng: np.random.Generator) -> np.ndarray:
    """Valid targets for ``loss``: labels for cross_entropy, [0, 1] values for bce, anything for the rest."""
    if loss == "cross_entropy":
        return rng.integers(0, outputs, n)
    if loss == "bce":
        return rng.uniform(0, 1, (n, outputs))
    return rng.normal(0, 1, (n, outputs))


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """Skips grouped by reason, one line each (the GPU tests' hundreds of skips in one line);
    ``-rs`` still lists every skipped test with its reason."""
    if "s" in (config.option.reportchars or "") or "a" in (config.option.reportchars or ""):
        return
    counts: dict[str, int] = {}
    for report in terminalreporter.stats.get("skipped", []):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        reason = reason.removeprefix("Skipped: ")
        counts[reason] = counts.get(reason, 0) + 1
    if counts:
        terminalreporter.section("skipped, by reason (-rs lists each test)", sep="-")
        for reason, count in sorted(counts.items(), key=lambda item: -item[1]):
            terminalreporter.write_line(f"{count:5d} {reason}")
