"""Ops that only move data: the gradient moves it back (reshape, transpose, concat, slice, pad...).

The helpers at the top are shared with indexing.py and resize.py. Every shape is read at run
time (Shape ops) unless it is certain statically, so symbolic batch and spatial dims work.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from onnx import TensorProto, numpy_helper

from ...graph.builder import GraphBuilder
from ..broadcast import broadcast_supports, unbroadcast
from ..registry import NodeContext, rule

INT64 = TensorProto.INT64
INT64_MAX = int(np.iinfo(np.int64).max)
INT64_MIN = int(np.iinfo(np.int64).min)


# ---- helpers (also used by indexing.py and resize.py) ------------------------------------
def static_dim(b: GraphBuilder, x: str, axis: int) -> int | None:
    """Dim `axis` of x when it is a known integer (dims guessed by symbolic inference are not)."""
    info = b.info(x)
    shape = getattr(info, "certain", info.shape)
    if shape is None or not isinstance(shape[axis], int):
        return None
    return shape[axis]


def as_int64(b: GraphBuilder, t: str) -> str:
    return t if b.dtype(t) == INT64 else b.op("Cast", t, to=INT64)


def one(b: GraphBuilder) -> str:
    return b.ints([1])


def imax(b: GraphBuilder, p: str, q: str) -> str:
    """Elementwise max of int64 tensors (Max takes integers only from opset 12)."""
    return b.where(b.op("Less", p, q), q, p)


def imin(b: GraphBuilder, p: str, q: str) -> str:
    return b.where(b.op("Less", p, q), p, q)


def int_scalar(b: GraphBuilder, value: int) -> str:
    """A 0-d int64 tensor (b.const turns 0-d arrays into 1-D ones, which Range refuses)."""
    return b.memo(("int scalar", value), lambda: b.reshape(b.ints([value]), []))


def iota(b: GraphBuilder, n: str) -> str:
    """[0, 1, ..., n-1] for a one-element int64 tensor n (NonZero of ones before Range exists)."""
    def make() -> str:
        if b.opset >= 11:
            return b.range(int_scalar(b, 0), b.reshape(n, []), int_scalar(b, 1))
        ones = b.op("ConstantOfShape", n, value=numpy_helper.from_array(np.ones(1, np.int64)))
        return b.reshape(b.op("NonZero", ones), [-1])
    return b.memo(("iota", n), make)


def zeros(b: GraphBuilder, shape: str, like: str) -> str:
    """Zeros of a run-time shape with the element type of `like`."""
    value = numpy_helper.from_array(np.zeros(1, dtype=b.np_dtype(like)))
    return b.op("ConstantOfShape", shape, value=value)


def with_dim(b: GraphBuilder, x: str, rank: int, axis: int, n: str) -> str:
    """Shape(x) with dim `axis` replaced by the one-element tensor n."""
    parts = [b.dims(x, 0, axis)] if axis else []
    parts.append(n)
    if axis < rank - 1:
        parts.append(b.dims(x, axis + 1, rank))
    return b.concat(parts, 0)


def axis_pads(b: GraphBuilder, rank: int, axis: int, before: str, after: str) -> str:
    """A full ONNX pads vector that pads only `axis`."""
    parts: list[str] = []
    for edge in (before, after):
        if axis:
            parts.append(b.ints([0] * axis))
        parts.append(edge)
        if axis < rank - 1:
            parts.append(b.ints([0] * (rank - 1 - axis)))
    return b.concat(parts, 0)


def place(b: GraphBuilder, block: str, rank: int, axis: int, low: str, total: str,
          crop: bool = False) -> str:
    """Zero-extend `block` along `axis` so it starts at `low` of an axis of length `total`.

    With `crop`, what would run past the end is cut first (never needs negative pads, which
    the reference evaluator rejects).
    """
    if crop:
        block = b.slice(block, [0], b.op("Sub", total, low), [axis])
    after = b.op("Sub", b.op("Sub", total, low), b.dim(block, axis))
    if b.opset >= 11:
        return b.op("Pad", block, axis_pads(b, rank, axis, low, after))
    head = zeros(b, with_dim(b, block, rank, axis, low), block)
    tail = zeros(b, with_dim(b, block, rank, axis, after), block)
    return b.concat([head, block, tail], axis)


def contract_axis(b: GraphBuilder, g: str, m: str, rank: int, axis: int) -> str:
    """h[..., i, ...] = sum_o g[..., o, ...] * m[i, o] along `axis`; m is [new, old]."""
    if axis == rank - 1:
        return b.op("MatMul", g, b.op("Transpose", m, perm=[1, 0]))
    if axis == rank - 2:
        return b.op("MatMul", m, g)
    perm = list(range(rank))
    perm[axis], perm[rank - 2] = rank - 2, axis  # a swap is its own inverse
    moved = b.op("Transpose", g, perm=perm)
    return b.op("Transpose", b.op("MatMul", m, moved), perm=perm)


def _norm_axes(axes: Sequence[int], rank: int) -> list[int]:
    return [int(a) % rank for a in axes]


# ---- pure reshapes ------------------------------------------------------------------------
@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(c: NodeContext, gy):
    b = c.b
    # allowzero keeps a genuine 0 in Shape(x) from meaning "copy that dim of g".
    extra = {"allowzero": 1} if b.opset >= 14 else {}
    return [b.op("Reshape", gy[0], b.shape(c.x(0)), **extra)]


@rule("Transpose")
def transpose(c: NodeContext, gy):
    rank = c.b.rank(c.x(0))
    perm = c.attr("perm") or list(reversed(range(rank)))
    return [c.b.op("Transpose", gy[0], perm=[int(p) for p in np.argsort(perm)])]


# ---- concatenation and splitting --------------------------------------------------------
@rule("Concat")
def concat(c: NodeContext, gy):
    """Slice g back into the inputs' extents along the axis."""
    b, g = c.b, gy[0]
    rank = b.rank(c.y())
    axis = int(c.attr("axis", 1)) % rank
    inputs = list(c.node.input)
    last = max((i for i in range(len(inputs)) if c.need(i)), default=-1)
    sizes = [static_dim(b, x, axis) for x in inputs[:last + 1]]
    if all(size is not None for size in sizes):
        ends = np.cumsum([0] + sizes).tolist()
        return [b.slice(g, [ends[i]], [ends[i + 1]], [axis]) if c.need(i) else None
                for i in range(last + 1)]
    grads: list[str | None] = []
    start = b.ints([0])
    for i, x in enumerate(inputs[:last + 1]):
        size = b.dim(x, axis)
        end = b.op("Add", start, size)
        if not c.need(i):
            grads.append(None)
        elif b.opset >= 10:
            grads.append(b.slice(g, start, end, [axis]))
        else:
            grads.append(b.op("Gather", g, b.op("Add", iota(b, size), start), axis=axis))
        start = end
    return grads


