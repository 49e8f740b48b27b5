"""Convolutions: Conv and ConvTranspose, and the sliding-window geometry the pools share.

A convolution over an input padded by (begin, end) is a linear map; its adjoint is the
transposed convolution with the same strides, dilations and group, cropped to the input.
Output lengths depend on the input length modulo the stride, so the adjoint is sized with a
static output_padding when the spatial dims are known and with a Slice at run time otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ...graph.builder import GraphBuilder
from ..registry import NodeContext, rule

Pads = list[int] | str  # begins then ends, static or a 1-D int64 tensor computed at run time


@dataclass(frozen=True)
class Window:
    """Sliding-window attributes of a Conv, ConvTranspose or pool, one entry per spatial axis."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pads: tuple[int, ...]  # begins then ends as written (zeros unless auto_pad is NOTSET)
    auto_pad: str

    @property
    def spans(self) -> tuple[int, ...]:
        """Extent of a dilated kernel along each axis."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations, strict=True))

    @property
    def same(self) -> bool:
        return self.auto_pad in ("SAME_UPPER", "SAME_LOWER")

    @property
    def unit_strides(self) -> bool:
        return all(s == 1 for s in self.strides)


def window(c: NodeContext, kernel: Sequence[int]) -> Window:
    n = len(kernel)
    auto_pad = c.str_attr("auto_pad", "NOTSET")
    pads = c.attr("pads") if auto_pad == "NOTSET" else None
    return Window(tuple(kernel), tuple(c.attr("strides") or [1] * n),
                  tuple(c.attr("dilations") or [1] * n), tuple(pads or [0] * 2 * n), auto_pad)


def spatial(b: GraphBuilder, x: str) -> list[int] | None:
    """The spatial dims (axes 2..) of x when all are static, else None."""
    shape = b.info(x).certain
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return list(shape[2:])


def resolve_pads(b: GraphBuilder, x: str, win: Window) -> Pads:
    """The pads the forward op applied to x; auto_pad SAME_* pads depend on x's length."""
    if not win.same:
        return list(win.pads)
    shape = b.info(x).certain
    dims = shape[2:] if shape is not None else [None] * len(win.kernel)
    # At stride 1 the SAME padding is span - 1 whatever the length, so 0 stands in.
    known = [d if isinstance(d, int) else 0 if s == 1 else None
             for d, s in zip(dims, win.strides, strict=True)]
    if all(d is not None for d in known):
        return _same_pads(known, win)
    return _same_pads_at_run_time(b, x, win)


