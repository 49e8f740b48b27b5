"""Quantize and dequantize: the straight-through estimator, clipped to the representable range.

QuantizeLinear computes q = saturate(round(x / s) + z) and DequantizeLinear y = (q - z) s. The
rounding has a zero derivative almost everywhere, so a quantized model's exact gradient is 0
and says nothing. The straight-through estimator (Bengio et al. 2013, arXiv:1308.3432; clipped
as in Jacob et al. 2018, arXiv:1712.05877) treats round() as the identity and keeps the
saturation:

    dq/dx = 1/s where s (qmin - z) <= x <= s (qmax - z), else 0;   dy/dq = s,

so a QuantizeLinear -> DequantizeLinear pair passes the gradient unchanged inside the
representable range [s (qmin - z), s (qmax - z)] and stops it outside. The integer tensor
between them carries a float gradient (d/dq, in quanta). Ops that move or select quantized
values without changing them (Reshape, MaxPool, Concat, ...) carry it too: they are
differentiated through a float copy of the node (`float_view`), which the ordinary rule sees.
Any other integer result (Cast to an integer type, ArgMax, a comparison, ...) cuts the path;
build.py reports such a cut instead of returning zeros.

Scales and zero points are held constant. For DynamicQuantizeLinear, whose scale and zero
point are computed from x, this is exact under the estimator: with round() as the identity,
(q - z) s = x does not depend on them. Its range is chosen to hold x, so its rule does not
clip (see there).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import onnx
from onnx import TensorProto, helper

from ...graph.builder import GraphBuilder
from ...graph.op_kinds import CASTS, DEQUANTIZERS, MAX_POOLS, QUANTIZERS, VALUE_MOVERS
from ..registry import NodeContext, rule
from .shape import int_scalar, iota

STE_NOTE = ("gradients pass QuantizeLinear/DequantizeLinear by the straight-through "
            "estimator: 1 inside the representable range [scale*(qmin - zero_point), "
            "scale*(qmax - zero_point)], 0 outside; scales and zero points held constant")

# Ops whose result on quantized values is the same op on their real values (exact data
# movement or selection), so an integer result of them still carries the gradient.
INTEGER_PASSTHROUGH = VALUE_MOVERS | MAX_POOLS | CASTS

# Integer ranges of the quantized types (float8 types have no integer range: no rule).
RANGES = {
    TensorProto.UINT8: (0, 255), TensorProto.INT8: (-128, 127),
    TensorProto.UINT16: (0, 65535), TensorProto.INT16: (-32768, 32767),
    TensorProto.UINT4: (0, 15), TensorProto.INT4: (-8, 7),
}


def straight_through_notes(model: onnx.ModelProto) -> list[str]:
    """The estimator's statement, for the notes of a gradient explanation of a model that
    quantizes (after canonicalisation, every quantized model has a quantizer)."""
    quantizes = any(n.op_type in QUANTIZERS and n.domain in ("", "ai.onnx")
                    for n in model.graph.node)
    return [STE_NOTE] if quantizes else []


def carried_outputs(b: GraphBuilder, node: onnx.NodeProto, active: set[str]) -> list[str]:
    """The outputs of `node` (which reads an active tensor) that carry a gradient: its float
    outputs, and integer outputs holding quantized values (see the module docstring)."""
    return carried_by(node, lambda name: b.info(name).is_float, active)


def carried_by(node: onnx.NodeProto, is_float: Callable[[str], bool], active: set[str]
               ) -> list[str]:
    """carried_outputs, given which tensors are float (for walks without a builder)."""
    if node.domain in ("", "ai.onnx") and node.op_type in QUANTIZERS:
        return [node.output[0]]  # the scale and zero point are constants of the estimator
    integer_in = any(name in active and not is_float(name) for name in node.input)
    passes = integer_in and node.domain in ("", "ai.onnx") and (
        node.op_type in INTEGER_PASSTHROUGH)
    return [out for out in node.output if out and (passes or is_float(out))]


def float_view(c: NodeContext, gy: list[str | None]) -> NodeContext:
    """The context a rule sees for a pass-through op on quantized values: a float copy of the
    node, fed the values cast to the gradient's type (exact for these ops)."""
    b, node = c.b, c.node
    integer = [i for i, name in enumerate(node.input) if c.need(i) and name
               and not b.info(name).is_float]
    if not integer or node.op_type not in INTEGER_PASSTHROUGH:
        return c
    dtype = b.info(next(g for g in gy if g is not None)).dtype
    inputs = list(node.input)
    for i in integer:
        inputs[i] = b.op("Cast", inputs[i], to=dtype)
        b.infos[inputs[i]] = replace(b.info(node.input[i]), dtype=dtype)
    outputs = [b.fresh(f"{node.op_type}_float") if out else "" for out in node.output]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Cast":
        attrs["to"] = dtype
    copy = helper.make_node(node.op_type, inputs, outputs, name=b.fresh(node.op_type + "_node"),
                            **attrs)
    b.graph.node.append(copy)
    copy = b.graph.node[-1]  # append stored a copy; rules may add outputs (MaxPool's Indices)
    for out, original in zip(outputs, node.output, strict=True):
        if out:
            b.infos[out] = replace(b.info(original), dtype=dtype)
    return NodeContext(b, copy, c.needs)


