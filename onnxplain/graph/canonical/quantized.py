"""Quantized operators (QOperator format and integer arithmetic) as DequantizeLinear -> the
float op -> QuantizeLinear, so that their gradient is the float op's, passed through the
quantize/dequantize pair by the straight-through rule (autodiff/ops/quantize.py).

Each op means: dequantize the inputs (x - z) s, apply the float op, quantize the result with
the output's scale and zero point (or return it as float where the op has no output scale).
ONNX Runtime computes the same thing with integer accumulation and one requantizing multiply,
so an integer output may differ by one quantum where the float result lies within rounding
error of a half-way point (tests/graph/test_canonical_quantized.py measures how often).

MatMulInteger and ConvInteger return the exact int32 products (x - z)(w - z'). Written as a
float MatMul/Conv they are exact while sums stay below 2^24; ONNX Runtime's dynamic
quantization only ever casts them to float, so when every reader is such a Cast the
decomposition returns the float result directly (the Cast becomes the identity); otherwise it
casts back to int32, which cuts the gradient path (reported, never a silent zero).

Per-axis scales before opset 13 (where the standard Q/DQ ops take one scale; ONNX Runtime's
quantizer then writes com.microsoft QuantizeLinear/DequantizeLinear with an axis) become one
standard op per slice along the axis, concatenated: still Q/DQ, so still straight-through.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import Rewrite, decomposes
from .ms_common import rank_of

MS = "com.microsoft"
PER_AXIS_OPSET = 13  # DequantizeLinear's axis attribute


# ---- helpers -----------------------------------------------------------------------------
def _per_axis(r: Rewrite, scale: str) -> bool:
    value = r.static(scale)
    return value is None or value.size > 1


def _dequantize(r: Rewrite, x: str, scale: str, zero_point: str, axis: int | None = None
                ) -> str:
    """DequantizeLinear, per axis when `scale` has more than one element."""
    inputs = [x, scale] + ([zero_point] if zero_point else [])
    if axis is None or not _per_axis(r, scale):
        return r.op("DequantizeLinear", *inputs)
    if r.opset < PER_AXIS_OPSET:
        return _split_per_axis(r, "DequantizeLinear", x, scale, zero_point, axis)
    return r.op("DequantizeLinear", *inputs, axis=axis)


def _split_per_axis(r: Rewrite, op_type: str, x: str, scale: str, zero_point: str, axis: int,
                    out: str | None = None) -> str:
    """Per-axis QuantizeLinear / DequantizeLinear before opset 13 (where the standard ops
    take one scale): x split into its slices along `axis`, each quantized or dequantized with
    its own scalar scale and zero point, concatenated back. The pieces stay standard Q/DQ
    ops, so the straight-through rule applies to each. Needs constant scales."""
    scales = r.static(scale)
    zeros = r.static(zero_point) if zero_point else None
    if scales is None or (zero_point and zeros is None):
        raise r.refuse(f"per-axis scale '{scale}' or its zero point is computed; before opset "
                       f"{PER_AXIS_OPSET} only constant ones are covered (the model has opset "
                       f"{r.opset})")
    if axis < 0 and r.opset < 11:
        raise r.refuse(f"negative axis {axis} before opset 11 (Split and Concat)")
    count = scales.size
    slices = [r.fresh("slice") for _ in range(count)]
    r.multi("Split", [x], slices, axis=axis, split=[1] * count)
    parts = []
    for i, piece in enumerate(slices):
        inputs = [piece, r.const(scales.reshape(-1)[i], "scale")]
        if zeros is not None:
            inputs.append(r.const(zeros.reshape(-1)[i], "zero_point"))
        parts.append(r.op(op_type, *inputs))
    return r.op("Concat", *parts, axis=axis, out=out)


def _zero_point(r: Rewrite, zero_point: str, like: str) -> str:
    """`zero_point`, or a 0 of the 8-bit type of `like` (QuantizeLinear without one would
    write uint8 whatever the op's type)."""
    if zero_point:
        return zero_point
    dtype = r.index.elem_type(like)
    if dtype not in (TensorProto.UINT8, TensorProto.INT8):
        raise r.refuse(f"the output zero point is absent and the 8-bit type of '{like}' is "
                       "not stated in the model")
    return r.const(np.zeros((), dtype=helper.tensor_dtype_to_np_dtype(dtype)), "zero_point")


def _quantize(r: Rewrite, y: str, scale: str, zero_point: str, like: str) -> str:
    """QuantizeLinear of `y` into the node's output name."""
    return r.op("QuantizeLinear", y, scale, _zero_point(r, zero_point, like),
                out=r.node.output[0])


def _unary(r: Rewrite, op_type: str, **attrs) -> list[onnx.NodeProto]:
    """X, X_scale, X_zero_point, Y_scale, Y_zero_point -> Q(op(DQ(X)))."""
    x = _dequantize(r, r.input(0), r.input(1), r.input(2))
    _quantize(r, r.op(op_type, x, **attrs), r.input(3), r.input(4), r.input(0))
    return r.nodes


def _attrs(r: Rewrite, *skip: str) -> dict:
    return {a.name: helper.get_attribute_value(a) for a in r.node.attribute
            if a.name not in skip}


def _pool(r: Rewrite, op_type: str, **attrs) -> list[onnx.NodeProto]:
    """Q(pool(DQ(X))), channels-last where the node says so."""
    x = _dequantize(r, r.input(0), r.input(1), r.input(2))
    pooled = _in_layout(r, x, lambda t: r.op(op_type, t, **attrs), _channels_last(r))
    _quantize(r, pooled, r.input(3), r.input(4), r.input(0))
    return r.nodes


def _channels_last(r: Rewrite) -> bool:
    return bool(int(r.attr("channels_last", 0) or 0))


def _in_layout(r: Rewrite, x: str, apply: Callable[[str], str], channels_last: bool,
               out: str | None = None) -> str:
    """apply(x) for a channels-first op; channels-last (NHWC, as ONNX Runtime's NHWC
    transformer writes) x moves to channels-first and the result back."""
    if not channels_last:
        return apply(x) if out is None else r.op("Identity", apply(x), out=out)
    rank = _spatial_rank(r)
    first = r.op("Transpose", x, perm=[0, rank - 1, *range(1, rank - 1)])
    return r.op("Transpose", apply(first), perm=[0, *range(2, rank), 1], out=out)


def _spatial_rank(r: Rewrite) -> int:
    """The rank of a conv or pool input: 2 + the kernel's, else as inferred. Shape inference
    does not know the contrib ops that produce it in an NHWC graph: wait for the round in
    which they are standard ops."""
    kernel = r.attr("kernel_shape")
    rank = len(kernel) + 2 if kernel else rank_of(r, r.input(0))
    if rank is None:
        raise r.later("channels_last=1 on an input of unknown rank")
    if rank < 3:
        raise r.refuse(f"channels_last=1 on an input of rank {rank}")
    return rank


def _integer_result(r: Rewrite, value: str) -> list[onnx.NodeProto]:
    """The float result of an integer product under the node's output name: as float when
    every reader casts it to float anyway, else cast back to int32."""
    out = r.node.output[0]
    readers = r.index.readers.get(out, [])
    as_float = readers and out not in r.index.outputs and all(
        n.op_type == "Cast" and n.domain in ("", "ai.onnx")
        and helper.get_attribute_value(n.attribute[0]) == TensorProto.FLOAT for n in readers)
    if as_float:
        r.op("Identity", value, out=out)
    else:
        r.op("Cast", value, to=TensorProto.INT32, out=out)
    return r.nodes


def _unit_scale(r: Rewrite, zero_point: str) -> str:
    """A scale of ones shaped like a constant `zero_point` (DequantizeLinear needs both
    alike); a scalar one for a computed zero point (DynamicQuantizeLinear's is a scalar, and
    a 1-D one would fail loudly in DequantizeLinear)."""
    value = r.static(zero_point) if zero_point else None
    shape = () if value is None else value.shape
    return r.const(np.ones(shape, dtype=np.float32), "unit_scale")


# ---- standard ops --------------------------------------------------------------------------
@decomposes("", "QLinearConv")
@decomposes(MS, "QLinearConv")
def qlinear_conv(r: Rewrite) -> list[onnx.NodeProto]:
    """y = Q(Conv(DQ(x), DQ(w) per output channel, B * x_scale * w_scale)); the contrib op
    may take x and y channels-last (the weights stay [M, C/group, kH, kW])."""
    x = _dequantize(r, r.input(0), r.input(1), r.input(2))
    w = _dequantize(r, r.input(3), r.input(4), r.input(5), axis=0)
    inputs = [w]
    if r.input(8):
        bias_scale = r.op("Mul", r.input(1), r.input(4))
        inputs.append(r.op("Mul", r.op("Cast", r.input(8), to=TensorProto.FLOAT), bias_scale))
    attrs = _attrs(r, "channels_last")
    y = _in_layout(r, x, lambda t: r.op("Conv", t, *inputs, **attrs), _channels_last(r))
    _quantize(r, y, r.input(6), r.input(7), r.input(0))
    return r.nodes


@decomposes("", "QLinearMatMul")
def qlinear_matmul(r: Rewrite) -> list[onnx.NodeProto]:
    """y = Q(DQ(a) @ DQ(b)); a per row or b per column where their scales are 1-D."""
    a = _dequantize(r, r.input(0), r.input(1), r.input(2), axis=-2)
    b = _dequantize(r, r.input(3), r.input(4), r.input(5), axis=-1)
    _quantize(r, r.op("MatMul", a, b), r.input(6), r.input(7), r.input(0))
    return r.nodes


@decomposes("", "MatMulInteger")
def matmul_integer(r: Rewrite) -> list[onnx.NodeProto]:
    """y = (a - a_zero_point) @ (b - b_zero_point), zero points per row of a / column of b."""
    a_zero, b_zero = r.input(2), r.input(3)
    a = _dequantize(r, r.input(0), _unit_scale(r, a_zero), a_zero, axis=-2)
    b = _dequantize(r, r.input(1), _unit_scale(r, b_zero), b_zero, axis=-1)
    return _integer_result(r, r.op("MatMul", a, b))


@decomposes("", "ConvInteger")
def conv_integer(r: Rewrite) -> list[onnx.NodeProto]:
    """y = Conv(x - x_zero_point, w - w_zero_point), w's zero point per output channel."""
    x_zero, w_zero = r.input(2), r.input(3)
    x = _dequantize(r, r.input(0), _unit_scale(r, x_zero), x_zero)
    w = _dequantize(r, r.input(1), _unit_scale(r, w_zero), w_zero, axis=0)
    return _integer_result(r, r.op("Conv", x, w, **_attrs(r)))


# ---- com.microsoft ------------------------------------------------------------------------
@decomposes(MS, "QuantizeLinear")
def ms_quantize_linear(r: Rewrite) -> list[onnx.NodeProto]:
    return _standard_qdq(r, "QuantizeLinear")


@decomposes(MS, "DequantizeLinear")
def ms_dequantize_linear(r: Rewrite) -> list[onnx.NodeProto]:
    return _standard_qdq(r, "DequantizeLinear")


def _standard_qdq(r: Rewrite, op_type: str) -> list[onnx.NodeProto]:
    """The contrib op is the standard one (8 bits; 16 and 4 bits need opset 21)."""
    zero_point = r.input(2)
    dtype = r.index.elem_type(zero_point if op_type == "QuantizeLinear" else r.input(0))
    if dtype not in (TensorProto.UINT8, TensorProto.INT8, None) and r.opset < 21:
        raise r.refuse(f"{TensorProto.DataType.Name(dtype)} needs the standard op at "
                       f"opset 21; the model has opset {r.opset}")
    axis = r.attr("axis")
    if axis is not None and _per_axis(r, r.input(1)) and r.opset < PER_AXIS_OPSET:
        _split_per_axis(r, op_type, r.input(0), r.input(1), zero_point, int(axis),
                        out=r.node.output[0])
        return r.nodes
    # One scale: the axis means nothing, and the standard op has no axis before opset 13.
    attrs = {} if axis is None or r.opset < PER_AXIS_OPSET else {"axis": axis}
    r.multi(op_type, [n for n in r.node.input], [r.node.output[0]], **attrs)
    return r.nodes


@decomposes(MS, "QGemm")
def qgemm(r: Rewrite) -> list[onnx.NodeProto]:
    """Y = alpha DQ(A) DQ(B) + C alpha a_scale b_scale, quantized when y_scale is given."""
    trans_b = int(r.attr("transB", 0) or 0)
    alpha = float(r.attr("alpha", 1.0))
    a = _dequantize(r, r.input(0), r.input(1), r.input(2))
    b = _dequantize(r, r.input(3), r.input(4), r.input(5), axis=0 if trans_b else 1)
    inputs = [a, b]
    if r.input(6):
        scale = r.op("Mul", r.op("Mul", r.input(1), r.input(4)),
                     r.const(np.array(alpha, dtype=np.float32), "alpha"))
        inputs.append(r.op("Mul", r.op("Cast", r.input(6), to=TensorProto.FLOAT), scale))
    attrs = _attrs(r)
    if not r.input(7):
        r.op("Gemm", *inputs, out=r.node.output[0], **attrs)
        return r.nodes
    _quantize(r, r.op("Gemm", *inputs, **attrs), r.input(7), r.input(8), r.input(0))
    return r.nodes


def _binary(r: Rewrite, op_type: str) -> list[onnx.NodeProto]:
    a = _dequantize(r, r.input(0), r.input(1), r.input(2))
    b = _dequantize(r, r.input(3), r.input(4), r.input(5))
    _quantize(r, r.op(op_type, a, b), r.input(6), r.input(7), r.input(0))
    return r.nodes


@decomposes(MS, "QLinearAdd")
def qlinear_add(r: Rewrite) -> list[onnx.NodeProto]:
    return _binary(r, "Add")


@decomposes(MS, "QLinearMul")
def qlinear_mul(r: Rewrite) -> list[onnx.NodeProto]:
    return _binary(r, "Mul")


@decomposes(MS, "QLinearGlobalAveragePool")
def qlinear_global_average_pool(r: Rewrite) -> list[onnx.NodeProto]:
    return _pool(r, "GlobalAveragePool")


@decomposes(MS, "QLinearAveragePool")
def qlinear_average_pool(r: Rewrite) -> list[onnx.NodeProto]:
    return _pool(r, "AveragePool", **_attrs(r, "channels_last"))


@decomposes(MS, "NhwcMaxPool")
def nhwc_max_pool(r: Rewrite) -> list[onnx.NodeProto]:
    """MaxPool of 8-bit values in NHWC (ONNX Runtime's NHWC transformer): the standard op on
    the integers between transposes (exact; before opset 12, which has no 8-bit MaxPool, on
    their float copies)."""
    attrs = _attrs(r)
    if r.opset >= 12:
        _in_layout(r, r.input(0), lambda t: r.op("MaxPool", t, **attrs), True,
                   out=r.node.output[0])
        return r.nodes
    dtype = r.index.elem_type(r.input(0))
    if dtype not in (TensorProto.UINT8, TensorProto.INT8):
        raise r.refuse(f"input '{r.input(0)}' of unstated 8-bit type before opset 12")
    pooled = _in_layout(r, r.op("Cast", r.input(0), to=TensorProto.FLOAT),
                        lambda t: r.op("MaxPool", t, **attrs), True)
    r.op("Cast", pooled, to=dtype, out=r.node.output[0])
    return r.nodes


@decomposes(MS, "QLinearSigmoid")
def qlinear_sigmoid(r: Rewrite) -> list[onnx.NodeProto]:
    return _unary(r, "Sigmoid")


@decomposes(MS, "QLinearLeakyRelu")
def qlinear_leaky_relu(r: Rewrite) -> list[onnx.NodeProto]:
    return _unary(r, "LeakyRelu", alpha=float(r.attr("alpha", 0.01)))


@decomposes(MS, "QLinearSoftmax")
def qlinear_softmax(r: Rewrite) -> list[onnx.NodeProto]:
    """Softmax as the standard op of the node's `opset` attribute defines it (before 13: over
    the input flattened to 2-D at `axis`)."""
    axis, semantics = int(r.attr("axis", -1)), int(r.attr("opset", 13))
    if semantics >= 13 and r.opset < 13 and axis != -1:
        raise r.refuse(f"opset-13 Softmax over axis {axis} in an opset-{r.opset} model")
    x = _dequantize(r, r.input(0), r.input(1), r.input(2))
    if semantics < 13 and r.opset >= 13:
        flat = r.op("Softmax", r.op("Flatten", x, axis=axis), axis=1)
        y = r.op("Reshape", flat, r.op("Shape", x))
    else:
        y = r.op("Softmax", x, axis=axis)
    _quantize(r, y, r.input(3), r.input(4), r.input(0))
    return r.nodes


@decomposes(MS, "QLinearConcat")
def qlinear_concat(r: Rewrite) -> list[onnx.NodeProto]:
    """Inputs: Y_scale, Y_zero_point, then (tensor, scale, zero point) per part."""
    parts = list(r.node.input[2:])
    if len(parts) % 3:
        raise r.refuse(f"{len(parts)} inputs after the output scale and zero point; expected "
                       "(tensor, scale, zero point) triples")
    floats = [_dequantize(r, *parts[i:i + 3]) for i in range(0, len(parts), 3)]
    y = r.op("Concat", *floats, axis=int(r.attr("axis")))
    _quantize(r, y, r.input(0), r.input(1), parts[0])
    return r.nodes


@decomposes(MS, "DynamicQuantizeMatMul")
def dynamic_quantize_matmul(r: Rewrite) -> list[onnx.NodeProto]:
    """Y = DQ(DynamicQuantizeLinear(A)) @ DQ(B) + bias, B per column."""
    q, scale, zero = (r.fresh(label) for label in ("a_quantized", "a_scale", "a_zero_point"))
    r.multi("DynamicQuantizeLinear", [r.input(0)], [q, scale, zero])
    a = _dequantize(r, q, scale, zero)
    b = _dequantize(r, r.input(1), r.input(2), r.input(3), axis=-1)
    return _with_bias(r, r.op("MatMul", a, b), r.input(4))


@decomposes(MS, "MatMulIntegerToFloat")
def matmul_integer_to_float(r: Rewrite) -> list[onnx.NodeProto]:
    """Y = DQ(A) @ DQ(B) + bias, B per column."""
    a = _dequantize(r, r.input(0), r.input(2), r.input(4), axis=-1)
    b = _dequantize(r, r.input(1), r.input(3), r.input(5), axis=-1)
    return _with_bias(r, r.op("MatMul", a, b), r.input(6))


def _with_bias(r: Rewrite, y: str, bias: str) -> list[onnx.NodeProto]:
    if bias:
        r.op("Add", y, bias, out=r.node.output[0])
    else:
        r.op("Identity", y, out=r.node.output[0])
    return r.nodes