def _same_pads(dims: Sequence[int], win: Window) -> list[int]:
    """ONNX Runtime's SAME padding: output ceil(n/s), the odd pad at the end (UPPER) or begin."""
    heads, tails = [], []
    for n, s, span in zip(dims, win.strides, win.spans, strict=True):
        total = max(0, (-(-n // s) - 1) * s + span - n)
        head = total // 2 if win.auto_pad == "SAME_UPPER" else total - total // 2
        heads.append(head)
        tails.append(total - head)
    return heads + tails


def _same_pads_at_run_time(b: GraphBuilder, x: str, win: Window) -> str:
    n = b.dims(x, 2)
    strides = b.ints(win.strides)
    out = b.op("Div", b.op("Add", n, b.ints([s - 1 for s in win.strides])), strides)
    total = b.op("Sub", b.op("Add", b.op("Mul", b.op("Sub", out, b.ints([1])), strides),
                             b.ints(win.spans)), n)
    if any(span < s for span, s in zip(win.spans, win.strides, strict=True)):
        zero = b.ints([0])
        total = b.where(b.op("Less", total, zero), zero, total)
    half = b.op("Div", total, b.ints([2]))
    head = half if win.auto_pad == "SAME_UPPER" else b.op("Sub", total, half)
    return b.concat([head, b.op("Sub", total, head)], 0)


def output_dims(dims: Sequence[int], win: Window, pads: Sequence[int], ceil: bool) -> list[int]:
    """Output lengths of the window op, with ONNX Runtime's ceil_mode rule (a last window
    that would start inside the end padding is dropped)."""
    n_axes = len(dims)
    out = []
    for i, (n, s, span) in enumerate(zip(dims, win.strides, win.spans, strict=True)):
        room = n + pads[i] + pads[i + n_axes] - span
        o = (-(-room // s) if ceil else room // s) + 1
        if ceil and (o - 1) * s >= n + pads[i]:
            o -= 1
        out.append(o)
    return out


def conv_adjoint(b: GraphBuilder, g: str, w: str, x: str, win: Window, pads: Pads,
                 group: int = 1, out_dims: Sequence[int] | None = None) -> str:
    """ConvTranspose(g, w) sized to the spatial dims of x: the adjoint of the window op that
    read x (padded by `pads`) and wrote g. `out_dims` are g's spatial dims when static."""
    n_axes = len(win.kernel)
    attrs = {"strides": list(win.strides), "dilations": list(win.dilations),
             "group": group if group != 1 else None}
    dims = spatial(b, x)
    static_pads = not isinstance(pads, str)
    if static_pads and win.unit_strides:
        # Stride 1: the transposed convolution with the same pads has x's length exactly.
        return b.op("ConvTranspose", g, w, pads=list(pads), **attrs)
    if static_pads and dims is not None and out_dims is not None:
        heads = list(pads[:n_axes])
        extra = [(o - 1) * s + span - head - n for o, s, span, head, n in
                 zip(out_dims, win.strides, win.spans, heads, dims, strict=True)]
        output_padding = [max(-e, 0) for e in extra]
        return b.op("ConvTranspose", g, w, pads=heads + [max(e, 0) for e in extra],
                    output_padding=output_padding if any(output_padding) else None, **attrs)
    # Lengths known at run time only: the largest legal output_padding (stride - 1) makes the
    # result at least as long as the padded input; a Slice then keeps x's positions.
    heads = [0] * n_axes if isinstance(pads, str) else list(pads[:n_axes])
    full = b.op("ConvTranspose", g, w, pads=heads + [0] * n_axes,
                output_padding=[s - 1 for s in win.strides], **attrs)
    axes = list(range(2, 2 + n_axes))
    length = b.dims(x, 2)
    if isinstance(pads, str):
        start = b.slice(pads, [0], [n_axes], [0])
        return b.slice(full, start, b.op("Add", start, length), axes)
    return b.slice(full, [0] * n_axes, length, axes)


def correlate(b: GraphBuilder, a: str, other: str, pads: Pads, win: Window, group: int) -> str:
    """R[q, p, k] = sum over n, o of a_padded[n, p, o*stride + k*dilation] * other[n, q, o],
    pairing channels of the same group; shape [Q, P / group, *kernel].

    This is dW of a Conv (a = X, other = dY) and of a ConvTranspose (a = dY, other = X). It
    runs as one Conv with the batch as the reduced channel axis: strides and dilations swap
    roles, and the groups move into the channel axis so one grouped Conv serves them all.
    """
    n_axes = len(win.kernel)
    spatial_perm = list(range(3, 3 + n_axes))
    if isinstance(pads, str):
        zeros = b.ints([0, 0])
        a = b.pad(a, b.concat([zeros, b.slice(pads, [0], [n_axes], [0]), zeros,
                               b.slice(pads, [n_axes], [2 * n_axes], [0])], 0))
        pads = [0] * 2 * n_axes
    if group == 1:
        swap = [1, 0] + list(range(2, 2 + n_axes))
        a_t = b.op("Transpose", a, perm=swap)
        other_t = b.op("Transpose", other, perm=swap)
    else:
        a_t = _groups_to_channels(b, a, group, [2, 1, 0] + spatial_perm, b.ints([0, -1]), 0)
        other_t = _groups_to_channels(b, other, group, [1, 2, 0] + spatial_perm,
                                      b.ints([-1]), 1)
    full = b.op("Conv", a_t, other_t, strides=list(win.dilations), dilations=list(win.strides),
                pads=list(pads) if any(pads) else None, group=group if group != 1 else None)
    kernel = b.slice(full, [0] * n_axes, list(win.kernel), list(range(2, 2 + n_axes)))
    return b.op("Transpose", kernel, perm=[1, 0] + list(range(2, 2 + n_axes)))


def _groups_to_channels(b: GraphBuilder, t: str, group: int, perm: list[int], lead: str,
                        keep_batch: int) -> str:
    """[N, G*K, *S] -> [N, G, K, *S] -> Transpose(perm) -> merge the first two or last two of
    the three leading axes ([K, G*N, *S] or [G*K, N, *S])."""
    split = b.reshape(t, b.concat([b.dim(t, 0), b.ints([group, -1]), b.dims(t, 2)], 0))
    moved = b.op("Transpose", split, perm=perm)
    middle = [b.dim(t, 0)] if keep_batch else []
    return b.reshape(moved, b.concat([lead, *middle, b.dims(t, 2)], 0))


def _constant_shape(b: GraphBuilder, w: str) -> tuple[int, ...] | None:
    """The shape of weights that do not change between runs: an initializer, or a tensor
    computed from constants in the graph (b.folded, e.g. LRP's modified weights) where
    Slice can flip it (opset 10). None otherwise."""
    known = b.static_shape(w)  # the shape only: reading the values would copy the weights
    if known is not None:
        return known
    shape = b.info(w).shape
    if w not in b.folded or b.opset < 10 or shape is None:
        return None
    return tuple(shape) if all(isinstance(d, int) for d in shape) else None


def _flipped_weights(b: GraphBuilder, w: str, shape: tuple[int, ...], group: int) -> str:
    """The constant weights `w` regrouped and flipped for the stride-1 adjoint Conv, computed
    in the graph from `w` itself (ONNX Runtime folds it once when the session starts), so no
    second copy of the weights is stored in the program or in an exported file. Opset 9 has
    no Slice with steps: there the flipped copy is stored."""
    if b.opset < 10:
        return b.const(_flipped(b.static_value(w), group), "flipped_weights")
    m, cg, *kernel = shape
    spatial_axes = list(range(2, len(shape)))
    swapped = b.op("Transpose", w, perm=[1, 0, *spatial_axes])
    if group != 1:
        split = b.reshape(w, [group, m // group, cg, *kernel])
        moved = b.op("Transpose", split, perm=[0, 2, 1, *range(3, len(shape) + 1)])
        swapped = b.reshape(moved, [group * cg, m // group, *kernel])
    ends = [-(2 ** 63)] * len(kernel)
    return b.slice(swapped, [-1] * len(kernel), ends, spatial_axes, [-1] * len(kernel))


def _flipped(weights: np.ndarray, group: int) -> np.ndarray:
    """Conv weights [M, C/g, *k] -> [C, M/g, *k] flipped in space: a stride-1 Conv with them
    is the transposed convolution."""
    m, cg = weights.shape[:2]
    kernel = weights.shape[2:]
    swapped = weights.reshape(group, m // group, cg, *kernel).swapaxes(1, 2)
    swapped = swapped.reshape(group * cg, m // group, *kernel)
    return np.ascontiguousarray(np.flip(swapped, axis=tuple(range(2, swapped.ndim))))


def conv_kernel(c: NodeContext) -> list[int] | None:
    kernel = c.attr("kernel_shape")
    if kernel:
        return list(kernel)
    shape = c.b.info(c.x(1)).shape
    if shape is None or not all(isinstance(d, int) for d in shape[2:]):
        return None
    return list(shape[2:])


def _bias_grad(b: GraphBuilder, g: str, x: str) -> str:
    """dY summed over all axes but the channels; dY's rank is X's (a gradient's own rank
    may be unrecorded)."""
    return b.reduce("ReduceSum", g, [0, *range(2, b.rank(x))], keepdims=False)


def dynamic_window_reason(c: NodeContext, win: Window) -> str | None:
    """Why strided windows over dynamic spatial dims cannot be handled at this opset."""
    b = c.b
    if win.unit_strides or spatial(b, c.x(0)) is not None:
        return None
    if win.same and b.opset < 11:
        return f"auto_pad {win.auto_pad} over dynamic spatial dims needs opset 11"
    if b.opset < 10:
        return "a strided window over dynamic spatial dims needs opset 10 (Slice with inputs)"
    return None


def _conv_supports(c: NodeContext) -> str | None:
    kernel = conv_kernel(c)
    if kernel is None:
        return "the kernel shape is unknown (no kernel_shape and W's shape is not static)"
    return dynamic_window_reason(c, window(c, kernel))


@rule("Conv", supports=_conv_supports)
def conv(c, gy):
    """Y = X * W + B (cross-correlation per group). dX = ConvTranspose(dY, W) cropped to X,
    or at stride 1 with constant W a Conv with W flipped (as fast as the forward);
    dW[m, c, k] = sum over n, o of X_pad[n, c, o*s + k*d] dY[n, m, o]; dB = sum of dY over
    all axes but 1."""
    b, g, x, w = c.b, gy[0], c.x(0), c.x(1)
    if g is None:
        return [None, None, None]
    win = window(c, conv_kernel(c))
    group = int(c.attr("group", 1))
    pads = resolve_pads(b, x, win)
    dx = _conv_input_grad(b, g, x, w, win, pads, group) if c.need(0) else None
    dw = correlate(b, x, g, pads, win, group) if c.need(1) else None
    db = _bias_grad(b, g, x) if c.need(2) else None
    return [dx, dw, db]


def _conv_input_grad(b: GraphBuilder, g: str, x: str, w: str, win: Window, pads: Pads,
                     group: int) -> str:
    shape = _constant_shape(b, w)
    if shape is not None and win.unit_strides and not isinstance(pads, str):
        full = [span - 1 - p for span, p in zip(win.spans * 2, pads, strict=True)]
        if min(full) >= 0:
            return b.op("Conv", g, _flipped_weights(b, w, shape, group),
                        pads=full, dilations=list(win.dilations),
                        group=group if group != 1 else None)
    dims = spatial(b, x)
    out = None if dims is None or isinstance(pads, str) else output_dims(dims, win, pads, False)
    return conv_adjoint(b, g, w, x, win, pads, group, out)



def _transpose_pads(c: NodeContext, win: Window) -> list[int] | str:
    """ConvTranspose's pads as ONNX Runtime resolves them, or the reason they cannot be."""
    n_axes = len(win.kernel)
    extra = list(c.attr("output_padding") or [0] * n_axes)
    shape = c.attr("output_shape")
    if shape is None and not win.same:
        return list(win.pads)
    if shape is not None and any(win.pads):
        return "output_shape together with explicit pads (runtimes disagree on the result)"
    if shape is not None and len(shape) != n_axes:
        return f"output_shape has {len(shape)} entries for {n_axes} spatial axes"
    dims = spatial(c.b, c.x(0))
    if shape is not None and dims is None:
        return "output_shape with dynamic input spatial dims"
    totals = []
    for i, (s, span, e) in enumerate(zip(win.strides, win.spans, extra, strict=True)):
        # SAME without output_shape makes the output n * s long.
        total = s * (dims[i] - 1) + e + span - shape[i] if shape is not None else e + span - s
        if total < 0:
            return "an output larger than the full transposed convolution (negative padding)"
        totals.append(total)
    heads = [t // 2 if win.auto_pad == "SAME_UPPER" else t - t // 2 for t in totals]
    return heads + [t - h for t, h in zip(totals, heads, strict=True)]


def _convt_supports(c: NodeContext) -> str | None:
    kernel = conv_kernel(c)
    if kernel is None:
        return "the kernel shape is unknown (no kernel_shape and W's shape is not static)"
    win = window(c, kernel)
    pads = _transpose_pads(c, win)
    if isinstance(pads, str):
        return pads
    extra = c.attr("output_padding") or [0] * len(kernel)
    if any(e >= s for e, s in zip(extra, win.strides, strict=True)):
        return "output_padding not below the stride (ONNX Runtime rejects such shapes)"
    return None


@rule("ConvTranspose", supports=_convt_supports)
def conv_transpose(c, gy):
    """Y = ConvTranspose(X, W) + B is the adjoint of a Conv, so dX = Conv(dY, W) with the
    same strides, pads, dilations and group; dW[c, m, k] = sum over n, i of
    X[n, c, i] dY_pad[n, m, i*s + k*d]; dB = sum of dY over all axes but 1."""
    b, g, x, w = c.b, gy[0], c.x(0), c.x(1)
    if g is None:
        return [None, None, None]
    win = window(c, conv_kernel(c))
    group = int(c.attr("group", 1))
    pads = _transpose_pads(c, win)
    assert not isinstance(pads, str)  # _convt_supports rejected the node otherwise
    dx = None
    if c.need(0):
        dx = b.op("Conv", g, w, strides=list(win.strides), dilations=list(win.dilations),
                  pads=pads, group=group if group != 1 else None)
    dw = correlate(b, g, x, pads, win, group) if c.need(1) else None
    db = _bias_grad(b, g, x) if c.need(2) else None
    return [dx, dw, db]
