"""Walks over a graph's nodes that see into subgraphs (If, Loop and Scan bodies): what a node
reads, which nodes an output is computed from, which initializers they use, renaming
what they read, and a model cut at a tensor."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx
from onnx import helper

from ..errors import InputError
from .model import Model


def subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    """The graphs among `node`'s attributes (If branches, Loop and Scan bodies)."""
    return [graph for attribute in node.attribute
            for graph in ([attribute.g] if attribute.HasField("g") else attribute.graphs)]


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope names read inside subgraphs (If, Loop, Scan bodies)."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:  # subgraphs() inlined: this runs on every node, often
        graphs = list(attribute.graphs)
        if attribute.HasField("g"):
            graphs.append(attribute.g)
        for graph in graphs:
            inner = defined_names(graph)
            for sub in graph.node:
                names.extend(name for name in node_inputs(sub) if name not in inner)
    return names


def defined_names(graph: onnx.GraphProto) -> set[str]:
    """The names `graph` defines itself (inputs, initializers, node outputs): inside a
    subgraph they shadow the enclosing graph's."""
    names = {i.name for i in graph.input} | {init.name for init in graph.initializer}
    return names | {out for node in graph.node for out in node.output}


def captures(node: onnx.NodeProto) -> list[str]:
    """The outer-scope names read inside the subgraphs of `node`, each once. A rule returns
    their gradients after the explicit inputs' (at index len(node.input) + k)."""
    return list(dict.fromkeys(node_inputs(node)[len([n for n in node.input if n]):]))


def ancestors(nodes: Sequence[onnx.NodeProto], ends: Iterable[str],
              stop: Iterable[str] = ()) -> list[onnx.NodeProto]:
    """The nodes (of `nodes`, in their order) that `ends` are computed from, back to `stop`."""
    wanted, stop, kept = set(ends), set(stop), []
    for node in reversed(nodes):
        if any(out in wanted and out not in stop for out in node.output):
            kept.append(node)
            wanted.update(node_inputs(node))
    return kept[::-1]


def used_initializers(graph: onnx.GraphProto, nodes: Sequence[onnx.NodeProto]
                      ) -> list[onnx.TensorProto]:
    """The initializers of `graph` that `nodes` read (inside their subgraphs too)."""
    used = {name for node in nodes for name in node_inputs(node)}
    return [init for init in graph.initializer if init.name in used]


def rename_reads(nodes: Sequence[onnx.NodeProto], renamed: dict[str, str]) -> None:
    """Rename what `nodes` read, in their subgraphs too, except where a subgraph defines the
    name itself."""
    for node in nodes:
        node.input[:] = [renamed.get(name, name) for name in node.input]
        for graph in subgraphs(node):
            inner = defined_names(graph)
            rename_reads(graph.node, {k: v for k, v in renamed.items() if k not in inner})


def lookup_inputs(nodes, tensor: str, inputs) -> set[str]:
    """The model inputs `tensor` is computed from. The program recomputes an embedding of
    the token ids alone for the baseline token; one read from other inputs too (an
    attribute_at past the sum with position or type embeddings) integrates the cut model."""
    lookup = ancestors(nodes, [tensor])
    return {name for node in lookup for name in node_inputs(node)} & set(inputs)


def cut_at(model: Model, tensor: str) -> Model:
    """A copy of the model where `tensor` is a graph input instead of a computed value."""
    info = model.infos.get(tensor)
    if info is None or info.dtype is None:
        raise InputError(f"the type of tensor '{tensor}' is unknown; cannot cut the model there")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    kept = [node for node in proto.graph.node if tensor not in node.output]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    dims = None if info.certain is None else list(info.certain)
    proto.graph.input.append(helper.make_tensor_value_info(tensor, info.dtype, dims))
    return Model(proto, model.path)
