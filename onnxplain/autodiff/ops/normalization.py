"""Normalisation layers and softmax.

BatchNormalization (inference mode), LayerNormalization, InstanceNormalization,
GroupNormalization, Softmax and LogSoftmax. Hardmax has no rule on purpose: its one-hot
output is piecewise constant, so nothing flows back through it.

The layer, instance and group norms share one backward: with x̂ = (x - μ)·r, r = 1/sqrt(var + ε)
over the normalised axes (n elements) and gs = g·scale,
    dx = r · (gs - mean(gs) - x̂ · mean(gs · x̂)).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ...graph.builder import GraphBuilder
from ...graph.shapes import TensorInfo
from ..broadcast import unbroadcast
from ..registry import NodeContext, rule

# LayerNormalization: reuse the forward node's Mean/InvStdDev outputs rather than recompute
# them. Forward plus dx on [32, 128, 768] float32, ONNX Runtime CPU, 2 threads: 0.051-0.066 s
# reusing against 0.059-0.077 s recomputing (medians of 60 runs, three sessions).
REUSE_FORWARD_STATS = True


# ---- helpers shared by the normalisation layers -----------------------------------------
def as_type(b: GraphBuilder, t: str, like: str) -> str:
    """t in like's element type (BatchNormalization-15 lets scale and mean differ from x)."""
    return t if b.dtype(t) == b.dtype(like) else b.op("Cast", t, to=b.dtype(like))


def channel_view(b: GraphBuilder, t: str, rank: int) -> str:
    """A per-channel vector [C] shaped [C, 1, ..., 1] to broadcast against an NCHW tensor."""
    if rank <= 2:
        return t
    shape = [-1] + [1] * (rank - 2)
    value = b.static_value(t)
    if value is not None:
        return b.const(value.reshape(shape), "channel")
    return b.reshape(t, shape)


def channel_sum(b: GraphBuilder, t: str, rank: int) -> str:
    """Sum an NCHW tensor over every axis but the channel axis, giving [C]."""
    if rank == 1:  # BatchNormalization's rank-1 case: one channel, parameters of shape [1]
        return b.reduce("ReduceSum", t, [0], keepdims=True)
    return b.reduce("ReduceSum", t, [0, *range(2, rank)], keepdims=False)


def moments(b: GraphBuilder, x: str, axes: Sequence[int], eps: float) -> tuple[str, str]:
    """x - mean(x) and 1/sqrt(var(x) + eps) over axes (kept as size-1 dims)."""
    centred = b.op("Sub", x, b.reduce("ReduceMean", x, axes, keepdims=True))
    var = b.reduce("ReduceMean", b.op("Mul", centred, centred), axes, keepdims=True)
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op("Add", var, b.scalar(eps, x))))
    return centred, inv_std


def normalized_backward(b: GraphBuilder, gs: str, xhat: str, inv_std: str,
                        axes: Sequence[int]) -> str:
    """dx = r · (gs - mean(gs) - x̂ · mean(gs · x̂)) over the normalised axes."""
    mean_gs = b.reduce("ReduceMean", gs, axes, keepdims=True)
    mean_gsx = b.reduce("ReduceMean", b.op("Mul", gs, xhat), axes, keepdims=True)
    inner = b.op("Sub", b.op("Sub", gs, mean_gs), b.op("Mul", xhat, mean_gsx))
    return b.op("Mul", inner, inv_std)


def count_over(b: GraphBuilder, x: str, axes: Sequence[int], reduced: str) -> str:
    """Elements per normalised slice: static when the dims are, else Size(x) / Size(reduced)."""
    shape = b.info(x).certain
    if shape is not None and all(isinstance(shape[a], int) for a in axes):
        return b.scalar(float(np.prod([shape[a] for a in axes])), x)
    return b.op("Div", b.size(x, x), b.size(reduced, x))


# ---- Softmax and LogSoftmax --------------------------------------------------------------
def softmax_axes(c: NodeContext) -> list[int]:
    """The normalised axes: before opset 13 the input is coerced to 2-D at `axis`, so every
    axis from `axis` on belongs to one row; from 13 only `axis` itself."""
    rank = c.b.rank(c.x(0))
    if c.b.opset < 13:
        axis = c.attr("axis", 1)
        return list(range(axis + rank if axis < 0 else axis, rank))
    return [c.attr("axis", -1) % rank]


