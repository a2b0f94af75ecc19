"""The fully-connected network and its explicit backpropagation.

Rows are samples, so a layer's weights ``W`` are ``(fan_in, fan_out)``:

* forward, layer l:  ``Z[l] = A[l-1]·W[l] + b[l]``,  ``A[l] = σ(Z[l])``
* BP1, output error:  ``δ[L] = ∂L/∂A[L] ⊙ σ'(Z[L])`` (``(P − Y)/N`` when the loss fuses softmax or sigmoid)
* BP2, hidden error:  ``δ[l] = (δ[l+1]·W[l+1]ᵀ) ⊙ σ'(Z[l])``
* BP3, bias gradient:  ``∂L/∂b[l] = Σ_rows δ[l]``
* BP4, weight gradient:  ``∂L/∂W[l] = A[l-1]ᵀ·δ[l]``

All weights and biases are views into one flat parameter buffer and all
gradients into another, so an optimizer step is one pass over one array.
Activations, errors and scratch space live in a :class:`~gpubp.workspace.Workspace`
allocated once per batch size, so a training step allocates nothing after the first.

The network knows nothing of epochs, files of progress or ranks: :meth:`MLP.fit`
hands itself to :mod:`gpubp.training`, which drives it through the step
surface below (:meth:`Network.load_batch`, :meth:`Network.compute_gradients`, …).
That surface and BP1–BP4 are :class:`Network`'s, written once for one network and for
an ensemble of K stacked networks (:class:`gpubp.Ensemble`), whose arrays carry the
member dimension in their leading axis.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from . import _validate as check
from . import inputs, onnx, serialization, training
from .activations import Activation
from .backends import Array, Backend, HostArray, get_backend
from .distributed import Communicator, agreed, check_communicator, check_identical, overlaps
from .errors import GpubpTypeError, GpubpValueError
from .guard import Guard
from .history import History
from .init import SCHEMES, init_weights
from .losses import Loss, get_loss
from .optim import Optimizer
from .workspace import Workspace, WorkspaceCache

PREDICT_BATCH = 2048
"""Rows per forward pass of :meth:`MLP.forward`, :meth:`MLP.predict` and :meth:`MLP.evaluate` by default."""


def parameter_slices(sizes: Sequence[int]) -> list[tuple[slice, slice]]:
    """Where each layer's ``W`` (``fan_in·fan_out`` values, row-major) and ``b`` lie in the flat parameter buffer."""
    slices, offset = [], 0
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:]):
        w = slice(offset, offset + fan_in * fan_out)
        b = slice(w.stop, w.stop + fan_out)
        slices.append((w, b))
        offset = b.stop
    return slices


def initial_parameters(sizes: Sequence[int], activations: Sequence[Activation | None], init: str,
                       seed: int | None) -> HostArray:
    """The flat float64 parameters of a new network drawn from ``seed``: each ``W`` by ``init`` (``"auto"``:
    by its layer's activation), every ``b`` zero. The same seed gives the same network everywhere (an
    ensemble's member k is the network of its seed k)."""
    rng = np.random.default_rng(seed)
    slices = parameter_slices(sizes)
    host = np.zeros(slices[-1][1].stop, dtype=np.float64)
    for (fan_in, fan_out), activation, (w, _) in zip(zip(sizes[:-1], sizes[1:]), activations, slices):
        scheme = init if init != "auto" else (activation.init if activation else "xavier")
        host[w] = init_weights(rng, scheme, fan_in, fan_out).ravel()
    return host


