"""Indexing ops: gathers scatter-add their gradient back, scatters gather it.

Repeated indices must add up. From opset 16 ScatterElements/ScatterND do that with
reduction='add'; before, the scatter-add is a product with a one-hot matrix built from
Equal(index, iota), which is exact too (and costs K x n per gathered row).
"""

from __future__ import annotations

import numpy as np

from ...graph.builder import GraphBuilder
from ..registry import NodeContext, rule
from .shape import as_int64, contract_axis, iota, static_dim, with_dim, zeros

Grads = list[str | None]


def _wrap_negative(b: GraphBuilder, idx: str, n: str) -> str:
    """Negative indices count from the end: idx + n where idx < 0 (n broadcasts)."""
    idx = as_int64(b, idx)
    return b.where(b.op("Less", idx, b.ints([0])), b.op("Add", idx, n), idx)


# ---- Gather -----------------------------------------------------------------------------
@rule("Gather")
def gather(c: NodeContext, gy) -> Grads:
    """dx = zeros(x) with g added at the gathered positions along the axis."""
    b, data = c.b, c.x(0)
    if not c.need(0):
        return [None, None]
    rank = b.rank(data)
    axis = int(c.attr("axis", 0)) % rank
    n = b.dim(data, axis)
    idx = b.reshape(_wrap_negative(b, c.x(1), n), [-1])
    # g with all index dims flattened into one axis: data's shape with K at `axis`.
    g = b.reshape(gy[0], with_dim(b, data, rank, axis, b.ints([-1])))
    if b.opset >= 16 and not _one_hot_is_cheap(b, c.x(1), data, axis):
        return [_scatter_add_axis(b, g, idx, data, rank, axis), None]
    # [n, K] one-hot: dx[.., j, ..] = sum_k g[.., k, ..] * (idx[k] == j)
    hits = b.op("Equal", b.unsqueeze(iota(b, n), [1]), idx)
    # In float16 ONNX Runtime 1.31 crashes building a session with MatMul(constant one-hot,
    # Transpose(g)): the contraction runs in float32 (as ORT's CPU MatMul does anyway).
    return [b.in_float32(lambda wide: contract_axis(
        b, wide, b.op("Cast", hits, to=b.dtype(wide)), rank, axis), g), None]


# Below this many gathered indices or rows, the one-hot product (one batched MatMul) beats
# ScatterElements on ONNX Runtime CPU (CLS pooling: 0.5 ms against 3 ms on 32x128x768).
ONE_HOT_LIMIT = 256


def _one_hot_is_cheap(b: GraphBuilder, indices: str, data: str, axis: int) -> bool:
    shape = getattr(b.info(indices), "certain", b.info(indices).shape)
    count = int(np.prod(shape)) if shape is not None and all(
        isinstance(d, int) for d in shape) else None
    rows = static_dim(b, data, axis)
    return min(v for v in (count, rows, ONE_HOT_LIMIT + 1) if v is not None) <= ONE_HOT_LIMIT


def _scatter_add_axis(b: GraphBuilder, g: str, idx: str, data: str, rank: int,
                      axis: int) -> str:
    """Scatter-add g (data's shape with K at `axis`) into zeros(data) at idx along the axis."""
    if axis == 0:
        # Row gathers (embeddings): ScatterND adds whole rows without expanding the indices.
        return b.op("ScatterND", b.zeros_like(data), b.unsqueeze(idx, [1]), g,
                    reduction="add")
    shape = [1] * rank
    shape[axis] = -1
    where = b.op("Expand", b.reshape(idx, shape), b.shape(g))
    return b.op("ScatterElements", b.zeros_like(data), where, g, axis=axis, reduction="add")


# ---- GatherElements ---------------------------------------------------------------------
@rule("GatherElements")
def gather_elements(c: NodeContext, gy) -> Grads:
    """y[p] = x[p with p[axis] -> idx[p]]: dx scatter-adds g at those positions."""
    b, data, g = c.b, c.x(0), gy[0]
    if not c.need(0):
        return [None, None]
    rank = b.rank(data)
    axis = int(c.attr("axis", 0)) % rank
    n = b.dim(data, axis)
    idx = _wrap_negative(b, c.x(1), n)
    if b.opset >= 16:
        return [b.op("ScatterElements", b.zeros_like(data), idx, g, axis=axis,
                     reduction="add"), None]
    return [_gather_elements_one_hot(c, g, idx, n, rank, axis), None]