def _quantized_type(c: NodeContext) -> int:
    """QuantizeLinear's output type: the zero point's, else output_dtype, else uint8."""
    zero_point = c.x(2)
    if zero_point:
        return c.b.dtype(zero_point)
    return int(c.attr("output_dtype", 0) or TensorProto.UINT8)


def _quantize_supports(c: NodeContext) -> str | None:
    dtype = _quantized_type(c)
    if dtype not in RANGES:
        return (f"no straight-through rule for quantizing to "
                f"{TensorProto.DataType.Name(dtype)} (integer types only)")
    return None


def _along(c: NodeContext, t: str, like: str, dtype: int) -> str:
    """Scale or zero point `t` of the node cast to `dtype` and shaped to broadcast against
    `like`: per tensor, per axis (1-D along `axis`) or blocked (`block_size` along it)."""
    b = c.b
    rank_t, rank, single = b.rank(t), b.rank(like), b.info(t).certain == (1,)
    t = _as(b, t, dtype)
    axis = int(c.attr("axis", 1))
    axis = axis + rank if axis < 0 else axis
    block = int(c.attr("block_size", 0) or 0)
    if block > 0:  # blocked: element i along axis uses entry i // block
        positions = iota(b, b.dim(like, axis))
        return b.op("Gather", t, b.op("Div", positions, int_scalar(b, block)), axis=axis)
    if rank_t == 0 or rank <= 1 or single:
        return t
    return b.reshape(t, [-1] + [1] * (rank - axis - 1))


def _in_range(b: GraphBuilder, x: str, s: str, z: str, qmin: int, qmax: int) -> str:
    """s (qmin - z) <= x <= s (qmax - z) as a bool tensor; s and z broadcast against x."""
    dtype = b.dtype(x)
    low = b.op("Mul", b.op("Sub", b.scalar(float(qmin), dtype), z), s)
    high = b.op("Mul", b.op("Sub", b.scalar(float(qmax), dtype), z), s)
    return b.op("And", b.op("Not", b.op("Less", x, low)), b.op("Not", b.op("Greater", x, high)))


def _as(b: GraphBuilder, g: str, dtype: int) -> str:
    return g if b.dtype(g) == dtype else b.op("Cast", g, to=dtype)


@rule("QuantizeLinear", since=10, supports=_quantize_supports)
def quantize_linear(c, gy):
    """dx = dq / s inside the representable range, 0 outside (straight-through)."""
    b, x, g = c.b, c.x(0), gy[0]
    if g is None:
        return [None]
    dtype = b.dtype(x)
    s = _along(c, c.x(1), x, dtype)
    z = _along(c, c.x(2), x, dtype) if c.x(2) else b.scalar(0.0, dtype)
    inside = _in_range(b, x, s, z, *RANGES[_quantized_type(c)])
    return [b.keep(b.op("Div", _as(b, g, dtype), s), inside)]


@rule("DequantizeLinear", since=10)
def dequantize_linear(c, gy):
    """dq = dy * s (the scale and zero point are constants of the estimator)."""
    b, g = c.b, gy[0]
    if g is None:
        return [None]
    return [b.op("Mul", g, _along(c, c.x(1), c.y(), b.dtype(g)))]


@rule("DynamicQuantizeLinear", since=11)
def dynamic_quantize_linear(c, gy):
    """dx = dq / s with the computed scale s held constant. No clipping: the range is chosen
    to hold x, and saturation can only cut the extreme element by less than half a quantum
    (the zero point's rounding), an error of the same kind the estimator ignores in round()."""
    b, x, g = c.b, c.x(0), gy[0]
    if g is None:
        return [None]
    dtype = b.dtype(x)
    return [b.op("Div", _as(b, g, dtype), _as(b, c.y(1), dtype))]


# ---- relevance ----------------------------------------------------------------------------
# The quantize ops, whose gradient is the estimator above.
STRAIGHT_THROUGH = QUANTIZERS | DEQUANTIZERS


def relevance_straight_through(c: NodeContext, gy: list[str | None]) -> list[str | None]:
    """The estimator for relevance rule sets (LRP, Chefer et al.'s): with round() as the
    identity, a quantize or dequantize op is Clip or the identity, and relevance passes both
    unchanged (LRP's rule for Clip), in the type of the float input. The scale is not applied:
    relevance is in units of the explained score, and where ONNX Runtime's dynamic
    quantization applies it later (MatMulInteger, then a Mul by the two scales), that Mul by
    a constant passes relevance unchanged too."""
    b, g = c.b, gy[0]
    if g is None:
        return [None] * len(c.node.input)
    x = c.x(0)
    g = _as(b, g, b.dtype(x)) if b.info(x).is_float else g
    return [g] + [None] * (len(c.node.input) - 1)