class Network:
    """A fully-connected architecture and backpropagation through its layers, shared by :class:`MLP` (one
    network: parameters ``(P,)``) and :class:`gpubp.Ensemble` (K networks stacked: ``(K, P)``).

    The same code computes both: a layer's weights are ``(fan_in, fan_out)`` or ``(K, fan_in, fan_out)``
    views of the flat parameter buffer, its activations ``(N, width)`` or ``(K, N, width)``, and every
    product and elementwise pass takes the member dimension along in the leading axis. What differs —
    the parameters' first values, the loss (each member's own mean), what ``fit`` drives — is the
    subclasses'. The constructor checks the architecture; the arguments are :class:`MLP`'s.
    """

    params: Array
    grads: Array
    weights: list[Array]
    biases: list[Array]
    grad_weights: list[Array]
    grad_biases: list[Array]
    _workspaces: WorkspaceCache

    def __init__(self, sizes: Sequence[int], activation: str | Sequence[str], output_activation: str | None,
                 loss: str | Loss, backend: str | Backend, dtype: str, init: str, matmul_precision: str) -> None:
        self.sizes = inputs.check_sizes(sizes)
        self.loss: Loss = get_loss(loss)
        inputs.check_outputs(self.loss, self.sizes[-1])
        hidden = inputs.check_hidden_activations(activation, len(self.sizes) - 2)
        self._activations: list[Activation | None] = [*hidden, inputs.output_activation_for(self.loss,
                                                                                           output_activation)]
        self.dtype = inputs.check_dtype(dtype)
        self.init = check.choice("init", init, ["auto", *SCHEMES])
        self.backend: Backend = get_backend(backend)
        self.matmul_precision = inputs.check_matmul_precision(matmul_precision, self.backend)
        self._slices = parameter_slices(self.sizes)

    def _keep_z(self) -> list[bool]:
        """Per layer, whether Z[l] needs a buffer of its own (σ' needs it, or a fused loss reads it)."""
        return [act is None or act.needs_z for act in self._activations]

    def _build_parameters(self, host: HostArray) -> None:
        """The flat parameters ``host`` (``(P,)``, or ``(K, P)`` for K members) on the device, zero gradients,
        and each layer's views of both."""
        be = self.backend
        lead = host.shape[:-1]  # () for one network, (K,) for an ensemble
        self.params = be.asarray(host, self.dtype)
        self.grads = be.zeros(host.shape, self.dtype)
        shapes = list(zip(self.sizes[:-1], self.sizes[1:]))
        bias = [(*lead, 1, fo) if lead else (fo,) for _, fo in shapes]  # a member's bias broadcast over its rows
        self.weights = [self.params[..., w].reshape(*lead, fi, fo) for (w, _), (fi, fo) in zip(self._slices, shapes)]
        self.biases = [self.params[..., b].reshape(shape) for (_, b), shape in zip(self._slices, bias)]
        self.grad_weights = [self.grads[..., w].reshape(*lead, fi, fo) for (w, _), (fi, fo) in zip(self._slices,
                                                                                                   shapes)]
        self.grad_biases = [self.grads[..., b] for _, b in self._slices]

    @property
    def n_layers(self) -> int:
        """Number of weight layers (hidden layers + 1)."""
        return len(self.sizes) - 1

    @property
    def n_params(self) -> int:
        """Parameters of one network (an ensemble holds that many per member)."""
        return self._slices[-1][1].stop

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

    def split(self, flat: HostArray) -> list[HostArray]:
        """A flat host buffer laid out like one network's parameters as ``[W1, b1, W2, b2, …]`` (copies)."""
        out = []
        for (w, b), (fan_in, fan_out) in zip(self._slices, zip(self.sizes[:-1], self.sizes[1:])):
            out += [flat[w].reshape(fan_in, fan_out).copy(), flat[b].copy()]
        return out

    # --- the step surface: what training, gradcheck and the benchmark drive ---------------------------
    def check_x(self, X: Any, name: str = "X") -> Array:
        """``X`` checked: 2-D, ``sizes[0]`` features, finite (see :func:`gpubp.inputs.check_x`)."""
        return inputs.check_x(self.backend, X, self.sizes[0], self.dtype, name)

    def check_y(self, Y: Any, n: int, name: str = "Y") -> tuple[bool, Array]:
        """``(is_labels, Y)`` checked against this network's outputs and loss (see :func:`gpubp.inputs.check_y`)."""
        return inputs.check_y(self.backend, Y, n, self.sizes[-1], self.loss, self.dtype, name)

    def workspace(self, batch: int, shared_input: bool = True) -> Workspace:
        """The buffers of a batch of ``batch`` samples (allocated once, then reused); an ensemble's members share
        their input rows, or (``shared_input=False``) each has its own."""
        return self._workspaces.get(batch, shared_input)

    def load_batch(self, X: Any, Y: Any, sample_weight: Any = None) -> Workspace:
        """Check one batch and copy it into the workspace of its size (one transfer each for X, Y and weights;
        an ensemble's members all take it)."""
        X = self.check_x(X)
        is_labels, Y = self.check_y(Y, X.shape[0])
        weight = inputs.check_sample_weight(self.backend, sample_weight, X.shape[0])
        return self._fill(X, is_labels, Y, weight, 0, X.shape[0])

    def _fill(self, X: Array, is_labels: bool, Y: Array, weight: Array | None, start: int, stop: int) -> Workspace:
        """Rows ``[start, stop)`` of checked inputs, targets and weights in the workspace of their count."""
        ws = self.workspace(stop - start)
        self.backend.copy_into(ws.x, X[start:stop])
        ws.load_targets(is_labels, Y[start:stop])
        ws.load_weights(None if weight is None else weight[start:stop])
        return ws

    def feedforward(self, ws: Workspace) -> Array:
        """Forward pass: ``Z[l] = A[l-1]·W[l] + b[l]`` (one GEMM, batched over an ensemble's members),
        ``A[l] = σ(Z[l])``; returns A[L]."""
        be = self.backend
        for layer, activation in enumerate(self._activations, start=1):
            z, a = ws.output_z(layer), ws.a[layer]
            be.matmul(ws.a[layer - 1], self.weights[layer - 1], out=z, precision=self.matmul_precision)
            if activation is None:  # the softmax/sigmoid a loss fuses
                be.bias_loss_output(self.loss, z, self.biases[layer - 1], a, ws.tmp[layer], ws.rows)
            else:
                be.bias_activation_forward(activation, z, self.biases[layer - 1], a, ws.tmp[layer])
        return ws.a[-1]

    def compute_loss(self, ws: Workspace) -> Array:
        raise NotImplementedError

    def backpropagate(self, ws: Workspace, after_layer: Callable[[int], None] | None = None) -> None:
        """Backward pass, BP1–BP4, overwriting :attr:`grads`. Expects :meth:`compute_loss` first.
        ``after_layer(l)`` is called as soon as layer l's gradients are final (l = L … 1), e.g. to start
        their allreduce while the layers below are computed."""
        be = self.backend
        last = self.n_layers
        output_activation = self._activations[-1]
        if output_activation is not None:  # BP1: δ[L] = ∂L/∂A[L] ⊙ σ'(Z[L]) (fused losses wrote δ[L] already)
            be.activation_backward(output_activation, ws.delta[last], ws.z[last], ws.a[last],
                                   ws.tmp[last], ws.tmp2[last])
        for layer in range(last, 0, -1):
            delta = ws.delta[layer]  # BP4: ∂W = A[l-1]ᵀ·δ[l] (for an ensemble, each member's own)
            be.matmul(ws.a[layer - 1].swapaxes(-1, -2), delta, out=self.grad_weights[layer - 1],
                      precision=self.matmul_precision)
            be.bias_grad(delta, ws.ones, out=self.grad_biases[layer - 1])  # BP3: ∂b = Σ_rows δ[l]
            if after_layer is not None:
                after_layer(layer)
            if layer > 1:  # BP2: δ[l-1] = (δ[l]·W[l]ᵀ) ⊙ σ'(Z[l-1])
                below = layer - 1
                be.matmul(delta, self.weights[layer - 1].swapaxes(-1, -2), out=ws.delta[below],
                          precision=self.matmul_precision)
                activation = self._activations[below - 1]
                assert activation is not None  # only the last layer's is fused into the loss
                be.activation_backward(activation, ws.delta[below], ws.z[below], ws.a[below],
                                       ws.tmp[below], ws.tmp2[below])

    def compute_gradients(self, ws: Workspace) -> Array:
        """Forward, loss and backward on a loaded workspace: the loss (0-d; an ensemble's ``(K,)``), the
        gradients in :attr:`grads`."""
        self.feedforward(ws)
        loss = self.compute_loss(ws)
        self.backpropagate(ws)
        return loss

    def count_correct(self, ws: Workspace) -> Array:
        """Correct predictions in the workspace's batch (each member's, ``(K,)``, for an ensemble), a backend array
        (no host sync); with sample weights, the sum of the weights of the correct ones (of each correct output,
        for bce)."""
        xp = self.backend.xp
        output = ws.a[-1]
        if self.loss.name == "cross_entropy":
            hits = xp.argmax(output, axis=-1) == xp.argmax(ws.y, axis=-1)
            weight = None if ws.weight is None else ws.weight[..., 0]
        else:
            hits = (output > 0.5) == (ws.y > 0.5)
            weight = ws.weight
        axes = tuple(range(1, hits.ndim)) if ws.members else None  # an ensemble: one count per member
        if weight is None or ws.weight_total is None:
            return hits.sum(axis=axes)
        return (hits * weight).sum(axis=axes) * (ws.weight_total / ws.batch)  # weights back to their own scale

    def accuracy_denominator(self, n: Any) -> Any:
        """What accuracy divides by for ``n`` samples (or a total sample weight): samples (cross_entropy) or
        outputs (bce)."""
        return n if self.loss.name == "cross_entropy" else n * self.sizes[-1]


