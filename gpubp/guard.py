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

An ensemble's guard (:class:`MemberGuard`) keeps one flag per member and step: with
``skip_step`` a member's bad step is skipped for that member alone; with
``freeze_member`` a member whose step is bad is frozen for the rest of the run (at the
weights before that step) and reported, while the others go on; with ``raise`` any bad
member ends the run, every member's weights being those before the bad step.

The guard sees the backend, the flat gradient buffer and, when it must explain
a failure, a ``diagnose(batch)`` callable; it knows neither the network nor
the optimizer.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from .backends import Array, Backend
from .errors import DivergenceError, GpubpValueError

MODES = ("raise", "skip_step")
MEMBER_MODES = (*MODES, "freeze_member")
"""An ensemble's modes: also ``freeze_member``, a member that produces NaN/Inf frozen while the others go on."""
GPU_CHECK_EVERY = 32


def check_mode(mode: str, members: bool = False) -> str:
    modes = MEMBER_MODES if members else MODES
    if mode not in modes:
        extra = " (freeze_member is for a gpubp.Ensemble)" if mode == "freeze_member" else ""
        raise GpubpValueError(f"on_nonfinite must be one of {list(modes)}, got {mode!r}{extra}")
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


class MemberGuard:
    """The guard of an ensemble of K members: per step, a ``(K,)`` row of NaN/Inf flags, and the ``(K,)``
    skip flags the optimizer reads (a bad step, or a member held: stopped by early stopping, or frozen).

    ``held`` is the device mask of members not to update; the run sets it (members that stopped
    early) and ``freeze_member`` adds to it on the device, so no step waits for the host.
    """

    def __init__(self, backend: Backend, grads: Array, mode: str, every: int | None, members: int) -> None:
        self.backend, self.grads, self.members = backend, grads, members
        self.mode = check_mode(mode, members=True)
        self.every = every if every is not None else (GPU_CHECK_EVERY if backend.is_gpu else 1)
        self.flags = backend.zeros((self.every, members), np.int32)
        self.skip = backend.zeros((members,), np.int32)
        self.held = backend.zeros((members,), np.int32)
        self.window: list[tuple[int, int, int]] = []

    def hold(self, mask: np.ndarray) -> None:
        """Hold the members where ``mask`` (host booleans) is true: their updates are skipped from now on."""
        self.backend.copy_into(self.held, np.asarray(mask, dtype=np.int32))

    def flag(self, losses: Array) -> Array:
        """This step's NaN/Inf flags, and the skip flags the update reads (returned)."""
        xp = self.backend.xp
        j = len(self.window)
        bad = self.flags[j]
        self.backend.nonfinite_flags(self.grads, losses, bad)
        xp.greater(bad, self.held, out=bad)  # a held member's values are not its training's: not counted
        xp.maximum(bad, self.held, out=self.skip)
        if self.mode == "raise":  # a bad step (this one, or earlier in the window): every member stays before it
            xp.maximum(self.skip, self.flags[:j + 1].max(), out=self.skip)
        elif self.mode == "freeze_member":
            xp.maximum(self.held, bad, out=self.held)
        return self.skip

    def record(self, step: int, epoch: int, batch: int) -> bool:
        self.window.append((step, epoch, batch))
        return len(self.window) >= self.every

    def check(self, diagnose: Callable[[int, int], str], lr: Any) -> tuple[np.ndarray, list[tuple[int, int]]]:
        """Read the window's flags (one host synchronisation): (steps skipped per member, and the
        ``(member, step)`` of each member's first bad step). With ``raise``, a bad step raises
        :class:`DivergenceError` naming the member, after ``diagnose(batch, member)`` located it."""
        skipped = np.zeros(self.members, dtype=np.int64)
        if not self.window:
            return skipped, []
        window, self.window = self.window, []
        flags = self.backend.to_host(self.flags[:len(window)])
        if not flags.any():
            return skipped, []
        steps, members = np.nonzero(flags)
        if self.mode == "raise":
            step, epoch, batch = window[int(steps[0])]
            member = int(members[0])
            rate = lr[member] if isinstance(lr, (list, tuple)) else lr
            raise DivergenceError(
                f"training diverged: member {member} had NaN or Inf at step {step} (epoch {epoch}, batch "
                f"{batch + 1}), first in {diagnose(batch, member)}. That step's update was not applied to any "
                f"member: every member's weights are those after step {step - 1}. Lower its learning rate "
                f"(it was {rate:g}), or pass on_nonfinite='freeze_member' to freeze such members and train on "
                f"(or 'skip_step' to skip their bad steps).")
        first: dict[int, int] = {}
        for row, column in zip(steps, members):
            first.setdefault(int(column), window[int(row)][0])
        counts: np.ndarray = flags.sum(axis=0).astype(np.int64)
        return counts, sorted(first.items())
