"""Occlusion as one graph (methods.occlusion's definition): every window position is made
inside the perturbation Loop (export.perturb) from its index, the covered elements set to
the baseline, and only each copy's score leaves the Loop ([N, windows]). After it, each
element is credited with the mean score drop over the windows that cover it: a window is a
product of one index range per axis, so the drops spread over the elements with one MatMul
per axis, and no table of windows x input size is ever made."""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..images import image_layout
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.budget import Work, check_work
from .loop import Chunk
from .methods import ATTRIBUTION, baseline_input, register_export
from .perturb import (
    Perturbation,
    baseline_row,
    perturbation_loop,
    perturbed_input,
    remainder,
    row_shape,
)


def windows(row: tuple[int, ...], window, stride) -> tuple[tuple, tuple, list[int]]:
    """(window shape, stride shape, window positions per axis) over a row, the option
    defaults resolved here only: `window` None is 8 pixels for images, 1 element
    otherwise; `stride` None is the window."""
    if window is None:
        window = 8 if image_layout((1, *row)) is not None else 1
    size, step = window_geometry(row, window, window if stride is None else stride)
    return size, step, window_counts(row, size, step)


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
    name = perturbed_input(eg.model, options.get("input"))
    row = row_shape(eg, name, options)
    size, step, counts = windows(row, options["window"], options["stride"])
    if "max_runs" in options:  # export; in-process runs check it before (no program key)
        check_budget(math.prod(counts), options["max_runs"], row, size)
    fill = baseline_input(eg, name, baseline_row(eg, name, row, options, baseline_like))

    # Few elements per window (E of R): Expand the rows and ScatterND the baseline into the
    # windows' elements, not a Where over every element (3x faster on ONNX Runtime's CPU for
    # one-pixel windows); the indices cost E * (2 + rank) int64 per copy, so only then.
    # (Opset 12: Min of int64 clamps the indices; ScatterND, GatherND and Range are 11.)
    scatter = b.opset >= 12 and math.prod(size) * (2 + len(row)) * 8 <= math.prod(row)

    def perturb(bb: GraphBuilder, chunk: Chunk, clean: dict[str, str]) -> dict[str, str]:
        if scatter:
            copies = _scattered(bb, chunk, clean[name], fill, row, size, step, counts)
        else:
            covered = _covered(bb, chunk, row, size, step, counts)  # bool [k, 1, *row]
            copies = bb.where(covered, bb.unsqueeze(fill, [0]), bb.unsqueeze(clean[name], [0]))
        return {name: bb.reshape(copies, bb.concat([bb.ints([-1]), bb.dims(clean[name], 1)],
                                                   0))}

    # The Loop keeps each copy's score only: spreading the drops over the elements per
    # iteration (a [k, R] mask times [N, k]) cost more than the copies on a cheap model.
    run = perturbation_loop(eg, Perturbation(
        math.prod(counts), perturb, lambda bb, chunk, scores: [], [], table=True))
    drops = b.op("Sub", b.unsqueeze(run.clean, [1]), run.table)  # [N, P]
    ranges = [_ranges(*axis) for axis in zip(row, size, step, counts, strict=True)]
    total = _spread(b, b.reshape(drops, b.concat([eg.rows, b.ints(counts)], 0)), ranges)
    covered = _spread(b, b.const(np.ones((1, *counts))), ranges)  # windows per element
    mean = b.op("Div", total, b.op("Max", covered, b.const(np.array(1.0))))
    maps = b.where(b.op("Greater", covered, b.const(np.array(0.0))), mean,
                   b.const(np.array(0.0)))
    maps = b.op("Cast", b.reshape(maps, b.shape(name)), to=TensorProto.FLOAT)
    eg.declare(maps, ATTRIBUTION + name, f"float: occlusion (mean score drop over the "
               f"{math.prod(counts)} windows of {list(size)} at strides {list(step)} covering "
               f"each element), shaped like input '{name}'",
               TensorInfo(TensorProto.FLOAT, b.info(name).shape))


def _ranges(dim: int, size: int, step: int, count: int) -> np.ndarray:
    """float64 [count, dim]: 1 where window position p along an axis covers element i (its
    range starts at p * step, clipped at the border)."""
    start = np.arange(count)[:, None] * step
    where = np.arange(dim)[None]
    return ((where >= start) & (where < start + size)).astype(np.float64)


