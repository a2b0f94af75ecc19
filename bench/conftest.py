"""pytest-benchmark suites: ``pytest bench/ --benchmark-only`` (compare commits with
``--benchmark-autosave`` and ``--benchmark-compare``). Every backend that runs here is timed;
GPU work is synchronised inside the timed call, so the numbers are device time plus launch."""

from __future__ import annotations

import pytest

import gpubp


def _backends() -> list:
    usable, reason = gpubp.cupy_status()
    return ["numpy", pytest.param("cupy", marks=pytest.mark.skipif(not usable, reason=f"no GPU: {reason}"))]


@pytest.fixture(params=_backends())
def backend(request):
    return gpubp.get_backend(request.param)
