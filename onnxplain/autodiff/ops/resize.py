"""Resize and Upsample: linear in X for fixed scales or sizes, and separable per axis.

For each resized axis a, Y = X x_a M_a with M_a[i, o] the weight of input i in output o, so
dX = g x_a M_a^T. M_a is built in-graph by resizing an identity basis with the same op and
attributes: a [D, 1, 1, D] tensor (D basis vectors on axis 0, resized along axis 3) with
scale or size only on the last axis. Four dims with the outer two unscaled is the layout
ONNX Runtime's linear and cubic kernels accept, whatever the rank of X.
"""

from __future__ import annotations

import numpy as np
from onnx import helper

from ...graph.builder import GraphBuilder
from ..registry import NodeContext, rule
from .shape import contract_axis, iota, static_dim

MODES = ("nearest", "linear", "cubic")
# Attributes the basis resize must not copy: it has its own rank, its own per-axis scale,
# and a constant fill value has no derivative (extrapolated outputs get weight 0).
NOT_COPIED = frozenset({"axes", "keep_aspect_ratio_policy", "extrapolation_value"})


def _operands(c: NodeContext) -> tuple[str, str, str]:
    """(roi, scales, sizes) input names, '' where absent, for Upsample and every Resize."""
    if c.node.op_type == "Upsample" or c.b.opset < 11:
        return "", c.x(1), ""
    sizes = c.x(3)
    fixed = c.b.static_value(sizes)
    if fixed is not None and fixed.size == 0:
        sizes = ""  # an empty sizes tensor stands for "absent", as an empty scales one does
    return c.x(1), c.x(2), sizes


def _axes(c: NodeContext) -> list[int]:
    rank = c.b.rank(c.x(0))
    axes = c.attr("axes") if c.b.opset >= 18 else None
    return [int(a) % rank for a in axes] if axes else list(range(rank))


def _supported(c: NodeContext) -> str | None:
    op = c.node.op_type
    if op == "Upsample" and c.b.opset < 9:
        return "Upsample before opset 9 (scales as an attribute) is not supported"
    if any(c.need(i) for i in range(1, len(c.node.input))):
        return f"gradients w.r.t. the roi or scales of {op} are not supported"
    mode = c.str_attr("mode", "nearest")
    if mode not in MODES:
        return f"{op} mode '{mode}' is not supported"
    crop = c.str_attr("coordinate_transformation_mode", "") == "tf_crop_and_resize"
    if crop and not _operands(c)[0]:
        return f"{op} with tf_crop_and_resize needs its roi input"
    policy = c.str_attr("keep_aspect_ratio_policy", "stretch")
    if _operands(c)[2] and policy != "stretch":
        return (f"{op} with sizes and keep_aspect_ratio_policy='{policy}' is not supported "
                "(its scale is shared by all axes, so one axis cannot be resized alone)")
    return None


@rule("Resize", "Upsample", supports=_supported)
def resize(c: NodeContext, gy):
    """dX = g contracted, axis by axis, with the interpolation matrices of the resized axes."""
    b, x, g = c.b, c.x(0), gy[0]
    rank = b.rank(x)
    repeats: dict[int, int] = {}
    matrices: list[tuple[int, int]] = []
    for key, axis in enumerate(_axes(c)):
        if _is_identity(c, key, axis):
            continue
        repeat = _nearest_repeat(c, key)
        if repeat is not None:
            repeats[axis] = repeat
        else:
            matrices.append((key, axis))
    if repeats:
        g = _sum_repeats(b, g, x, rank, repeats)
    for key, axis in matrices:
        g = contract_axis(b, g, _matrix(c, key, axis), rank, axis)
    return [g]


# (coordinate mode, nearest mode) pairs for which an integer scale s maps output o to input
# floor(o / s): half-pixel centres then lie strictly within 0.5 of an integer, so any rounding
# agrees; asymmetric needs an explicit floor. Upsample and Resize-10 are asymmetric and floor.
REPEATING = frozenset({
    *((coords, near) for coords in ("half_pixel", "pytorch_half_pixel", "half_pixel_symmetric")
      for near in ("round_prefer_floor", "round_prefer_ceil")),
    ("asymmetric", "floor"),
})


