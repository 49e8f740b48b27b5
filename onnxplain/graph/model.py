"""A loaded model with the facts every pass and method asks about: inputs, outputs, batch axis."""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import onnx

from .load import normalize, read_model
from .shapes import Dim, TensorInfo, ai_onnx_opset, infer_shapes, value_info_to_tensor_info
from .weights import Weights, tensor_value


@dataclass(frozen=True)
class TensorSpec:
    """A graph input or output as declared in the model."""

    name: str
    info: TensorInfo

    @property
    def dims(self) -> tuple[Dim, ...] | None:
        return self.info.shape

    @property
    def numpy_dtype(self) -> np.dtype:
        return self.info.numpy_dtype

    @property
    def is_float(self) -> bool:
        return self.info.is_float

    def describe(self) -> str:
        dims = "?" if self.dims is None else ", ".join(
            "?" if d is None else str(d) for d in self.dims)
        dtype = self.numpy_dtype.name if self.info.dtype else "unknown type"
        return f"{self.name} ({dtype} [{dims}])"


@dataclass(frozen=True)
class BatchAxis:
    """The batch axis: symbolic, or fixed to `size` (then rows run in chunks of it).

    `axes`: (input, axis its rows lie on) where that is not axis 0; None for inputs that are
    not per row (scalars), which every run gets as they are. `symbol`: the batch dim's name.
    """

    symbolic: bool
    size: int | None
    axes: tuple[tuple[str, int | None], ...] = ()
    symbol: str | None = None

    def describe(self) -> str:
        return "symbolic" if self.symbolic else f"fixed to {self.size}"

    @property
    def of_inputs(self) -> dict[str, int | None]:
        """Input name -> the axis its rows lie on (absent: axis 0)."""
        return dict(self.axes)

    def axis_in(self, dims: tuple[Dim, ...] | None) -> int | None:
        """Where rows lie in a tensor declared with `dims`: the batch symbol's position,
        else axis 0; None for scalars."""
        if dims is not None and not dims:
            return None
        if dims and self.symbol is not None and self.symbol in dims:
            return dims.index(self.symbol)
        return 0