@rule("Split")
def split(c: NodeContext, gy):
    """Concatenate the outputs' gradients; outputs without one contribute zeros.

    Reading each output's extent from the output itself covers the split attribute, the split
    input, equal splits and num_outputs alike.
    """
    b = c.b
    axis = int(c.attr("axis", 0)) % b.rank(c.x(0))
    parts = [g if g is not None else b.zeros_like(y) for g, y in zip(gy, c.node.output,
                                                                        strict=False)]
    return [b.concat(parts, axis)]


# ---- broadcasting and tiling ------------------------------------------------------------
@rule("Expand", supports=broadcast_supports)
def expand(c: NodeContext, gy):
    return [unbroadcast(c.b, gy[0], c.x(0), c.y())]


@rule("Tile")
def tile(c: NodeContext, gy):
    """View g as [r0, d0, r1, d1, ...] (repeat-major, as Tile lays it out) and sum the r axes."""
    b, x = c.b, c.x(0)
    rank = b.rank(x)
    repeats = as_int64(b, c.x(1))
    pairs = b.op("Concat", b.unsqueeze(repeats, [1]), b.unsqueeze(b.shape(x), [1]), axis=1)
    wide = b.reshape(gy[0], b.reshape(pairs, [-1]))
    return [b.reduce("ReduceSum", wide, list(range(0, 2 * rank, 2)), keepdims=False)]


