"""Occlusion as one graph (methods.occlusion's definition): every window position is made
inside the perturbation Loop (export.perturb) from its index, the covered elements set to
the baseline, and each element credited with the mean score drop over the windows that
cover it. No table of windows x input size is stored: each iteration builds its windows'
masks from one index range per axis."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..images import image_layout
from ..methods._budget import MAX_RUNS
from ..methods.occlusion import baseline_like, check_budget, window_counts, window_geometry
from .loop import Chunk
from .methods import ATTRIBUTION, baseline_input, register_export
from .perturb import (
    Perturbation,
    Scores,
    baseline_row,
    perturbation_loop,
    perturbed_name,
    row_shape,
    rows_per_iteration,
    zeros,
)


@register_export("occlusion", ("window", "stride", "baseline", "input"), any_output=True)
def occlusion(eg, options):
    """A_i = mean over the windows W covering i of S(x) - S(x with W set to the baseline);
    the baseline is the input `baseline/<input>` (one row, or one per row)."""
    b = eg.b
    name = perturbed_name(eg, options)
    row = row_shape(eg, name, options)
    image = image_layout((1, *row)) is not None
    window = options["window"] if options["window"] is not None else (8 if image else 1)
    stride = options["stride"] if options["stride"] is not None else window
    size, step = window_geometry(row, window, stride)
    counts = window_counts(row, size, step)
    check_budget(math.prod(counts), options.get("max_runs", MAX_RUNS), row, size)
    fill = baseline_input(eg, name, baseline_row(eg, name, row, options, baseline_like))
    flat = math.prod(row)

    def perturb(bb: GraphBuilder, chunk: Chunk, clean: dict[str, str]) -> dict[str, str]:
        covered = _covered(bb, chunk, row, size, step, counts)  # bool [k, 1, *row]
        copies = bb.where(covered, bb.unsqueeze(fill, [0]), bb.unsqueeze(clean[name], [0]))
        return {name: bb.reshape(copies, bb.concat([bb.ints([-1]), bb.dims(clean[name], 1)],
                                                   0))}

    def contributions(bb: GraphBuilder, chunk: Chunk, scores: Scores) -> list[str]:
        masks = bb.op("Cast", _covered(bb, chunk, row, size, step, counts),
                      to=TensorProto.DOUBLE)
        masks = bb.reshape(bb.op("Expand", masks, bb.concat([chunk.k, bb.ints([1, *row])], 0)),
                           bb.concat([chunk.k, bb.ints([flat])], 0))  # [k, R]
        drops = bb.op("Sub", bb.unsqueeze(scores.clean, [1]), scores.copies)  # [N, k]
        return [bb.op("MatMul", drops, masks), bb.reduce("ReduceSum", masks, [0], False)]

    run = perturbation_loop(eg, Perturbation(
        math.prod(counts), perturb, contributions, [zeros(b, [eg.rows, flat]), zeros(b, [flat])]),
        rows_per_iteration(options), bool(options.get("single")))
    total, covered = run.sums
    mean = b.op("Div", total, b.op("Max", covered, b.const(np.array(1.0))))
    maps = b.where(b.op("Greater", covered, b.const(np.array(0.0))), mean,
                   b.const(np.array(0.0)))
    maps = b.op("Cast", b.reshape(maps, b.shape(name)), to=TensorProto.FLOAT)
    eg.declare(maps, ATTRIBUTION + name, f"float: occlusion (mean score drop over the "
               f"{math.prod(counts)} windows of {list(size)} at strides {list(step)} covering "
               f"each element), shaped like input '{name}'",
               TensorInfo(TensorProto.FLOAT, b.info(name).shape))


def _covered(bb: GraphBuilder, chunk: Chunk, row: tuple[int, ...], size: tuple, step: tuple,
             counts: list[int]) -> str:
    """bool [k, 1, *row] (axes a window spans whole left at 1): whether each element lies in
    the chunk's windows. Window p sits at corner (p unravelled over `counts`, row-major) *
    step, clipped at the border (methods.occlusion.window_counts)."""
    found = None
    after = 1
    for axis in reversed(range(len(row))):
        if counts[axis] == 1 and size[axis] >= row[axis]:
            after *= counts[axis]
            continue  # every window spans this axis whole
        position = bb.op("Mod", bb.op("Div", chunk.index, bb.ints([after])),
                         bb.ints([counts[axis]]))
        start = bb.unsqueeze(bb.op("Mul", position, bb.ints([step[axis]])), [1])  # [k, 1]
        where = bb.const(np.arange(row[axis], dtype=np.int64)[None])  # [1, dim]
        inside = bb.op("And", bb.op("Not", bb.op("Less", where, start)),
                       bb.op("Less", where, bb.op("Add", start, bb.ints([size[axis]]))))
        shape = [1] * (len(row) + 2)
        shape[0], shape[axis + 2] = -1, row[axis]
        inside = bb.reshape(inside, shape)
        found = inside if found is None else bb.op("And", found, inside)
        after *= counts[axis]
    if found is None:  # one window over the whole row
        found = bb.reshape(bb.op("Expand", bb.const(np.array(True)), chunk.k),
                           [-1] + [1] * (len(row) + 1))
    return found