def _spread(b: GraphBuilder, values: str, ranges: list[np.ndarray]) -> str:
    """[N, *row]: each element the sum of `values` [N, *counts] over the windows covering
    it. A window is a product of one range per axis, so this is one MatMul per axis (each
    contracting the last axis, then rotated to the front)."""
    last = len(ranges)
    for matrix in reversed(ranges):
        values = b.op("MatMul", values, b.const(matrix, "occlusion_ranges"))
        if last > 1:
            values = b.op("Transpose", values, perm=[0, last, *range(1, last)])
    return values


def _starts(bb: GraphBuilder, chunk: Chunk, step: tuple, counts: list[int]) -> list[str]:
    """int64 [k] per axis: the corner of the chunk's windows, window p at (p unravelled over
    `counts`, row-major) * step."""
    starts, after = [], 1
    for axis in reversed(range(len(counts))):
        position = remainder(bb, bb.op("Div", chunk.index, bb.ints([after])),
                             bb.ints([counts[axis]]))
        starts.insert(0, bb.op("Mul", position, bb.ints([step[axis]])))
        after *= counts[axis]
    return starts


def _scattered(bb: GraphBuilder, chunk: Chunk, x: str, fill: str, row: tuple[int, ...],
               size: tuple, step: tuple, counts: list[int]) -> str:
    """[k, N, *row]: the rows x [N, *row] once per window of the chunk, the window's E
    elements set to fill's ([N, *row]). Indices past the border are clamped to it: a clipped
    window writes its last element more than once, always the same value."""
    rank = len(row)
    offsets = np.stack(np.meshgrid(*[np.arange(s) for s in size], indexing="ij"), -1)
    offsets = offsets.reshape(1, -1, rank).astype(np.int64)  # [1, E, rank]
    corner = bb.concat([bb.unsqueeze(start, [1]) for start in _starts(bb, chunk, step, counts)],
                       1)  # [k, rank]
    at = bb.op("Min", bb.op("Add", bb.unsqueeze(corner, [1]), bb.const(offsets, "offsets")),
               bb.ints(np.array(row) - 1))  # [k, E, rank]
    rows = bb.dims(x, 0, 1)
    span = [chunk.k, rows, bb.ints([offsets.shape[1]])]

    def counter(count: str, shape: list[int]) -> str:  # 0..count-1 along one axis of [k, N, E]
        every = bb.range(bb.const(np.array(0, np.int64)), bb.reshape(count, []),
                         bb.const(np.array(1, np.int64)))
        return bb.op("Expand", bb.reshape(every, shape), bb.concat([*span, bb.ints([1])], 0))

    element = bb.op("Expand", bb.unsqueeze(at, [1]), bb.concat([*span, bb.ints([rank])], 0))
    in_row = bb.concat([counter(rows, [1, -1, 1, 1]), element], 3)  # [k, N, E, 1 + rank]
    updates = bb.op("GatherND", fill, in_row)  # [k, N, E]
    where = bb.concat([counter(chunk.k, [-1, 1, 1, 1]), in_row], 3)  # [k, N, E, 2 + rank]
    copies = bb.op("Expand", bb.unsqueeze(x, [0]), bb.concat([chunk.k, bb.shape(x)], 0))
    return bb.op("ScatterND", copies, where, updates)


def _covered(bb: GraphBuilder, chunk: Chunk, row: tuple[int, ...], size: tuple, step: tuple,
             counts: list[int]) -> str:
    """bool [k, 1, *row] (axes a window spans whole left at 1): whether each element lies in
    the chunk's windows. Window p sits at corner (p unravelled over `counts`, row-major) *
    step, clipped at the border (window_counts)."""
    found = None
    for axis, start in enumerate(_starts(bb, chunk, step, counts)):
        if counts[axis] == 1 and size[axis] >= row[axis]:
            continue  # every window spans this axis whole
        start = bb.unsqueeze(start, [1])  # [k, 1]
        where = bb.const(np.arange(row[axis], dtype=np.int64)[None])  # [1, dim]
        inside = bb.op("And", bb.op("Not", bb.op("Less", where, start)),
                       bb.op("Less", where, bb.op("Add", start, bb.ints([size[axis]]))))
        shape = [1] * (len(row) + 2)
        shape[0], shape[axis + 2] = -1, row[axis]
        inside = bb.reshape(inside, shape)
        found = inside if found is None else bb.op("And", found, inside)
    if found is None:  # one window over the whole row
        found = bb.reshape(bb.op("Expand", bb.const(np.array(True)), chunk.k),
                           [-1] + [1] * (len(row) + 1))
    return found
