"""Occlusion as one graph (methods.occlusion's definition): every window position is made
inside the perturbation Loop (export.perturb) from its index, the covered elements set to
the baseline, and each element credited with the mean score drop over the windows that
cover it. No table of windows x input size is stored: each iteration builds its windows'
masks from one index range per axis."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..images import image_layout
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.budget import MAX_RUNS, Work, check_work
from .loop import Chunk
from .methods import ATTRIBUTION, baseline_input, register_export
from .perturb import (
    Perturbation,
    Scores,
    baseline_row,
    perturbation_loop,
    perturbed_name,
    remainder,
    row_shape,
    rows_per_iteration,
    zeros,
)


def window_geometry(row_shape: tuple[int, ...], window, stride) -> tuple[tuple, tuple]:
    """Window and stride shapes over a row: images [C, H, W] or [H, W, C] get square
    `window` x `window` patches over every channel; other rows a window along each axis."""
    size, step = _pair(window, "window"), _pair(stride, "stride")
    layout = image_layout((1, *row_shape))
    if layout == "NCHW":
        return (row_shape[0], *size), (row_shape[0], *step)
    if layout == "NHWC":
        return (*size, row_shape[2]), (*step, row_shape[2])
    if len(row_shape) == 1:
        return (size[0],), (step[0],)
    return tuple(min(size[0], d) for d in row_shape), tuple(step[0] for _ in row_shape)


def _pair(value, what: str) -> tuple[int, int]:
    try:
        if isinstance(value, str):
            value = [int(part) for part in value.replace("x", ",").split(",") if part.strip()]
        values = [int(v) for v in np.atleast_1d(value)]
    except (ValueError, TypeError, OverflowError):
        raise InputError(f"{what} must be one or two positive integers, got {value!r}"
                         ) from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or min(values) < 1:
        raise InputError(f"{what} must be one or two positive integers, got {value!r}")
    return values[0], values[1]


def window_counts(row_shape: tuple[int, ...], window: tuple, stride: tuple) -> list[int]:
    """Window positions along each axis of a row, as Captum places them: steps of `stride`
    until the window reaches the end, the last one clipped at the border if it overhangs."""
    counts = []
    for dim, size, step in zip(row_shape, window, stride, strict=True):
        if size > dim:
            raise InputError(f"the occlusion window {window} is larger than the input row "
                             f"{row_shape}")
        counts.append(math.ceil((dim - size) / step) + 1)
    return counts


def check_budget(count: int, max_runs, row_shape: tuple, window: tuple,
                 budget_mb: float = DEFAULT_BUDGET_MB) -> None:
    """Refuse more than `max_runs` occluded copies per row (the shared work budget), saying
    what would raise it; the count comes from the window geometry, so it is checked here."""
    about = f"with window {window} over an input row of shape {tuple(row_shape)}"
    work = Work("window", count, count, 0, advice="use a larger window (-O window=N)",
                about=about)
    check_work("occlusion", work, max_runs, budget_mb)


def baseline_like(baseline, value: np.ndarray) -> np.ndarray:
    """The values occluded elements take, shaped like one row."""
    array = np.asarray(baseline)
    if array.dtype.kind not in "fiub":
        try:
            array = np.asarray(float(str(baseline)))
        except ValueError:
            raise InputError(f"baseline must be a number or an array, got {baseline!r}"
                             ) from None
    try:
        return np.broadcast_to(array, value.shape[1:]).astype(value.dtype)
    except ValueError:
        raise InputError(f"baseline of shape {array.shape} does not broadcast to an input "
                         f"row {value.shape[1:]}") from None


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
        rows_per_iteration(options))
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
    step, clipped at the border (window_counts)."""
    found = None
    after = 1
    for axis in reversed(range(len(row))):
        if counts[axis] == 1 and size[axis] >= row[axis]:
            after *= counts[axis]
            continue  # every window spans this axis whole
        position = remainder(bb, bb.op("Div", chunk.index, bb.ints([after])),
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
