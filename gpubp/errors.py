"""The exceptions gpubp raises for mistakes a caller can make.

Every error is a subclass of :class:`GpubpError` and also of the built-in
``ValueError`` or ``TypeError``, so ``except ValueError`` keeps working.
Messages name the argument, what was expected and what was given.
"""

from __future__ import annotations


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
