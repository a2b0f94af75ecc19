"""The divergence guard of the training loop: NaN/Inf found cheaply, reported precisely.

Each step, after backpropagation, one pass over the flat gradient buffer (and
the loss) writes a flag on the device: 1 if anything is NaN or ±Inf. The
optimizer's update reads that flag itself and does nothing when it is set, so
a bad step never reaches the weights and nothing waits for the GPU. The flags
of a window of ``every`` steps sit in one small device array that the host
reads once per window (every step on the CPU, where reading is free; every 32
steps by default on a GPU) and at the end of each epoch.

``on_nonfinite="raise"``: the flag is carried forward within the window, so
once a step is bad every later step of the window is skipped too and the
weights stay exactly those before the bad step. When the host sees it, the
bad batch is run again on those weights and the first place a non-finite
value appears — a layer's weights, its forward pass, the loss, a layer's
backward pass or its gradient — is named in a :class:`DivergenceError`.

``on_nonfinite="skip_step"``: bad steps are skipped one by one and counted
(``skipped_steps`` in the history); their losses are left out of the epoch's
averages. An epoch in which every step was skipped raises. A skipped step is
exactly as if its batch were not there, on every backend: the optimizer's step
count lives on the device and the update counts itself only when it runs.

The guard sees the backend, the flat gradient buffer and, when it must explain
a failure, a ``diagnose(batch)`` callable; it knows neither the network nor
the optimizer.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .backends import Array, Backend
from .errors import DivergenceError, GpubpValueError

MODES = ("raise", "skip_step")
GPU_CHECK_EVERY = 32


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise GpubpValueError(f"on_nonfinite must be one of {list(MODES)}, got {mode!r}")
    return mode


class Guard:
    """The NaN/Inf flags of a window of steps over ``grads``, read by the host once per window."""

    def __init__(self, backend: Backend, grads: Array, mode: str, every: int | None) -> None:
        self.backend = backend
        self.grads = grads
        self.mode = check_mode(mode)
        self.every = every if every is not None else (GPU_CHECK_EVERY if backend.is_gpu else 1)
        self.flags = backend.zeros((self.every,), np.int32)
        self.window: list[tuple[int, int, int]] = []  # (global step, epoch, batch number) of each step

    def flag(self, loss: Array) -> Array:
        """Write this step's flag (after backward, before the update) and return it for the optimizer."""
        j = len(self.window)
        flag = self.flags[j:j + 1]
        carry = self.flags[j - 1:j] if self.mode == "raise" and j > 0 else None
        self.backend.nonfinite_flag(self.grads, loss, flag, carry)
        return flag

    def record(self, step: int, epoch: int, batch: int) -> bool:
        """Note the step just taken; True when the window is full and should be checked."""
        self.window.append((step, epoch, batch))
        return len(self.window) >= self.every

    def check(self, diagnose: Callable[[int], str], lr: float) -> int:
        """Read the window's flags (one host synchronisation); returns how many steps were skipped.

        ``diagnose(batch)`` runs batch number ``batch`` of the current epoch
        again and says where the first NaN/Inf appears; ``lr`` is named in the
        error's advice.
        """
        if not self.window:
            return 0
        window, self.window = self.window, []
        bad = np.flatnonzero(self.backend.to_host(self.flags[:len(window)]))
        if bad.size == 0:
            return 0
        if self.mode == "raise":
            step, epoch, batch = window[int(bad[0])]
            where = diagnose(batch)
            raise DivergenceError(
                f"training diverged: NaN or Inf at step {step} (epoch {epoch}, batch {batch + 1}), first in "
                f"{where}. That step's update was not applied: the weights are those after step {step - 1}. "
                f"Lower the learning rate (it was {lr:g}), check the inputs' scale, or pass "
                f"on_nonfinite='skip_step' to skip such steps."
            )
        return int(bad.size)