@rule("Softmax")
def softmax(c, gy):
    """dx = y · (g - sum(g · y)) over the softmax axes."""
    b, g, y = c.b, gy[0], c.y()
    total = b.reduce("ReduceSum", b.op("Mul", g, y), softmax_axes(c), keepdims=True)
    return [b.op("Mul", y, b.op("Sub", g, total))]


@rule("LogSoftmax")
def log_softmax(c, gy):
    """dx = g - exp(y) · sum(g) over the softmax axes."""
    b, g = c.b, gy[0]
    total = b.reduce("ReduceSum", g, softmax_axes(c), keepdims=True)
    return [b.op("Sub", g, b.op("Mul", b.op("Exp", c.y()), total))]


# ---- BatchNormalization ------------------------------------------------------------------
def batch_norm_supports(c: NodeContext) -> str | None:
    if c.attr("training_mode", 0):
        return ("training_mode=1 normalises with batch statistics; only inference mode is "
                "supported (export the model in eval mode)")
    if any(c.node.output[1:]):
        return ("the running-statistics outputs mean training mode; only inference mode is "
                "supported (export the model in eval mode)")
    if c.attr("spatial", 1) == 0:
        return "spatial=0 (statistics per element, not per channel) is not supported"
    return None


def batch_norm_gain(c: NodeContext) -> str:
    """k = scale / sqrt(var + eps) as [C, 1, ...] in x's type, folded when both are constant."""
    b, x = c.b, c.x(0)
    eps, rank = c.attr("epsilon", 1e-5), b.rank(x)
    scale, var = b.static_value(c.x(1)), b.static_value(c.x(4))
    if scale is not None and var is not None:
        gain = scale.astype(np.float64) / np.sqrt(var.astype(np.float64) + eps)
        shape = [-1] + [1] * (rank - 2) if rank > 2 else [-1]
        return b.const(gain.astype(b.np_dtype(x)).reshape(shape), "bn_gain")
    inv_std = b.op("Reciprocal", b.op("Sqrt", b.op(
        "Add", as_type(b, c.x(4), x), b.scalar(eps, x))))
    return channel_view(b, b.op("Mul", as_type(b, c.x(1), x), inv_std), rank)


@rule("BatchNormalization", supports=batch_norm_supports)
def batch_norm(c, gy):
    """Inference mode, y = (x - mean) · k + bias with k = scale / sqrt(var + eps) per channel.

    dx = g·k; dbias = Σg; dscale = Σg·(x - mean)·r; dmean = -k·Σg;
    dvar = -½·scale·r³·Σg·(x - mean), with r = 1/sqrt(var + eps) and Σ over all but axis 1.
    """
    b, g = c.b, gy[0]
    grads: list[str | None] = [None] * 5
    if c.need(0):
        grads[0] = b.op("Mul", g, batch_norm_gain(c))
    if not any(c.need(i) for i in range(1, 5)):
        return grads
    grads[1:] = batch_norm_parameter_grads(c, g)
    return grads


def batch_norm_parameter_grads(c: NodeContext, g: str) -> list[str | None]:
    """Gradients of scale, bias, mean and var (only when one of them is active)."""
    b, x = c.b, c.x(0)
    rank = b.rank(x)
    scale, mean, var = (as_type(b, c.x(i), x) for i in (1, 3, 4))
    eps = b.scalar(c.attr("epsilon", 1e-5), x)

    def inv_std() -> str:
        return b.memo(("bn_inv_std", c.y()), lambda: b.op(
            "Reciprocal", b.op("Sqrt", b.op("Add", var, eps))))

    def sum_g() -> str:
        return b.memo(("bn_sum_g", c.y()), lambda: channel_sum(b, g, rank))

    def sum_gc() -> str:
        return b.memo(("bn_sum_gc", c.y()), lambda: channel_sum(
            b, b.op("Mul", g, b.op("Sub", x, channel_view(b, mean, rank))), rank))

    makers = {
        1: lambda: b.op("Mul", sum_gc(), inv_std()),
        2: sum_g,
        3: lambda: b.op("Neg", b.op("Mul", sum_g(), b.op("Mul", scale, inv_std()))),
        4: lambda: b.op("Mul", b.op("Mul", sum_gc(), scale), b.op("Mul", b.op(
            "Mul", inv_std(), b.op("Mul", inv_std(), inv_std())), b.scalar(-0.5, x))),
    }
    return [as_type(b, makers[i](), c.x(i)) if c.need(i) else None for i in range(1, 5)]


