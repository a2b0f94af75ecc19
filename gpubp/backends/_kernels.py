"""The CUDA kernels of ``kernels/*.cu``: where their sources are, what they instantiate, how they launch.

Three pieces, kept apart so that each can be tested without a GPU:

* **Sources.** :func:`kernel_dir` finds the ``.cu`` files: inside the installed
  package (the wheel copies the top-level ``kernels/`` to ``gpubp/kernels/``)
  or in the source tree. :func:`read_source` returns one file with its local
  ``#include "…"`` lines replaced by the included text, so the compiler gets a
  single self-contained string (and CuPy's compile cache, keyed on that
  string, sees every change to a header).
* **Instantiations.** :data:`KERNELS` lists, per file, every template
  instantiation gpubp launches, as the C++ name expressions NVRTC is given
  (``gpubp::act_backward<float, gpubp::Relu>``). This list is the single
  source of truth: the CUDA module compiles exactly these, and the CI test
  compiles exactly these for sm_90.
* **Launches.** :class:`FusedOps` turns a network operation into a kernel
  launch — grid and block sizes, the argument tuple with scalars in the
  element type — through any *function provider* ``get(file, name)`` that
  returns ``callable(grid, block, args)``. :class:`CudaModules` is the
  provider on a GPU (``cupy.RawModule``, compiled lazily on first use and
  cached per device); the test suite plugs in a provider that runs the same
  kernels on the host.

Nothing here imports CuPy at module import time.
"""

from __future__ import annotations

import re
import threading
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..errors import KernelCompileError

CTYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}
"""The element types the kernels are instantiated for, NumPy dtype → C++ type."""

ACTIVATION_FUNCTORS = {
    "sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "leaky_relu": "LeakyRelu", "gelu": "GeluTanh",
    "silu": "Silu", "softplus": "Softplus", "elu": "Elu", "identity": "Identity",
}
"""gpubp activation name → its functor in ``kernels/common.cuh``."""

POINTWISE_LOSSES = {"mse": "Mse", "l1": "L1", "huber": "Huber"}
"""gpubp loss name → its functor in ``kernels/loss.cu`` (the losses without a fused output activation)."""


def _instantiations() -> dict[str, list[str]]:
    kernels: dict[str, list[str]] = {"activation.cu": [], "loss.cu": [], "reduce.cu": [], "optim.cu": []}
    for ctype in CTYPES.values():
        for functor in ACTIVATION_FUNCTORS.values():
            kernels["activation.cu"].append(f"gpubp::bias_act_forward<{ctype}, gpubp::{functor}>")
            kernels["activation.cu"].append(f"gpubp::act_backward<{ctype}, gpubp::{functor}>")
        for name in ("bias_softmax", "softmax_xent", "bce", "one_hot"):
            kernels["loss.cu"].append(f"gpubp::{name}<{ctype}>")
        for functor in POINTWISE_LOSSES.values():
            kernels["loss.cu"].append(f"gpubp::pointwise_loss<{ctype}, gpubp::{functor}>")
        kernels["reduce.cu"] += [f"gpubp::column_partials<{ctype}>", f"gpubp::column_total<{ctype}>",
                                 f"gpubp::any_nonfinite<{ctype}>"]
        kernels["optim.cu"] += [f"gpubp::sgd_step<{ctype}>", f"gpubp::adam_prepare<{ctype}>",
                                f"gpubp::adam_step<{ctype}>", f"gpubp::sgd_step_members<{ctype}>",
                                f"gpubp::adam_prepare_members<{ctype}>", f"gpubp::adam_step_members<{ctype}>"]
    kernels["optim.cu"] += ["gpubp::count_step", "gpubp::count_steps"]
    return kernels


KERNELS: dict[str, list[str]] = _instantiations()
"""Per ``.cu`` file, the name expression of every kernel instantiation gpubp launches."""

COMPILE_OPTIONS = ("--std=c++17",)


# --- sources ------------------------------------------------------------------------------------------
def kernel_dir() -> Path:
    """The directory holding the ``.cu`` sources: the installed package's, else the source tree's."""
    package = Path(__file__).resolve().parents[1]
    for candidate in (package / "kernels", package.parent / "kernels"):
        if (candidate / "common.cuh").is_file():
            return candidate
    raise KernelCompileError(
        f"the CUDA kernel sources were not found in {package / 'kernels'} (installed wheel) nor in "
        f"{package.parent / 'kernels'} (source tree); reinstall gpubp"
    )


_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$', re.MULTILINE)


