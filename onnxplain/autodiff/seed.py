"""The dense objective's weights, computed inside a graph: the seed a gradient program (and so
an exported explainer) starts from for sequence outputs and maps, as objective.resolve_dense
computes them outside one, with no clean forward before it.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from onnx import TensorProto

from ..graph.builder import GraphBuilder
from ..graph.model import Model
from ..graph.padding import real_positions_in_graph
from ..objective import NEXT_TOKEN, SPATIAL, Place, mask_inputs


def dense_weights(b: GraphBuilder, model: Model, scores: str, target: str, form: str,
                  place: Place, inputs: Mapping[str, str]) -> str:
    """The dense objective's weights on `scores` (N rows of the explained output), computed
    in the graph as objective.resolve_dense computes them: 1 at [row, place, class] where
    class is `target` (int64 [N] or [1]; -1: the class predicted at that place) and place one
    of the explained positions or pixels (a mask input's padding left out; `inputs` maps an
    input to the tensor holding its N rows where that is not the input itself)."""
    spatial = form == SPATIAL
    axis = 1 if spatial else 2
    rank = 4 if spatial else 3
    predicted = b.op("ArgMax", scores, axis=axis, keepdims=1)
    given = b.reshape(target, [-1] + [1] * (rank - 1))
    chosen = b.where(b.op("Less", given, b.const(np.array(0, np.int64))), predicted, given)
    classes = b.reshape(_arange(b, b.dim(scores, axis)),
                        [1, -1, 1, 1] if spatial else [1, 1, -1])
    hot = b.op("Equal", chosen, classes)
    where = (_pixels(b, scores, place) if spatial else
             _positions(b, model, scores, form, place, inputs))
    if where is not None:
        hot = b.op("And", hot, where)
    weights = b.op("Cast", hot, to=b.dtype(scores))
    b.infos[weights] = b.info(scores)
    return weights


def _arange(b: GraphBuilder, count: str) -> str:
    """[0, 1, ..., count - 1] (int64) for a [1] count."""
    zero, one = (b.const(np.array(v, dtype=np.int64)) for v in (0, 1))
    return b.range(zero, b.squeeze(count, [0]), one)


def _positions(b: GraphBuilder, model: Model, scores: str, form: str, place: Place,
               inputs: Mapping[str, str]) -> str | None:
    """bool [N or 1, T, 1]: the explained positions of a sequence output."""
    steps = _arange(b, b.dim(scores, 1))
    if place.position is not None:
        at = b.op("Equal", steps, b.const(np.array(place.position, np.int64)))
        return b.reshape(at, [1, -1, 1])
    real = _real(b, model, inputs, b.dim(scores, 0),
                 b.dim(scores, 1) if form == NEXT_TOKEN else None)
    if form != NEXT_TOKEN:
        return None if real is None else b.unsqueeze(real, [2])
    # The last real position: the largest (index + 1) over the real positions, minus 1.
    count = b.op("Add", steps, b.const(np.array(1, np.int64)))
    if real is not None:
        count = b.op("Mul", count, b.op("Cast", real, to=TensorProto.INT64))
    last = b.op("Sub", b.reduce("ReduceMax", count, [-1], True),
                b.const(np.array(1, np.int64)))
    return b.unsqueeze(b.op("Equal", b.unsqueeze(steps, [0]), last), [2])


def _real(b: GraphBuilder, model: Model, inputs: Mapping[str, str], rows: str,
          cached: str | None = None) -> str | None:
    """bool [N, T]: no [N, T] mask input is 0 there (objective.mask_inputs), else None: the
    rule of graph.padding. A mapped input may hold more blocks of rows (a path's x and x'):
    its first N are read. `cached` (T, [1]): read the last T columns, as a KV cache's
    [N, P + T] mask covers the cached positions first (objective.last_positions)."""
    specs = {spec.name: spec for spec in model.inputs}
    masks = [name for name in mask_inputs(model) if name in specs
             and specs[name].dims is not None and len(specs[name].dims) == 2]
    return real_positions_in_graph(
        b, [b.slice(inputs[name], [0], rows, [0]) if name in inputs else name
            for name in masks], cached)


def _pixels(b: GraphBuilder, scores: str, place: Place) -> str | None:
    """bool [1, 1, H, W]: the explained pixels of a map (None: all of them)."""
    if place.pixel is not None:
        (y0, x0) = place.pixel
        box = ((y0, y0 + 1), (x0, x0 + 1))
    elif place.region is not None:
        box = place.region
    else:
        return None
    inside = []
    for axis, (start, stop), shape in ((2, box[0], [-1, 1]), (3, box[1], [1, -1])):
        steps = _arange(b, b.dim(scores, axis))
        low = b.op("Less", steps, b.const(np.array(start, np.int64)))
        high = b.op("Less", steps, b.const(np.array(stop, np.int64)))
        inside.append(b.reshape(b.op("And", b.op("Not", low), high), shape))
    return b.unsqueeze(b.op("And", *inside), [0, 1])
