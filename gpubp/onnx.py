"""ONNX export: a trained network as an ONNX model that any ONNX runtime can run.

The graph is what :meth:`gpubp.MLP.predict` computes: for each layer a ``Gemm``
(``Z = A·W + b``) and its activation, then the output activation the loss fuses
(``Softmax`` for cross_entropy, ``Sigmoid`` for bce), in the network's dtype, with a
dynamic batch dimension (input ``"input"`` ``[N, sizes[0]]``, output ``"output"``
``[N, sizes[-1]]``). Activations without an ONNX operator in the opset are written out
in elementary operators with gpubp's formulas: GELU's tanh approximation (an operator
from opset 20 on), SiLU, softplus (``max(z, 0) + log(1 + exp(−|z|))``), ELU and leaky
ReLU (written out so that float64 models run in every runtime). Written with the
``onnx`` package (the optional extra ``gpubp[onnx]``), checked with ``onnx.checker``,
and saved atomically.
"""

from __future__ import annotations

import importlib
import json
import math
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ._version import __version__
from .activations import LEAKY_RELU_SLOPE
from .errors import GpubpValueError, OptionalDependencyError
from .serialization import check_output_path, write_atomic

DEFAULT_OPSET = 17
"""The opset written by default (ONNX 1.12, 2022; every current runtime runs it)."""
MIN_OPSET = 17
GELU_OPSET = 20
"""From this opset on, GELU is the ``Gelu`` operator (``approximate="tanh"``)."""


class ExportableNetwork(Protocol):
    """What the export reads of a network (:class:`gpubp.MLP` has it)."""

    def config(self) -> dict[str, Any]: ...
    def get_weights(self) -> list[np.ndarray]: ...


def onnx_module() -> Any:
    """The ``onnx`` package, or an error naming the extra to install."""
    try:
        return importlib.import_module("onnx")
    except ImportError as error:
        raise OptionalDependencyError(
            f"ONNX export needs the onnx package ({error}); install it with: pip install \"gpubp[onnx]\"") from None


