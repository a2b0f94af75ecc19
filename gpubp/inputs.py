"""Checks of what a user hands a network — architecture, X and Y — and getting data onto the device.

Every check raises a :mod:`gpubp.errors` exception whose message names the
argument, what was expected and what was given, and runs before anything is
modified, so a refused call changes nothing. :func:`split_validation` is the
one train/validation split of ``fit(validation_split=…)`` and ``gpubp train``.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _validate as check
from .activations import Activation, get_activation
from .backends import Array, Backend
from .errors import DeviceMemoryError, GpubpTypeError, GpubpValueError, GpubpWarning, format_bytes
from .losses import Loss
from .optim import Optimizer

DTYPES = {"float32": np.float32, "float64": np.float64}


# --- architecture -------------------------------------------------------------------------------------
def check_dtype(dtype: Any) -> np.dtype:
    """``"float32"`` or ``"float64"`` (or the NumPy dtype) as a NumPy dtype."""
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise GpubpValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")
    return np.dtype(name)


def check_sizes(sizes: Any) -> tuple[int, ...]:
    """Layer widths, input first: at least two positive integers."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise GpubpTypeError(f"sizes must be a list of layer widths like [784, 128, 10], got {sizes!r}")
    if len(sizes) < 2:
        raise GpubpValueError(f"sizes must name at least an input and an output width, got {list(sizes)}")
    return tuple(check.positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes))


def check_hidden_activations(activation: Any, n_hidden: int) -> list[Activation]:
    """One activation per hidden layer, from one name (for all) or a list of names."""
    if isinstance(activation, (str, Activation)):
        return [get_activation(activation)] * n_hidden
    if not isinstance(activation, Sequence):
        raise GpubpTypeError(f"activation must be a name or a list of names, got {type(activation).__name__}")
    if len(activation) != n_hidden:
        raise GpubpValueError(
            f"activation lists {len(activation)} names but the network has {n_hidden} hidden layer(s); "
            f"give one name per hidden layer or a single name"
        )
    return [get_activation(a, f"activation[{i}]") for i, a in enumerate(activation)]


def output_activation_for(loss: Loss, output_activation: str | None) -> Activation | None:
    """The last layer's activation: None where the loss fuses softmax/sigmoid, else the one named
    (``identity`` by default)."""
    fused = loss.fused_activation
    if fused is not None:
        if output_activation is not None and str(output_activation).lower() != fused:
            raise GpubpValueError(
                f"loss {loss.name!r} fuses a {fused} output into the loss; output_activation must be "
                f"None or {fused!r}, got {output_activation!r}"
            )
        return None
    if output_activation is None:
        return get_activation("identity")
    if isinstance(output_activation, str) and output_activation.lower() == "softmax":
        raise GpubpValueError(
            f"output_activation 'softmax' is only supported fused with loss 'cross_entropy', got loss {loss.name!r}"
        )
    return get_activation(output_activation, "output_activation")


def check_outputs(loss: Loss, outputs: int) -> None:
    """Refuse a softmax over a single output: it is 1 whatever the input, so the loss is 0 and nothing is learnt."""
    if loss.name == "cross_entropy" and outputs < 2:
        raise GpubpValueError(
            f"loss 'cross_entropy' needs at least 2 outputs (a softmax over {outputs} output is always 1, so "
            f"nothing would be learnt); for a yes/no target use loss='bce' with 1 output, or 2 outputs "
            f"with integer labels 0 and 1"
        )


def check_matmul_precision(precision: Any, backend: Backend) -> str:
    """``"highest"`` or ``"tf32"``; TF32 on a CPU backend is accepted and changes nothing (logged once)."""
    precision = check.choice("matmul_precision", precision, ["highest", "tf32"])
    if precision == "tf32" and not backend.is_gpu:
        _tf32_on_cpu(backend.name)
    return precision


@functools.lru_cache(maxsize=None)
def _tf32_on_cpu(backend: str) -> None:
    logging.getLogger("gpubp").info("gpubp: matmul_precision='tf32' has no effect on backend %r: its GEMMs "
                                    "are exact float32", backend)


def quiet_overflow() -> np.errstate:
    """NumPy's overflow warnings off: inference on finite inputs so large that the arithmetic overflows
    gives inf/NaN outputs, as on the GPU and in PyTorch, with one gpubp warning (:func:`warn_overflow`);
    training reports it through the divergence guard."""
    return np.errstate(over="ignore", invalid="ignore", divide="ignore")


def warn_overflow(what: str, count: int, cause: str | None = None) -> None:
    """Warn that finite inputs gave ``count`` inf/NaN outputs; ``cause`` replaces the usual explanation."""
    cause = cause or "the inputs are finite, but so large that the network's arithmetic overflowed; scale the inputs"
    warnings.warn(f"{what}: {count} value(s) are inf or NaN: {cause}", GpubpWarning, stacklevel=3)