# ---- Slice ------------------------------------------------------------------------------
SliceSpec = tuple[list[int], list[int] | None, list[int]]


def _slice_spec(c: NodeContext) -> SliceSpec | None:
    """(axes, static starts or None, steps) when axes and steps are static, else None."""
    b = c.b
    rank = b.rank(c.x(0))
    if b.opset < 10:
        starts = [int(s) for s in c.attr("starts")]
        axes = c.attr("axes") or list(range(len(starts)))
        return _norm_axes(axes, rank), starts, [1] * len(starts)
    axes = b.static_ints(c.x(3)) if c.x(3) else None
    starts = b.static_ints(c.x(1))
    if axes is None:
        if c.x(3) or starts is None:
            return None  # axes computed at run time, or their count unknown
        axes = list(range(len(starts)))
    steps = b.static_ints(c.x(4)) if c.x(4) else [1] * len(axes)
    if steps is None:
        return None
    return _norm_axes(axes, rank), starts, steps


def _slice_supported(c: NodeContext) -> str | None:
    if c.b.opset == 10 and _slice_spec(c) is None:
        return "Slice axes or steps computed at run time need opset 11 (Range, ScatterElements)"
    return None


@rule("Slice", supports=_slice_supported)
def slice_(c: NodeContext, gy):
    """Undo each sliced axis in turn: reverse a negative step, interleave |step| - 1 zeros, and
    zero-pad the block to where it was taken (start clamped as the spec says)."""
    b, x, g = c.b, c.x(0), gy[0]
    spec = _slice_spec(c)
    if spec is None:
        return [_slice_by_scatter(c, g)]
    rank = b.rank(x)
    axes, fixed, steps = spec
    for k, (axis, step) in enumerate(zip(axes, steps, strict=True)):
        start = b.ints([fixed[k]]) if fixed is not None else b.slice(c.x(1), [k], [k + 1], [0])
        g = _unslice_axis(b, g, x, c.y(), rank, axis, start, step)
    return [g]


def _unslice_axis(b: GraphBuilder, g: str, x: str, y: str, rank: int, axis: int, start: str,
                  step: int) -> str:
    dim, count, zero = b.dim(x, axis), b.dim(y, axis), b.ints([0])
    start = as_int64(b, start)
    begin = b.where(b.op("Less", start, zero), b.op("Add", start, dim), start)
    upper = dim if step > 0 else b.op("Sub", dim, one(b))
    begin = imin(b, imax(b, begin, zero), upper)
    if step < 0:
        # The lowest taken index is begin - (count - 1) * |step|; walk g upwards from there.
        g = b.slice(g, [-1], [INT64_MIN], [axis], [-1])
        span = b.op("Mul", imax(b, b.op("Sub", count, one(b)), zero), b.ints([-step]))
        begin = b.op("Sub", begin, span)
    if abs(step) > 1:
        g = _interleave(b, g, rank, axis, abs(step))
    return place(b, g, rank, axis, begin, dim, crop=abs(step) > 1)


def _interleave(b: GraphBuilder, g: str, rank: int, axis: int, k: int) -> str:
    """Follow every element along `axis` by k - 1 zeros: [a, b] -> [a, 0, b, 0] for k = 2."""
    wide = b.unsqueeze(g, [axis + 1])
    pads = [0] * (2 * (rank + 1))
    pads[rank + 1 + axis + 1] = k - 1
    wide = b.pad(wide, pads)
    return b.reshape(wide, with_dim(b, g, rank, axis, b.ints([-1])))


def _slice_by_scatter(c: NodeContext, g: str) -> str:
    """Axes or steps only known at run time: slice an iota the same way, scatter g back there."""
    b, x = c.b, c.x(0)
    size = b.reshape(b.op("Size", x), [1])
    positions = b.reshape(iota(b, size), b.shape(x))
    taken = b.op("Slice", positions, *c.node.input[1:])
    flat = b.op("ScatterElements", zeros(b, size, g), b.reshape(taken, [-1]),
                b.reshape(g, [-1]), axis=0)
    return b.reshape(flat, b.shape(x))