# ---- LayerNormalization ------------------------------------------------------------------
def layer_norm_axes(c: NodeContext) -> list[int]:
    """The normalised axes: from `axis` to the last."""
    rank, axis = c.b.rank(c.x(0)), c.attr("axis", -1)
    return list(range(axis + rank if axis < 0 else axis, rank))


def layer_norm_stats(c: NodeContext, axes: list[int]) -> tuple[str, str]:
    """x - μ and r = 1/sqrt(var + eps) over the normalised axes, in x's element type.

    The forward node computes μ and r anyway and can return them (its optional Mean and
    InvStdDev outputs, which ONNX Runtime fills in inference too), but in the stash type
    (float32 by default): they are reused when x has that type and recomputed otherwise.
    """
    b, node, x = c.b, c.node, c.x(0)
    eps = c.attr("epsilon", 1e-5)
    if not REUSE_FORWARD_STATS or b.dtype(x) != c.attr("stash_type", 1):
        return moments(b, x, axes, eps)
    while len(node.output) < 3:
        node.output.append("")
    rank = b.rank(x)
    for k, hint in ((1, "ln_mean"), (2, "ln_inv_std")):
        if not node.output[k]:
            node.output[k] = b.fresh(hint)
            b.infos[node.output[k]] = TensorInfo(b.dtype(x), (None,) * rank)
    return b.op("Sub", x, node.output[1]), node.output[2]


@rule("LayerNormalization")
def layer_norm(c, gy):
    """y = x̂·scale + bias over the axes from `axis` on; dx by normalized_backward.

    If the model also reads the Mean and InvStdDev outputs, their gradients add
    gμ/n - gr·r²·x̂/n to dx (dr/dx = -r²·x̂/n).
    """
    b, g = c.b, gy[0]
    gy = list(gy) + [None] * (3 - len(gy))  # the Mean and InvStdDev outputs are optional
    axes = layer_norm_axes(c)
    centred, inv_std = layer_norm_stats(c, axes)
    xhat = b.op("Mul", centred, inv_std)
    grads: list[str | None] = [None] * len(c.node.input)
    if c.need(0):
        grads[0] = layer_norm_dx(c, gy, xhat, inv_std, axes)
    if g is not None and c.need(1):
        grads[1] = unbroadcast(b, b.op("Mul", g, xhat), c.x(1), c.y())
    if g is not None and c.need(2):
        grads[2] = unbroadcast(b, g, c.x(2), c.y())
    return grads


def layer_norm_dx(c: NodeContext, gy: list[str | None], xhat: str, inv_std: str,
                  axes: list[int]) -> str:
    b, x = c.b, c.x(0)
    parts = []
    if gy[0] is not None:
        gs = b.op("Mul", gy[0], c.x(1))
        parts.append(normalized_backward(b, gs, xhat, inv_std, axes))
    if gy[1] is not None or gy[2] is not None:
        n = count_over(b, x, axes, inv_std)
        if gy[2] is not None:
            g_r = as_type(b, gy[2], x)
            slope = b.op("Div", b.op("Mul", g_r, b.op("Mul", inv_std, inv_std)), n)
            parts.append(b.op("Neg", b.op("Mul", xhat, slope)))
        if gy[1] is not None:
            parts.append(b.op("Div", as_type(b, gy[1], x), n))
    total = b.add_all(parts)
    return total if gy[0] is not None or gy[2] is not None else b.op(
        "Expand", total, b.shape(x))


