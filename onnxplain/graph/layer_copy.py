"""A copy of the nodes a tensor is computed from, reading other tensors in place of the
model's inputs: a layer computed again at other points (layer conductance), the model run on
a probe's reconstruction."""

from __future__ import annotations

import onnx

from .builder import GraphBuilder
from .shapes import TensorInfo
from .walk import rename_reads


def copied(node: onnx.NodeProto) -> onnx.NodeProto:
    copy = onnx.NodeProto()
    copy.CopyFrom(node)
    return copy


def layer_copy(b: GraphBuilder, prefix: list[onnx.NodeProto], infos: dict[str, TensorInfo],
               layer: str, fed: dict[str, str]) -> str:
    """Append a copy of `prefix` (the nodes `layer` is computed from) reading `fed` in place
    of the model inputs, every tensor under a fresh name; return the copy's layer tensor."""
    copies, renamed = [], dict(fed)
    for node in prefix:
        copy = copied(node)
        copy.name = b.fresh("layer_copy_node")
        for out in copy.output:
            if out:
                renamed[out] = b.fresh("layer_copy")
        copies.append(copy)
    rename_reads(copies, renamed)
    for copy in copies:
        for index, out in enumerate(copy.output):
            if out:
                copy.output[index] = renamed[out]
                b.infos[renamed[out]] = _any_rows(infos.get(out))
    b.graph.node.extend(copies)
    return renamed[layer]


def _any_rows(info: TensorInfo | None) -> TensorInfo:
    """`info` with its rows unknown: the copies run on other row counts."""
    if info is None or not info.shape:
        return info or TensorInfo(None, None)
    return TensorInfo(info.dtype, (None, *info.shape[1:]))
