"""Shape computations folded to constants once a model's input shapes are fixed.

Exporters such as paddle2onnx compute Reshape targets at run time from Shape, Slice, Gather,
comparisons, NonZero and Concat. Static shape inference (ONNX's and ONNX Runtime's) gives up
on some of these (NonZero's length, a Slice with computed ends), so the rank of everything
after the Reshape is unknown and rules that need ranks cannot be built. With the inputs'
shapes fixed (the programs specialised to a run's feed shapes, runtime/engine.py), those
computations depend on constants and static dims only: evaluating them once (ONNX's reference
implementation, one node at a time) gives the same values the run computes, and inference
then knows the ranks. Only integer and boolean results are folded, so no float computation
(weights, activations) is ever replaced by a value.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .ir import drop_unused_initializers, onnx_ir, to_ir, to_proto
from .model import Model
from .op_kinds import RANDOM, SHAPE_READERS
from .shapes import FLOAT_TYPES, TensorInfo, ai_onnx_opset, constant_node_value

# Folded values are shape vectors and masks; anything larger is not a shape computation.
MAX_FOLDED = 1 << 16


def fold_static_shapes(model: Model, rounds: int = 4) -> Model:
    """`model` with its shape computations folded (a new Model), or `model` itself when there
    is nothing to fold. Each round re-infers shapes, which may fix more dims to fold. Only
    models with a float tensor of unknown rank are looked at."""
    if not unknown_ranks(model):
        return model
    for _ in range(rounds):
        folded = fold_shape_computations(model.proto, model.infos)
        if folded is None:
            return model
        model = Model(folded, model.path, weights=model.weights)
    return model


def unknown_ranks(model: Model) -> list[onnx.NodeProto]:
    """The nodes with a float (or untyped) output whose rank static inference left unknown."""
    infos = model.infos
    return [node for node in model.proto.graph.node
            if any(out and (out not in infos or (infos[out].shape is None
                                                 and infos[out].dtype in (None, *FLOAT_TYPES)))
                   for out in node.output)]


def fold_shape_computations(proto: onnx.ModelProto, infos: Mapping[str, TensorInfo]
                            ) -> onnx.ModelProto | None:
    """A copy of `proto` in which every node with an integer or boolean result computed from
    constants and static dims is replaced by that result; None when there is none."""
    graph = proto.graph
    values = _constants(graph)
    outputs = {value.name for value in graph.output}
    opset = ai_onnx_opset(proto) or 0
    folded: dict[str, np.ndarray] = {}
    done: list[int] = []
    for index, node in enumerate(graph.node):
        result = None if any(out in outputs for out in node.output) else \
            _evaluate(node, values, infos, opset)
        if result is not None:
            done.append(index)
            for name, value in zip(node.output, result, strict=True):
                values[name] = folded[name] = value
    fresh = {name for name in folded if not infos.get(name) or _unknown(infos[name])}
    if not fresh:  # only values inference knew already: nothing gained
        return None
    model = to_ir(proto)
    nodes = list(model.graph)
    for index in reversed(done):  # later first: a result only folded nodes read goes too
        _as_constants(model.graph, nodes[index], folded)
    return to_proto(model)


def _as_constants(graph: onnx_ir.Graph, node: onnx_ir.Node,
                  folded: Mapping[str, np.ndarray]) -> None:
    """`node` out of `graph`: the results something reads become initializers, and the
    initializers only it read go with it."""
    for out in node.outputs:
        if out.uses():
            name, out.name = out.name, None
            tensor = onnx_ir.tensor(folded[name], name=name)
            const = onnx_ir.Value(name=name, type=onnx_ir.TensorType(tensor.dtype),
                                  shape=tensor.shape, const_value=tensor)
            out.replace_all_uses_with(const)
            graph.register_initializer(const)
    read = {value: None for value in node.inputs if value is not None and value.is_initializer()}
    graph.remove(node, safe=True)
    drop_unused_initializers(graph, read)


def _unknown(info: TensorInfo) -> bool:
    return info.shape is None or not all(isinstance(d, int) for d in info.shape)


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small integer and boolean initializers and Constant outputs (the folding's inputs)."""
    values = {}
    for init in graph.initializer:
        if init.data_location != TensorProto.EXTERNAL and _foldable_type(init.data_type) \
                and np.prod(init.dims, dtype=np.int64) <= MAX_FOLDED:
            values[init.name] = numpy_helper.to_array(init)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
            value = constant_node_value(node)
            if value is not None and _small(value):
                values[node.output[0]] = value
    return values


def _evaluate(node: onnx.NodeProto, values: Mapping[str, np.ndarray],
              infos: Mapping[str, TensorInfo], opset: int) -> list[np.ndarray] | None:
    if node.domain not in ("", "ai.onnx") or node.op_type in RANDOM \
            or node.op_type == "Constant" or any(a.type in (onnx.AttributeProto.GRAPH,
                                                            onnx.AttributeProto.GRAPHS)
                                                 for a in node.attribute):
        return None
    if node.op_type in SHAPE_READERS:
        return _shape_of(node, infos.get(node.input[0]))
    names = [name for name in node.input if name]
    if not names or any(name not in values for name in names):
        return None
    try:
        result = _run(node, {name: values[name] for name in names}, opset)
    except Exception:  # an op the reference implementation lacks: left to the run
        return None
    if any(not _small(value) for value in result):
        return None
    return result


def _shape_of(node: onnx.NodeProto, info: TensorInfo | None) -> list[np.ndarray] | None:
    dims = info.certain if info is not None else None
    if dims is None or not all(isinstance(d, int) for d in dims):
        return None
    shape = np.array(dims, dtype=np.int64)
    if node.op_type == "Size":
        return [np.array(np.prod(shape), dtype=np.int64)]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    end = attrs.get("end")
    return [shape[attrs.get("start", 0):end]]


def _run(node: onnx.NodeProto, feeds: dict[str, np.ndarray], opset: int) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    inputs = [helper.make_tensor_value_info(name, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            v.shape) for name, v in feeds.items()]
    outputs = [helper.make_empty_tensor_value_info(name) for name in node.output if name]
    graph = helper.make_graph([node], "fold", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, feeds)]


def _small(value: np.ndarray) -> bool:
    return value.dtype.kind in "biu" and value.size <= MAX_FOLDED


def _foldable_type(data_type: int) -> bool:
    return data_type in (TensorProto.INT64, TensorProto.INT32, TensorProto.BOOL,
                         TensorProto.INT8, TensorProto.UINT8, TensorProto.INT16)
