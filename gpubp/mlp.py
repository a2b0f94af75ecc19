"""The fully-connected network and its explicit backpropagation.

Rows are samples, so a layer's weights ``W`` are ``(fan_in, fan_out)``:

* forward, layer l:  ``Z[l] = A[l-1]·W[l] + b[l]``,  ``A[l] = σ(Z[l])``
* BP1, output error:  ``δ[L] = ∂L/∂A[L] ⊙ σ'(Z[L])`` (``(P − Y)/N`` when the loss fuses softmax or sigmoid)
* BP2, hidden error:  ``δ[l] = (δ[l+1]·W[l+1]ᵀ) ⊙ σ'(Z[l])``
* BP3, bias gradient:  ``∂L/∂b[l] = Σ_rows δ[l]``
* BP4, weight gradient:  ``∂L/∂W[l] = A[l-1]ᵀ·δ[l]``

All weights and biases are views into one flat parameter buffer and all
gradients into another, so an optimizer step is one pass over one array.
Activations, errors and scratch space live in a :class:`Workspace` allocated
once per batch size, so a training step allocates nothing after the first.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _validate as check
from .activations import Activation, get_activation
from .backends import Backend, get_backend
from .errors import DeviceMemoryError, DivergenceError, GpubpTypeError, GpubpValueError, format_bytes
from .history import History
from .init import SCHEMES, init_weights
from .losses import Loss, get_loss
from .optim import Adam, Optimizer

_DTYPES = {"float32": np.float32, "float64": np.float64}
_PREDICT_BATCH = 2048
_CACHED_WORKSPACES = 4


class Workspace:
    """Every buffer one forward and backward pass needs, for one batch size.

    ``a[0]`` is the input batch; for layer l ≥ 1, ``a[l]`` holds A[l] (and Z[l]
    before σ is applied in place, unless σ' needs Z, which is then kept in
    ``z[l]``); ``delta[l]`` holds δ[l]; ``tmp[l]``/``tmp2[l]`` are scratch
    views of layer l's shape; ``rows`` is a ``(2, N, 1)`` scratch for row-wise
    reductions; ``ones`` is the vector 1 of BP3's ``1ᵀ·δ``; ``y`` holds the
    dense targets and ``labels`` integer labels.
    """

    def __init__(self, backend: Backend, sizes: Sequence[int], batch: int, dtype: Any,
                 keep_z: Sequence[bool]):
        self.batch = batch
        self._backend = backend
        self._sizes = tuple(sizes)
        self._dtype = dtype
        self.x = backend.empty((batch, sizes[0]), dtype)
        self.y = backend.empty((batch, sizes[-1]), dtype)
        self.a: list[Any] = [self.x]
        self.z: list[Any] = [None]
        for width, keep in zip(sizes[1:], keep_z):
            self.a.append(backend.empty((batch, width), dtype))
            self.z.append(backend.empty((batch, width), dtype) if keep else None)
        scratch = backend.empty((2, batch * max(sizes[1:])), dtype)
        self.tmp = [None] + [scratch[0, : batch * w].reshape(batch, w) for w in sizes[1:]]
        self.tmp2 = [None] + [scratch[1, : batch * w].reshape(batch, w) for w in sizes[1:]]
        self.rows = backend.empty((2, batch, 1), dtype)
        self.ones = backend.asarray(np.ones(batch), dtype)
        self._delta: list[Any] | None = None
        self._labels: Any = None
        self._row_index: Any = None

    def output_z(self, layer: int) -> Any:
        """Where Z[layer] is written: its own buffer when kept, else the A[layer] buffer."""
        return self.z[layer] if self.z[layer] is not None else self.a[layer]

    @property
    def delta(self) -> list[Any]:
        """δ[l] buffers, allocated on the first backward pass (inference never needs them)."""
        if self._delta is None:
            self._delta = [None] + [self._backend.empty((self.batch, w), self._dtype) for w in self._sizes[1:]]
        return self._delta

    @property
    def labels(self) -> Any:
        if self._labels is None:
            self._labels = self._backend.empty((self.batch,), np.int64)
            self._row_index = self._backend.xp.arange(self.batch)
        return self._labels

    def labels_to_targets(self) -> None:
        """Fill the dense targets ``y`` with the one-hot rows of ``labels``."""
        self._backend.one_hot(self.labels, self._row_index, self.y)


class MLP:
    """A fully-connected network trained by explicit backpropagation.

    Parameters
    ----------
    sizes:
        Layer widths, input first: ``[784, 128, 10]`` is one hidden layer of 128.
    activation:
        Hidden activation, one name for all hidden layers or a list with one
        name per hidden layer: sigmoid, tanh, relu, leaky_relu, gelu (tanh
        approximation), silu, softplus, elu, identity.
    output_activation:
        Activation of the last layer. ``None`` means: the softmax/sigmoid that
        ``cross_entropy``/``bce`` fuse into the loss, or ``identity`` for the
        regression losses.
    loss:
        ``mse``, ``l1``, ``huber``, ``cross_entropy`` or ``bce`` (PyTorch's
        definitions, mean reduction).
    backend:
        ``"auto"`` (CuPy when a CUDA device is usable, else NumPy), ``"numpy"``/``"cpu"``,
        ``"cupy"``/``"gpu"``/``"cuda"``, or a backend object.
    dtype:
        ``"float32"`` or ``"float64"``.
    seed:
        Seed of the weight initialisation (weights are drawn on the host, so a
        seed gives the same network on every backend).
    init:
        ``"auto"`` (by activation: He for relu-like, Xavier for sigmoid/tanh,
        LeCun for identity), ``"he"``, ``"xavier"`` or ``"lecun"``.
    """

    def __init__(self, sizes: Sequence[int], activation: str | Sequence[str] = "sigmoid",
                 output_activation: str | None = None, loss: str = "mse", backend: str | Backend = "auto",
                 dtype: str = "float32", seed: int | None = None, init: str = "auto"):
        self.sizes = _check_sizes(sizes)
        self.loss: Loss = get_loss(loss)
        hidden = _check_hidden_activations(activation, len(self.sizes) - 2)
        self._activations: list[Activation | None] = [*hidden, self._resolve_output(output_activation)]
        self.dtype = _check_dtype(dtype)
        self.init = check.choice("init", init, ("auto", *SCHEMES))
        check.seed("seed", seed)
        self.backend: Backend = get_backend(backend)
        self._build_parameters(seed)
        self._workspaces: OrderedDict[int, Workspace] = OrderedDict()

    # --- construction ---------------------------------------------------------------------------
    def _resolve_output(self, output_activation: str | None) -> Activation | None:
        fused = self.loss.fused_activation
        if fused is not None:
            if output_activation is not None and str(output_activation).lower() != fused:
                raise GpubpValueError(
                    f"loss {self.loss.name!r} fuses a {fused} output into the loss; output_activation must be "
                    f"None or {fused!r}, got {output_activation!r}"
                )
            return None
        if output_activation is None:
            return get_activation("identity")
        if isinstance(output_activation, str) and output_activation.lower() == "softmax":
            raise GpubpValueError(
                f"output_activation 'softmax' is only supported fused with loss 'cross_entropy', "
                f"got loss {self.loss.name!r}"
            )
        return get_activation(output_activation, "output_activation")

    def _build_parameters(self, seed: int | None) -> None:
        rng = np.random.default_rng(seed)
        layer_shapes = list(zip(self.sizes[:-1], self.sizes[1:]))
        host = np.zeros(sum(fi * fo + fo for fi, fo in layer_shapes), dtype=np.float64)
        offset = 0
        self._slices: list[tuple[slice, slice]] = []
        for (fan_in, fan_out), activation in zip(layer_shapes, self._activations):
            scheme = self.init if self.init != "auto" else (activation.init if activation else "xavier")
            w = slice(offset, offset + fan_in * fan_out)
            b = slice(w.stop, w.stop + fan_out)
            host[w] = init_weights(rng, scheme, fan_in, fan_out).ravel()
            self._slices.append((w, b))
            offset = b.stop
        be = self.backend
        self.params = be.asarray(host, self.dtype)
        self.grads = be.zeros(host.shape, self.dtype)
        self.weights = [self.params[w].reshape(fi, fo) for (w, _), (fi, fo) in zip(self._slices, layer_shapes)]
        self.biases = [self.params[b] for _, b in self._slices]
        self.grad_weights = [self.grads[w].reshape(fi, fo) for (w, _), (fi, fo) in zip(self._slices, layer_shapes)]
        self.grad_biases = [self.grads[b] for _, b in self._slices]

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        return int(self.params.size)

    @property
    def activations(self) -> list[str]:
        """Names of the hidden activations, one per hidden layer."""
        return [a.name for a in self._activations[:-1] if a is not None]

    @property
    def output_activation(self) -> str:
        last = self._activations[-1]
        return last.name if last is not None else str(self.loss.fused_activation)

    def config(self) -> dict[str, Any]:
        """The constructor arguments that rebuild this architecture."""
        return {"sizes": list(self.sizes), "activation": self.activations, "output_activation": self.output_activation,
                "loss": self.loss.name, "dtype": self.dtype.name, "init": self.init}

    def __repr__(self) -> str:
        return (f"MLP(sizes={list(self.sizes)}, activation={self.activations}, output_activation="
                f"{self.output_activation!r}, loss={self.loss.name!r}, backend={self.backend.name!r}, "
                f"dtype={self.dtype.name!r}, params={self.n_params})")

    # --- weights ----------------------------------------------------------------------------------
    def get_weights(self) -> list[np.ndarray]:
        """NumPy copies ``[W1, b1, W2, b2, …]``, ``W`` shaped ``(fan_in, fan_out)``, ``b`` ``(fan_out,)``."""
        return self._split(self.backend.to_host(self.params))

    def _split(self, flat: np.ndarray) -> list[np.ndarray]:
        out = []
        for (w, b), (fan_in, fan_out) in zip(self._slices, zip(self.sizes[:-1], self.sizes[1:])):
            out += [flat[w].reshape(fan_in, fan_out).copy(), flat[b].copy()]
        return out

    def set_weights(self, weights: Sequence[Any]) -> None:
        """Replace all weights and biases; shapes are checked first and nothing changes on an error."""
        expected = [s for fi, fo in zip(self.sizes[:-1], self.sizes[1:]) for s in ((fi, fo), (fo,))]
        if not isinstance(weights, (list, tuple)):
            raise GpubpTypeError(f"weights must be a list [W1, b1, W2, b2, ...], got {type(weights).__name__}")
        if len(weights) != len(expected):
            raise GpubpValueError(
                f"weights must hold {len(expected)} arrays ([W, b] for {self.n_layers} layers), got {len(weights)}"
            )
        host = np.empty(self.n_params, dtype=self.dtype)
        for i, (value, shape, (w, b)) in enumerate(zip(weights, expected, [s for s in self._slices for _ in (0, 1)])):
            name = f"weights[{i}] ({'W' if i % 2 == 0 else 'b'}{i // 2 + 1})"
            array = value if not self.backend.is_device_array(value) else self.backend.to_host(value)
            array = check.host_array(name, array)
            check.dtype_kind(name, array)
            if array.shape != shape:
                raise GpubpValueError(f"{name} must have shape {shape}, got {array.shape}")
            check.finite(name, array)
            host[w if i % 2 == 0 else b] = array.ravel()
        self.backend.copy_into(self.params, host)

    # --- input checks -----------------------------------------------------------------------------
    def _check_x(self, X: Any, name: str = "X") -> Any:
        """The inputs as an array (host or device) of shape ``(n, sizes[0])``, finite."""
        xp = self.backend.xp if self.backend.is_device_array(X) else np
        array = X if xp is not np else check.host_array(name, X)
        check.dtype_kind(name, array)
        if array.ndim != 2:
            raise GpubpValueError(
                f"{name} must be 2-D (n_samples, {self.sizes[0]} features), got {array.ndim}-D shape {array.shape}"
            )
        if array.shape[0] == 0:
            raise GpubpValueError(f"{name} is empty: it has 0 samples, expected at least 1")
        if array.shape[1] != self.sizes[0]:
            raise GpubpValueError(
                f"{name} has {array.shape[1]} features, the network's input layer expects {self.sizes[0]}"
            )
        check.finite(name, array, xp)
        return array

    def _check_y(self, Y: Any, n: int, name: str = "Y") -> tuple[bool, Any]:
        """The targets as ``(is_labels, array)``: integer class labels ``(n,)`` or dense ``(n, outputs)``."""
        xp = self.backend.xp if self.backend.is_device_array(Y) else np
        array = Y if xp is not np else check.host_array(name, Y)
        check.dtype_kind(name, array)
        width = self.sizes[-1]
        if array.ndim == 0 or array.shape[0] != n:
            got = "a scalar" if array.ndim == 0 else f"{array.shape[0]} rows"
            raise GpubpValueError(f"{name} has {got} but X has {n} samples; expected one target per sample")
        if self.loss.name == "cross_entropy" and array.ndim == 1:
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
            return True, array
        if array.ndim == 1 and width == 1:
            array = array.reshape(n, 1)
        if array.ndim != 2 or array.shape[1] != width:
            expected = f"(n, {width})" + (" or (n,) integer labels" if self.loss.name == "cross_entropy" else "")
            raise GpubpValueError(f"{name} must have shape {expected} for loss {self.loss.name!r}, got {array.shape}")
        check.finite(name, array, xp)
        if self.loss.classification:
            low, high = float(array.min()), float(array.max())
            if low < 0 or high > 1:
                raise GpubpValueError(
                    f"{name} must hold probabilities in [0, 1] for loss {self.loss.name!r}, got values in [{low}, {high}]"
                )
            if self.loss.name == "cross_entropy":
                sums = array.sum(axis=1)
                worst = float(xp.abs(sums - 1).max())
                if worst > 1e-3:
                    raise GpubpValueError(
                        f"{name} rows must be one-hot or probabilities summing to 1 for cross_entropy; "
                        f"a row sums to {float(sums[int(xp.abs(sums - 1).argmax())])}"
                    )
        return False, array

    def _check_optimizer(self, optimizer: Any) -> Optimizer:
        if not isinstance(optimizer, Optimizer):
            raise GpubpTypeError(
                f"optimizer must be a gpubp.optim optimizer (SGD, Adam, AdamW), got {type(optimizer).__name__}"
            )
        return optimizer

    # --- the passes ------------------------------------------------------------------------------------
    def _workspace(self, batch: int) -> Workspace:
        ws = self._workspaces.get(batch)
        if ws is None:
            keep_z = [act is None or act.needs_z for act in self._activations]
            try:
                ws = Workspace(self.backend, self.sizes, batch, self.dtype, keep_z)
            except DeviceMemoryError as error:
                raise self._workspace_too_big(error, batch, keep_z) from None
            self._workspaces[batch] = ws
            while len(self._workspaces) > _CACHED_WORKSPACES:
                self._workspaces.popitem(last=False)
        else:
            self._workspaces.move_to_end(batch)
        return ws

    def _workspace_too_big(self, error: DeviceMemoryError, batch: int, keep_z: Sequence[bool]) -> DeviceMemoryError:
        """The out-of-memory error of a workspace, with the batch size that would fit."""
        widths = self.sizes[1:]
        per_sample = self.dtype.itemsize * (self.sizes[0] + self.sizes[-1] + 2 * sum(widths) + 2 * max(widths) + 3
                                            + sum(w for w, keep in zip(widths, keep_z) if keep)) + 8
        fits = int(0.8 * error.free / per_sample) if error.free is not None else 0
        suggestion = 1 << (fits.bit_length() - 1) if fits >= 1 else 0
        advice = (f"try batch_size={suggestion} or smaller" if 0 < suggestion < batch else
                  "free GPU memory held elsewhere (other arrays, other processes) or use backend='numpy'")
        return DeviceMemoryError(
            f"{error} while allocating the workspace of a batch of {batch} (about {format_bytes(per_sample * batch)}: "
            f"{format_bytes(per_sample)} per sample for this network's activations, deltas and scratch); {advice}",
            requested=error.requested, free=error.free, total=error.total)

    def _load_batch(self, X: Any, Y: Any) -> Workspace:
        """Check one batch and copy it into the workspace of its size (one transfer each for X and Y)."""
        X = self._check_x(X)
        is_labels, Y = self._check_y(Y, X.shape[0])
        ws = self._workspace(X.shape[0])
        self.backend.copy_into(ws.x, X)
        self._load_targets(ws, is_labels, Y)
        return ws

    def _load_targets(self, ws: Workspace, is_labels: bool, Y: Any) -> None:
        if is_labels:
            self.backend.copy_into(ws.labels, Y)
            ws.labels_to_targets()
        else:
            self.backend.copy_into(ws.y, Y)

    def _forward(self, ws: Workspace) -> Any:
        """Forward pass: ``Z[l] = A[l-1]·W[l] + b[l]``, ``A[l] = σ(Z[l])``; returns A[L]."""
        be = self.backend
        for layer, activation in enumerate(self._activations, start=1):
            z, a = ws.output_z(layer), ws.a[layer]
            be.matmul(ws.a[layer - 1], self.weights[layer - 1], out=z)
            if activation is None:  # the softmax/sigmoid a loss fuses
                be.bias_loss_output(self.loss, z, self.biases[layer - 1], a, ws.tmp[layer], ws.rows)
            else:
                be.bias_activation_forward(activation, z, self.biases[layer - 1], a, ws.tmp[layer])
        return ws.a[-1]

    def _loss(self, ws: Workspace) -> Any:
        """The loss as a 0-d backend array; writes ∂L/∂A[L] (or the fused δ[L]) into ``delta[L]``."""
        last = self.n_layers
        return self.backend.loss_value_and_delta(self.loss, ws.output_z(last), ws.a[last], ws.y,
                                                 ws.delta[last], ws.tmp[last], ws.rows)

    def _backward(self, ws: Workspace) -> None:
        """Backward pass, BP1–BP4, overwriting ``self.grads``. Expects ``_forward`` and ``_loss`` first."""
        be = self.backend
        last = self.n_layers
        output_activation = self._activations[-1]
        if output_activation is not None:  # BP1: δ[L] = ∂L/∂A[L] ⊙ σ'(Z[L]) (fused losses wrote δ[L] already)
            be.activation_backward(output_activation, ws.delta[last], ws.z[last], ws.a[last],
                                   ws.tmp[last], ws.tmp2[last])
        for layer in range(last, 0, -1):
            delta = ws.delta[layer]
            be.matmul(ws.a[layer - 1].T, delta, out=self.grad_weights[layer - 1])  # BP4: ∂W = A[l-1]ᵀ·δ[l]
            be.bias_grad(delta, ws.ones, out=self.grad_biases[layer - 1])  # BP3: ∂b = Σ_rows δ[l]
            if layer > 1:  # BP2: δ[l-1] = (δ[l]·W[l]ᵀ) ⊙ σ'(Z[l-1])
                below = layer - 1
                be.matmul(delta, self.weights[layer - 1].T, out=ws.delta[below])
                be.activation_backward(self._activations[below - 1], ws.delta[below], ws.z[below],
                                       ws.a[below], ws.tmp[below], ws.tmp2[below])

    # --- public API ---------------------------------------------------------------------------------------
    def train_step(self, X: Any, Y: Any, optimizer: Optimizer) -> Any:
        """One gradient-descent step on the batch ``(X, Y)``; returns the loss as a 0-d backend array.

        The loss is returned before any host synchronisation, so GPU steps queue
        without waiting; ``float(loss)`` waits for it. Unlike :meth:`fit`, a
        single step has no divergence guard: check the returned loss.
        """
        optimizer = self._check_optimizer(optimizer)
        return self._step(self._load_batch(X, Y), optimizer)[0]

    def _step(self, ws: Workspace, optimizer: Optimizer, guard: Any = None) -> tuple[Any, Any]:
        """One step on a loaded workspace: (loss, the guard's skip flag or None)."""
        loss = self._loss_and_grads(ws)
        flag = guard.flag(loss) if guard is not None else None
        optimizer.update(self.backend, self.params, self.grads, skip=flag)
        return loss, flag

    def _diagnose_nonfinite(self, ws: Workspace) -> str:
        """Run the step on ``ws`` again and say where the first NaN/Inf appears (host syncs; failure path only)."""
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            return self._find_nonfinite(ws)

    def _find_nonfinite(self, ws: Workspace) -> str:
        be = self.backend
        for layer, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            if not (be.all_finite(w) and be.all_finite(b)):
                return f"the weights of layer {layer} (already non-finite before this step)"
        self._forward(ws)
        for layer in range(1, self.n_layers + 1):
            if not be.all_finite(ws.a[layer]) or (ws.z[layer] is not None and not be.all_finite(ws.z[layer])):
                name = self.activations[layer - 1] if layer < self.n_layers else self.output_activation
                return (f"the forward pass of layer {layer} of {self.n_layers} "
                        f"(Z = A·W + b, A = {name}(Z))")
        loss = self._loss(ws)
        if not be.all_finite(loss):
            return f"the loss ({self.loss.name}; the network's outputs were finite)"
        self._backward(ws)
        for layer in range(self.n_layers, 0, -1):
            if not be.all_finite(ws.delta[layer]):
                return f"the backward pass at layer {layer} of {self.n_layers} (δ)"
        for layer in range(1, self.n_layers + 1):
            if not (be.all_finite(self.grad_weights[layer - 1]) and be.all_finite(self.grad_biases[layer - 1])):
                return f"the gradient of layer {layer} of {self.n_layers}"
        return "no single place on re-running the step (the values were finite the second time)"

    def loss_and_grads(self, X: Any, Y: Any) -> tuple[float, list[np.ndarray]]:
        """The loss and its gradients (NumPy, in :meth:`get_weights` order), without updating anything."""
        ws = self._load_batch(X, Y)
        loss = self._loss_and_grads(ws)
        return float(loss), self._split(self.backend.to_host(self.grads))

    def _loss_and_grads(self, ws: Workspace) -> Any:
        """Forward, loss and backward on a loaded workspace: the loss (0-d), gradients in ``self.grads``."""
        self._forward(ws)
        loss = self._loss(ws)
        self._backward(ws)
        return loss

    def forward(self, X: Any, batch_size: int | None = None) -> Any:
        """The network's output for ``X`` as a backend array (probabilities for cross_entropy/bce)."""
        X = self._check_x(X)
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else _PREDICT_BATCH
        n = X.shape[0]
        out = self.backend.empty((n, self.sizes[-1]), self.dtype)
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            ws = self._workspace(stop - start)
            self.backend.copy_into(ws.x, X[start:stop])
            self.backend.copy_into(out[start:stop], self._forward(ws))
        return out

    def predict(self, X: Any, batch_size: int | None = None) -> np.ndarray:
        """The network's output for ``X`` as a NumPy array (probabilities for cross_entropy/bce)."""
        return self.backend.to_host(self.forward(X, batch_size))

    def evaluate(self, X: Any, Y: Any, batch_size: int | None = None) -> dict[str, float]:
        """``{"loss": …}`` over the whole set, plus ``"accuracy"`` for cross_entropy and bce."""
        X = self._check_x(X)
        is_labels, Y = self._check_y(Y, X.shape[0])
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else _PREDICT_BATCH
        return self._evaluate(X, is_labels, Y, batch_size)

    def _evaluate(self, X: Any, is_labels: bool, Y: Any, batch_size: int) -> dict[str, float]:
        """:meth:`evaluate` on inputs that are already checked."""
        n = X.shape[0]
        total_loss: Any = 0.0
        correct: Any = 0
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            ws = self._workspace(stop - start)
            self.backend.copy_into(ws.x, X[start:stop])
            self._load_targets(ws, is_labels, Y[start:stop])
            self._forward(ws)
            total_loss = total_loss + self._loss(ws) * (stop - start)
            if self.loss.classification:
                correct = correct + self._count_correct(ws)
        result = {"loss": float(total_loss) / n}
        if self.loss.classification:
            result["accuracy"] = float(correct) / self._accuracy_denominator(n)
        return result

    def _count_correct(self, ws: Workspace) -> Any:
        """Correct predictions in the workspace's batch, as a 0-d backend array (no host sync)."""
        xp = self.backend.xp
        output = ws.a[-1]
        if self.loss.name == "cross_entropy":
            return (xp.argmax(output, axis=1) == xp.argmax(ws.y, axis=1)).sum()
        return ((output > 0.5) == (ws.y > 0.5)).sum()

    def _accuracy_denominator(self, n: int) -> int:
        return n if self.loss.name == "cross_entropy" else n * self.sizes[-1]

    def fit(self, X: Any, Y: Any, epochs: int = 10, batch_size: int = 64, optimizer: Optimizer | None = None,
            validation_data: tuple[Any, Any] | None = None, shuffle: bool = True, progress: bool = True,
            seed: int | None = None, *, validation_split: float = 0.0, lr_schedule: Any = None,
            early_stopping: int | None = None, monitor: str | None = None, min_delta: float = 0.0,
            restore_best: bool = True, on_nonfinite: str = "raise", check_every: int | None = None,
            checkpoint: Any = None, resume: bool = False, checkpoint_every: int = 1) -> History:
        """Train by minibatch gradient descent; returns the per-epoch :class:`~gpubp.history.History`.

        The training set is moved to the device once; each epoch draws a
        permutation (from ``seed``) when ``shuffle`` is true, and every batch is
        gathered into the preallocated workspace. The default optimizer is
        ``Adam(lr=1e-3)``. The loss and accuracy of an epoch are averages over
        its batches, taken as the weights changed; validation metrics are
        computed at the end of each epoch.

        Parameters beyond the data and the loop:

        validation_data, validation_split:
            A held-out pair ``(X_val, Y_val)``, or the fraction of ``(X, Y)``
            to hold out (a random subset drawn with ``seed``; not both).
        lr_schedule:
            ``"constant"``, ``"step"``, ``"cosine"``, a
            :class:`gpubp.schedules.Schedule` or ``function(epoch) -> lr``; the
            rate is set per epoch, recorded as ``"lr"``, and the optimizer's own
            rate is put back at the end.
        early_stopping, monitor, min_delta, restore_best:
            Stop after ``early_stopping`` epochs in a row without improving
            ``monitor`` (default ``"val_loss"`` with validation data, else
            ``"loss"``; lower is better for losses, higher for accuracies) by
            more than ``min_delta``. With ``restore_best`` the weights of the
            best epoch are put back when training ends (``history.best_epoch``).
        on_nonfinite, check_every:
            What to do when the loss or a gradient is NaN or Inf (see
            :mod:`gpubp.guard`): ``"raise"`` a
            :class:`~gpubp.errors.DivergenceError` naming the step and the first
            layer where it appeared, with the weights left as they were before
            that step; or ``"skip_step"``: skip such steps and count them
            (``skipped_steps``). The flags are read every ``check_every`` steps
            (default: every step on the CPU, every 32 on a GPU) and at each
            epoch's end; no update with a non-finite gradient is ever applied.
        checkpoint, checkpoint_every, resume:
            Write network, optimizer state and training progress (epoch, step,
            the data-order generator, history, early-stopping state) to
            ``checkpoint`` every ``checkpoint_every`` epochs and after the last,
            atomically (a kill mid-write leaves the previous file). With
            ``resume=True`` and an existing file, training continues after its
            last epoch — on the CPU bit for bit as if it had never stopped,
            given the same data, ``seed``, ``batch_size``, optimizer and
            ``epochs``. ``epochs`` is the total, not the number still to run.
        """
        from .guard import Guard
        from .schedules import checked_lr, get_schedule

        epochs = check.positive_int("epochs", epochs)
        batch_size = check.positive_int("batch_size", batch_size)
        optimizer = self._check_optimizer(optimizer if optimizer is not None else Adam())
        check.seed("seed", seed)
        for flag_name, flag in (("shuffle", shuffle), ("progress", progress), ("restore_best", restore_best)):
            if not isinstance(flag, bool):
                raise GpubpTypeError(f"{flag_name} must be True or False, got {flag!r}")
        schedule = get_schedule(lr_schedule, epochs)
        validation_split = check.fraction("validation_split", validation_split)
        if early_stopping is not None:
            early_stopping = check.positive_int("early_stopping", early_stopping)
        min_delta = check.positive_float("min_delta", min_delta, allow_zero=True)
        X = self._check_x(X)
        is_labels, Y = self._check_y(Y, X.shape[0])
        rng = np.random.default_rng(seed)
        if validation_split:
            if validation_data is not None:
                raise GpubpValueError("give validation_data or validation_split, not both")
            n_val = int(round(X.shape[0] * validation_split))
            if not 1 <= n_val < X.shape[0]:
                raise GpubpValueError(f"validation_split={validation_split} of {X.shape[0]} samples leaves "
                                      f"{n_val} for validation and {X.shape[0] - n_val} for training; "
                                      "both need at least one")
            held_out = rng.permutation(X.shape[0])
            xp = self.backend.xp if self.backend.is_device_array(X) else np
            val_index, train_index = (xp.asarray(held_out[:n_val]), xp.asarray(np.sort(held_out[n_val:])))
            validation_data = (X[val_index], Y[val_index])
            X, Y = X[train_index], Y[train_index]
        if validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) != 2:
                raise GpubpTypeError("validation_data must be a pair (X_val, Y_val)")
            x_val = self._check_x(validation_data[0], "validation_data[0]")
            val_is_labels, y_val = self._check_y(validation_data[1], x_val.shape[0], "validation_data[1]")
        monitor = self._check_monitor(monitor, validation_data is not None)
        if check_every is not None:
            check_every = check.positive_int("check_every", check_every)
        guard = Guard(self, on_nonfinite, check_every)
        checkpoint_every = check.positive_int("checkpoint_every", checkpoint_every)
        if not isinstance(resume, bool):
            raise GpubpTypeError(f"resume must be True or False, got {resume!r}")
        if checkpoint is not None:
            from .io import _check_path

            checkpoint = _check_path(checkpoint)
            if checkpoint.is_dir():
                raise GpubpValueError(f"checkpoint {str(checkpoint)!r} is a directory, expected a file name")
            if not checkpoint.parent.is_dir():
                raise GpubpValueError(f"checkpoint {str(checkpoint)!r}: directory {str(checkpoint.parent)!r} "
                                      "does not exist")
        elif resume:
            raise GpubpValueError("resume=True needs checkpoint=PATH, the file to resume from")
        n = X.shape[0]
        run = {"n_train": n, "batch_size": batch_size, "shuffle": shuffle}
        resumed = self._resume(checkpoint, optimizer, run) if resume and checkpoint.exists() else None

        be = self.backend
        try:  # the training set goes to the device once
            x_all = _on_device(be, X, self.dtype)
            y_all = _on_device(be, Y, np.int64 if is_labels else self.dtype)
        except DeviceMemoryError as error:
            size = X.shape[0] * X.shape[1] * self.dtype.itemsize
            raise DeviceMemoryError(
                f"{error} while copying the training set ({format_bytes(size)} of inputs) to the GPU once for "
                f"the whole fit; train on a part of it at a time, or use backend='numpy'",
                requested=error.requested, free=error.free, total=error.total) from None
        history = History()
        n_batches = -(-n // batch_size)
        base_lr = optimizer.lr
        best_value, best_weights, waited = None, None, 0
        skipping = guard.mode == "skip_step"
        step, first_epoch = 0, 1
        if resumed is not None:
            rng.bit_generator.state = resumed["rng_state"]
            history, step, first_epoch = resumed["history"], resumed["step"], resumed["epoch"] + 1
            best_value, waited, best_weights = resumed["best_value"], resumed["waited"], resumed["best_weights"]
            if history.stopped_epoch is not None:  # that run had already stopped early: it is finished
                first_epoch = epochs + 1
        try:
            for epoch in range(first_epoch, epochs + 1):
                started = time.perf_counter()
                optimizer.lr = checked_lr(schedule, epoch, base_lr, epochs)
                order = be.asarray(rng.permutation(n) if shuffle else np.arange(n))

                def load(batch: int) -> Workspace:
                    index = order[batch * batch_size:(batch + 1) * batch_size]
                    ws = self._workspace(int(index.shape[0]))
                    be.take_rows(x_all, index, out=ws.x)
                    if is_labels:
                        be.take_rows(y_all, index, out=ws.labels)
                        ws.labels_to_targets()
                    else:
                        be.take_rows(y_all, index, out=ws.y)
                    return ws

                bar = _progress_bar(progress, n_batches, f"epoch {epoch}/{epochs}")
                try:  # overflow is the guard's business: it reports it, NumPy's warnings would only be noise
                    with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
                        step, total_loss, correct, used, skipped = self._train_epoch(
                            epoch, step, n_batches, load, optimizer, guard, bar)
                except BaseException:
                    if bar is not None:
                        bar.close()
                    raise
                n_used = int(used)
                if n_used == 0:
                    raise DivergenceError(
                        f"training diverged: every step of epoch {epoch} had NaN or Inf in its loss or gradients "
                        f"and was skipped; the weights are those after step {step - n_batches}. Lower the "
                        f"learning rate (it was {optimizer.lr:g})."
                    )
                record: dict[str, float] = {"loss": float(total_loss) / n_used}
                if self.loss.classification:
                    record["accuracy"] = float(correct) / self._accuracy_denominator(n_used)
                if skipping:
                    record["skipped_steps"] = skipped
                if validation_data is not None:
                    for key, value in self._evaluate(x_val, val_is_labels, y_val, _PREDICT_BATCH).items():
                        record[f"val_{key}"] = value
                record["lr"] = optimizer.lr
                record["time"] = time.perf_counter() - started
                record["samples_per_s"] = n / record["time"]
                history.append(epoch, record)
                if bar is not None:
                    bar.set_postfix({k: f"{v:.4g}" for k, v in record.items() if k not in ("time", "samples_per_s")})
                    bar.close()
                value = record[monitor]
                higher_is_better = "accuracy" in monitor
                improved = best_value is None or (value - best_value > min_delta if higher_is_better
                                                  else best_value - value > min_delta)
                if improved:
                    best_value, waited, history.best_epoch = value, 0, epoch
                    if early_stopping is not None and restore_best:
                        if best_weights is None:
                            best_weights = be.empty(self.params.shape, self.params.dtype)
                        be.copy_into(best_weights, self.params)
                else:
                    waited += 1
                    if early_stopping is not None and waited >= early_stopping:
                        history.stopped_epoch = epoch
                history.monitor = monitor
                if checkpoint is not None and (epoch % checkpoint_every == 0 or epoch == epochs
                                               or history.stopped_epoch is not None):
                    from .io import save_checkpoint

                    optimizer.lr = base_lr
                    state = {"epoch": epoch, "step": step, "rng_state": rng.bit_generator.state,
                             "history": history.to_state(), "best_value": best_value, "waited": waited,
                             "base_lr": base_lr, "epochs": epochs, **run}
                    save_checkpoint(checkpoint, self, optimizer, state, best_weights)
                if history.stopped_epoch is not None:
                    break
        finally:
            optimizer.lr = base_lr
        if best_weights is not None and history.best_epoch != len(history):
            be.copy_into(self.params, best_weights)
        history.monitor = monitor
        return history

    def _resume(self, path: Any, optimizer: Optimizer, run: dict[str, Any]) -> dict[str, Any]:
        """Load a checkpoint into this network and ``optimizer`` for ``fit(resume=True)``.

        Everything is checked first — architecture, optimizer class, the run's
        sample count, batch size and shuffling — so a refused resume changes nothing.
        """
        from .io import optimizer_arrays, read_checkpoint

        source, metadata, arrays = read_checkpoint(path)
        if metadata["model"] != self.config():
            raise GpubpValueError(f"checkpoint {str(source)!r} is of a different network: {metadata['model']}, "
                                  f"this one is {self.config()}")
        progress = metadata["progress"]
        for key, value in run.items():
            if progress.get(key) != value:
                raise GpubpValueError(
                    f"checkpoint {str(source)!r} was written by a run with {key}={progress.get(key)!r}, this fit "
                    f"has {key}={value!r}; resume with the same training data and settings, or start a new checkpoint"
                )
        try:
            history = History.from_state(progress["history"])
            resumed = {"rng_state": progress["rng_state"], "history": history, "step": int(progress["step"]),
                       "epoch": int(progress["epoch"]), "best_value": progress["best_value"],
                       "waited": int(progress["waited"])}
            np.random.default_rng().bit_generator.state = resumed["rng_state"]  # checks its form
        except (KeyError, TypeError, ValueError) as error:
            raise GpubpValueError(f"checkpoint {str(source)!r} has invalid training progress: {error}") from None
        if arrays["params"].shape != self.params.shape or arrays["params"].dtype != self.dtype:
            raise GpubpValueError(f"checkpoint {str(source)!r}: params {arrays['params'].shape} "
                                  f"{arrays['params'].dtype}, this network has {self.params.shape} {self.dtype}")
        if not np.isfinite(arrays["params"]).all():
            raise GpubpValueError(f"checkpoint {str(source)!r} holds non-finite parameters")
        try:  # checks class, step count and every buffer before it changes anything
            optimizer.load_state(self.backend, self.params, metadata["optimizer"], optimizer_arrays(arrays))
        except (TypeError, KeyError) as error:
            raise GpubpValueError(f"checkpoint {str(source)!r}: invalid optimizer state: {error}") from None
        self.backend.copy_into(self.params, arrays["params"])
        best = arrays.get("best_params")
        resumed["best_weights"] = None if best is None else self.backend.asarray(best, self.dtype)
        return resumed

    def _train_epoch(self, epoch: int, step: int, n_batches: int, load: Any, optimizer: Optimizer, guard: Any,
                     bar: Any) -> tuple[int, Any, Any, Any, int]:
        """The steps of one epoch: (global step after it, Σ loss·batch, Σ correct, samples used, steps skipped).

        The sums stay backend arrays (no host synchronisation); with
        ``skip_step`` the skipped steps are left out of them on the device.
        """
        xp = self.backend.xp
        skipping = guard.mode == "skip_step"
        total_loss: Any = 0.0
        correct: Any = 0
        used: Any = 0
        skipped = 0
        for batch in range(n_batches):
            ws = load(batch)
            step += 1
            loss, flag = self._step(ws, optimizer, guard)
            batch_correct = self._count_correct(ws) if self.loss.classification else 0
            if skipping:
                keep = flag[0] == 0
                total_loss = total_loss + xp.where(keep, loss * ws.batch, 0.0)
                correct = correct + xp.where(keep, batch_correct, 0)
                used = used + xp.where(keep, ws.batch, 0)
            else:
                total_loss = total_loss + loss * ws.batch
                correct = correct + batch_correct
                used = used + ws.batch
            if guard.record(step, epoch, batch) or batch == n_batches - 1:
                skipped += guard.check(optimizer, load)
            if bar is not None:
                bar.update(1)
        return step, total_loss, correct, used, skipped

    def _check_monitor(self, monitor: str | None, has_validation: bool) -> str:
        options = ["loss"] + (["accuracy"] if self.loss.classification else [])
        options += [f"val_{key}" for key in options] if has_validation else []
        if monitor is None:
            return "val_loss" if has_validation else "loss"
        if monitor not in options:
            raise GpubpValueError(f"monitor must be one of {options} for this run, got {monitor!r}")
        return monitor

    def save(self, path: Any) -> None:
        """Write architecture and weights to ``path`` (``.npz`` with JSON metadata; atomic)."""
        from .io import save

        save(self, path)


def _on_device(backend: Backend, array: Any, dtype: Any) -> Any:
    """``array`` on the backend's device with ``dtype``; copied only when it is not already."""
    if backend.is_device_array(array) and array.dtype == dtype:
        return array
    return backend.asarray(array, dtype)


def _check_dtype(dtype: Any) -> np.dtype:
    try:
        name = np.dtype(dtype).name
    except TypeError:
        name = None
    if name not in _DTYPES:
        raise GpubpValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
    return np.dtype(name)


def _check_sizes(sizes: Any) -> tuple[int, ...]:
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise GpubpTypeError(f"sizes must be a list of layer widths like [784, 128, 10], got {sizes!r}")
    if len(sizes) < 2:
        raise GpubpValueError(f"sizes must name at least an input and an output width, got {list(sizes)}")
    return tuple(check.positive_int(f"sizes[{i}]", s) for i, s in enumerate(sizes))


def _check_hidden_activations(activation: Any, n_hidden: int) -> list[Activation]:
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


def _progress_bar(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, desc=description, unit="batch", leave=True, dynamic_ncols=True)