# ---- Pad --------------------------------------------------------------------------------
PAD_MODES = ("constant", "edge", "reflect", "wrap")


def _pad_static(c: NodeContext) -> tuple[list[int], list[int], list[int]] | None:
    """(axes, begins, ends) from attributes or static inputs; None when computed at run time."""
    b = c.b
    rank = b.rank(c.x(0))
    if b.opset < 11:
        pads = [int(p) for p in c.attr("pads")]
        axes = list(range(rank))
    else:
        pads = b.static_ints(c.x(1))
        axes = b.static_ints(c.x(3)) if c.x(3) else list(range(rank))
        if pads is None or axes is None:
            return None
    count = len(axes)
    return _norm_axes(axes, rank), pads[:count], pads[count:]


def _pad_supported(c: NodeContext) -> str | None:
    mode = c.str_attr("mode", "constant")
    if mode not in PAD_MODES:
        return f"Pad mode '{mode}' is not supported"
    if mode == "constant":
        return None
    spec = _pad_static(c)
    if spec is None:
        return f"Pad mode '{mode}' needs static pads and axes"
    if min(spec[1] + spec[2], default=0) < 0:
        return f"Pad mode '{mode}' with negative pads is not supported"
    return None


@rule("Pad", supports=_pad_supported)
def pad(c: NodeContext, gy):
    """Constant mode: crop what was padded and zero-pad what negative pads cropped; the
    padding value gets sum(g) - sum(dx). Edge, reflect and wrap fold the border back."""
    b, g = c.b, gy[0]
    mode = c.str_attr("mode", "constant")
    grads: list[str | None] = [None] * len(c.node.input)
    if mode != "constant":
        grads[0] = _fold_pads(c, g, mode)
        return grads
    spec = _pad_static(c)
    dx = _unpad_constant(c, g, spec) if spec is not None else _unpad_dynamic(c, g)
    grads[0] = dx if c.need(0) else None
    if c.need(2):
        rest = b.op("Sub", b.reduce("ReduceSum", g, None, keepdims=False),
                    b.reduce("ReduceSum", dx, None, keepdims=False))
        grads[2] = b.reshape(rest, b.shape(c.x(2)))
    return grads


def _unpad_constant(c: NodeContext, g: str, spec: tuple[list[int], list[int], list[int]]
                    ) -> str:
    b = c.b
    rank = b.rank(c.x(0))
    axes, begins, ends = spec
    starts = [max(p, 0) for p in begins]
    stops = [-p if p > 0 else INT64_MAX for p in ends]
    if any(starts) or any(p > 0 for p in ends):
        g = b.slice(g, starts, stops, axes)
    full = [0] * (2 * rank)
    for axis, head, tail in zip(axes, begins, ends, strict=True):
        full[axis], full[rank + axis] = max(-head, 0), max(-tail, 0)
    return b.pad(g, full) if any(full) else g


def _unpad_dynamic(c: NodeContext, g: str) -> str:
    """Pads computed at run time (opset 11+): the same with Slice and Pad on tensors."""
    b = c.b
    rank = b.rank(c.x(0))
    pads, zero = as_int64(b, c.x(1)), b.ints([0])
    axes = c.x(3) or b.ints(list(range(rank)))
    halves = b.node("Split", [pads], 2, axis=0) if b.opset < 18 else b.node(
        "Split", [pads], 2, axis=0, num_outputs=2)
    begins, ends = halves
    stops = b.op("Sub", b.op("Gather", b.shape(g), axes), imax(b, ends, zero))
    cropped = b.slice(g, imax(b, begins, zero), stops, axes)
    restore = imax(b, b.op("Neg", pads), zero)
    if c.x(3):
        return b.op("Pad", cropped, restore, "", c.x(3))
    return b.op("Pad", cropped, restore)


