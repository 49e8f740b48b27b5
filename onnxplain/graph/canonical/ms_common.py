"""Helpers shared by the decompositions of ONNX Runtime's `com.microsoft` ops (ms_*.py): the
element type of a tensor, constants of that type, and the opset-dependent forms of the few
standard ops the decompositions emit (ReduceMean, LayerNormalization, RMS normalisation)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from ..shapes import FLOAT_TYPES
from . import GraphIndex, Rewrite

MS = "com.microsoft"
# Emitted ops use opset-13 forms (Softmax over one axis, ReduceSum with an axes input, Slice
# with inputs); ONNX Runtime's optimizer writes opset 12 and newer.
OLDEST = 13


def require_opset(r: Rewrite) -> None:
    if r.opset < OLDEST:
        raise r.refuse(f"the model's opset {r.opset} is older than {OLDEST} (upgrade it with "
                       "onnx.version_converter.convert_version)")


def elem_type(r: Rewrite, *names: str) -> int:
    """The float element type of the first of `names` whose type can be told: declared,
    an initializer, or found by walking back through producers (fused graphs carry no
    value_info); shape inference as a last resort."""
    for name in names:
        found = _walk_type(r.index, name, depth=32)
        if found:
            return found
    for name in names:
        info = r.index.info(name) if name else None
        if info is not None and info.dtype in FLOAT_TYPES:
            return info.dtype
    raise r.refuse(f"cannot tell the element type of {', '.join(n for n in names if n)}")


def _walk_type(index: GraphIndex, name: str, depth: int) -> int | None:
    """A float tensor has its producer's float type: the type a Cast names, the second
    input's for CastLike, else that of the producer's first input of known float type."""
    for _ in range(depth):
        if not name:
            return None
        if index.elem_type(name) in FLOAT_TYPES:
            return index.elem_type(name)
        node = index.producers.get(name)
        if node is None:
            return None
        if node.op_type == "Cast":
            to = next(a.i for a in node.attribute if a.name == "to")
            return to if to in FLOAT_TYPES else None
        inputs = [node.input[1]] if node.op_type == "CastLike" else [i for i in node.input if i]
        direct = [index.elem_type(i) for i in inputs if index.elem_type(i) in FLOAT_TYPES]
        if direct:
            return direct[0]
        # Follow the first input that is not an integer tensor (indices, shapes, masks).
        following = [i for i in inputs if not index.elem_type(i)]
        if not following:
            return None
        name = following[0]
    return None


def rank_of(r: Rewrite, name: str) -> int | None:
    info = r.index.info(name)
    return None if info is None else info.rank


def numpy_type(dtype: int) -> np.dtype:
    return np.dtype(helper.tensor_dtype_to_np_dtype(dtype))


def scalar(r: Rewrite, value: float, dtype: int, label: str = "scalar") -> str:
    return r.const(np.array(value, dtype=numpy_type(dtype)), label)


def ints(r: Rewrite, values: list[int], label: str = "ints") -> str:
    return r.const(np.array(values, dtype=np.int64), label)


def dims(r: Rewrite, x: str, axes: list[int], label: str = "dims") -> str:
    """Shape(x)[axes] as an int64 vector (Shape's start/end need opset 15)."""
    return r.op("Gather", r.op("Shape", x), ints(r, axes, "axes"), axis=0, out=r.fresh(label))


def length(r: Rewrite, x: str, axis: int, label: str = "length") -> str:
    """Shape(x)[axis] as an int64 scalar."""
    return r.op("Gather", r.op("Shape", x), r.const(np.array(axis, np.int64), "axis"), axis=0,
                out=r.fresh(label))


def reduce_mean(r: Rewrite, x: str, axes: list[int], label: str = "mean") -> str:
    """ReduceMean keeping dims: axes as an attribute before opset 18, an input from 18."""
    if r.opset >= 18:
        return r.op("ReduceMean", x, ints(r, axes, "axes"), out=r.fresh(label), keepdims=1)
    return r.op("ReduceMean", x, out=r.fresh(label), axes=axes, keepdims=1)


def layer_norm(r: Rewrite, x: str, gamma: str, beta: str, epsilon: float, dtype: int,
               out: str = "", axis: int = -1) -> str:
    """y = (x - mean) / sqrt(var + epsilon) * gamma + beta over the axes from `axis` on:
    the standard LayerNormalization from opset 17, its formula before."""
    if r.opset >= 17:
        inputs = [x, gamma] + ([beta] if beta else [])
        return r.multi("LayerNormalization", inputs, [out or r.fresh("layer_norm")],
                       axis=axis, epsilon=epsilon)[0]
    if axis != -1:
        raise r.refuse(f"normalisation over axis {axis} before opset 17")
    centred = r.op("Sub", x, reduce_mean(r, x, [-1]), out=r.fresh("centred"))
    variance = reduce_mean(r, r.op("Mul", centred, centred), [-1], "variance")
    std = r.op("Sqrt", r.op("Add", variance, scalar(r, epsilon, dtype, "epsilon")))
    scaled = r.op("Mul", r.op("Div", centred, std), gamma, out=None if beta else out or None)
    return r.op("Add", scaled, beta, out=out or None) if beta else scaled


def rms_norm(r: Rewrite, x: str, gamma: str, epsilon: float, dtype: int, out: str = "",
             axis: int = -1, inv_std_out: str = "") -> str:
    """y = x / sqrt(mean(x², last axis) + epsilon) * gamma (no centring), computed in
    x's type; `inv_std_out` receives 1 / sqrt(mean(x²) + epsilon) when asked for."""
    if axis != -1:
        raise r.refuse(f"RMS normalisation over axis {axis} (only the last axis is covered)")
    mean = reduce_mean(r, r.op("Mul", x, x), [-1], "mean_square")
    std = r.op("Sqrt", r.op("Add", mean, scalar(r, epsilon, dtype, "epsilon")))
    if inv_std_out:
        r.op("Reciprocal", std, out=inv_std_out)
    return r.op("Mul", r.op("Div", x, std), gamma, out=out or None)


def bind(r: Rewrite, x: str, out: str) -> None:
    """Make the node output `out` (when requested) carry `x`."""
    if out:
        r.op("Identity", x, out=out)


def runtime_ops_aside(model: onnx.ModelProto) -> onnx.ModelProto:
    """For onnx's checker only: ONNX Runtime registers a few contrib ops in the ai.onnx
    domain, which its optimizer writes there (SimplifiedLayerNormalization, and
    LayerNormalization below opset 17) and which onnx's checker rejects although ONNX Runtime
    runs them. Returns `model`, or a copy with those nodes in the com.microsoft domain, which
    the checker does not check."""
    opset = next((e.version for e in model.opset_import if e.domain in ("", "ai.onnx")), 0)
    runtime_only = [i for i, node in enumerate(model.graph.node)
                    if node.domain in ("", "ai.onnx") and (
                        node.op_type == "SimplifiedLayerNormalization"
                        or (node.op_type == "LayerNormalization" and opset < 17))]
    if not runtime_only:
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    for index in runtime_only:
        copy.graph.node[index].domain = MS
    if all(e.domain != MS for e in copy.opset_import):
        copy.opset_import.append(helper.make_opsetid(MS, 1))
    return copy
