"""The training step that ``fit`` runs per batch, per backend (``pytest bench/ --benchmark-only``)."""

from __future__ import annotations

import numpy as np
import pytest

from gpubp.benchmark import Config, gemm_step, gpubp_step

CONFIGS = [Config((784, 256, 128, 10), 256), Config((64,) * 7, 4096), Config((1024,) * 4, 1024)]


def _id(config: Config) -> str:
    return f"{'-'.join(map(str, config.sizes))}@{config.batch}"


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_training_step(benchmark, backend, config):
    step = gpubp_step(backend, config, "float32", np.random.default_rng(0))
    benchmark.group = f"step {_id(config)}"
    benchmark.extra_info.update(flops=config.flops, params=config.params)
    benchmark(lambda: (step(), backend.synchronize()))


@pytest.mark.parametrize("config", CONFIGS, ids=_id)
def test_gemm_floor(benchmark, backend, config):
    """The same step's GEMMs alone: the floor the step above is measured against."""
    step = gemm_step(backend, config, "float32", np.random.default_rng(0))
    benchmark.group = f"step {_id(config)}"
    benchmark(lambda: (step(), backend.synchronize()))