def _fold_pads(c: NodeContext, g: str, mode: str) -> str:
    b, x = c.b, c.x(0)
    rank = b.rank(x)
    spec = _pad_static(c)
    assert spec is not None  # _pad_supported checked it
    fold = {"edge": _fold_edge, "reflect": _fold_reflect, "wrap": _fold_wrap}[mode]
    for axis, head, tail in zip(*spec, strict=True):
        if head or tail:
            g = fold(b, g, b.dim(x, axis), rank, axis, head, tail)
    return g


def _middle(b: GraphBuilder, g: str, axis: int, head: int, tail: int) -> str:
    return b.slice(g, [head], [-tail if tail else INT64_MAX], [axis])


def _add_at_start(b: GraphBuilder, g: str, axis: int, offset: int, block: str,
                  length: int) -> str:
    """g with `block` (`length` long) added to g[offset : offset + length] along the axis."""
    width = offset + length
    head = [b.slice(g, [0], [offset], [axis])] if offset else []
    body = b.op("Add", b.slice(g, [offset], [width], [axis]), block)
    return b.concat([*head, body, b.slice(g, [width], [INT64_MAX], [axis])], axis)


def _add_at_end(b: GraphBuilder, g: str, axis: int, offset: int, block: str,
                length: int) -> str:
    """g with `block` added to the `length` elements that end `offset` before the end."""
    width = offset + length
    stop = [-offset] if offset else [INT64_MAX]
    body = b.op("Add", b.slice(g, [-width], stop, [axis]), block)
    tail = [b.slice(g, [-offset], [INT64_MAX], [axis])] if offset else []
    return b.concat([b.slice(g, [0], [-width], [axis]), body, *tail], axis)


def _fold_edge(b: GraphBuilder, g: str, n: str, rank: int, axis: int, head: int,
               tail: int) -> str:
    """Edge padding repeats x[0] and x[n-1]: their gradients collect the border sums.

    Borders are added in turn, so they may land on the same element (n = 1)."""
    dx = _middle(b, g, axis, head, tail)
    if head:
        left = b.reduce("ReduceSum", b.slice(g, [0], [head], [axis]), [axis], keepdims=True)
        dx = _add_at_start(b, dx, axis, 0, left, 1)
    if tail:
        right = b.reduce("ReduceSum", b.slice(g, [-tail], [INT64_MAX], [axis]), [axis],
                         keepdims=True)
        dx = _add_at_end(b, dx, axis, 0, right, 1)
    return dx


def _fold_reflect(b: GraphBuilder, g: str, n: str, rank: int, axis: int, head: int,
                  tail: int) -> str:
    """Reflect padding copies x[head..1] before and x[n-2..n-1-tail] after the body."""
    dx = _middle(b, g, axis, head, tail)
    if head:
        left = b.op("Gather", b.slice(g, [0], [head], [axis]),
                    b.ints(list(range(head - 1, -1, -1))), axis=axis)
        dx = _add_at_start(b, dx, axis, 1, left, head)
    if tail:
        right = b.op("Gather", b.slice(g, [-tail], [INT64_MAX], [axis]),
                     b.ints(list(range(tail - 1, -1, -1))), axis=axis)
        dx = _add_at_end(b, dx, axis, 1, right, tail)
    return dx


def _fold_wrap(b: GraphBuilder, g: str, n: str, rank: int, axis: int, head: int,
               tail: int) -> str:
    """y[i] = x[(i - head) mod n]: shift g so that index 0 maps to x[0], zero-fill to a
    multiple of n, view as [-1, n] along the axis and sum the periods (any pad size)."""
    length = b.dim(g, axis)
    lead = b.op("Mod", b.op("Sub", n, b.op("Mod", b.ints([head]), n)), n)
    used = b.op("Add", lead, length)
    total = b.op("Add", used, b.op("Mod", b.op("Sub", n, b.op("Mod", used, n)), n))
    shifted = place(b, g, rank, axis, lead, total)
    target = [b.dims(shifted, 0, axis)] if axis else []
    target += [b.ints([-1]), n]
    if axis < rank - 1:
        target.append(b.dims(shifted, axis + 1, rank))
    periods = b.reshape(shifted, b.concat(target, 0))
    return b.reduce("ReduceSum", periods, [axis], keepdims=False)
