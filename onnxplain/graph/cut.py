"""Cuts: a computed tensor becomes a graph input (layer Integrated Gradients' embedding, the
suffix of an affine stem), over onnx-ir values, so reads inside subgraphs follow too."""

from __future__ import annotations

from ..errors import InputError
from .ir import onnx_ir, remove_unused, to_ir, to_proto, typed_value, values
from .model import Model
from .shapes import TensorInfo


def cut_at(model: Model, tensor: str) -> Model:
    """A copy of the model where `tensor` is a graph input (its last) instead of a computed
    value; what only computed it goes (the lookup of an embedding cut at its output, the
    table too), the other inputs stay."""
    info = model.infos.get(tensor)
    if info is None or info.dtype is None:
        raise InputError(f"the type of tensor '{tensor}' is unknown; cannot cut the model there")
    ir_model = to_ir(model.proto)
    graph = ir_model.graph
    graph.inputs.append(as_input(graph, tensor, info))
    remove_unused(graph)
    return Model(to_proto(ir_model), model.path)


def as_input(graph: onnx_ir.Graph, tensor: str, info: TensorInfo) -> onnx_ir.Value:
    """A new value named `tensor`, typed by `info`, read (in subgraphs too, and as an output)
    wherever `graph`'s value `tensor` was; its producer is removed, or kept where its other
    outputs are still read (the cut output then renamed). The caller declares it an input."""
    old = values(graph).get(tensor)
    if old is None or old.producer() is None:
        raise InputError(f"no node of the model computes '{tensor}'; cannot cut the model there")
    new = onnx_ir.Value(name=tensor)
    typed_value(new, info)
    old.replace_all_uses_with(new, replace_graph_outputs=True)
    producer = old.producer()
    if any(out.uses() or out.is_graph_output() for out in producer.outputs):
        old.name = _fresh(graph, f"{tensor}/uncut")
    else:
        graph.remove(producer, safe=True)
    return new


def _fresh(graph: onnx_ir.Graph, name: str) -> str:
    taken = values(graph)
    found, count = name, 0
    while found in taken:
        count += 1
        found = f"{name}_{count}"
    return found
