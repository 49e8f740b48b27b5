"""Recognise a global-average-pool + dense classifier head after a layer (what CAM needs)."""

from __future__ import annotations

import numpy as np
import onnx

from ..errors import InputError
from .model import Model
from .op_kinds import IDENTITY, RESHAPES

_PASS = RESHAPES | IDENTITY


def dense_head(model: Model, layer: str, output: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(W [classes, channels], bias [classes] or None) when `output` is exactly
    dense(global-average-pool(layer)); otherwise InputError naming what was found."""
    node = _single_consumer(model, layer)
    if not _is_global_average(model, node):
        raise _not_a_head(layer, f"'{layer}' is read by {_describe(node)}, not a global "
                                 "average pool")
    tensor = node.output[0]
    node = _single_consumer(model, tensor)
    while node is not None and node.op_type in _PASS:
        tensor = node.output[0]
        node = _single_consumer(model, tensor)
    weights = _dense_weights(model, node, tensor)
    if weights is None:
        raise _not_a_head(layer, f"the pooled features go to {_describe(node)}, not a dense "
                                 "layer with constant weights")
    matrix, bias, out = weights
    follower = _single_consumer(model, out)
    if bias is None and follower is not None and follower.op_type == "Add":
        other = [i for i in follower.input if i != out]
        value = model.constant_value(other[0]) if other else None
        if value is not None:
            bias, out = value.reshape(-1), follower.output[0]
            follower = _single_consumer(model, out)
    while follower is not None and follower.op_type == "Identity":
        out = follower.output[0]
        follower = _single_consumer(model, out)
    if out != output:
        raise _not_a_head(layer, f"the dense layer's result '{out}' is not the explained "
                                 f"output '{output}'")
    return matrix, bias


def _not_a_head(layer: str, why: str) -> InputError:
    return InputError(f"CAM needs layer -> global average pool -> dense -> output; {why} "
                      "(use grad_cam for other heads)")


def _describe(node: onnx.NodeProto | None) -> str:
    return "nothing (or several nodes)" if node is None else f"{node.op_type} '{node.name}'"


def _single_consumer(model: Model, tensor: str) -> onnx.NodeProto | None:
    users = model.consumers.get(tensor, [])
    return users[0] if len(users) == 1 else None


def _is_global_average(model: Model, node: onnx.NodeProto | None) -> bool:
    if node is None:
        return False
    if node.op_type == "GlobalAveragePool":
        return True
    if node.op_type != "ReduceMean":
        return False
    axes = None
    for attribute in node.attribute:
        if attribute.name == "axes":
            axes = list(attribute.ints)
    if axes is None and len(node.input) > 1:
        value = model.constant_value(node.input[1])
        axes = None if value is None else [int(a) for a in value.reshape(-1)]
    return axes is not None and sorted(a % 4 for a in axes) == [2, 3]


def _dense_weights(model: Model, node: onnx.NodeProto | None, features: str):
    """(W [classes, channels], bias or None, output tensor) of a Gemm or MatMul on features."""
    if node is None or node.input[0] != features:
        return None
    weights = model.constant_value(node.input[1]) if len(node.input) > 1 else None
    if weights is None or weights.ndim != 2:
        return None
    if node.op_type == "Gemm":
        attrs = {a.name: a for a in node.attribute}
        if "transA" in attrs and attrs["transA"].i:
            return None
        alpha = attrs["alpha"].f if "alpha" in attrs else 1.0
        beta = attrs["beta"].f if "beta" in attrs else 1.0
        matrix = weights if ("transB" in attrs and attrs["transB"].i) else weights.T
        bias = model.constant_value(node.input[2]) if len(node.input) > 2 else None
        return (alpha * matrix, None if bias is None else beta * bias.reshape(-1),
                node.output[0])
    if node.op_type == "MatMul":
        return weights.T, None, node.output[0]
    return None
