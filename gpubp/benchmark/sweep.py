"""The configurations ``gpubp bench`` sweeps: square networks × batch sizes, their FLOPs and memory."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ..activations import ACTIVATIONS
from ..workspace import bytes_per_sample

FULL_WIDTHS = (64, 256, 1024, 2048, 4096, 8192)
FULL_DEPTHS = (2, 4, 6)
FULL_BATCHES = (256, 1024, 4096, 16384, 65536)
QUICK_WIDTHS = (64, 256, 1024)
QUICK_DEPTHS = (2, 3)
QUICK_BATCHES = (256, 1024)


@dataclass(frozen=True)
class Config:
    """One network and batch size of the sweep."""

    sizes: tuple[int, ...]
    batch: int

    @property
    def params(self) -> int:
        return sum(i * o + o for i, o in zip(self.sizes[:-1], self.sizes[1:]))

    @property
    def flops(self) -> int:
        return flops_per_step(self.sizes, self.batch)


def flops_per_step(sizes: Sequence[int], batch: int) -> int:
    """Floating-point operations of a training step's GEMMs: 6·batch·Σ fan_in·fan_out.

    Forward ``A·W`` is 2·batch·fan_in·fan_out per layer; backward ``Aᵀ·δ`` and
    ``δ·Wᵀ`` are as much again each (the first layer's ``δ·Wᵀ`` is not needed,
    which the convention ignores, as PyTorch's and most papers' counts do).
    """
    return 6 * int(batch) * sum(int(i) * int(o) for i, o in zip(sizes[:-1], sizes[1:]))


def sweep(quick: bool = False, widths: Sequence[int] | None = None, depths: Sequence[int] | None = None,
          batches: Sequence[int] | None = None) -> list[Config]:
    """The sweep's configurations, smallest step first: square networks ``[width] * (depth + 1)``."""
    widths = widths or (QUICK_WIDTHS if quick else FULL_WIDTHS)
    depths = depths or (QUICK_DEPTHS if quick else FULL_DEPTHS)
    batches = batches or (QUICK_BATCHES if quick else FULL_BATCHES)
    configs = {Config((w,) * (d + 1), b) for w in widths for d in depths for b in batches}
    return sorted(configs, key=lambda c: (c.flops, c.sizes, c.batch))


def workspace_bytes(config: Config, itemsize: int) -> int:
    """Device memory a step needs: parameters and gradients, and the workspace of a batch
    (:func:`gpubp.workspace.bytes_per_sample`: the same formula as the out-of-memory advice).

    The sweep's networks are ReLU with an identity output and MSE, on dense targets (no label buffers).
    """
    keep_z = [ACTIVATIONS["relu"].needs_z] * (len(config.sizes) - 2) + [ACTIVATIONS["identity"].needs_z]
    return itemsize * 2 * config.params + config.batch * bytes_per_sample(config.sizes, itemsize, keep_z,
                                                                          labels=False)
