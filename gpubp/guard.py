"""The divergence guard of :meth:`gpubp.MLP.fit`: NaN/Inf found cheaply, reported precisely.

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
averages. An epoch in which every step was skipped raises. On the CPU a
skipped step is exactly as if its batch were not there. On a GPU the host has
already counted a step when the device skips it; the count is corrected at
the next check, so until then Adam's bias correction runs one step ahead
(a small difference, but not bit-identical to leaving the batch out).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .errors import DivergenceError, GpubpValueError

if TYPE_CHECKING:
    from .mlp import MLP, Workspace
    from .optim import Optimizer

MODES = ("raise", "skip_step")
GPU_CHECK_EVERY = 32


class Guard:
    def __init__(self, net: MLP, mode: str, every: int | None) -> None:
        if mode not in MODES:
            raise GpubpValueError(f"on_nonfinite must be one of {list(MODES)}, got {mode!r}")
        if every is None:
            every = GPU_CHECK_EVERY if net.backend.is_gpu else 1
        self.net = net
        self.mode = mode
        self.every = every
        self.flags = net.backend.zeros((every,), np.int32)
        self.window: list[tuple[int, int, int]] = []  # (global step, epoch, batch number) of each step

    def flag(self, loss: Any) -> Any:
        """Write this step's flag (after backward, before the update) and return it for the optimizer."""
        j = len(self.window)
        flag = self.flags[j:j + 1]
        carry = self.flags[j - 1:j] if self.mode == "raise" and j > 0 else None
        self.net.backend.nonfinite_flag(self.net.grads, loss, flag, carry)
        return flag

    def record(self, step: int, epoch: int, batch: int) -> bool:
        """Note the step just taken; True when the window is full and should be checked."""
        self.window.append((step, epoch, batch))
        return len(self.window) >= self.every

    def check(self, optimizer: Optimizer, reload: Callable[[int], Workspace]) -> int:
        """Read the window's flags (one host synchronisation); returns how many steps were skipped.

        ``reload(batch)`` loads batch number ``batch`` of the current epoch into
        a workspace, for the diagnosis.
        """
        if not self.window:
            return 0
        window, self.window = self.window, []
        bad = np.flatnonzero(self.net.backend.to_host(self.flags[:len(window)]))
        if bad.size == 0:
            return 0
        if self.net.backend.is_gpu:  # the kernels skipped these steps, but they were counted
            optimizer.steps -= int(bad.size)
        if self.mode == "raise":
            step, epoch, batch = window[int(bad[0])]
            where = self.net._diagnose_nonfinite(reload(batch))
            raise DivergenceError(
                f"training diverged: NaN or Inf at step {step} (epoch {epoch}, batch {batch + 1}), first in "
                f"{where}. That step's update was not applied: the weights are those after step {step - 1}. "
                f"Lower the learning rate (it was {optimizer.lr:g}), check the inputs' scale, or pass "
                f"on_nonfinite='skip_step' to skip such steps."
            )
        return int(bad.size)