def _nearest_repeat(c: NodeContext, key: int) -> int | None:
    """The integer factor s when nearest mode just repeats each input s times on this axis."""
    if c.str_attr("mode", "nearest") != "nearest":
        return None
    _, scales, sizes = _operands(c)
    fixed = None if sizes else c.b.static_value(scales)
    if fixed is None:
        return None
    scale = float(fixed.reshape(-1)[key])
    if scale < 1 or scale != int(scale):
        return None
    if c.node.op_type == "Upsample" or c.b.opset < 11:
        return int(scale)
    modes = (c.str_attr("coordinate_transformation_mode", "half_pixel"),
             c.str_attr("nearest_mode", "round_prefer_floor"))
    return int(scale) if modes in REPEATING else None


def _sum_repeats(b: GraphBuilder, g: str, x: str, rank: int, repeats: dict[int, int]) -> str:
    """View each repeated axis as [D, s] and sum the s copies, all axes in one ReduceSum."""
    parts: list[str] = []
    summed: list[int] = []
    for axis in range(rank):
        if axis in repeats:
            parts += [b.dim(x, axis), b.ints([repeats[axis]])]
            summed.append(axis + len(summed) + 1)
        else:
            parts.append(b.dim(g, axis))
    grouped = b.reshape(g, b.concat(parts, 0))
    return b.reduce("ReduceSum", grouped, summed, keepdims=False)


def _is_identity(c: NodeContext, key: int, axis: int) -> bool:
    """An axis kept at its size by scale 1 is untouched in every mode except crop-and-resize."""
    b = c.b
    if c.str_attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize":
        return False
    _, scales, sizes = _operands(c)
    if sizes:
        fixed = b.static_ints(sizes)
        return fixed is not None and fixed[key] == static_dim(b, c.x(0), axis)
    fixed_scales = b.static_value(scales)
    return fixed_scales is not None and float(fixed_scales.reshape(-1)[key]) == 1.0


def _matrix(c: NodeContext, key: int, axis: int) -> str:
    """M[i, o]: the op applied to the D basis vectors e_i along `axis`, as a [D, D_out] matrix."""
    b, x = c.b, c.x(0)
    n = b.dim(x, axis)
    positions = iota(b, n)
    eye = b.op("Equal", b.unsqueeze(positions, [1]), positions)
    basis = b.reshape(b.op("Cast", eye, to=b.dtype(x)), [0, 1, 1, -1])
    attrs = {a.name: helper.get_attribute_value(a) for a in c.node.attribute
             if a.name not in NOT_COPIED}
    out = b.node(c.node.op_type, [basis, *_basis_operands(c, key, axis, n)], **attrs)[0]
    return b.reshape(out, [0, -1])


def _basis_operands(c: NodeContext, key: int, axis: int, n: str) -> list[str]:
    """roi, scales and sizes for the [D, 1, 1, D] basis, in the op's input order."""
    b = c.b
    roi, scales, sizes = _operands(c)
    if c.node.op_type == "Upsample" or b.opset < 11:
        return [_basis_scales(b, scales, key)]
    empty = b.const(np.zeros(0, np.float32))
    blank = "" if b.opset >= 13 else empty  # optional inputs could not be left out before 13
    crop = c.str_attr("coordinate_transformation_mode", "half_pixel") == "tf_crop_and_resize"
    roi4 = _basis_roi(c, roi, key) if crop else blank
    if sizes:
        size4 = b.concat([n, b.ints([1, 1]), b.dim(c.y(), axis)], 0)
        return [roi4, blank, size4]
    return [roi4, _basis_scales(b, scales, key)]


def _basis_scales(b: GraphBuilder, scales: str, key: int) -> str:
    fixed = b.static_value(scales)
    if fixed is not None:
        value = float(fixed.reshape(-1)[key])
        return b.const(np.array([1.0, 1.0, 1.0, value], np.float32))
    return b.concat([b.const(np.ones(3, np.float32)), b.slice(scales, [key], [key + 1], [0])],
                    0)


def _basis_roi(c: NodeContext, roi: str, key: int) -> str:
    """[0, 0, 0, start, 1, 1, 1, end]: the whole of the unscaled axes, the axis's own box."""
    b = c.b
    count = len(_axes(c))
    dtype = b.np_dtype(roi)
    start = b.slice(roi, [key], [key + 1], [0])
    end = b.slice(roi, [count + key], [count + key + 1], [0])
    return b.concat([b.const(np.zeros(3, dtype)), start, b.const(np.ones(3, dtype)), end], 0)