def to_model(net: ExportableNetwork, opset: int = DEFAULT_OPSET, metadata: dict[str, str] | None = None,
             binary_as_two_columns: bool = False) -> Any:
    """The network as a checked ``onnx.ModelProto``; ``metadata`` adds entries to the model's properties.
    ``binary_as_two_columns``: a one-output sigmoid network gives ``[1 − p, p]`` (scikit-learn's
    ``predict_proba`` of two classes) instead of ``p``."""
    onnx = onnx_module()
    newest = int(onnx.defs.onnx_opset_version())
    if not isinstance(opset, int) or isinstance(opset, bool) or not MIN_OPSET <= opset <= newest:
        raise GpubpValueError(f"opset must be an integer from {MIN_OPSET} to {newest} (the newest this onnx "
                              f"package knows), got {opset!r}")
    config = net.config()
    dtype = np.dtype(config["dtype"])
    builder = _Graph(onnx, dtype, opset)
    weights = net.get_weights()
    hidden = list(config["activation"])
    current = "input"
    for layer in range(len(weights) // 2):
        w, b = weights[2 * layer], weights[2 * layer + 1]
        z = builder.node("Gemm", [current, builder.constant(f"W{layer + 1}", w), builder.constant(f"b{layer + 1}", b)],
                         f"z{layer + 1}")
        activation = hidden[layer] if layer < len(hidden) else config["output_activation"]
        current = builder.activation(activation, z, f"a{layer + 1}")
    sizes = config["sizes"]
    outputs = sizes[-1]
    if binary_as_two_columns:
        if outputs != 1 or config["output_activation"] != "sigmoid":
            raise GpubpValueError("binary_as_two_columns needs a network with one sigmoid output")
        current = builder.node("Concat", [builder.node("Sub", [builder.scalar(1.0), current]), current], axis=1)
        outputs = 2
    builder.node("Identity", [current], "output")
    properties = {"gpubp_version": __version__, "gpubp_config": json.dumps(config), **(metadata or {})}
    return builder.model(sizes[0], outputs, properties)


def export_network(net: ExportableNetwork, path: Any, opset: int = DEFAULT_OPSET,
                   metadata: dict[str, str] | None = None, binary_as_two_columns: bool = False) -> Path:
    """Write ``net`` as an ONNX model to ``path`` (atomically; the previous file is kept on a failure);
    ``metadata`` and ``binary_as_two_columns`` as in :func:`to_model`."""
    target = check_output_path(path, "path")
    model = to_model(net, opset, metadata, binary_as_two_columns)
    return write_atomic(target, lambda handle: handle.write(model.SerializeToString()))


class _Graph:
    """The nodes, initializers and value names of one graph under construction."""

    def __init__(self, onnx: Any, dtype: np.dtype, opset: int) -> None:
        self.onnx, self.dtype, self.opset = onnx, dtype, opset
        self.elem_type = onnx.TensorProto.DOUBLE if dtype == np.float64 else onnx.TensorProto.FLOAT
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self.scalars: dict[float, str] = {}
        self.count = 0

    def node(self, op: str, inputs: list[str], output: str | None = None, **attributes: Any) -> str:
        self.count += 1
        name = output or f"{op.lower()}_{self.count}"
        self.nodes.append(self.onnx.helper.make_node(op, inputs, [name], name=f"{op}_{self.count}", **attributes))
        return name

    def constant(self, name: str, value: np.ndarray) -> str:
        self.initializers.append(self.onnx.numpy_helper.from_array(np.asarray(value, dtype=self.dtype), name))
        return name

    def scalar(self, value: float) -> str:
        """A shared scalar initializer of the graph's dtype."""
        if value not in self.scalars:
            self.scalars[value] = self.constant(f"c{len(self.scalars)}", np.array(value))
        return self.scalars[value]

    def activation(self, name: str, z: str, out: str) -> str:
        """``out = σ(z)`` for gpubp's activation ``name`` (the formulas of :mod:`gpubp.activations`)."""
        direct = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "Relu", "identity": "Identity"}
        if name in direct:
            return self.node(direct[name], [z], out)
        if name == "softmax":
            return self.node("Softmax", [z], out, axis=-1)
        if name == "leaky_relu":  # max(z, slope·z) for a slope below 1
            return self.node("Max", [z, self.node("Mul", [z, self.scalar(LEAKY_RELU_SLOPE)])], out)
        if name == "silu":  # z·sigmoid(z)
            return self.node("Mul", [z, self.node("Sigmoid", [z])], out)
        if name == "softplus":  # max(z, 0) + log(1 + exp(−|z|))
            tail = self.node("Log", [self.node("Add", [self.node("Exp", [self.node("Neg", [self.node("Abs", [z])])]),
                                                       self.scalar(1.0)])])
            return self.node("Add", [self.node("Relu", [z]), tail], out)
        if name == "elu":  # z if z > 0 else exp(z) − 1
            negative = self.node("Sub", [self.node("Exp", [self.node("Min", [z, self.scalar(0.0)])]), self.scalar(1.0)])
            return self.node("Where", [self.node("Greater", [z, self.scalar(0.0)]), z, negative], out)
        if name == "gelu":
            return self._gelu(z, out)
        raise GpubpValueError(f"activation {name!r} has no ONNX form in gpubp's export")

    def _gelu(self, z: str, out: str) -> str:
        """½·z·(1 + tanh(c·(z + k·z³))), c = √(2/π), k = 0.044715 (PyTorch's tanh approximation)."""
        if self.opset >= GELU_OPSET:
            return self.node("Gelu", [z], out, approximate="tanh")
        c, k = math.sqrt(2.0 / math.pi), 0.044715
        inner = self.node("Mul", [z, self.node("Add", [self.node("Mul", [self.node("Mul", [z, z]), self.scalar(c * k)]),
                                                       self.scalar(c)])])
        half_z = self.node("Mul", [z, self.scalar(0.5)])
        return self.node("Mul", [half_z, self.node("Add", [self.node("Tanh", [inner]), self.scalar(1.0)])], out)

    def model(self, n_inputs: int, n_outputs: int, metadata: dict[str, str]) -> Any:
        helper = self.onnx.helper
        graph = helper.make_graph(
            self.nodes, "gpubp_mlp",
            [helper.make_tensor_value_info("input", self.elem_type, ["N", n_inputs])],
            [helper.make_tensor_value_info("output", self.elem_type, ["N", n_outputs])],
            initializer=self.initializers)
        opsets = [helper.make_opsetid("", self.opset)]
        model = helper.make_model(graph, opset_imports=opsets, producer_name="gpubp", producer_version=__version__)
        model.ir_version = helper.find_min_ir_version_for(opsets)  # not the package's newest: older runtimes load it
        helper.set_model_props(model, metadata)
        self.onnx.checker.check_model(model, full_check=True)
        return model
