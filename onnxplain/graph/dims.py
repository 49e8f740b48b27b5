"""Declared dims that mean "unknown": some converters (paddle2onnx, older exporters) write a
dynamic axis as dim_value -1 or dim_param "?". Read literally, -1 would be a fixed
batch size and every "?" the same symbol, proving unrelated axes equal. On load they become
symbols of their own, which is what ONNX Runtime makes of them too."""

from __future__ import annotations

import onnx

UNKNOWN_PARAMS = ("?", "-1")


def name_unknown_dims(graph: onnx.GraphProto) -> None:
    """Give every unknown declared dim of the graph's inputs, outputs and value_info a
    symbol of its own (`<tensor>_dim<axis>`), in place."""
    for value in (*graph.input, *graph.output, *graph.value_info):
        if not value.type.HasField("tensor_type") or \
                not value.type.tensor_type.HasField("shape"):
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            literal = dim.HasField("dim_value") and dim.dim_value < 0
            if literal or dim.dim_param in UNKNOWN_PARAMS:
                dim.Clear()
                dim.dim_param = f"{value.name}_dim{axis}"
