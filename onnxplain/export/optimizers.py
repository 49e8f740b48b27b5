"""ONNX Runtime optimizers that break an exported explainer: which to disable when loading it
(the `onnxplain.disable_optimizers` metadata; onnxplain's own sessions disable them all,
runtime.engine.PROGRAM_FUSIONS_OFF).

Found from the graph rather than by opening a default session, which would cost a second
copy of the weights and a full optimisation of a possibly large model at every export."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph.op_kinds import QUANTIZERS, TANH_GELU_ARITHMETIC
from ..graph.walk import node_inputs, subgraphs
from ..runtime.engine import QDQ_PROPAGATION

FAST_GELU_FUSION = "FastGeluFusion"
# The tanh-GELU's cube coefficient, 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))).
GELU_CUBE = 0.044715


def optimizers_to_disable(proto: onnx.ModelProto) -> dict[str, str]:
    """{optimizer: why} for the ONNX Runtime 1.31 optimizers that would break `proto`."""
    found = {}
    if _quantized_loop(proto.graph):
        found[QDQ_PROPAGATION] = "aborts the process when it optimises a Loop of quantized ops"
    if _gelu_inside_read(proto.graph):
        found[FAST_GELU_FUSION] = ("drops a tanh-GELU's inner tensor that the explainer reads "
                                   "(the model then fails to load)")
    return found


def _quantized_loop(graph: onnx.GraphProto) -> bool:
    """ONNX Runtime 1.31 asserts in QDQPropagationTransformer on a Loop body of Q/DQ pairs."""
    bodies = [a.g for node in graph.node if node.op_type == "Loop"
              for a in node.attribute if a.HasField("g")]
    return any(n.op_type in QUANTIZERS for body in bodies for n in body.node)


def _gelu_inside_read(graph: onnx.GraphProto, outer: dict[str, np.ndarray] | None = None
                      ) -> bool:
    """A tanh-GELU written out in elementwise ops whose 0.5·x is also read outside it.
    FastGeluFusion (fast_gelu_fusion.cc) checks that every inner tensor of the pattern feeds
    only the pattern, except 0.5·x's Mul, then replaces the pattern by one node: that other
    reader is left dangling ("Node input ... is not a graph input"). The model alone never
    has one (its GELU feeds only itself); the explainer does (backward rules read the
    forward's tensors). Where another inner tensor is read outside, ONNX Runtime does not
    fuse at all, so there is nothing to disable. `outer`: the enclosing graphs' constants."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    readers: dict[str, set[int]] = defaultdict(set)
    for i, node in enumerate(nodes):
        for name in node_inputs(node):
            readers[name].add(i)
    outputs = {v.name for v in graph.output}
    constant = {**(outer or {}), **_constants(graph)}
    for i, node in enumerate(nodes):
        found = _gelu_pattern(i, nodes, producer, readers, constant) if node.op_type == "Tanh" \
            else None
        if found is None:
            continue
        pattern, last, halves = found
        inner = {out for j in pattern - {last} for out in nodes[j].output}
        half = {out for j in halves for out in nodes[j].output}
        if inner & outputs or any(readers[name] - pattern for name in inner - half):
            continue  # ONNX Runtime leaves this one unfused
        if any(readers[name] - pattern for name in half):
            return True
    # ONNX Runtime fuses inside Loop, Scan and If bodies too.
    return any(_gelu_inside_read(body, constant) for node in nodes for body in subgraphs(node))


def _gelu_pattern(tanh: int, nodes: list[onnx.NodeProto], producer: dict[str, int],
                  readers: dict[str, set[int]], constant: dict[str, np.ndarray]
                  ) -> tuple[set[int], int, set[int]] | None:
    """(indices of the nodes of the tanh-GELU around nodes[tanh], index of its last node,
    indices of its 0.5·x products), or None when it is not one: the argument built from x,
    x³ (Pow(x, 3) or products of x) and constants, one of them 0.044715; the result
    through at most three Add/Mul to the product, whose other factor is x or 0.5·x."""
    x = _cubed(tanh, nodes, producer, constant)
    if x is None:
        return None
    upper, coefficients, stack = set(), [], [nodes[tanh].input[0]]
    while stack:
        name = stack.pop()
        if name in constant:
            coefficients.append(constant[name])
        elif name != x:
            j = producer.get(name)
            if j is None or nodes[j].op_type not in TANH_GELU_ARITHMETIC or len(upper) > 8:
                return None  # read from elsewhere: not a GELU of x
            if j not in upper:
                upper.add(j)
                stack.extend(nodes[j].input)
    if not any(c.size == 1 and np.isclose(c.item(), GELU_CUBE, rtol=1e-4)
               for c in coefficients):
        return None
    pattern, last, name, halves = upper | {tanh}, tanh, nodes[tanh].output[0], set()
    for _ in range(3):  # Add(·, 1), Mul(·, 0.5), Mul(·, x or 0.5·x) in either order
        after = [j for j in readers[name] if nodes[j].op_type in ("Add", "Mul")]
        if len(after) != 1:
            break
        last = after[0]
        pattern.add(last)
        for other in nodes[last].input:
            half = producer.get(other)
            if half is not None and nodes[half].op_type == "Mul" and x in nodes[half].input \
                    and other != name:
                halves.add(half)  # 0.5·x
        name = nodes[last].output[0]
    return pattern | halves, last, halves


def _cubed(tanh: int, nodes: list[onnx.NodeProto], producer: dict[str, int],
           constant: dict[str, np.ndarray]) -> str | None:
    """The x of the x³ that nodes[tanh]'s argument is built from (Pow(x, 3) or Mul(x, x)
    within a few elementwise ops above it), or None."""
    stack, seen = [(nodes[tanh].input[0], 0)], set()
    while stack:
        name, depth = stack.pop()
        j = producer.get(name)
        if j is None or j in seen or depth > 6 or nodes[j].op_type not in TANH_GELU_ARITHMETIC:
            continue
        seen.add(j)
        node = nodes[j]
        if node.op_type == "Pow" and node.input[1] in constant \
                and np.isclose(constant[node.input[1]].item(), 3.0):
            return node.input[0]
        if node.op_type == "Mul" and node.input[0] == node.input[1]:
            return node.input[0]
        stack.extend((name, depth + 1) for name in node.input)
    return None


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Small constant tensors by name (initializers and Constant nodes' values)."""
    found = {init.name: init for init in graph.initializer if _small(init)}
    for node in graph.node:
        if node.op_type == "Constant":
            for attribute in node.attribute:
                if attribute.name == "value" and _small(attribute.t):
                    found[node.output[0]] = attribute.t
                elif attribute.name == "value_float":
                    found[node.output[0]] = numpy_helper.from_array(
                        np.array(attribute.f, np.float32))
    return {name: numpy_helper.to_array(t).astype(np.float64, copy=False)
            for name, t in found.items() if t.data_type in _FLOATS}


_FLOATS = {onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE, onnx.TensorProto.FLOAT16,
           onnx.TensorProto.BFLOAT16}


def _small(tensor: onnx.TensorProto) -> bool:
    return int(np.prod(tensor.dims, dtype=np.int64)) <= 1 and tensor.data_location == 0