def check_optimizer(optimizer: Any, members: int | None = None) -> Optimizer:
    """``optimizer`` checked for a network (``members`` None) or an ensemble of ``members``: its per-member
    lists, if any, must have one value per member."""
    if not isinstance(optimizer, Optimizer):
        raise GpubpTypeError(
            f"optimizer must be a gpubp.optim optimizer (SGD, Adam, AdamW), got {type(optimizer).__name__}"
        )
    given = optimizer.members
    if given is not None and given != members:
        target = "a single network (gpubp.MLP)" if members is None else f"this ensemble of {members} members"
        raise GpubpValueError(f"the optimizer has per-member values — {optimizer.describe_members()} — which "
                              f"need a gpubp.Ensemble of {given} members; it was given to {target}")
    return optimizer


# --- data -----------------------------------------------------------------------------------------------
def check_x(backend: Backend, X: Any, n_inputs: int, dtype: np.dtype, name: str = "X") -> Array:
    """The inputs as an array (host or device) of shape ``(n, n_inputs)``, finite in ``dtype``.

    A 1-D array is refused (it could be one sample or one feature of many); the message says how
    to pass a single sample.
    """
    xp = backend.xp if backend.is_device_array(X) else np
    array = X if xp is not np else check.host_array(name, X)
    check.dtype_kind(name, array)
    if array.ndim != 2:
        hint = (f"; for a single sample of {n_inputs} features pass {name}.reshape(1, -1)"
                if array.ndim == 1 and array.shape[0] == n_inputs else "")
        raise GpubpValueError(
            f"{name} must be 2-D (n_samples, {n_inputs} features), got {array.ndim}-D shape {array.shape}{hint}"
        )
    if array.shape[0] == 0:
        raise GpubpValueError(f"{name} is empty: it has 0 samples, expected at least 1")
    if array.shape[1] != n_inputs:
        raise GpubpValueError(f"{name} has {array.shape[1]} features, the network's input layer expects {n_inputs}")
    check.finite(name, array, xp)
    check_representable(name, array, dtype, xp)
    return array


def check_representable(name: str, array: Any, dtype: np.dtype, xp: Any = np) -> None:
    """Refuse finite values that the network's ``dtype`` cannot hold (float64 beyond float32's range would
    become inf when cast)."""
    if array.dtype.kind != "f" or array.dtype.itemsize <= dtype.itemsize or array.size == 0:
        return
    largest = max(float(array.max()), -float(array.min()))  # without a full-size copy of abs(array)
    limit = float(np.finfo(dtype).max)
    if largest > limit:
        where = tuple(int(i) for i in xp.argwhere(xp.abs(array) > limit)[0])
        raise GpubpValueError(
            f"{name} holds {largest:.6g} (first beyond the range at index {where}), more than the largest "
            f"{dtype.name} ({limit:.6g}) the network computes in; scale the data, or use dtype='float64'"
        )


def check_y(backend: Backend, Y: Any, n: int, width: int, loss: Loss, dtype: np.dtype,
            name: str = "Y") -> tuple[bool, Array]:
    """The targets as ``(is_labels, array)``: integer class labels ``(n,)`` or dense ``(n, width)``.

    Booleans are accepted as dense targets of the classification losses (multi-label 0/1 rows for
    ``bce``, one-hot rows for ``cross_entropy``).
    """
    xp = backend.xp if backend.is_device_array(Y) else np
    array = Y if xp is not np else check.host_array(name, Y)
    if not (array.dtype.kind == "b" and loss.classification and array.ndim >= 1):
        check.dtype_kind(name, array)
    if array.ndim == 0 or array.shape[0] != n:
        got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
        raise GpubpValueError(f"{name} has {got} but X has {n} samples; expected one target per sample")
    if loss.name == "cross_entropy" and array.ndim == 1 and array.dtype.kind != "b":
        _check_labels(array, width, name)
        return True, array
    if array.ndim == 1 and width == 1:
        array = array.reshape(n, 1)
    if array.ndim != 2 or array.shape[1] != width:
        expected = f"(n, {width})" + (" or (n,) integer labels" if loss.name == "cross_entropy" else "")
        raise GpubpValueError(f"{name} must have shape {expected} for loss {loss.name!r}, got {array.shape}")
    check.finite(name, array, xp)
    check_representable(name, array, dtype, xp)
    if loss.classification:
        _check_probabilities(xp, array, loss, name)
    return False, array


