"""gpubp: explicit backpropagation for fully-connected networks, on NumPy or CuPy.

>>> import gpubp
>>> net = gpubp.MLP([2, 16, 2], activation="tanh", loss="cross_entropy", seed=0)
>>> X, y = gpubp.data.xor(200)
>>> history = net.fit(X, y, epochs=50, optimizer=gpubp.optim.Adam(1e-2), progress=False)

Importing gpubp never initialises CUDA; the backend is chosen when a network
is built (``backend="auto"`` picks CuPy when a CUDA device is usable).
"""

from __future__ import annotations

import os as _os
import sys as _sys

# OpenBLAS's worker threads busy-wait for about 0.1 s after every GEMM, taking the
# cores that gpubp's elementwise threads (and any other library) need in between.
# A short spin makes them yield. This only takes effect when OpenBLAS is not yet
# loaded (NumPy not yet imported), and never overrides a value the user has set.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

# plot imports matplotlib only when a plot is drawn, so it stays an optional extra
from . import data, datasets, optim, plot, schedules, sweep  # noqa: E402  (after the OpenBLAS setting above)
from ._version import __version__  # noqa: E402
from .activations import ACTIVATIONS
from .backends import available_backends, cupy_status, get_backend
from .ensemble import Ensemble
from .errors import BackendUnavailableError, GpubpError, GpubpTypeError, GpubpValueError
from .gradcheck import gradcheck
from .history import EnsembleHistory, History
from .io import load
from .losses import LOSSES
from .mlp import MLP

__all__ = [
    "ACTIVATIONS",
    "LOSSES",
    "MLP",
    "BackendUnavailableError",
    "Ensemble",
    "EnsembleHistory",
    "GpubpError",
    "GpubpTypeError",
    "GpubpValueError",
    "History",
    "__version__",
    "available_backends",
    "cupy_status",
    "data",
    "datasets",
    "get_backend",
    "gradcheck",
    "load",
    "optim",
    "plot",
    "schedules",
    "sweep",
]