class Model:
    """A normalised ONNX model (see graph.load) plus lazily computed shape facts."""

    def __init__(self, proto: onnx.ModelProto, path: str | None = None,
                 infos: dict[str, TensorInfo] | None = None,
                 weights: Weights | None = None, file_ir_version: int | None = None):
        """`infos` gives the shape facts when they are known already (a part of a model
        whose shapes were inferred): inference costs a third of a second on ResNet-18.
        `weights`: those of the model `proto` is a light copy of (see graph.weights).
        `file_ir_version`: the IR version of the file as given (default: proto's)."""
        self.proto = proto
        self.path = path
        self.weights = Weights(proto) if weights is None else weights
        if infos is not None:
            self.__dict__["infos"] = infos
        self.opset: int = ai_onnx_opset(proto) or 0
        # The IR version of the file as given (normalising may raise or lower it).
        self.file_ir_version: int = (proto.ir_version if file_ir_version is None
                                     else file_ir_version)
        # Facts derived by passes (attention layers...), computed once per model.
        self.derived: dict[str, object] = {}

    @classmethod
    def load(cls, source: str | os.PathLike | bytes | onnx.ModelProto) -> Model:
        # Large weights are file stubs (read_model), read from the file where needed;
        # normalising reads them through tensor_value, and what it rewrites holds bytes.
        proto, path = read_model(source)
        ir_version = proto.ir_version  # read first: normalize may change it in place
        return cls(normalize(proto), path, file_ir_version=ir_version)

    @cached_property
    def infos(self) -> dict[str, TensorInfo]:
        return infer_shapes(self.proto)

    @cached_property
    def inputs(self) -> list[TensorSpec]:
        return [TensorSpec(v.name, value_info_to_tensor_info(v)) for v in self.proto.graph.input]

    @cached_property
    def outputs(self) -> list[TensorSpec]:
        specs = []
        for value in self.proto.graph.output:
            declared = value_info_to_tensor_info(value)
            inferred = self.infos.get(value.name)
            if inferred is not None and (declared.shape is None or declared.dtype is None):
                declared = TensorInfo(declared.dtype or inferred.dtype,
                                      declared.shape if declared.shape is not None
                                      else inferred.certain)
            specs.append(TensorSpec(value.name, declared))
        return specs

    def input(self, name: str) -> TensorSpec:
        return next(spec for spec in self.inputs if spec.name == name)

    def output(self, name: str) -> TensorSpec:
        return next(spec for spec in self.outputs if spec.name == name)

    @cached_property
    def batch(self) -> BatchAxis:
        """Where each input's rows lie, and whether the batch size is fixed.

        The batch symbol is the one dim name the inputs declare on axis 0 (none if they
        declare several); an input that carries it elsewhere (a recurrent state
        [2, batch, H]) has its rows there, a scalar has none. Fixed if an input declares an
        integer size where its rows lie (exports bake the 1 in).
        """
        firsts = {spec.dims[0] for spec in self.inputs
                  if spec.dims and isinstance(spec.dims[0], str)}
        probe = BatchAxis(True, None, symbol=firsts.pop() if len(firsts) == 1 else None)
        axes = {spec.name: probe.axis_in(spec.dims) for spec in self.inputs}
        fixed = [spec.dims[axis] for spec in self.inputs
                 if (axis := axes[spec.name]) is not None and spec.dims
                 and isinstance(spec.dims[axis], int)]
        moved = tuple((name, axis) for name, axis in axes.items() if axis != 0)
        if fixed:
            return BatchAxis(False, min(fixed), moved, probe.symbol)
        return BatchAxis(True, None, moved, probe.symbol)

    @cached_property
    def node_by_output(self) -> dict[str, onnx.NodeProto]:
        return {out: node for node in self.proto.graph.node for out in node.output if out}

    @cached_property
    def consumers(self) -> dict[str, list[onnx.NodeProto]]:
        users: dict[str, list[onnx.NodeProto]] = {}
        for node in self.proto.graph.node:
            for name in node.input:
                if name:
                    users.setdefault(name, []).append(node)
        return users

    def constant_value(self, name: str) -> np.ndarray | None:
        """The value of initializer or Constant output `name` (a file stub's read from the
        model's file), else None."""
        for init in self.proto.graph.initializer:
            if init.name == name:
                return tensor_value(init)
        producer = self.node_by_output.get(name)
        if producer is not None and producer.op_type == "Constant":
            return onnx.numpy_helper.to_array(producer.attribute[0].t)
        return None

    @cached_property
    def constants(self) -> frozenset[str]:
        """Tensors computed from initializers and Constant nodes only."""
        graph = self.proto.graph
        constant = {init.name for init in graph.initializer}
        for node in graph.node:
            if node.op_type == "Constant" or (
                    node.input and all(not i or i in constant for i in node.input)
                    and not node.op_type.startswith("Random")
                    and not _has_subgraph(node)):  # If, Loop bodies read outer tensors
                constant.update(o for o in node.output if o)
        return frozenset(constant)

    @cached_property
    def float_activations(self) -> list[tuple[tuple[Dim, ...], int]]:
        """(dims after the batch axis, bytes per element) of every float node output whose
        rank is known: what memory estimates add up."""
        found = []
        for node in self.proto.graph.node:
            for name in node.output:
                info = self.infos.get(name)
                if info is not None and info.is_float and info.shape:
                    found.append((tuple(info.shape[1:]), info.numpy_dtype.itemsize))
        return found

    @cached_property
    def rows_coupled(self) -> str | None:
        """An op whose result for one row depends on the other rows of the batch (dynamic
        quantisation takes one scale over the batch), or None."""
        for node in self.proto.graph.node:
            if node.op_type == "DynamicQuantizeLinear":
                return node.op_type
        return None


def _has_subgraph(node: onnx.NodeProto) -> bool:
    return any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
               for a in node.attribute)
