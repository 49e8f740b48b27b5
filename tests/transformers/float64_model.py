"""An exported model rewritten to compute in float64, so the transformer oracles can check
the formulas where float32 arithmetic alone drifts past 1e-4 (Chefer et al.'s LRP divides
by sums that nearly cancel). ONNX Runtime's CPU kernels of Erf and Conv take float32 only:
a ViT's patch-embedding Conv becomes a float64 MatMul over the patches, other Convs and Erf
run in float32 between Casts (Erf's rounding stays below 1e-5 in the scores)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT32_ONLY = ("Erf", "Conv")


def to_float64(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT:
            init.CopyFrom(numpy_helper.from_array(
                numpy_helper.to_array(init).astype(np.float64), init.name))
    for value in list(graph.input) + list(graph.output):
        if value.type.tensor_type.elem_type == TensorProto.FLOAT:
            value.type.tensor_type.elem_type = TensorProto.DOUBLE
    del graph.value_info[:]
    nodes = []
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.DOUBLE
            if attribute.type == onnx.AttributeProto.TENSOR and \
                    attribute.t.data_type == TensorProto.FLOAT:
                attribute.t.CopyFrom(numpy_helper.from_array(
                    numpy_helper.to_array(attribute.t).astype(np.float64), attribute.t.name))
        if node.op_type == "Conv" and _patches(node, graph):
            nodes.extend(_patch_conv_as_matmul(node, graph))
        else:
            nodes.extend(_in_float32(node) if node.op_type in FLOAT32_ONLY else [node])
    del graph.node[:]
    graph.node.extend(nodes)
    return copy


def _in_float32(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    casts = [helper.make_node("Cast", [name], [name + "/float32"], to=TensorProto.FLOAT)
             for name in node.input if name]
    inner = helper.make_node(node.op_type, [c.output[0] for c in casts],
                             [node.output[0] + "/float32"], name=node.name)
    inner.attribute.extend(node.attribute)
    back = helper.make_node("Cast", [inner.output[0]], [node.output[0]],
                            to=TensorProto.DOUBLE)
    return [*casts, inner, back]


def _attr(node: onnx.NodeProto, name: str, default=None):
    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _patches(node: onnx.NodeProto, graph: onnx.GraphProto) -> bool:
    """A ViT patch embedding: 2-D, stride equal to the kernel, no padding, one group."""
    weights = {init.name: init for init in graph.initializer}
    w = weights.get(node.input[1])
    if w is None or len(w.dims) != 4:
        return False
    kernel = list(w.dims[2:])
    return (list(_attr(node, "strides", [1, 1])) == kernel and not any(_attr(node, "pads", []))
            and _attr(node, "group", 1) == 1 and _attr(node, "auto_pad", b"NOTSET")
            in (b"NOTSET", "NOTSET"))


def _patch_conv_as_matmul(node: onnx.NodeProto, graph: onnx.GraphProto) -> list:
    """Non-overlapping patches: [N, C, H, W] -> [N, gh*gw, C*kh*kw] @ W^T (+ b), in float64."""
    weights = {init.name: init for init in graph.initializer}
    w = numpy_helper.to_array(weights[node.input[1]])
    out_channels, channels, kh, kw = w.shape
    x, y = node.input[0], node.output[0]
    name = node.output[0] + "/patches"
    graph.initializer.extend([
        numpy_helper.from_array(w.reshape(out_channels, -1).T.copy(), name + "/w"),
    ])
    made = [helper.make_node("Shape", [x], [name + "/shape"])]
    # [N, C, H, W] -> [N, C, gh, kh, gw, kw], gh and gw read from the shape at run time.
    for axis, size in ((2, kh), (3, kw)):
        made += [
            helper.make_node("Gather", [name + "/shape", _const(graph, f"{name}/a{axis}",
                                                                 [axis])],
                             [f"{name}/d{axis}"]),
            helper.make_node("Div", [f"{name}/d{axis}", _const(graph, f"{name}/k{axis}",
                                                               [size])], [f"{name}/g{axis}"]),
        ]
    made += [
        helper.make_node("Concat", [_const(graph, name + "/n", [0]),
                                    _const(graph, name + "/c", [channels]), name + "/g2",
                                    _const(graph, name + "/kh", [kh]), name + "/g3",
                                    _const(graph, name + "/kw", [kw])], [name + "/six"],
                         axis=0),
        helper.make_node("Reshape", [x, name + "/six"], [name + "/split"]),
        helper.make_node("Transpose", [name + "/split"], [name + "/moved"],
                         perm=[0, 2, 4, 1, 3, 5]),
        helper.make_node("Concat", [_const(graph, name + "/n2", [0]), name + "/g2",
                                    name + "/g3", _const(graph, name + "/ck",
                                                         [channels * kh * kw])],
                         [name + "/four"], axis=0),
        helper.make_node("Reshape", [name + "/moved", name + "/four"], [name + "/rows"]),
        helper.make_node("MatMul", [name + "/rows", name + "/w"], [name + "/out"]),
    ]
    last = name + "/out"
    if len(node.input) > 2 and node.input[2]:
        made.append(helper.make_node("Add", [last, node.input[2]], [name + "/biased"]))
        last = name + "/biased"
    made.append(helper.make_node("Transpose", [last], [y], perm=[0, 3, 1, 2]))
    return made


def _const(graph: onnx.GraphProto, name: str, values: list[int]) -> str:
    graph.initializer.append(numpy_helper.from_array(np.array(values, np.int64), name))
    return name
