"""Checks on user input, shared by the network, the optimizers and the I/O code.

Each check raises a :mod:`gpubp.errors` exception whose message names the
argument, the expected value and the actual one. Checks run before anything is
modified, so a rejected call leaves weights and optimizer state untouched.
"""

from __future__ import annotations

import math
from numbers import Real
from typing import Any

import numpy as np

from .errors import GpubpTypeError, GpubpValueError


def positive_float(name: str, value: Any, *, allow_zero: bool = False) -> float:
    """Return ``value`` as a float, requiring a finite number > 0 (or >= 0)."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise GpubpTypeError(f"{name} must be a real number, got {type(value).__name__} {value!r}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise GpubpValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return value


def unit_interval(name: str, value: Any) -> float:
    """Return ``value`` as a float in [0, 1)."""
    value = positive_float(name, value, allow_zero=True)
    if value >= 1:
        raise GpubpValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def fraction(name: str, value: Any) -> float:
    """A number in [0, 1) (a share of the data to hold out)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise GpubpTypeError(f"{name} must be a number in [0, 1), got {type(value).__name__} {value!r}")
    if not 0 <= float(value) < 1:
        raise GpubpValueError(f"{name} must be in [0, 1), got {value!r}")
    return float(value)


def positive_int(name: str, value: Any) -> int:
    """Return ``value`` as an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GpubpTypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise GpubpValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def seed(name: str, value: Any) -> None:
    """Require ``None`` or a non-negative integer (what NumPy's generators accept)."""
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise GpubpTypeError(f"{name} must be None or an integer, got {type(value).__name__} {value!r}")
    if value < 0:
        raise GpubpValueError(f"{name} must be >= 0, got {value}")


def choice(name: str, value: Any, options: dict[str, Any] | list[str]) -> str:
    """Return the lower-cased ``value`` if it is one of ``options``."""
    if not isinstance(value, str):
        raise GpubpTypeError(f"{name} must be a string, one of {sorted(options)}, got {type(value).__name__} {value!r}")
    key = value.lower()
    if key not in options:
        raise GpubpValueError(f"unknown {name} {value!r}; expected one of {sorted(options)}")
    return key


def dtype_kind(name: str, array: Any) -> None:
    """Require a real numeric dtype (integers or floats; not bool, complex, object, strings)."""
    kind = array.dtype.kind
    if kind not in "iuf":
        raise GpubpTypeError(
            f"{name} must hold real numbers (an integer or floating dtype), got dtype {array.dtype}"
        )


def host_array(name: str, value: Any) -> np.ndarray:
    """Turn array-likes into a NumPy array with a useful error for what cannot be one."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError) as error:
        raise GpubpTypeError(f"{name} must be an array of numbers, could not convert: {error}") from None
    if array.dtype == object:
        raise GpubpTypeError(
            f"{name} must be a rectangular array of numbers, got an object array of shape {array.shape}"
        )
    return array


def finite(name: str, array: Any, xp: Any = np) -> None:
    """Require every element to be finite.

    Cheap path: any NaN or Inf makes the sum non-finite; only a non-finite sum
    (which may also be an overflow of finite values) is looked at element by
    element. The sum runs in the array's own dtype, so nothing the size of the
    array is allocated. On the GPU this costs one device sync.
    """
    if array.dtype.kind != "f" or array.size == 0:
        return
    with np.errstate(over="ignore", invalid="ignore"):
        total = float(array.sum())
    if math.isfinite(total):
        return
    bad = ~xp.isfinite(array)
    count = int(bad.sum())
    if count:
        where = tuple(int(i) for i in xp.argwhere(bad)[0])
        raise GpubpValueError(
            f"{name} contains {count} non-finite value(s) (NaN or Inf), "
            f"the first at index {where}: {float(array[where])!r}"
        )
