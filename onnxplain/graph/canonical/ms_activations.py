"""ONNX Runtime's fused activations (`com.microsoft` Gelu, BiasGelu, FastGelu, QuickGelu,
BiasAdd, BiasSplitGelu) as the standard ops they stand for.

Semantics (ONNX Runtime's contrib schemas and CPU kernels, checked against them in
tests/graph/test_canonical_ms_activations.py):
- Gelu(x) = 0.5·x·(1 + erf(x/√2)); BiasGelu(a, b) = Gelu(a + b).
- FastGelu(x[, bias]) = 0.5·u·(1 + tanh(√(2/π)·(u + 0.044715·u³))), u = x + bias.
- QuickGelu(x) = x·Sigmoid(alpha·x), alpha = 1.702 by default.
- BiasAdd(x, bias, skip) = x + bias + skip.
- BiasSplitGelu(x, bias): u = x + bias split in halves [left, right] on the last axis;
  y = left · Gelu(right).
"""

from __future__ import annotations

import math

from . import Rewrite, decomposes
from .ms_common import MS, dims, elem_type, ints, require_opset, scalar


def gelu(r: Rewrite, x: str, dtype: int, out: str | None = None) -> str:
    """(x·(erf(x/√2) + 1))·0.5, in the form torch exports (which ONNX Runtime re-fuses):
    the gate x·f(x) is what LRP rules recognise as an activation."""
    erf = r.op("Erf", r.op("Div", x, scalar(r, math.sqrt(2), dtype, "sqrt2")))
    gated = r.op("Mul", x, r.op("Add", erf, scalar(r, 1.0, dtype, "one")))
    return r.op("Mul", gated, scalar(r, 0.5, dtype, "half"), out=out)


def gelu_tanh(r: Rewrite, x: str, dtype: int, out: str | None = None) -> str:
    """(x·(tanh(√(2/π)·(x + 0.044715·x³)) + 1))·0.5, the gate form as for `gelu`."""
    cube = r.op("Mul", r.op("Mul", x, x), x)
    inner = r.op("Add", x, r.op("Mul", cube, scalar(r, 0.044715, dtype, "c")))
    tanh = r.op("Tanh", r.op("Mul", inner, scalar(r, math.sqrt(2 / math.pi), dtype, "k")))
    gated = r.op("Mul", x, r.op("Add", tanh, scalar(r, 1.0, dtype, "one")))
    return r.op("Mul", gated, scalar(r, 0.5, dtype, "half"), out=out)


@decomposes(MS, "Gelu")
def _gelu(r: Rewrite):
    require_opset(r)
    gelu(r, r.node.input[0], elem_type(r, r.node.input[0]), out=r.node.output[0])
    return r.nodes


@decomposes(MS, "BiasGelu")
def _bias_gelu(r: Rewrite):
    require_opset(r)
    a, b = r.node.input[0], r.node.input[1]
    gelu(r, r.op("Add", a, b), elem_type(r, b, a), out=r.node.output[0])
    return r.nodes


@decomposes(MS, "FastGelu")
def _fast_gelu(r: Rewrite):
    require_opset(r)
    x, bias = r.node.input[0], r.input(1)
    dtype = elem_type(r, *filter(None, (bias, x)))
    gelu_tanh(r, r.op("Add", x, bias) if bias else x, dtype, out=r.node.output[0])
    return r.nodes


@decomposes(MS, "QuickGelu")
def _quick_gelu(r: Rewrite):
    require_opset(r)
    x = r.node.input[0]
    alpha = scalar(r, float(r.attr("alpha", 1.702)), elem_type(r, x), "alpha")
    r.op("Mul", x, r.op("Sigmoid", r.op("Mul", x, alpha)), out=r.node.output[0])
    return r.nodes


@decomposes(MS, "BiasAdd")
def _bias_add(r: Rewrite):
    require_opset(r)
    x, bias, skip = r.node.input[:3]
    r.op("Add", r.op("Add", x, bias), skip, out=r.node.output[0])
    return r.nodes


@decomposes(MS, "BiasSplitGelu")
def _bias_split_gelu(r: Rewrite):
    require_opset(r)
    x, bias = r.node.input[:2]
    u = r.op("Add", x, bias)
    # Halves by Slice with run-time ends: Split's signature changed at opset 18.
    half = r.op("Div", dims(r, u, [-1], "width"), ints(r, [2], "two"))
    left = r.op("Slice", u, ints(r, [0], "zero"), half, ints(r, [-1], "last_axis"))
    right = r.op("Slice", u, half, ints(r, [2**62], "end"), ints(r, [-1], "last_axis"))
    r.op("Mul", left, gelu(r, right, elem_type(r, bias, x)), out=r.node.output[0])
    return r.nodes
