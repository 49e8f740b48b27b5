"""The affine stem of a model input: the nodes right after it that are affine maps of it
(convolutions, inference BatchNormalization, arithmetic with constants), up to the one
tensor where the rest of the model reads them.

With z = L(x) the stem's output, a path that is a straight line in x is one in z:
L(x' + a (x - x')) = L(x') + a (L(x) - L(x')), and a weighted sum of input gradients over
the path is the stem's adjoint applied once: sum_k w_k dS/dx(x_k) = L^T(sum_k w_k dS/dz(z_k)).
Integrated Gradients uses this to run the stem twice and its adjoint once instead of once
per path point (on ResNet-18 that skips the 7x7 input convolution and its transposed
convolution, the costliest backward node).
"""

from __future__ import annotations

from dataclasses import dataclass

import onnx
from onnx import helper

from .cut import as_input
from .ir import onnx_ir, remove_unused, to_ir, to_proto, typed_value
from .model import Model
from .op_kinds import ARITHMETIC, BATCH_NORMS, IDENTITY, NEGATION, WEIGHTED
from .walk import node_inputs

# Affine in the input with constant weights (a batch norm at inference is too).
_WEIGHTED = WEIGHTED | BATCH_NORMS
_PASS_THROUGH = IDENTITY | NEGATION


@dataclass(frozen=True)
class Stem:
    """`prefix` maps `input` to `frontier` affinely; `suffix` is the model with `frontier`
    as an input in place of `input` and the same outputs."""

    input: str
    frontier: str
    prefix: Model
    suffix: Model
    region: frozenset[str]  # what the stem's own nodes compute, `frontier` included


def affine_stem(model: Model, name: str) -> Stem | None:
    """The affine stem of input `name`, or None when there is none (the first node that
    reads the input is not affine) or it ends in more than one tensor."""
    graph = model.proto.graph
    constants = model.constants
    region = {name}
    stem_nodes: list[onnx.NodeProto] = []
    for node in graph.node:  # ONNX keeps nodes in topological order
        inputs = [i for i in node.input if i]
        if any(i in region for i in inputs) and _affine(node, region, constants, model):
            stem_nodes.append(node)
            region.update(o for o in node.output if o)
    inside = {id(node) for node in stem_nodes}
    # What the other nodes read, inside their subgraphs (If, Loop bodies) too.
    read = {o.name for o in graph.output}
    for node in graph.node:
        if id(node) not in inside:
            read.update(node_inputs(node))
    frontier = region & read
    if len(frontier) != 1 or name in frontier:
        return None
    (end,) = frontier
    info = model.infos.get(end)
    if info is None or info.dtype is None or info.shape is None:
        return None
    prefix, suffix = _split(model, name, end)
    # Both parts keep the model's tensor names, so its shape facts hold for them.
    return Stem(name, end, Model(prefix, model.path, model.infos),
                Model(suffix, model.path, model.infos),
                frozenset(region - {name}))


def _affine(node: onnx.NodeProto, region: set[str], constants: frozenset[str],
            model: Model) -> bool:
    """Whether `node` is an affine map of its region inputs that keeps the batch axis first."""
    inputs = list(node.input)
    live = [i for i, name in enumerate(inputs) if name in region]
    others = [name for name in inputs if name and name not in region]
    if any(name not in constants for name in others):
        return False
    op = node.op_type
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if op in _WEIGHTED:
        if live != [0] or attrs.get("transA", 0) or attrs.get("training_mode", 0) or \
                len(node.output) > 1:  # BatchNormalization in training mode
            return False
        if op == "MatMul":  # a constant of rank 2 at most multiplies every row alike
            return _rank(model, inputs[1]) in (1, 2)
        return op != "Gemm" or _no_batch_broadcast(model, others[1:], 2)
    if op in _PASS_THROUGH:
        return True
    if op in ARITHMETIC:
        if (op == "Mul" and len(live) != 1) or (op == "Div" and live != [0]):
            return False
        return _no_batch_broadcast(model, others, _rank(model, inputs[live[0]]))
    if op == "Transpose":
        perm = attrs.get("perm")
        return perm is not None and perm[0] == 0
    if op == "Flatten":
        return attrs.get("axis", 1) >= 1
    return False


def _rank(model: Model, name: str) -> int | None:
    info = model.infos.get(name)
    return None if info is None or info.shape is None else len(info.shape)


def _no_batch_broadcast(model: Model, constants: list[str], rank: int | None) -> bool:
    """Constant operands of at most `rank` dims whose first dim, at full rank, is 1: they
    broadcast over the batch instead of adding or stretching a batch axis."""
    for name in constants:
        shape = model.infos.get(name)
        dims = None if shape is None else shape.shape
        if dims is None or rank is None or len(dims) > rank:
            return False
        if len(dims) == rank and dims and dims[0] != 1:
            return False
    return True


def _split(model: Model, name: str, end: str) -> tuple[onnx.ModelProto, onnx.ModelProto]:
    """The prefix (input `name` to `end`) and the suffix (`end` an input in `name`'s place)
    of `model`, with its tensor names, functions and opsets."""
    whole = to_ir(model.proto)
    graph = whole.graph
    stem = onnx_ir.convenience.extract(graph, [name], [end])  # copies the stem's nodes
    order = {key: index for index, key in enumerate(graph.initializers)}
    stem.initializers.data = dict(sorted(stem.initializers.items(),  # extract's are a set's
                                         key=lambda item: order[item[0]]))
    stem.name = (graph.name or "") + "_stem"
    typed_value(stem.outputs[0], model.infos[end])
    prefix = onnx_ir.Model(stem, ir_version=whole.ir_version, producer_name=whole.producer_name,
                           producer_version=whole.producer_version,
                           functions=list(whole.functions.values()))
    frontier = as_input(graph, end, model.infos[end])
    graph.inputs[[value.name for value in graph.inputs].index(name)] = frontier
    remove_unused(graph)  # the stem's nodes: only `end` was read past them
    return to_proto(prefix), to_proto(whole)