def _gather_elements_one_hot(c: NodeContext, g: str, idx: str, n: str, rank: int,
                             axis: int) -> str:
    b, data = c.b, c.x(0)
    dx = _scatter_add_one_hot(b, g, idx, n, rank, axis)
    if all(static_dim(b, c.x(1), a) is not None
           and static_dim(b, c.x(1), a) == static_dim(b, data, a)
           for a in range(rank) if a != axis):
        return dx
    # The indices may be smaller than the data along the other axes: zero-fill the rest.
    grow = b.op("Sub", b.shape(data), b.shape(dx))
    return b.op("Pad", dx, b.concat([b.ints([0] * rank), grow], 0))


def _scatter_add_one_hot(b: GraphBuilder, g: str, idx: str, n: str, rank: int,
                         axis: int) -> str:
    """dx[.., j] = sum_p g[.., p] * (idx[.., p] == j) along `axis`, one row per position of
    the other axes (their extent is that of idx)."""
    perm = [a for a in range(rank) if a != axis] + [axis]
    back = [perm.index(a) for a in range(rank)]
    moved_g = b.op("Transpose", g, perm=perm) if axis != rank - 1 else g
    moved_idx = b.op("Transpose", idx, perm=perm) if axis != rank - 1 else idx
    hits = b.op("Equal", b.unsqueeze(moved_idx, [rank]), iota(b, n))
    rows = b.op("MatMul", b.unsqueeze(moved_g, [rank - 1]), b.op("Cast", hits, to=b.dtype(g)))
    dx = b.squeeze(rows, [rank - 1])
    return b.op("Transpose", dx, perm=back) if axis != rank - 1 else dx


# ---- GatherND ---------------------------------------------------------------------------
@rule("GatherND")
def gather_nd(c: NodeContext, gy) -> Grads:
    """y[b, m] = x[b, idx[b, m]] (a slice per index tuple): dx scatter-adds g back."""
    b, data, g = c.b, c.x(0), gy[0]
    if not c.need(0):
        return [None, None]
    batch = int(c.attr("batch_dims", 0))
    rank_idx = b.rank(c.x(1))
    depth = rank_idx - 1 + b.rank(data) - batch - b.rank(c.y())
    idx = _wrap_negative(b, c.x(1), b.dims(data, batch, batch + depth))
    if b.opset >= 16:
        return [_gather_nd_scatter(b, g, idx, data, batch, rank_idx, b.rank(c.y())), None]
    return [_gather_nd_one_hot(b, g, idx, data, batch, depth, rank_idx), None]


def _prod(b: GraphBuilder, dims: str) -> str:
    """The product of a 1-D int64 shape slice, as a one-element tensor."""
    return b.reduce("ReduceProd", dims, [0], keepdims=True)


def _gather_nd_scatter(b: GraphBuilder, g: str, idx: str, data: str, batch: int,
                       rank_idx: int, rank_g: int) -> str:
    if batch == 0:
        return b.op("ScatterND", b.zeros_like(data), idx, g, reduction="add")
    # ScatterND has no batch_dims: flatten the batch dims and prepend the batch number.
    rank = b.rank(data)
    count = _prod(b, b.dims(data, 0, batch))
    flat_rank = rank_idx - batch + 1
    idx = b.reshape(idx, b.concat([count, b.dims(idx, batch, rank_idx)], 0))
    number = b.reshape(iota(b, count), [-1] + [1] * (flat_rank - 1))
    lead = b.op("Expand", number, b.concat([b.dims(idx, 0, flat_rank - 1), b.ints([1])], 0))
    full_idx = b.op("Concat", lead, idx, axis=flat_rank - 1)
    g = b.reshape(g, b.concat([count, b.dims(g, batch, rank_g)], 0))
    target = b.concat([count, b.dims(data, batch, rank)], 0)
    dx = b.op("ScatterND", zeros(b, target, g), full_idx, g, reduction="add")
    return b.reshape(dx, b.shape(data))