def check_sample_weight(backend: Backend, weight: Any, n: int, name: str = "sample_weight",
                        scale: bool = True) -> Array | None:
    """Per-sample weights: None, or ``(n,)`` real numbers, finite, ≥ 0 and not all 0 (host or device);
    returned in float64 divided by the largest (a weighted mean does not change), so that no weight or
    batch sum overflows the network's dtype — or, with ``scale=False``, as they are (in float64)."""
    if weight is None:
        return None
    xp = backend.xp if backend.is_device_array(weight) else np
    array = weight if xp is not np else check.host_array(name, weight)
    check.dtype_kind(name, array)
    if array.ndim == 2 and array.shape[1] == 1:
        array = array.reshape(-1)
    if array.ndim != 1 or array.shape[0] != n:
        raise GpubpValueError(f"{name} must have shape ({n},), one weight per sample, got shape {array.shape}")
    check.finite(name, array, xp)
    if n and float(array.min()) < 0:
        raise GpubpValueError(f"{name} must be >= 0, got a weight of {float(array.min())!r}")
    largest = float(array.max()) if n else 1.0
    if not largest > 0:
        raise GpubpValueError(f"{name} is zero for every sample; at least one weight must be positive")
    return array.astype(np.float64) / (largest if scale else 1.0)


def _check_labels(array: Any, width: int, name: str) -> None:
    if array.dtype.kind not in "iu":
        raise GpubpTypeError(
            f"{name} holds class labels for cross_entropy and must be integers, got dtype {array.dtype}; "
            f"pass integer labels (e.g. {name}.astype(int)) or one-hot rows of width {width}"
        )
    low, high = int(array.min()), int(array.max())
    if low < 0 or high >= width:
        raise GpubpValueError(
            f"{name} has class labels in [{low}, {high}], expected labels in [0, {width - 1}] "
            f"for a network with {width} outputs"
        )


def _check_probabilities(xp: Any, array: Any, loss: Loss, name: str) -> None:
    low, high = float(array.min()), float(array.max())
    if low < 0 or high > 1:
        raise GpubpValueError(
            f"{name} must hold probabilities in [0, 1] for loss {loss.name!r}, got values in [{low}, {high}]"
        )
    if loss.name == "cross_entropy":
        sums = array.sum(axis=1)
        worst = float(xp.abs(sums - 1).max())
        if worst > 1e-3:
            raise GpubpValueError(
                f"{name} rows must be one-hot or probabilities summing to 1 for cross_entropy; "
                f"a row sums to {float(sums[int(xp.abs(sums - 1).argmax())])}"
            )


def to_device(backend: Backend, array: Any, dtype: Any) -> Array:
    """``array`` on the backend's device with ``dtype``; copied only when it is not already."""
    if backend.is_device_array(array) and array.dtype == dtype:
        return array
    return backend.asarray(array, dtype)


def training_set_to_device(backend: Backend, X: Any, Y: Any, dtype: np.dtype, labels: bool) -> tuple[Array, Array]:
    """The training set on the device, once for a whole fit; out of memory says how big it was."""
    try:
        return to_device(backend, X, dtype), to_device(backend, Y, np.int64 if labels else dtype)
    except DeviceMemoryError as error:
        size = X.shape[0] * X.shape[1] * dtype.itemsize
        raise DeviceMemoryError(
            f"{error} while copying the training set ({format_bytes(size)} of inputs) to the GPU once for "
            f"the whole fit; train on a part of it at a time, or use backend='numpy'",
            requested=error.requested, free=error.free, total=error.total) from None


def validation_size(n: int, fraction: float) -> int:
    """How many of ``n`` samples ``fraction`` holds out; both parts must keep at least one."""
    n_val = int(round(n * fraction))
    if not 1 <= n_val < n:
        raise GpubpValueError(f"validation_split={fraction} of {n} samples leaves {n_val} for validation and "
                              f"{n - n_val} for training; both need at least one")
    return n_val


def split_validation(X: Any, Y: Any, fraction: float, rng: np.random.Generator,
                     xp: Any = np, *more: Any) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    """``((X_train, Y_train, …), (X_val, Y_val, …))``: a random ``fraction`` of the rows held out.

    The held-out rows are the first of one permutation drawn from ``rng``; the
    training rows keep their original order. ``xp`` is the array module of
    ``X`` and ``Y`` (they may be device arrays). Arrays in ``more`` (sample weights; None stays None)
    are split the same way.
    """
    n_val = validation_size(X.shape[0], fraction)
    order = rng.permutation(X.shape[0])
    val_index, train_index = xp.asarray(order[:n_val]), xp.asarray(np.sort(order[n_val:]))
    arrays = (X, Y, *more)
    return (tuple(None if a is None else a[train_index] for a in arrays),
            tuple(None if a is None else a[val_index] for a in arrays))