def read_source(name: str, directory: Path | None = None) -> str:
    """The text of ``kernels/<name>`` with its local includes inlined (each file once)."""
    directory = directory or kernel_dir()
    seen: set[str] = set()

    def expand(filename: str) -> str:
        if filename in seen:
            return ""
        seen.add(filename)
        text = (directory / filename).read_text(encoding="utf-8")
        return _INCLUDE.sub(lambda match: expand(match.group(1)), text)

    return expand(name)


_FILE_OF = {name: filename for filename, names in KERNELS.items() for name in names}


def file_of(name_expression: str) -> str:
    """The ``.cu`` file that defines a kernel instantiation."""
    try:
        return _FILE_OF[name_expression]
    except KeyError:
        raise KeyError(f"no kernel instantiation {name_expression!r} in {sorted(KERNELS)}") from None


# --- the GPU provider ---------------------------------------------------------------------------------
class CudaModules:
    """``cupy.RawModule`` per (device, file), compiled on first use with every instantiation of the file.

    ``get`` compiles and loads for the device it is given, made current for the duration, whatever
    device the caller had current.
    """

    def __init__(self) -> None:
        self._modules: dict[tuple[int, str], Any] = {}
        self._functions: dict[tuple[int, str], Any] = {}
        self._lock = threading.Lock()

    def get(self, filename: str, name_expression: str, device: int) -> Callable[..., None]:
        import cupy

        key = (device, name_expression)
        function = self._functions.get(key)
        if function is None:
            with self._lock, cupy.cuda.Device(device):
                try:  # CuPy compiles on the first get_function (NVRTC), caching the binary on disk
                    module = self._modules.get((device, filename))
                    if module is None:
                        module = cupy.RawModule(code=read_source(filename), options=COMPILE_OPTIONS,
                                                name_expressions=KERNELS[filename])
                        self._modules[(device, filename)] = module
                    function = module.get_function(name_expression)
                except cupy.cuda.compiler.CompileException as error:
                    self._modules.pop((device, filename), None)
                    raise KernelCompileError(
                        f"kernels/{filename} failed to compile for device {device} "
                        f"(NVRTC options {' '.join(COMPILE_OPTIONS)}):\n{error}"
                    ) from error
                except Exception as error:  # NVRTC or CUDA headers missing, the module refused by the driver
                    self._modules.pop((device, filename), None)
                    raise KernelCompileError(
                        f"kernels/{filename} could not be compiled or loaded on device {device}: "
                        f"{type(error).__name__}: {error}. NVRTC and the CUDA headers come with the CUDA "
                        f"toolkit (gpubp[cuda12]/gpubp[cuda13] install it from PyPI); a driver error here "
                        f"means the driver cannot run code built for this device"
                    ) from error
                self._functions[key] = function
        return function


# --- launches -----------------------------------------------------------------------------------------
BLOCK = 256
"""Threads per block of the elementwise kernels."""


def _weight_args(weight: Any, placeholder: Any) -> tuple[Any, np.int32]:
    """The ``w, weighted`` kernel arguments: the row weights (contiguous, one per row), or — unweighted —
    any array the kernel will not read, and 0."""
    return (placeholder, np.int32(0)) if weight is None else (weight, np.int32(1))


