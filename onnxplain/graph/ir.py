"""onnx-ir views of onnxplain's protobuf models, for graph surgery (docs/graph_ir.md).

Programs stay protobuf messages (ONNX Runtime, onnx's checker and shape inference take
them); a surgery converts to onnx-ir, edits values and nodes as objects (a rename or a
changed reader reaches subgraphs with no name bookkeeping), and converts back. Both ways
are lazy about weights: onnx-ir wraps each TensorProto and copies it once on the way back.

Weight stubs (graph.weights) come back byte for byte: onnx-ir would rewrite an external
tensor's entries, dropping the file and stamp a file stub names.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

import onnx

from .shapes import TensorInfo


class _OnDemand:
    """onnx_ir, imported on first use: importing it costs about 0.2 s (sympy with it),
    and most runs convert nothing (a saliency map of a model without dead nodes)."""

    def __getattr__(self, name: str):
        import onnx_ir as module

        return getattr(module, name)


onnx_ir = _OnDemand()

_SERDE_LOG = logging.getLogger("onnx_ir.serde")
_MAP_TYPES = "onnxplain.map_types"  # model.meta: the map types to_ir took out


def to_ir(proto: onnx.ModelProto) -> onnx_ir.Model:
    """An onnx-ir model over `proto`. Its initializers wrap `proto`'s TensorProtos: renaming
    one renames the TensorProto too, so rename initializers only in a copy you own (a light
    copy: graph.weights); other edits leave `proto` as it was."""
    maps = _map_types(proto.graph)
    if maps:  # onnx-ir 1.1 reads no map types (a ZipMap's output): untyped here, put back
        typed, proto = proto, onnx.ModelProto()
        proto.CopyFrom(typed)
        for value in _declared(proto.graph):
            if value.name in maps:
                value.ClearField("type")
    model = onnx_ir.serde.deserialize_model(proto)
    _keep_stubs(proto.graph, model.graph)
    model.meta[_MAP_TYPES] = maps
    return model


def _map_types(graph: onnx.GraphProto) -> dict[str, onnx.TypeProto]:
    """The declared values of `graph` whose type holds a map, by name."""
    return {value.name: value.type for value in _declared(graph) if _has_map(value.type)}


def _declared(graph: onnx.GraphProto) -> list[onnx.ValueInfoProto]:
    return [*graph.input, *graph.output, *graph.value_info]


def _has_map(kind: onnx.TypeProto) -> bool:
    field = kind.WhichOneof("value")
    if field == "map_type":
        return True
    inner = {"sequence_type": kind.sequence_type, "optional_type": kind.optional_type}.get(field)
    return inner is not None and _has_map(inner.elem_type)


def subgraph_to_ir(proto: onnx.GraphProto) -> onnx_ir.Graph:
    """An onnx-ir graph over a subgraph standing alone (a Loop body being built): the names
    it reads from enclosing graphs become values whose `.graph` is None (onnx-ir warns about
    each: muted, they are meant). Write it back with onnx_ir.serde.serialize_graph."""
    level = _SERDE_LOG.level
    _SERDE_LOG.setLevel(logging.ERROR)
    try:
        graph = onnx_ir.serde.deserialize_graph(proto)
    finally:
        _SERDE_LOG.setLevel(level)
    _keep_stubs(proto, graph)
    return graph


def _keep_stubs(proto: onnx.GraphProto, graph: onnx_ir.Graph) -> None:
    """Wrap the external tensors of `proto` (its subgraphs too) as they are (weight stubs)."""
    for graph_proto, inner in _graph_pairs(proto, graph):
        for init in graph_proto.initializer:
            if init.data_location == onnx.TensorProto.EXTERNAL:
                inner.initializers[init.name].const_value = onnx_ir.serde.TensorProtoTensor(init)


def to_proto(model: onnx_ir.Model) -> onnx.ModelProto:
    """`model` as a ModelProto (onnx-ir declares each initializer's type in value_info too)."""
    proto = onnx_ir.serde.serialize_model(model)
    maps = model.meta.get(_MAP_TYPES)
    for value in _declared(proto.graph) if maps else ():
        if value.name in maps:
            value.type.CopyFrom(maps[value.name])
    return proto


def remove_unused(target: onnx_ir.Model | onnx_ir.Graph) -> bool:
    """Drop the nodes no graph output is computed from and the initializers nothing reads,
    inside subgraphs too (in place); whether any went. The inputs, the outputs and every
    kept node stay as they are: onnx-ir's RemoveUnusedNodesPass would also cut kept nodes'
    unused optional outputs and attributes, which rules read by position."""
    return _prune(target.graph if isinstance(target, onnx_ir.Model) else target)


def _prune(graph: onnx_ir.Graph) -> bool:
    outputs = frozenset(graph.outputs)
    removed = False
    for node in reversed(graph):  # readers first: what only they read goes too
        if not any(out in outputs or out.uses() for out in node.outputs):
            graph.remove(node, safe=True)
            removed = True
            continue
        for attribute in node.attributes.values():
            if attribute.type == onnx_ir.AttributeType.GRAPH:
                removed |= _prune(attribute.as_graph())
            elif attribute.type == onnx_ir.AttributeType.GRAPHS:
                for inner in attribute.as_graphs():
                    removed |= _prune(inner)
    return drop_unused_initializers(graph) or removed


def drop_unused_initializers(graph: onnx_ir.Graph,
                             among: Iterable[onnx_ir.Value] | None = None) -> bool:
    """Delete the initializers of `graph` (those of `among`, or all) that nothing reads and
    that are no graph input or output; whether any went."""
    unused = [value for value in (graph.initializers.values() if among is None else among)
              if not value.uses() and not value.is_graph_input() and not value.is_graph_output()]
    for value in unused:
        del graph.initializers[value.name]
    return bool(unused)


def typed_value(value: onnx_ir.Value, info: TensorInfo) -> None:
    """Give `value` the element type and certain dims of `info` (torch exports carry no
    value_info: a tap or a cut of theirs has no type until one is set)."""
    value.dtype = onnx_ir.DataType(info.dtype)
    value.shape = None if info.certain is None else onnx_ir.Shape(list(info.certain))


def values(graph: onnx_ir.Graph) -> dict[str, onnx_ir.Value]:
    """Every named value `graph` defines or reads, by name (subgraphs not included)."""
    found = {v.name: v for v in graph.inputs}
    found.update(graph.initializers)
    for node in graph:
        found.update((v.name, v) for v in node.inputs if v is not None and v.name)
        found.update((v.name, v) for v in node.outputs if v.name)
    return found


def defined(graph: onnx_ir.Graph) -> list[onnx_ir.Value]:
    """The values `graph` defines itself: inputs, initializers, node outputs (not its
    subgraphs'; what a subgraph reads from outside is the outer graph's value), each once
    (an input with a default is an initializer too)."""
    found = [*graph.inputs, *graph.initializers.values(),
             *(value for node in graph for value in node.outputs)]
    return list({id(value): value for value in found}.values())


def _graph_pairs(proto: onnx.GraphProto, graph: onnx_ir.Graph
                 ) -> Iterator[tuple[onnx.GraphProto, onnx_ir.Graph]]:
    """Each graph of `proto` (its subgraphs too) with its onnx-ir counterpart."""
    yield proto, graph
    for node_proto, node in zip(proto.node, graph, strict=True):
        for attribute in node_proto.attribute:
            if attribute.type == onnx.AttributeProto.GRAPH:
                yield from _graph_pairs(attribute.g, node.attributes[attribute.name].as_graph())
            elif attribute.type == onnx.AttributeProto.GRAPHS:
                for inner_proto, inner in zip(attribute.graphs,
                                              node.attributes[attribute.name].as_graphs(),
                                              strict=True):
                    yield from _graph_pairs(inner_proto, inner)

