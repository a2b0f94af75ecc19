"""The exceptions gpubp raises for mistakes a caller can make.

Every error is a subclass of :class:`GpubpError` and also of the built-in
``ValueError`` or ``TypeError``, so ``except ValueError`` keeps working.
Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations


def format_bytes(n: float) -> str:
    """Sizes for messages: ``512 bytes``, ``3.2 MiB``, ``1.5 GiB``."""
    for unit in ("bytes", "KiB", "MiB"):
        if n < 1024:
            return f"{int(n)} bytes" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


class GpubpError(Exception):
    """Base class of every error gpubp raises on purpose."""


class GpubpValueError(GpubpError, ValueError):
    """An argument has the right type but a wrong value, shape or content."""


class GpubpTypeError(GpubpError, TypeError):
    """An argument has the wrong type or dtype."""


class BackendUnavailableError(GpubpError, RuntimeError):
    """A backend was asked for by name and cannot run on this machine."""


class KernelCompileError(GpubpError, RuntimeError):
    """A CUDA kernel source in ``kernels/`` failed to compile; the message carries the compiler log."""


class DatasetNotFoundError(GpubpError, FileNotFoundError):
    """A dataset's files are not where gpubp looked; the message says where it looked and how to get them."""


class DatasetFormatError(GpubpError, ValueError):
    """A dataset file is corrupt, truncated or not in the format its name promises."""


class OptionalDependencyError(GpubpError, ImportError):
    """A feature needs a package that is an optional extra of gpubp; the message says which to install."""


class DivergenceError(GpubpError, FloatingPointError):
    """Training produced NaN or Inf; the message names the step and where the values first appeared."""


class FileWriteError(GpubpError, OSError):
    """A file could not be written where the caller asked (no such directory, no permission, disk full);
    the message names the path the caller gave."""


class GpubpWarning(UserWarning):
    """Something worth knowing that is not an error: a fallback, a default that may surprise, an overflow."""


class DeviceMemoryError(GpubpError, MemoryError):
    """The GPU ran out of memory; the message gives the size asked for, the free memory, and what to try.

    ``requested``, ``free`` and ``total`` are in bytes (``None`` where unknown).
    """

    def __init__(self, message: str, requested: int | None = None, free: int | None = None,
                 total: int | None = None) -> None:
        super().__init__(message)
        self.requested, self.free, self.total = requested, free, total
