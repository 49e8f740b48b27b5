"""Walks over a graph's nodes that see into subgraphs (If, Loop and Scan bodies): what a node
reads, which nodes an output is computed from, which initializers they use, and renaming
what they read."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import onnx


def node_inputs(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus outer-scope names read inside subgraphs (If, Loop, Scan bodies)."""
    names = [name for name in node.input if name]
    for attribute in node.attribute:
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
        for attribute in node.attribute:
            for graph in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                inner = defined_names(graph)
                rename_reads(graph.node, {k: v for k, v in renamed.items() if k not in inner})