def _gather_nd_one_hot(b: GraphBuilder, g: str, idx: str, data: str, batch: int,
                       depth: int, rank_idx: int) -> str:
    """Linearise each index tuple over the indexed dims, then a batched one-hot product."""
    rank = b.rank(data)
    strides = [_prod(b, b.dims(data, batch + k + 1, batch + depth)) for k in range(depth - 1)]
    strides.append(b.ints([1]))
    linear = b.reduce("ReduceSum", b.op("Mul", idx, b.concat(strides, 0)), [rank_idx - 1],
                      keepdims=False)
    count = _prod(b, b.dims(data, 0, batch)) if batch else b.ints([1])
    rows = _prod(b, b.dims(data, batch, batch + depth))
    rest = _prod(b, b.dims(data, batch + depth, rank)) if batch + depth < rank else b.ints([1])
    linear = b.reshape(linear, b.concat([count, b.ints([-1, 1])], 0))
    hits = b.op("Cast", b.op("Equal", linear, iota(b, rows)), to=b.dtype(g))  # [B, M, rows]
    g3 = b.reshape(g, b.concat([count, b.ints([-1]), rest], 0))  # [B, M, rest]
    dx = b.op("MatMul", b.op("Transpose", hits, perm=[0, 2, 1]), g3)
    return b.reshape(dx, b.shape(data))


# ---- TopK, CumSum, Trilu ----------------------------------------------------------------
@rule("TopK")
def topk(c: NodeContext, gy) -> Grads:
    """Values go back to where they came from (the indices are unique along the axis)."""
    b, x, g = c.b, c.x(0), gy[0]
    if g is None:
        return [None]
    rank = b.rank(x)
    axis = int(c.attr("axis", -1)) % rank
    if b.opset >= 11:
        return [b.op("ScatterElements", b.zeros_like(x), c.y(1), g, axis=axis)]
    return [_scatter_add_one_hot(b, g, c.y(1), b.dim(x, axis), rank, axis)]


@rule("CumSum")
def cumsum(c: NodeContext, gy) -> Grads:
    """The transpose of a prefix sum is the suffix sum, with the same exclusivity."""
    reverse = 1 - int(c.attr("reverse", 0))
    return [c.b.op("CumSum", gy[0], c.x(1), exclusive=int(c.attr("exclusive", 0)),
                   reverse=reverse)]


@rule("Trilu")
def trilu(c: NodeContext, gy) -> Grads:
    """Trilu keeps a fixed triangle: the gradient is the same triangle of g."""
    inputs = [gy[0]] + ([c.x(1)] if c.x(1) else [])
    return [c.b.op("Trilu", *inputs, upper=int(c.attr("upper", 1)))]


# ---- scatters ---------------------------------------------------------------------------
def _scatter_supported(c: NodeContext) -> str | None:
    reduction = c.str_attr("reduction", "none")
    if reduction not in ("none", "add"):
        return f"{c.node.op_type} with reduction='{reduction}' is not supported"
    if c.node.op_type == "Scatter" and c.need(2) and c.b.opset < 11:
        return "Scatter w.r.t. its updates needs GatherElements (opset 11)"
    return None


@rule("ScatterElements", "ScatterND", "Scatter", supports=_scatter_supported)
def scatter(c: NodeContext, gy) -> Grads:
    """Overwritten positions of data get no gradient; each update gets g where it landed.

    With reduction='add' data passes g through unchanged. With reduction='none' and
    repeated indices the forward result is undefined by the spec; this assumes none repeat.
    """
    b, g, idx = c.b, gy[0], c.x(1)
    nd = c.node.op_type == "ScatterND"
    axis_attr = {} if nd else {"axis": int(c.attr("axis", 0))}
    grads: Grads = [None, None, None]
    if c.need(0):
        if c.str_attr("reduction", "none") == "add":
            grads[0] = g
        else:
            grads[0] = b.op(c.node.op_type, g, idx, b.zeros_like(c.x(2)), **axis_attr)
    if c.need(2):
        grads[2] = b.op("GatherND" if nd else "GatherElements", g, idx, **axis_attr)
    return grads
