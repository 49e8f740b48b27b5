"""Forward rewrites that leave every output bit-identical and make the backward cheaper.

Relu then MaxPool becomes MaxPool then Relu: both are monotone, so max(relu(a), relu(b))
= relu(max(a, b)) exactly. The Relu's backward mask then covers the pooled tensor, not the
one before pooling (a quarter of it for a stride-2 pool), and its gradient is unchanged:
a pooled value that is positive came from a positive input, one at or below zero gives the
gradient to an input that Relu zeroed either way. Rule sets that change Relu's or
MaxPool's backward (Guided Backprop, LRP...) differ in ties between windows, so this is
for plain gradients only.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

import onnx

from ..graph.shapes import TensorInfo
from ..graph.walk import node_inputs
from .registry import GRADIENT, RuleSet


def pool_after_relu_for(graph: onnx.GraphProto, infos: dict[str, TensorInfo],
                        keep: set[str], rules: RuleSet, passes: Sequence) -> None:
    """pool_after_relu when the main pass and every further pass (autodiff.program.Pass)
    are plain gradients, keeping also what the passes read."""
    if rules is not GRADIENT or any(p.rules is not GRADIENT for p in passes):
        return
    keep = keep | {name for p in passes for name in (*p.wrt, *p.active_from)}
    pool_after_relu(graph, infos, keep)


def pool_after_relu(graph: onnx.GraphProto, infos: dict[str, TensorInfo],
                    keep: Container[str]) -> None:
    """Rewrite Relu -> MaxPool (the Relu's only reader, no Indices output) in place as
    MaxPool -> Relu, unless the Relu's output is a graph output or in `keep`."""
    readers: dict[str, list[int]] = {}
    for index, node in enumerate(graph.node):
        for name in node_inputs(node):
            readers.setdefault(name, []).append(index)
    outputs = {o.name for o in graph.output}
    declared = {info.name: info for info in graph.value_info}
    for node in graph.node:
        if node.op_type != "Relu" or node.domain not in ("", "ai.onnx"):
            continue
        between = node.output[0]
        users = readers.get(between, [])
        if between in outputs or between in keep or len(users) != 1:
            continue
        pool = graph.node[users[0]]
        if pool.op_type != "MaxPool" or pool.domain not in ("", "ai.onnx") or \
                len([o for o in pool.output if o]) != 1:
            continue
        pooled = pool.output[0]
        pool.input[0] = node.input[0]
        pool.output[0] = between  # now the pool of the Relu's input
        infos[between] = infos.get(pooled, TensorInfo(None, None))
        _declare_as(graph, declared, between, pooled)
        node.input[0] = between
        node.output[0] = pooled
        # The pool takes the Relu's place in the order and the Relu the pool's: the pool's
        # input comes earlier still, and whatever reads `pooled` came after the pool.
        relu = onnx.NodeProto()
        relu.CopyFrom(node)
        node.CopyFrom(pool)
        pool.CopyFrom(relu)


def _declare_as(graph: onnx.GraphProto, declared: dict[str, onnx.ValueInfoProto], name: str,
                like: str) -> None:
    """`name` now holds values shaped like `like`: its declared type (shape inference checks
    declarations, and float16 converters declare every tensor) becomes `like`'s, or none."""
    if name not in declared:
        return
    if like in declared:
        declared[name].type.CopyFrom(declared[like].type)
    else:
        graph.value_info.remove(declared.pop(name))