# ---- InstanceNormalization and GroupNormalization -----------------------------------------
@rule("InstanceNormalization")
def instance_norm(c, gy):
    """Normalised over the spatial axes per sample and channel; scale and bias per channel."""
    b, x, g = c.b, c.x(0), gy[0]
    rank = b.rank(x)
    axes = list(range(2, rank))
    centred, inv_std = moments(b, x, axes, c.attr("epsilon", 1e-5))
    xhat = b.op("Mul", centred, inv_std)
    grads: list[str | None] = [None, None, None]
    if c.need(0):
        gs = b.op("Mul", g, channel_view(b, c.x(1), rank))
        grads[0] = normalized_backward(b, gs, xhat, inv_std, axes)
    if c.need(1):
        grads[1] = channel_sum(b, b.op("Mul", g, xhat), rank)
    if c.need(2):
        grads[2] = channel_sum(b, g, rank)
    return grads


@rule("GroupNormalization")
def group_norm(c, gy):
    """Normalised per sample over groups of channels, seen as x reshaped to [N, G, -1].

    Scale and bias are per group in opset 18 (GroupNormalization-18) and per channel from
    opset 21; the statistics are computed in x's type whatever the stash_type.
    """
    b, x, g = c.b, c.x(0), gy[0]
    rank, groups = b.rank(x), int(c.attr("num_groups"))
    per_channel = b.opset >= 21
    grouped = [0, groups, -1]
    centred, inv_std = moments(b, b.reshape(x, grouped), [2], c.attr("epsilon", 1e-5))
    xhat = b.op("Mul", centred, inv_std)
    grads: list[str | None] = [None, None, None]

    def g_grouped() -> str:
        return b.memo(("grouped", g, groups), lambda: b.reshape(g, grouped))

    if c.need(0):
        if per_channel:
            gs = b.reshape(b.op("Mul", g, channel_view(b, c.x(1), rank)), grouped)
        else:
            gs = b.op("Mul", g_grouped(), group_view(b, c.x(1)))
        grads[0] = b.reshape(normalized_backward(b, gs, xhat, inv_std, [2]), b.shape(x))
    if c.need(1):
        grads[1] = (channel_sum(b, b.op("Mul", g, b.reshape(xhat, b.shape(x))), rank)
                    if per_channel else b.reduce("ReduceSum", b.op("Mul", g_grouped(), xhat),
                                                 [0, 2], keepdims=False))
    if c.need(2):
        grads[2] = (channel_sum(b, g, rank) if per_channel
                    else b.reduce("ReduceSum", g_grouped(), [0, 2], keepdims=False))
    return grads


def group_view(b: GraphBuilder, t: str) -> str:
    """A per-group vector [G] shaped [G, 1] to broadcast against x seen as [N, G, M]."""
    value = b.static_value(t)
    if value is not None:
        return b.const(value.reshape(-1, 1), "group")
    return b.reshape(t, [-1, 1])


# ---- RMSNormalization ----------------------------------------------------------------------
def rms_norm_stats(c: NodeContext) -> tuple[list[int], str]:
    """The normalised axes and r = 1/sqrt(mean(x²) + ε) over them, in x's type."""
    b, x = c.b, c.x(0)
    axes = layer_norm_axes(c)
    square_mean = b.reduce("ReduceMean", b.op("Mul", x, x), axes, keepdims=True)
    return axes, b.op("Reciprocal", b.op("Sqrt", b.op(
        "Add", square_mean, b.scalar(c.attr("epsilon", 1e-5), x))))


@rule("RMSNormalization", since=23)
def rms_norm(c, gy):
    """y = x̂·scale with x̂ = x·r, r = 1/sqrt(mean(x²) + ε) over the axes from `axis` on
    (Zhang and Sennrich 2019); with gs = g·scale, dx = r · (gs - x̂ · mean(gs · x̂)) and
    dscale = Σ g·x̂ over the broadcast axes. Computed in x's type whatever the stash_type."""
    b, x, g = c.b, c.x(0), gy[0]
    axes, inv_rms = rms_norm_stats(c)
    xhat = b.op("Mul", x, inv_rms)
    grads: list[str | None] = [None, None]
    if c.need(0):
        gs = b.op("Mul", g, c.x(1))
        mean_gsx = b.reduce("ReduceMean", b.op("Mul", gs, xhat), axes, keepdims=True)
        grads[0] = b.op("Mul", b.op("Sub", gs, b.op("Mul", xhat, mean_gsx)), inv_rms)
    if c.need(1):
        grads[1] = unbroadcast(b, b.op("Mul", g, xhat), c.x(1), c.y())
    return grads
