"""The explained position alone after the last attention layer of a causal language model.

A next-token objective seeds one position of [N, T, V] logits per row, and everything from
the last attention layer's output projection on (the projection, the residual sum, the MLP,
the final norm, the LM head) works position by position. The gradient and relevance passes
over that part are zero at every other position, so the program gets a copy of it fed with
each row's seeded position alone (GatherElements along the position axis) and the backward
passes start from the copy's [N, 1, V] output; the original part still computes the full
outputs the explanation reports. Chefer's LRP is unchanged too: other positions hold no
relevance, so their shares are 0 (a residual sum splits each row's total by its branches'
sums, which those zeros do not change).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..autodiff.program import Pre
from ..graph.builder import GraphBuilder
from ..graph.model import Model
from ..graph.op_kinds import (
    ARITHMETIC,
    CASTS,
    CONTRIB_FEATURE_NORMS,
    FEATURE_NORMS,
    IDENTITY,
    LINEAR_REDUCTIONS,
    POWERS,
    SOFTMAXES,
    UNARY_ACTIVATIONS,
    UNARY_MATH,
)
from ..graph.shapes import TensorInfo
from ..objective import NEXT_TOKEN
from ..runtime.engine import DenseObjective
from .attention_graph import wide

# Not under the builder's "onnxplain/" prefix: rules read nodes named so as their own.
_PREFIX = "explained_row/"
_UNARY = UNARY_MATH | UNARY_ACTIVATIONS | CASTS | IDENTITY
_BINARY = ARITHMETIC | POWERS
_LAST_AXIS = LINEAR_REDUCTIONS | SOFTMAXES | FEATURE_NORMS | CONTRIB_FEATURE_NORMS


def explained_row(target, probabilities: str) -> Pre | None:
    """The Pre for a next-token objective (one seeded position per row) explained through the
    attention map `probabilities` of the last layer; None for other objectives."""
    if not isinstance(target, DenseObjective) or target.form != NEXT_TOKEN:
        return None
    if target.place.pixel is not None or target.place.region is not None:
        return None
    return Pre(("explained_row", probabilities),
               lambda b, output, seed: _emit(b, probabilities, output, seed))


def _emit(b: GraphBuilder, probabilities: str, output: str, seed: str) -> tuple[str, str]:
    region, cut = _region(b, probabilities, output) if b.opset >= 11 else (None, [])
    if region is None:  # GatherElements is opset 11's
        return output, seed
    # The seeded position of each row, [N, 1] (a row seeded nowhere reads position 0 of a
    # zero seed: zero either way); in float32, which ArgMax takes on every provider.
    position = b.op("ArgMax", b.reduce("ReduceMax", wide(b, seed), [2], keepdims=False),
                    axis=1, keepdims=1)
    renamed = {name: _gather(b, name, position) for name in [*cut, seed]}
    for node in region:
        renamed.update((out, _PREFIX + out) for out in node.output if out)
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = _PREFIX + node.name
        copy.input[:] = [renamed.get(i, i) for i in node.input]
        copy.output[:] = [renamed.get(o, o) for o in node.output]
        b.graph.node.append(copy)
        for old in node.output:
            if old:
                b.infos[renamed[old]] = _one_position(b.info(old))
    return renamed[output], renamed[seed]


def _gather(b: GraphBuilder, x: str, position: str) -> str:
    """x[n, position[n]] kept as [N, 1, ...]."""
    rank = b.rank(x)
    index = b.reshape(position, [-1] + [1] * (rank - 1))
    sizes = b.concat([b.dim(x, 0), b.ints([1])] + ([b.op("Slice", b.shape(x), b.ints([2]),
                                                          b.ints([rank]))] if rank > 2 else []),
                     0)
    out = b.op("GatherElements", x, b.op("Expand", index, sizes), axis=1)
    b.infos[out] = _one_position(b.info(x))
    return out


def _one_position(info: TensorInfo) -> TensorInfo:
    shape = None if info.shape is None else (info.shape[0], 1, *info.shape[2:])
    return TensorInfo(info.dtype, shape)


def _region(b: GraphBuilder, probabilities: str, output: str
            ) -> tuple[list[onnx.NodeProto] | None, list[str]]:
    """The model's nodes from the output projection after `probabilities` to `output`, in
    graph order, and the tensors they read from before it ([N, T, ...]); None where a node
    of it may mix positions (then nothing is pruned)."""
    nodes = list(b.graph.node)
    constants = Model(b.model, infos=b.infos).constants
    start = _projection_input(b, nodes, probabilities, constants)
    if start is None:
        return None, []
    after, downstream = {start}, []
    for node in nodes:
        if any(i in after for i in node.input):
            downstream.append(node)
            after.update(o for o in node.output if o)
    needed, region = {output}, []
    for node in reversed(downstream):
        if any(o in needed for o in node.output):
            region.append(node)
            needed.update(i for i in node.input if i)
    region.reverse()
    made = {o for node in region for o in node.output if o}
    cut = sorted({i for node in region for i in node.input
                  if i and i not in made and i not in constants})
    if output not in made or not _per_position(b, cut, output):
        return None, []
    if not all(_positionwise(b, node, constants) for node in region):
        return None, []
    return region, cut


def _projection_input(b: GraphBuilder, nodes, probabilities: str, constants) -> str | None:
    """The input of the first MatMul by a constant 2-D weight after `probabilities` (the
    attention's output projection)."""
    after = {probabilities}
    for node in nodes:
        if not any(i in after for i in node.input):
            continue
        if _constant_matrix(b, node, constants):
            return node.input[0]
        after.update(o for o in node.output if o)
    return None


def _constant_matrix(b: GraphBuilder, node: onnx.NodeProto, constants) -> bool:
    return node.op_type == "MatMul" and node.input[1] in constants and _rank(
        b, node.input[1]) == 2


def _rank(b: GraphBuilder, name: str) -> int | None:
    shape = b.info(name).shape if name in b.infos else None
    return None if shape is None else len(shape)


def _per_position(b: GraphBuilder, cut: list[str], output: str) -> bool:
    """Whether every tensor of `cut` is [N, T, ...] with the output's rank and the same known
    N and T (symbols or numbers): what position-wise nodes make the output of."""
    shapes = [b.info(name).shape if name in b.infos else None for name in cut]
    rank = _rank(b, output)
    if not shapes or any(s is None or len(s) != rank for s in shapes):
        return False
    first = shapes[0][:2]
    if any(d is None for d in first) or any(s[:2] != first for s in shapes):
        return False
    known = b.info(output).shape
    return all(not isinstance(o, int) or o == d for o, d in zip(known[:2], first, strict=True))


def _positionwise(b: GraphBuilder, node: onnx.NodeProto, constants) -> bool:
    """Whether each position of the node's output reads the same position of its
    non-constant inputs alone (all of them keep the position axis 1)."""
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        return False
    if op == "MatMul":
        return _constant_matrix(b, node, constants)
    if op in _UNARY:
        return True
    if op in _BINARY:
        rank = _rank(b, node.output[0])
        return rank is not None and all(_along_last_axis(b, i, rank) for i in node.input
                                        if i in constants)
    if op in _LAST_AXIS:
        return _last_axis_only(b, node, constants)
    return False


def _along_last_axis(b: GraphBuilder, constant: str, rank: int) -> bool:
    """A constant operand that varies along the last axis at most."""
    shape = b.info(constant).shape if constant in b.infos else b.static_shape(constant)
    return shape is not None and len(shape) <= rank and all(d == 1 for d in shape[:-1])


def _last_axis_only(b: GraphBuilder, node: onnx.NodeProto, constants) -> bool:
    rank = _rank(b, node.input[0])
    if rank is None:
        return False
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if not node.op_type.startswith("Reduce"):
        return all(i in constants for i in node.input[1:] if i) and \
            attrs.get("axis", -1) % rank == rank - 1
    if attrs.get("keepdims", 1) != 1:
        return False
    axes = attrs.get("axes")
    if axes is None and len(node.input) > 1 and node.input[1]:
        found = b.static_value(node.input[1])
        axes = None if found is None else np.asarray(found).reshape(-1).tolist()
    return axes is not None and [int(a) % rank for a in axes] == [rank - 1]