class MLP(Network):
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
    matmul_precision:
        ``"highest"`` (exact float32 GEMMs) or ``"tf32"``: on a GPU with tensor cores,
        this network's float32 GEMMs use TF32 (inputs rounded to a 10-bit mantissa,
        float32 accumulation; faster, about 1e-3 relative error per product), switched
        on around this network's GEMMs only (see :meth:`CupyBackend.matmul`); on the CPU it
        changes nothing (logged once).
    """

    def __init__(self, sizes: Sequence[int], activation: str | Sequence[str] = "sigmoid",
                 output_activation: str | None = None, loss: str | Loss = "mse", backend: str | Backend = "auto",
                 dtype: str = "float32", seed: int | None = None, init: str = "auto",
                 matmul_precision: str = "highest"):
        check.seed("seed", seed)
        super().__init__(sizes, activation, output_activation, loss, backend, dtype, init, matmul_precision)
        with self.backend.activate():
            self._build_parameters(initial_parameters(self.sizes, self._activations, self.init, seed))
        self._workspaces = WorkspaceCache(self.backend, self.sizes, self.dtype, self._keep_z())
        self._reduced_steps: dict[tuple[Any, Any], training.ReducedStep] = {}  # train_step(distributed=)

    @classmethod
    def from_config(cls, config: dict[str, Any], params: Any, backend: str | Backend = "auto") -> MLP:
        """The network described by ``config`` (what :meth:`config` returns) with the flat host ``params``.

        ``params`` must have the architecture's size and dtype (it is what :meth:`save` wrote).
        """
        net = cls(config["sizes"], activation=config["activation"], output_activation=config["output_activation"],
                  loss=config["loss"], backend=backend, dtype=config["dtype"], init=config["init"])
        params = check.host_array("params", params)
        if params.shape != (net.n_params,) or params.dtype != net.dtype:
            raise GpubpValueError(f"params has shape {params.shape} and dtype {params.dtype}, the architecture "
                                  f"needs shape ({net.n_params},) and dtype {net.dtype}")
        net.set_weights(net.split(params))
        return net

    def __repr__(self) -> str:
        return (f"MLP(sizes={list(self.sizes)}, activation={self.activations}, output_activation="
                f"{self.output_activation!r}, loss={self.loss.name!r}, backend={self.backend.name!r}, "
                f"dtype={self.dtype.name!r}, params={self.n_params}"
                + (f", matmul_precision={self.matmul_precision!r})" if self.matmul_precision != "highest" else ")"))

    # --- weights ----------------------------------------------------------------------------------
    def get_weights(self) -> list[HostArray]:
        """NumPy copies ``[W1, b1, W2, b2, …]``, ``W`` shaped ``(fan_in, fan_out)``, ``b`` ``(fan_out,)``."""
        return self.split(self.backend.to_host(self.params))

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

    def save(self, path: Any) -> None:
        """Write architecture and weights to ``path`` (``.npz`` with JSON metadata; atomic)."""
        serialization.write_model(path, self.config(), self.backend.to_host(self.params))

    def to_onnx(self, path: Any, opset: int = onnx.DEFAULT_OPSET) -> Any:
        """Write this network as an ONNX model computing :meth:`predict` (needs ``gpubp[onnx]``; see
        :mod:`gpubp.onnx`); returns the path written."""
        return onnx.export_network(self, path, opset)

    # --- the step surface: what training, gradcheck and the benchmark drive (with Network's) ---------------
    def compute_loss(self, ws: Workspace) -> Array:
        """The loss as a 0-d backend array; writes ∂L/∂A[L] (or the fused δ[L]) into ``delta[L]``.
        Expects :meth:`feedforward` first; may be called again with the same result."""
        last = self.n_layers
        return self.backend.loss_value_and_delta(self.loss, ws.output_z(last), ws.a[last], ws.y,
                                                 ws.delta[last], ws.tmp[last], ws.rows, ws.weight)

    def layer_gradient(self, layer: int) -> Array:
        """Layer ``layer``'s part of :attr:`grads`: its ∂W then its ∂b, contiguous in the flat buffer."""
        w, b = self._slices[layer - 1]
        return self.grads[w.start:b.stop]

    def find_nonfinite(self, ws: Workspace) -> str:
        """Run the step on ``ws`` again and say where the first NaN/Inf appears (host syncs; failure path only)."""
        be = self.backend
        for layer, (w, b) in enumerate(zip(self.weights, self.biases), start=1):
            if not (be.all_finite(w) and be.all_finite(b)):
                return f"the weights of layer {layer} (already non-finite before this step)"
        self.feedforward(ws)
        for layer in range(1, self.n_layers + 1):
            z = ws.z[layer]
            if not be.all_finite(ws.a[layer]) or (z is not None and not be.all_finite(z)):
                name = self.activations[layer - 1] if layer < self.n_layers else self.output_activation
                return f"the forward pass of layer {layer} of {self.n_layers} (Z = A·W + b, A = {name}(Z))"
        if not be.all_finite(self.compute_loss(ws)):
            return f"the loss ({self.loss.name}; the network's outputs were finite)"
        self.backpropagate(ws)
        for layer in range(self.n_layers, 0, -1):
            if not be.all_finite(ws.delta[layer]):
                return f"the backward pass at layer {layer} of {self.n_layers} (δ)"
        for layer in range(1, self.n_layers + 1):
            if not (be.all_finite(self.grad_weights[layer - 1]) and be.all_finite(self.grad_biases[layer - 1])):
                return f"the gradient of layer {layer} of {self.n_layers}"
        return "no single place on re-running the step (the values were finite the second time)"

    # --- public API ---------------------------------------------------------------------------------------
    def train_step(self, X: Any, Y: Any, optimizer: Optimizer, sample_weight: Any = None,
                   distributed: Any = None) -> Array:
        """One gradient-descent step on the batch ``(X, Y)``; returns the loss as a 0-d backend array.

        ``sample_weight`` (``(n,)``, ≥ 0): the loss is the weighted mean ``Σ wₙ ℓₙ / Σ wₙ``.
        ``distributed`` (a :class:`~gpubp.distributed.Communicator`): every rank passes the same batch and
        computes the gradient of its part of the rows; one allreduce gives every rank the whole batch's
        gradient and loss, and the same update (a step whose reduced gradient is not finite is skipped).
        The ranks must start from the same weights (the same ``seed``, a distributed ``fit`` before, or
        ``comm.broadcast(net.params)``): unlike ``fit``, a single step does not broadcast rank 0's.

        The step itself does not wait for the GPU and the loss comes back as a device
        scalar (``float(loss)`` waits for it). The input checks do: with device (CuPy)
        arrays they read a few scalars back (finiteness, the label range) — a short
        host synchronisation per call; :meth:`fit` checks the whole set once and then
        runs its steps without any. Unlike :meth:`fit`, a single step has no divergence
        guard: check the returned loss.
        """
        comm = check_communicator(distributed, "replicated")
        if comm is not None:
            return self._reduced_step(X, Y, optimizer, sample_weight, comm)
        optimizer = inputs.check_optimizer(optimizer)
        with self.backend.activate():
            loss = self.compute_gradients(self.load_batch(X, Y, sample_weight))
            optimizer.update(self.backend, self.params, self.grads)
        return loss

    def _reduced_step(self, X: Any, Y: Any, optimizer: Optimizer, sample_weight: Any, comm: Communicator) -> Array:
        """:meth:`train_step` across the ranks of ``comm``: this rank's part of the rows, one reduced step."""

        def load() -> tuple[Optimizer, Workspace | None]:
            checked = inputs.check_optimizer(optimizer)
            x = self.check_x(X)
            n = x.shape[0]
            is_labels, y = self.check_y(Y, n)
            weight = inputs.check_sample_weight(self.backend, sample_weight, n)  # one scale for every part
            start, stop = comm.rank * n // comm.size, (comm.rank + 1) * n // comm.size
            return checked, (self._fill(x, is_labels, y, weight, start, stop) if stop > start else None)

        with self.backend.activate():
            checked, ws = agreed(comm, load, "load its part of the batch")
            if not comm.exchange_agreed:  # once per communicator: every rank makes the same collectives
                check_identical(comm, {"gradient exchange": [comm.kind, overlaps(comm, self.backend.is_gpu)]})
                comm.exchange_agreed = True
            step = self._reduced_steps.get((comm, checked))
            if step is None:  # one per communicator and optimizer: its buffers are allocated once
                step = training.ReducedStep(self, checked, Guard(self.backend, self.grads, "skip_step", None), comm)
                self._reduced_steps = {(comm, checked): step}
            loss, _ = step(ws)
        return loss

    def loss_and_grads(self, X: Any, Y: Any, sample_weight: Any = None) -> tuple[float, list[HostArray]]:
        """The loss and its gradients (NumPy, in :meth:`get_weights` order), without updating anything."""
        with self.backend.activate():
            loss = self.compute_gradients(self.load_batch(X, Y, sample_weight))
            return float(loss), self.split(self.backend.to_host(self.grads))

    def forward(self, X: Any, batch_size: int | None = None) -> Array:
        """The network's output for ``X`` as a backend array (probabilities for cross_entropy/bce)."""
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else PREDICT_BATCH
        with self.backend.activate(), inputs.quiet_overflow():
            X = self.check_x(X)
            n = X.shape[0]
            out = self.backend.empty((n, self.sizes[-1]), self.dtype)
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                ws = self.workspace(stop - start)
                self.backend.copy_into(ws.x, X[start:stop])
                self.backend.copy_into(out[start:stop], self.feedforward(ws))
        return out

    def predict(self, X: Any, batch_size: int | None = None) -> HostArray:
        """The network's output for ``X`` as a NumPy array (probabilities for cross_entropy/bce).

        Inputs so large that the arithmetic overflows give inf/NaN outputs and one :class:`GpubpWarning`
        (:meth:`forward`, which stays on the device, gives them without the check).
        """
        out = self.backend.to_host(self.forward(X, batch_size))
        bad = int(out.size - np.count_nonzero(np.isfinite(out)))
        if bad:
            inputs.warn_overflow("predict", bad)
        return out

    def evaluate(self, X: Any, Y: Any, batch_size: int | None = None, sample_weight: Any = None) -> dict[str, float]:
        """``{"loss": …}`` over the whole set, plus ``"accuracy"`` for cross_entropy and bce; with
        ``sample_weight``, both are weighted means."""
        batch_size = check.positive_int("batch_size", batch_size) if batch_size is not None else PREDICT_BATCH
        with self.backend.activate():
            X = self.check_x(X)
            is_labels, Y = self.check_y(Y, X.shape[0])
            weight = inputs.check_sample_weight(self.backend, sample_weight, X.shape[0])
            return self.evaluate_checked(X, is_labels, Y, batch_size, weight)

    def evaluate_checked(self, X: Array, is_labels: bool, Y: Array, batch_size: int = PREDICT_BATCH,
                         weight: Array | None = None) -> dict[str, float]:
        """:meth:`evaluate` on inputs already checked by :meth:`check_x`, :meth:`check_y` and
        :func:`gpubp.inputs.check_sample_weight`."""
        n = X.shape[0]
        total_loss: Any = 0.0
        correct: Any = 0
        total_weight: Any = 0.0
        with self.backend.activate(), inputs.quiet_overflow():
            for start in range(0, n, batch_size):
                stop = min(start + batch_size, n)
                ws = self._fill(X, is_labels, Y, weight, start, stop)
                self.feedforward(ws)
                size = ws.batch if ws.weight_total is None else ws.weight_total
                total_loss = total_loss + self.compute_loss(ws) * size
                total_weight = total_weight + size
                if self.loss.classification:
                    correct = correct + self.count_correct(ws)
            denominator = float(total_weight)
            result = {"loss": float(total_loss) / denominator}
            if self.loss.classification:
                result["accuracy"] = float(correct) / self.accuracy_denominator(denominator)
        if not np.isfinite(result["loss"]):
            inputs.warn_overflow("evaluate: the loss", 1)
        return result

    def fit(self, X: Any, Y: Any, epochs: int = 10, batch_size: int = 64, optimizer: Optimizer | None = None,
            validation_data: tuple[Any, ...] | None = None, shuffle: bool = True, progress: bool | str = True,
            seed: int | None = None, *, validation_split: float = 0.0, lr_schedule: Any = None,
            early_stopping: int | None = None, monitor: str | None = None, min_delta: float = 0.0,
            restore_best: bool = True, on_nonfinite: str = "raise", check_every: int | None = None,
            checkpoint: Any = None, resume: bool = False, checkpoint_every: int = 1,
            sample_weight: Any = None, callback: Any = None, distributed: Any = None,
            shard: str = "replicated") -> History:
        """Train by minibatch gradient descent; returns the per-epoch :class:`~gpubp.history.History`.

        ``X`` is ``(n_samples, sizes[0])``; ``Y`` is integer class labels ``(n,)`` for
        ``cross_entropy``, else one row of targets per sample ``(n, outputs)`` (``(n,)`` for one
        output; booleans for ``bce``), host (NumPy) or device arrays. The training set is moved
        to the device once; each epoch draws a permutation (from ``seed``) when ``shuffle`` is
        true, and every batch is gathered into the preallocated workspace. The default optimizer is
        ``Adam(lr=1e-3)``. The loss and accuracy of an epoch are averages over
        its batches, taken as the weights changed; validation metrics are
        computed at the end of each epoch. ``sample_weight`` (``(n,)``, ≥ 0) makes each batch's
        loss the weighted mean ``Σ wₙ ℓₙ / Σ wₙ`` (``validation_data`` may then be a triple
        ``(X_val, Y_val, sample_weight_val)``). ``callback(epoch, record)`` is called after each
        epoch with its metrics; it may add entries to ``record`` and returns True to stop the run.
        ``distributed`` (a communicator from :func:`gpubp.distributed.init`) trains data-parallel: each
        batch of ``batch_size`` rows is split between the ranks, with ``shard="replicated"`` (every rank
        passes the same ``X, Y``) or ``"local"`` (each rank its own rows); see :mod:`gpubp.distributed`.
        Every argument is checked before anything changes; each is described in
        :class:`gpubp.training.FitConfig`, and the loop in :func:`gpubp.training.fit`.
        """
        build = functools.partial(
            training.FitConfig.build,
            epochs=epochs, batch_size=batch_size, optimizer=optimizer, shuffle=shuffle, progress=progress,
            seed=seed, validation_split=validation_split, lr_schedule=lr_schedule, early_stopping=early_stopping,
            monitor=monitor, min_delta=min_delta, restore_best=restore_best, on_nonfinite=on_nonfinite,
            check_every=check_every, checkpoint=checkpoint, resume=resume, checkpoint_every=checkpoint_every,
            callback=callback, distributed=distributed, shard=shard)
        config = agreed(distributed, build, "check its fit arguments") if isinstance(distributed, Communicator) \
            else build()
        with self.backend.activate():
            return training.fit(self, X, Y, config, validation_data, sample_weight)