class FusedOps:
    """Launches the fused kernels on arrays of one array module and one device, through a function provider.

    ``provider.get(file, name, device)`` returns the kernel compiled for
    ``device``; the functions looked up are cached per (device, dtype,
    kernel). ``max_blocks`` caps the grid of the grid-stride kernels (enough
    blocks to fill the device; each thread then loops). Every launch goes
    through :meth:`_launch`, which requires C-contiguous arrays (every
    workspace and parameter buffer is); a violation is a bug in gpubp and
    raises ``AssertionError``.
    """

    def __init__(self, provider: Any, max_blocks: int, device: int = 0) -> None:
        self.provider = provider
        self.max_blocks = max(1, int(max_blocks))
        self.device = int(device)
        self._functions: dict[tuple[int, Any, str, str | None], Callable[..., None]] = {}

    def _function(self, dtype: Any, template: str, functor: str | None = None) -> Callable[..., None]:
        key = (self.device, dtype, template, functor)
        function = self._functions.get(key)
        if function is None:  # first launch of this instantiation (per FusedOps): look it up once
            if dtype is None:  # a kernel that is not a template
                name = f"gpubp::{template}"
            else:
                ctype = CTYPES[np.dtype(dtype)]
                args = f"{ctype}, gpubp::{functor}" if functor else ctype
                name = f"gpubp::{template}<{args}>"
            function = self._functions[key] = self.provider.get(file_of(name), name, self.device)
        return function

    def _grid(self, n: int) -> int:
        return min((n + BLOCK - 1) // BLOCK, self.max_blocks)

    def _launch(self, n: int, function: Callable[..., None], args: tuple[Any, ...],
                grid: tuple[int, ...] | None = None, block: tuple[int, ...] = (BLOCK,)) -> None:
        """Launch over ``n`` elements (nothing when ``n`` is 0), after checking every array is contiguous.

        ``grid`` defaults to the grid-stride grid for ``n``.
        """
        for arg in args:
            assert not hasattr(arg, "flags") or arg.flags.c_contiguous, "fused kernels need contiguous arrays"
        if n > 0:
            function(grid if grid is not None else (self._grid(n),), block, args)

    def _member_grid(self, members: int, per_member: int) -> tuple[int, int]:
        """The grid of a member kernel: ``members`` blocks tall, enough blocks wide to fill the device."""
        if members > MAX_MEMBERS:
            raise ValueError(f"the kernels take at most {MAX_MEMBERS} members, got {members}")
        width = min((per_member + BLOCK - 1) // BLOCK, max(1, self.max_blocks // members))
        return max(1, width), members

    # activations --------------------------------------------------------------------------------------
    def bias_act_forward(self, activation: str, z: Any, b: Any, a: Any) -> None:
        """``z += b`` (kept only when ``z is not a``) and ``a = σ(z)``, one pass. An ensemble's ``z`` is
        ``(K, N, cols)`` and ``b`` its ``(K, 1, cols)`` bias view of the parameter buffer (see :func:`bias_span`)."""
        members, rows, cols = member_shape(z)
        span, stride = bias_span(b, members, cols)
        function = self._function(z.dtype, "bias_act_forward", ACTIVATION_FUNCTORS[activation])
        self._launch(rows * cols, function, (span, z, a, np.int64(rows), np.int64(cols), np.int64(stride)),
                     grid=(self._member_grid(members, rows * cols)))

    def act_backward(self, activation: str, delta: Any, z: Any, a: Any) -> None:
        """``delta ← delta ⊙ σ'(z or a)`` in place, one pass."""
        function = self._function(delta.dtype, "act_backward", ACTIVATION_FUNCTORS[activation])
        self._launch(delta.size, function, (delta, a if z is None else z, a, np.int64(delta.size)))

    # output layer and losses --------------------------------------------------------------------------
    def bias_softmax(self, z: Any, b: Any, p: Any, row_max: Any, row_sum: Any) -> None:
        """``z += b``, ``p = softmax(z)``; row maxima and sums of exp(z − max) into ``row_max``/``row_sum``
        (an ensemble's ``z`` ``(K, N, cols)``, ``b`` ``(K, 1, cols)``, as in :meth:`bias_act_forward`)."""
        members, rows, cols = member_shape(z)
        span, stride = bias_span(b, members, cols)
        function = self._function(z.dtype, "bias_softmax")
        self._launch(members * rows, function, (span, z, p, row_max, row_sum, np.int64(members * rows),
                                                np.int64(cols), np.int64(max(rows, 1)), np.int64(stride)))

    def softmax_xent(self, z: Any, p: Any, y: Any, delta: Any, row_max: Any, row_sum: Any,
                     row_loss: Any, weight: Any = None, members: int = 1) -> None:
        """Cross entropy per row into ``row_loss``, ``delta = (p − y)/N``; each row times ``weight`` if given.
        ``members`` > 1: the rows are that many members' batches of N = rows / members, stacked."""
        rows, cols = z.shape
        scalar = z.dtype.type
        function = self._function(z.dtype, "softmax_xent")
        self._launch(rows, function, (z, p, y, delta, row_max, row_sum, row_loss, *_weight_args(weight, y),
                                      np.int64(rows), np.int64(cols), scalar(members / max(rows, 1))))

    def bce(self, z: Any, a: Any, y: Any, delta: Any, elem: Any, weight: Any = None, members: int = 1) -> None:
        """``elem = softplus(z) − y·z``, ``delta = (a − y)/M``; each row times ``weight`` if given
        (``members`` as in :meth:`softmax_xent`)."""
        scalar = z.dtype.type
        function = self._function(z.dtype, "bce")
        self._launch(z.size, function, (z, a, y, delta, elem, *_weight_args(weight, y), np.int64(z.size),
                                        np.int64(max(z.shape[1], 1)), scalar(members / max(z.size, 1))))

    def pointwise_loss(self, loss: str, a: Any, y: Any, delta: Any, elem: Any, weight: Any = None,
                       members: int = 1) -> None:
        """``elem`` = the loss of each element, ``delta`` = ∂L/∂a (mse, l1, huber; mean reduction); each row
        times ``weight`` if given (``members`` as in :meth:`softmax_xent`)."""
        scalar = a.dtype.type
        function = self._function(a.dtype, "pointwise_loss", POINTWISE_LOSSES[loss])
        self._launch(a.size, function, (a, y, delta, elem, *_weight_args(weight, y), np.int64(a.size),
                                        np.int64(max(a.shape[1], 1)), scalar(members / max(a.size, 1))))

    def one_hot(self, labels: Any, out: Any) -> None:
        rows, cols = out.shape
        function = self._function(out.dtype, "one_hot")
        self._launch(out.size, function, (labels, out, np.int64(rows), np.int64(cols)))

    # BP3 ----------------------------------------------------------------------------------------------
    def column_sum_plan(self, rows: int, cols: int) -> tuple[int, int]:
        """(chunks, rows per chunk) for :meth:`column_sums`: enough chunks to fill the grid, ≥ 32 rows each."""
        wanted = min(max(1, (self.max_blocks * BLOCK) // max(cols, 1)), 8 * 65535)  # grid.y ≤ 65535
        chunks = max(1, min(wanted, rows // 32))
        chunk_rows = max(1, -(-rows // chunks))
        return -(-rows // chunk_rows) if rows else 1, chunk_rows

    def column_sums(self, x: Any, out: Any, partials: Any) -> None:
        """``out[c] = Σ_n x[n, c]`` in a fixed order; ``partials`` is ``(chunks, cols)`` from the plan."""
        rows, cols = x.shape
        chunks, chunk_rows = self.column_sum_plan(rows, cols)
        if cols == 0:
            return
        target = out if chunks == 1 else partials
        self._launch(cols, self._function(x.dtype, "column_partials"),
                     (x, target, np.int64(rows), np.int64(cols), np.int64(chunk_rows), np.int64(chunks)),
                     grid=((cols + 31) // 32, (chunks + 7) // 8), block=(32, 8))
        if chunks > 1:
            self._launch(cols, self._function(x.dtype, "column_total"),
                         (partials, out, np.int64(chunks), np.int64(cols)))

    # divergence guard -------------------------------------------------------------------------------
    def any_nonfinite(self, x: Any, loss: Any, flag: Any) -> None:
        """``flag[0] = 1`` if ``loss`` (0-d) or any element of ``x`` is not finite; else ``flag`` is unchanged."""
        # launched also for an empty x: the loss is checked all the same
        self._launch(1, self._function(x.dtype, "any_nonfinite"), (x, np.int64(x.size), loss, flag),
                     grid=(max(1, self._grid(x.size)),))

    # optimizers ---------------------------------------------------------------------------------------
    def count_step(self, steps: Any, skip: Any) -> None:
        """``steps[0] += 1`` unless ``skip[0]`` is set (one thread; both are device arrays)."""
        self._launch(1, self._function(None, "count_step"), (steps, skip), grid=(1,), block=(1,))

    def sgd_step(self, params: Any, grads: Any, velocity: Any, skip: Any, *, lr: float, momentum: float,
                 nesterov: bool, weight_decay: float) -> None:
        """One SGD step; does nothing on the device when ``skip[0]`` (an int32 device flag) is set."""
        scalar = params.dtype.type
        function = self._function(params.dtype, "sgd_step")
        self._launch(params.size, function, (
            params, grads, params if velocity is None else velocity, np.int64(params.size), scalar(lr),
            scalar(momentum), scalar(lr * momentum), scalar(weight_decay), np.int32(bool(nesterov)), skip))

    def adam_prepare(self, steps: Any, skip: Any, factors: Any, *, lr: float, beta1: float, beta2: float) -> None:
        """Unless ``skip[0]``: count the step in ``steps[0]`` and write its two bias-correction factors
        (``lr / (1 − β₁ᵗ)``, ``1 / √(1 − β₂ᵗ)``) into ``factors`` (one thread, on the device)."""
        function = self._function(factors.dtype, "adam_prepare")
        self._launch(1, function, (steps, skip, np.float64(beta1), np.float64(beta2), np.float64(lr), factors),
                     grid=(1,), block=(1,))

    def adam_step(self, params: Any, grads: Any, m: Any, v: Any, factors: Any, skip: Any, *, lr: float,
                  beta1: float, beta2: float, eps: float, weight_decay: float, decoupled: bool) -> None:
        """One Adam/AdamW step with the bias-correction ``factors`` of :meth:`adam_prepare`; does nothing
        on the device when ``skip[0]`` is set."""
        scalar = params.dtype.type
        function = self._function(params.dtype, "adam_step")
        self._launch(params.size, function, (
            params, grads, m, v, np.int64(params.size), scalar(1.0 - beta1), scalar(beta2), scalar(1.0 - beta2),
            scalar(eps), scalar(weight_decay), scalar(1.0 - lr * weight_decay), np.int32(bool(decoupled)),
            factors, skip))

    # optimizers of an ensemble: one launch for every member -------------------------------------------
    def count_steps(self, steps: Any, skip: Any) -> None:
        """``steps[k] += 1`` for every member ``k`` whose ``skip[k]`` is 0."""
        members = steps.size
        self._launch(members, self._function(None, "count_steps"), (steps, skip, np.int64(members)))

    def sgd_step_members(self, params: Any, grads: Any, velocity: Any, skip: Any, hyper: Any, *,
                         nesterov: bool) -> None:
        """One SGD step of every member (row) of ``params`` ``(K, P)`` whose ``skip[k]`` is 0, with member
        k's ``hyper[k] = [lr, momentum, lr·momentum, weight_decay]`` (a ``(K, 4)`` device array)."""
        members, per_member = params.shape
        function = self._function(params.dtype, "sgd_step_members")
        self._launch(params.size, function, (params, grads, params if velocity is None else velocity,
                                             np.int64(per_member), hyper, np.int32(bool(nesterov)), skip),
                     grid=self._member_grid(members, per_member))

    def adam_prepare_members(self, steps: Any, skip: Any, lr: Any, factors: Any, *, beta1: float,
                             beta2: float) -> None:
        """For every member k whose ``skip[k]`` is 0: count its step and write its two bias-correction
        factors into ``factors[k]`` (``lr`` is the members' float64 learning rates on the device)."""
        members = steps.size
        function = self._function(factors.dtype, "adam_prepare_members")
        self._launch(members, function, (steps, skip, np.int64(members), np.float64(beta1), np.float64(beta2),
                                         lr, factors))

    def adam_step_members(self, params: Any, grads: Any, m: Any, v: Any, factors: Any, skip: Any, hyper: Any, *,
                          beta1: float, beta2: float, eps: float, decoupled: bool) -> None:
        """One Adam/AdamW step of every member k whose ``skip[k]`` is 0, with its ``factors[k]`` from
        :meth:`adam_prepare_members` and ``hyper[k] = [weight_decay, 1 − lr·weight_decay]``."""
        members, per_member = params.shape
        scalar = params.dtype.type
        function = self._function(params.dtype, "adam_step_members")
        self._launch(params.size, function, (
            params, grads, m, v, np.int64(per_member), scalar(1.0 - beta1), scalar(beta2), scalar(1.0 - beta2),
            scalar(eps), hyper, np.int32(bool(decoupled)), factors, skip), grid=self._member_grid(members, per_member))


MAX_MEMBERS = 65535
"""The most members a member kernel takes: its grid is one block tall per member (CUDA's grid.y limit)."""


def member_shape(z: Any) -> tuple[int, int, int]:
    """(members, rows per member, cols) of a layer's ``(N, cols)`` (one network) or ``(K, N, cols)`` buffer."""
    if z.ndim == 2:
        return 1, int(z.shape[0]), int(z.shape[1])
    members, rows, cols = z.shape
    return int(members), int(rows), int(cols)


def bias_span(b: Any, members: int, cols: int) -> tuple[Any, int]:
    """The bias of one network (``(cols,)``, stride 0), or of K members: their ``(K, 1, cols)`` view of the
    ``(K, P)`` parameter buffer, as the contiguous stretch from member 0's bias to member K−1's and the
    distance between members (P), which is what the kernels index."""
    if members == 1 and b.ndim == 1:
        return b, 0
    stride = int(b.strides[0] // b.itemsize)
    assert b.strides[-1] == b.itemsize, "a member's bias must be contiguous"
    length = (members - 1) * stride + cols
    return b.reshape(-1)[:0] if length == 0 else _as_strided(b, length), stride


def _as_strided(b: Any, length: int) -> Any:
    """The 1-D contiguous view of ``length`` elements starting where ``b`` starts (``b`` being a strided view
    into a larger contiguous buffer that holds them)."""
    module = type(b).__module__.split(".")[0]
    if module == "numpy":
        return np.lib.stride_tricks.as_strided(b, shape=(length,), strides=(b.itemsize,))
    import cupy

    return cupy.lib.stride_tricks.as_strided(b, shape=(length,), strides=(b.itemsize,))
