"""Taps: expose intermediate tensors as extra graph outputs, leaving the original outputs alone."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
from onnx import helper

from ..errors import InputError
from .shapes import TensorInfo


def resolve_taps(model: onnx.ModelProto, selectors: Iterable[str]) -> list[str]:
    """Tensor names for each selector: a tensor name, a node name (all its outputs) or an op type.

    Selectors are tried in that order; one that matches nothing raises InputError.
    """
    graph = model.graph
    tensors = {o for node in graph.node for o in node.output if o}
    tensors |= {i.name for i in graph.input} | {init.name for init in graph.initializer}
    by_node = {node.name: [o for o in node.output if o] for node in graph.node}
    by_op: dict[str, list[str]] = {}
    for node in graph.node:
        by_op.setdefault(node.op_type, []).extend(o for o in node.output if o)
    found: list[str] = []
    for selector in selectors:
        if selector in tensors:
            names = [selector]
        elif selector in by_node:
            names = by_node[selector]
        elif selector in by_op:
            names = by_op[selector]
        else:
            raise InputError(f"no tensor, node or op type named '{selector}' in the model")
        found.extend(name for name in names if name not in found)
    return found


def add_taps(model: onnx.ModelProto, infos: dict[str, TensorInfo], tensors: Sequence[str]
             ) -> onnx.ModelProto:
    """A copy of `model` whose outputs are the original ones followed by `tensors`."""
    tapped = onnx.ModelProto()
    tapped.CopyFrom(model)
    append_outputs(tapped.graph, infos, tensors)
    return tapped


def append_outputs(graph: onnx.GraphProto, infos: dict[str, TensorInfo],
                   tensors: Sequence[str]) -> None:
    """Declare existing tensors as graph outputs (in place), skipping ones already declared."""
    declared = {o.name for o in graph.output}
    for name in tensors:
        if name in declared:
            continue
        info = infos.get(name, TensorInfo(None, None))
        if info.dtype is None:
            raise InputError(f"cannot tap '{name}': its element type is unknown")
        dims = None if info.certain is None else list(info.certain)
        graph.output.append(helper.make_tensor_value_info(name, info.dtype, dims))
        declared.add(name)
