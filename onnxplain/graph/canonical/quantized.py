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
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import Rewrite, decomposes

MS = "com.microsoft"
PER_AXIS_OPSET = 13  # DequantizeLinear's axis attribute


# ---- helpers -----------------------------------------------------------------------------
def _elem_type(r: Rewrite, name: str) -> int | None:
    """The element type of `name` where the model states it, else None."""
    value = r.static(name)
    if value is not None:
        return helper.np_dtype_to_tensor_dtype(value.dtype)
    graph = r.model.graph
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.name == name and info.type.tensor_type.elem_type:
            return info.type.tensor_type.elem_type
    return None


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
        raise r.refuse(f"per-axis scale '{scale}' needs opset {PER_AXIS_OPSET} "
                       f"(DequantizeLinear's axis); the model has opset {r.opset}")
    return r.op("DequantizeLinear", *inputs, axis=axis)


def _zero_point(r: Rewrite, zero_point: str, like: str) -> str:
    """`zero_point`, or a 0 of the 8-bit type of `like` (QuantizeLinear without one would
    write uint8 whatever the op's type)."""
    if zero_point:
        return zero_point
    dtype = _elem_type(r, like)
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


def _refuse_channels_last(r: Rewrite) -> None:
    if int(r.attr("channels_last", 0) or 0):
        raise r.refuse("channels_last=1 (NHWC) is not covered; the QOperator export of an "
                       "NCHW model writes channels_last=0")


def _integer_result(r: Rewrite, value: str) -> list[onnx.NodeProto]:
    """The float result of an integer product under the node's output name: as float when
    every reader casts it to float anyway, else cast back to int32."""
    out = r.node.output[0]
    readers = [n for n in r.model.graph.node if out in n.input]
    graph_outputs = {o.name for o in r.model.graph.output}
    as_float = readers and out not in graph_outputs and all(
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
def qlinear_conv(r: Rewrite) -> list[onnx.NodeProto]:
    """y = Q(Conv(DQ(x), DQ(w) per output channel, B * x_scale * w_scale))."""
    x = _dequantize(r, r.input(0), r.input(1), r.input(2))
    w = _dequantize(r, r.input(3), r.input(4), r.input(5), axis=0)
    inputs = [x, w]
    if r.input(8):
        bias_scale = r.op("Mul", r.input(1), r.input(4))
        inputs.append(r.op("Mul", r.op("Cast", r.input(8), to=TensorProto.FLOAT), bias_scale))
    _quantize(r, r.op("Conv", *inputs, **_attrs(r)), r.input(6), r.input(7), r.input(0))
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
    dtype = _elem_type(r, zero_point if op_type == "QuantizeLinear" else r.input(0))
    if dtype not in (TensorProto.UINT8, TensorProto.INT8, None) and r.opset < 21:
        raise r.refuse(f"{TensorProto.DataType.Name(dtype)} needs the standard op at "
                       f"opset 21; the model has opset {r.opset}")
    axis = r.attr("axis")
    if axis is not None and _per_axis(r, r.input(1)) and r.opset < PER_AXIS_OPSET:
        raise r.refuse(f"per-axis quantization needs opset {PER_AXIS_OPSET}; the model has "
                       f"opset {r.opset}")
    attrs = {} if axis is None else {"axis": axis}
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
    _refuse_channels_last(r)
    return _unary(r, "GlobalAveragePool")


@decomposes(MS, "QLinearAveragePool")
def qlinear_average_pool(r: Rewrite) -> list[onnx.NodeProto]:
    _refuse_channels_last(r)
    return _unary(r, "AveragePool", **_attrs(r, "channels_last"))


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
