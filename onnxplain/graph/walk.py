"""Walks over a graph's nodes that see into subgraphs (If, Loop and Scan bodies): what a node
reads, which nodes an output is computed from, renaming what they read."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

import onnx
from onnx import helper

from .ir import onnx_ir, subgraph_to_ir
from .op_kinds import CASTS, IDENTITY


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


def rename_reads(nodes: Sequence[onnx.NodeProto], renamed: dict[str, str]) -> None:
    """Rename what `nodes` read, in their subgraphs too, except where a subgraph defines the
    name itself (in place). Through onnx-ir, where a read is the value it reads: a
    subgraph's own value of that name is another one."""
    if not any(subgraphs(node) for node in nodes):  # one scope: a read is its name
        for node in nodes:  # (5 to 10 times faster than the conversion, on most models)
            node.input[:] = [renamed.get(name, name) for name in node.input]
        return
    view = subgraph_to_ir(helper.make_graph(nodes, "reads", [], []))
    seen: set[onnx_ir.Value] = set()
    for node in view.all_nodes():
        for value in node.inputs:
            if value is None or value in seen or value.name not in renamed or \
                    value.graph not in (None, view):  # defined in a subgraph
                continue
            seen.add(value)
            if value.producer() is None:  # read from outside the nodes: only reads to rename
                value.name = renamed[value.name]
            else:
                value.replace_all_uses_with(onnx_ir.Value(name=renamed[value.name]))
    for proto, node in zip(nodes, view, strict=True):
        proto.CopyFrom(onnx_ir.serde.serialize_node(node))


def produced_from(producers: Mapping[str, onnx.NodeProto], name: str,
                  through: Collection[str] = CASTS | IDENTITY) -> str:
    """`name` followed back through its producers (`producers`: tensor -> node) while they
    are of the op types `through`, each read at its first input: ops that pass the same
    values on, re-encoded or aliased."""
    while (node := producers.get(name)) is not None and node.op_type in through:
        name = node.input[0]
    return name


def lookup_inputs(nodes, tensor: str, inputs) -> set[str]:
    """The model inputs `tensor` is computed from. The program recomputes an embedding of
    the token ids alone for the baseline token; one read from other inputs too (an
    attribute_at past the sum with position or type embeddings) integrates the cut model."""
    lookup = ancestors(nodes, [tensor])
    return {name for node in lookup for name in node_inputs(node)} & set(inputs)

