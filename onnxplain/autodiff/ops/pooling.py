"""Pools: MaxPool, AveragePool, their global forms, and LRN.

MaxPool's gradient goes to the element each window picked, which only the runtime knows
for ties, so the rule asks the forward node for its Indices output (flattened over
N*C*spatial, as ONNX Runtime and torch define them) and scatter-adds into zeros. The
average pools are linear: their adjoint is a transposed convolution with a ones kernel.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from ...graph.builder import GraphBuilder
from ...graph.shapes import TensorInfo
from ..registry import NodeContext, rule
from .conv import (
    Window,
    conv_adjoint,
    dynamic_window_reason,
    output_dims,
    resolve_pads,
    spatial,
    window,
)

INT64_MAX = np.iinfo(np.int64).max


# ---- MaxPool -----------------------------------------------------------------------------
def _classes(win: Window) -> list[int]:
    """Per axis, how many consecutive windows overlap: windows q apart are disjoint."""
    return [-(-span // s) for span, s in zip(win.spans, win.strides, strict=True)]


def _maxpool_supports(c: NodeContext) -> str | None:
    win = window(c, c.attr("kernel_shape"))
    if c.b.opset < 10 and max(_classes(win)) > 1 and spatial(c.b, c.y(0)) is None:
        return ("overlapping windows over dynamic spatial dims need opset 10 (opset 9 has no "
                "strided Slice and no scatter-add)")
    return None


@rule("MaxPool", supports=_maxpool_supports)
def max_pool(c, gy):
    """dX[i] = sum of dY over the windows whose maximum is X[i] (the runtime's Indices)."""
    b, g, x = c.b, gy[0], c.x(0)
    if g is None:
        return [None]
    indices = _indices(c)
    zeros = _flat_zeros(b, x)
    if b.opset >= 16:
        flat = b.op("ScatterElements", zeros, b.reshape(indices, [-1]), b.reshape(g, [-1]),
                    reduction="add")
    else:
        win = window(c, c.attr("kernel_shape"))
        flat = _scatter_add_by_classes(b, zeros, g, indices, win, spatial(b, c.y()))
    n_axes = b.rank(x) - 2
    if int(c.attr("storage_order", 0)) == 0:
        return [b.reshape(flat, b.shape(x))]
    # Column-major indices are the row-major indices of x with its spatial axes reversed.
    order = [0, 1, *range(n_axes + 1, 1, -1)]
    reversed_shape = b.op("Gather", b.shape(x), b.ints(order), axis=0)
    return [b.op("Transpose", b.reshape(flat, reversed_shape), perm=order)]


def _indices(c: NodeContext) -> str:
    """The forward node's Indices output, added to the node when it has none."""
    b, node = c.b, c.node
    if len(node.output) > 1 and node.output[1]:
        return node.output[1]
    name = b.fresh("MaxPool_indices")
    if len(node.output) > 1:
        node.output[1] = name
    else:
        node.output.append(name)
    b.infos[name] = TensorInfo(TensorProto.INT64, b.info(node.output[0]).shape)
    return name


def _flat_zeros(b: GraphBuilder, x: str) -> str:
    value = numpy_helper.from_array(np.zeros(1, dtype=b.np_dtype(x)))
    return b.op("ConstantOfShape", b.reshape(b.op("Size", x), [1]), value=value,
                out_rank=1)


def _scatter_add_by_classes(b: GraphBuilder, zeros: str, g: str, indices: str, win: Window,
                            out_dims: list[int] | None) -> str:
    """Scatter-add without ScatterElements' reduction (opset < 16), exactly.

    Output positions that agree modulo q (per axis, q = ceil(span / stride)) have disjoint
    windows, so within such a class every index is distinct and a plain scatter is exact.
    Each class adds what earlier classes wrote there (Gather) before overwriting.
    """
    classes = _classes(win)
    op = "ScatterElements" if b.opset >= 11 else "Scatter"
    total = zeros
    for first, offsets in enumerate(itertools.product(*[range(q) for q in classes])):
        picked_g = _every(b, g, offsets, classes, out_dims)
        picked_i = _every(b, indices, offsets, classes, out_dims)
        if picked_g is None:
            continue  # an empty class of a static shape
        flat_i, flat_g = b.reshape(picked_i, [-1]), b.reshape(picked_g, [-1])
        if first:
            flat_g = b.op("Add", flat_g, b.op("Gather", total, flat_i))
        total = b.op(op, total, flat_i, flat_g)
    return total


def _every(b: GraphBuilder, t: str, offsets: tuple[int, ...], steps: list[int],
           dims: list[int] | None) -> str | None:
    """t[:, :, o0::q0, o1::q1, ...] (None when the static spatial `dims` leave it empty)."""
    if all(q == 1 for q in steps):
        return t
    n_axes = len(steps)
    axes = list(range(2, 2 + n_axes))
    if b.opset >= 10:
        return b.slice(t, list(offsets), [INT64_MAX] * n_axes, axes, steps)
    # Opset 9 Slice has no steps: Gather the positions, which _maxpool_supports made static.
    assert dims is not None
    for axis, o, q, n in zip(axes, offsets, steps, dims, strict=True):
        if q == 1:
            continue
        if o >= n:
            return None
        t = b.op("Gather", t, b.ints(range(o, n, q)), axis=axis)
    return t


@rule("GlobalMaxPool")
def global_max_pool(c, gy):
    """The gradient goes to the maxima of each channel, split evenly between ties."""
    b, g, x = c.b, gy[0], c.x(0)
    # x >= max is x == max; Equal takes floats only from opset 11.
    mask = b.op("Cast", b.op("Not", b.op("Less", x, c.y())), to=b.dtype(x))
    count = b.reduce("ReduceSum", mask, list(range(2, b.rank(x))), keepdims=True)
    return [b.op("Mul", b.op("Div", g, count), mask)]


# ---- average pools -----------------------------------------------------------------------
@rule("GlobalAveragePool")
def global_average_pool(c, gy):
    """dX = Expand(dY / (number of spatial positions), Shape(X))."""
    b, g, x = c.b, gy[0], c.x(0)
    dims = spatial(b, x)
    scale = (b.scalar(1.0 / math.prod(dims), g) if dims is not None else
             b.op("Div", b.size(g, g), b.size(x, g)))
    return [b.op("Expand", b.op("Mul", g, scale), b.shape(x))]


def _avgpool_supports(c: NodeContext) -> str | None:
    return dynamic_window_reason(c, window(c, c.attr("kernel_shape")))


@rule("AveragePool", supports=_avgpool_supports)
def average_pool(c, gy):
    """Y[o] = sum of X over window o / D[o], so dX = ConvTranspose(dY / D, ones) per channel
    (at stride 1 an AveragePool with mirrored pads).

    D is the kernel size, or with count_include_pad=0 (or ceil_mode) a per-window count:
    1/D = AveragePool(ones) / (number of real positions), read from the runtime's own op.
    """
    b, g, x = c.b, gy[0], c.x(0)
    win = window(c, c.attr("kernel_shape"))
    ceil = bool(c.attr("ceil_mode", 0))
    pads = resolve_pads(b, x, win)
    inverse = _inverse_divisor(c, win, pads, ceil)
    size = float(math.prod(win.kernel))
    mirrored = _mirrored_pads(win, pads)
    if mirrored is not None:
        # Stride 1: the adjoint window sum is itself a window sum, which AveragePool (a mean,
        # hence the factor kernel size) runs about five times faster than ConvTranspose.
        if inverse is not None:
            g = b.op("Mul", g, b.op("Mul", inverse, b.scalar(size, g)))
        return [b.op("AveragePool", g, kernel_shape=list(win.kernel), pads=mirrored,
                     count_include_pad=1)]
    scaled = b.op("Mul", g, inverse if inverse is not None else b.scalar(1.0 / size, g))
    # One channel per (n, c) pair, so the kernel need not know C.
    per_channel = b.reshape(scaled, b.concat([b.ints([-1, 1]), b.dims(g, 2)], 0))
    dims = spatial(b, x)
    out = None
    if dims is not None and not isinstance(pads, str):
        out = output_dims(dims, win, pads, ceil)
    spread = conv_adjoint(b, per_channel, _ones_kernel(b, win, x), x, win, pads, 1, out)
    return [b.reshape(spread, b.shape(x))]


def _mirrored_pads(win: Window, pads) -> list[int] | None:
    """Pads of the stride-1 window sum that is the adjoint, where AveragePool can run it
    (no dilation, and pads below the kernel size as ONNX Runtime requires)."""
    if isinstance(pads, str) or not win.unit_strides or any(d != 1 for d in win.dilations):
        return None
    mirrored = [k - 1 - p for k, p in zip(win.kernel * 2, pads, strict=True)]
    return mirrored if min(mirrored) >= 0 else None


def _ones_kernel(b: GraphBuilder, win: Window, x: str) -> str:
    return b.const(np.ones((1, 1, *win.kernel), dtype=b.np_dtype(x)), "ones_kernel")


def _inverse_divisor(c: NodeContext, win: Window, pads, ceil: bool) -> str | None:
    """1/D as a [1, 1, *O] tensor, or None when every window divides by the kernel size."""
    b, x, y = c.b, c.x(0), c.y()
    include_pad = bool(c.attr("count_include_pad", 0))
    no_pads = not isinstance(pads, str) and not any(pads)
    if not ceil and (include_pad or no_pads):
        return None
    plane = _ones_plane(b, x)
    count = _window_count(b, plane, _ones_kernel(b, win, x), win, pads, ceil, y)
    if not include_pad:
        return b.op("Reciprocal", count)
    attrs = {a.name: helper.get_attribute_value(a) for a in c.node.attribute}
    return b.op("Div", b.op("AveragePool", plane, **attrs), count)


def _ones_plane(b: GraphBuilder, x: str) -> str:
    """Ones of shape [1, 1, *spatial(x)]."""
    value = numpy_helper.from_array(np.ones(1, dtype=b.np_dtype(x)))
    return b.op("ConstantOfShape", b.concat([b.ints([1, 1]), b.dims(x, 2)], 0), value=value,
                out_rank=b.rank(x))


def _window_count(b: GraphBuilder, plane: str, ones: str, win: Window, pads, ceil: bool,
                  y: str) -> str:
    """How many real (unpadded) positions each window covers: a ones Conv over ones."""
    attrs = {"strides": list(win.strides), "dilations": list(win.dilations)}
    if isinstance(pads, str):
        return b.op("Conv", plane, ones, auto_pad=win.auto_pad, **attrs)
    n_axes = len(win.kernel)
    if not ceil:
        return b.op("Conv", plane, ones, pads=list(pads), **attrs)
    # Conv has no ceil_mode: pad the end by stride - 1 more, then keep Y's windows.
    ends = [p + s - 1 for p, s in zip(pads[n_axes:], win.strides, strict=True)]
    count = b.op("Conv", plane, ones, pads=list(pads[:n_axes]) + ends, **attrs)
    return b.slice(count, [0] * n_axes, b.dims(y, 2), list(range(2, 2 + n_axes)))


# ---- LRN ---------------------------------------------------------------------------------
@rule("LRN")
def lrn(c, gy):
    """y = x / s^beta with s = bias + alpha/size * (sum of x^2 over a window of channels).

    dx = g s^-beta - (2 alpha beta / size) x * W^T(g y / s), where W^T sums over the mirrored
    window (they differ for even sizes).
    """
    b, g, x, y = c.b, gy[0], c.x(0), c.y()
    size = int(c.attr("size"))
    alpha, beta = float(c.attr("alpha", 1e-4)), float(c.attr("beta", 0.75))
    bias = float(c.attr("bias", 1.0))
    before = (size - 1) // 2
    after = size - 1 - before
    window_sum = _channel_window_sum(b, b.op("Mul", x, x), size, before, after)
    s = b.op("Add", b.scalar(bias, x), b.op("Mul", window_sum, b.scalar(alpha / size, x)))
    direct = b.op("Mul", g, b.op("Pow", s, b.scalar(-beta, x)))
    spread = _channel_window_sum(b, b.op("Div", b.op("Mul", g, y), s), size, after, before)
    cross = b.op("Mul", b.op("Mul", x, spread), b.scalar(2.0 * alpha * beta / size, x))
    return [b.op("Sub", direct, cross)]


def _channel_window_sum(b: GraphBuilder, t: str, size: int, before: int, after: int) -> str:
    """out[:, c] = sum of t[:, c - before .. c + after] (clipped), as a Conv over [N, 1, C, P]."""
    column = b.reshape(t, b.concat([b.dim(t, 0), b.ints([1]), b.dim(t, 1), b.ints([-1])], 0))
    ones = b.const(np.ones((1, 1, size, 1), dtype=b.np_dtype(t)), "ones_kernel")
    summed = b.op("Conv", column, ones, pads=[before, 0, after, 0])
    return b.reshape(summed, b.shape(t))
