"""EpsilonSoftmax: distance-based locally activating neurons with a "nothing matches" neuron.

For x [N, D] and centers W [K, D] (Sapkota, "On my search for locally activating neurons"):

    z = [-d(W_1, x), ..., -d(W_K, x), eps] / tau,    [A, e] = softmax(z)

A [N, K] are the center activations and e [N] the epsilon neuron, which is the largest exactly
when every similarity -d is below eps; eps = -inf gives the plain softmax (e = 0).

The op lives in the custom domain `onnxplain` as a model-local function (a FunctionProto made
of standard ops), so any ONNX Runtime runs it with no compiled library. The distance picks
the function body through the node's `overload` (IR 10), and is also kept as an attribute so
the node says what it computes; temperature and eps reach the body by attribute reference.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import onnx
from onnx import AttributeProto, TensorProto, helper

from ..errors import InputError, ModelError
from ..graph.load import set_runtime_ir_version
from ..graph.op_kinds import ONNXPLAIN_DOMAIN
from ..graph.shapes import ai_onnx_opset

DOMAIN = ONNXPLAIN_DOMAIN
OP_TYPE = "EpsilonSoftmax"
DOMAIN_VERSION = 1
DISTANCES = ("l2", "squared_l2", "l1", "cosine")
OLDEST_OPSET = 13          # ReduceSum with axes as an input, Softmax over one axis
TYPED_CONSTANTS_OPSET = 15  # CastLike: below it the body computes in float32 only
# Norms below this count as zero in the cosine distance (as torch.nn.functional.normalize).
NORM_FLOOR = 1e-12


def reference(x: np.ndarray, centers: np.ndarray, *, distance: str = "l2",
                    temperature: float = 1.0, epsilon: float = float("-inf")
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Numpy reference: (activations [N, K], epsilon activation [N]), computed in float64.
    Temperature and eps are
    rounded to float32 first, as ONNX stores float attributes."""
    check_attributes(distance, temperature, epsilon)
    temperature, epsilon = float(np.float32(temperature)), float(np.float32(epsilon))
    x64, w64 = np.asarray(x, np.float64), np.asarray(centers, np.float64)
    d = distances(x64, w64, distance)
    column = np.full((d.shape[0], 1), epsilon, dtype=np.float64)
    z = np.concatenate([-d, column], axis=1) / temperature
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    dtype = np.result_type(x.dtype, np.float32)
    return p[:, :-1].astype(dtype), p[:, -1].astype(dtype)


def distances(x: np.ndarray, centers: np.ndarray, distance: str) -> np.ndarray:
    """d(W_k, x_n) as an [N, K] array. In float64 the |x|^2 - 2 x.w + |w|^2 expansion is
    exact to ~1e-16 |x|^2, so l2 uses it (an [N, K, D] difference would need gigabytes for
    a head on 1000 features); l1 goes through differences, a block of rows at a time."""
    if distance == "l1":
        step = max(1, 2_000_000 // max(1, centers.size))
        return np.concatenate([np.abs(x[i:i + step, None, :] - centers[None]).sum(axis=2)
                               for i in range(0, len(x), step)]) if len(x) else \
            np.zeros((0, len(centers)))
    if distance in ("l2", "squared_l2"):
        squared = ((x * x).sum(1)[:, None] - 2.0 * (x @ centers.T)
                   + (centers * centers).sum(1)[None, :])
        squared = np.maximum(squared, 0.0)
        return squared if distance == "squared_l2" else np.sqrt(squared)
    unit_x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), NORM_FLOOR)
    unit_w = centers / np.maximum(np.linalg.norm(centers, axis=1, keepdims=True), NORM_FLOOR)
    return 1.0 - unit_x @ unit_w.T


def check_attributes(distance: str, temperature: float, epsilon: float) -> None:
    if distance not in DISTANCES:
        raise InputError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    if not temperature > 0 or not np.isfinite(temperature):
        raise InputError(f"temperature must be a positive number, got {temperature}")
    if np.isnan(epsilon) or epsilon == float("inf"):
        raise InputError(f"epsilon must be a number or -inf, got {epsilon}")


class Emitter(Protocol):
    """What the distance code needs from whoever emits nodes: the GraphBuilder in backward
    rules, FunctionBody for the op itself."""

    opset: int

    def op(self, op_type: str, *inputs: str, **attrs) -> str: ...
    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str: ...
    def unsqueeze(self, x: str, axes) -> str: ...
    def scalar(self, value: float, like: str) -> str: ...
    def cast_like(self, value: str, like: str) -> str: ...


def emit_distances(e: Emitter, x: str, w: str, distance: str) -> str:
    """[N, K] distances between the rows of x [N, D] and w [K, D].

    l2 uses |x|^2 - 2 x.w + |w|^2 (one MatMul, no [N, K, D] tensor: a head on 1000
    features would need gigabytes) computed in float64: in float32 it cancels near a
    center (measured 7e-6 error in the activations of points 0.01 from a center), which is
    exactly where a local neuron fires. l1 has no such shortcut. Cosines also go through
    float64 where typed constants allow (opset 15): the small temperatures they need
    amplify float32 rounding (4e-5 in the activations at tau = 0.007)."""
    if distance == "cosine":
        precise = e.opset >= TYPED_CONSTANTS_OPSET
        x64, w64 = ((e.op("Cast", t, to=TensorProto.DOUBLE) if precise else t) for t in (x, w))
        unit_x, unit_w = (unit_rows(e, t) for t in (x64, w64))
        cosines = e.op("MatMul", unit_x, e.op("Transpose", unit_w, perm=[1, 0]))
        d = e.op("Sub", e.scalar(1.0, x64), cosines)
        return e.cast_like(d, x) if precise else d
    if distance == "l1":
        diff = e.op("Sub", e.unsqueeze(x, [1]), e.unsqueeze(w, [0]))
        return e.reduce("ReduceSum", e.op("Abs", diff), [2], False)
    x64, w64 = (e.op("Cast", t, to=TensorProto.DOUBLE) for t in (x, w))
    xx = e.reduce("ReduceSum", e.op("Mul", x64, x64), [1], True)
    ww = e.reduce("ReduceSum", e.op("Mul", w64, w64), [1], False)
    xw = e.op("MatMul", x64, e.op("Transpose", w64, perm=[1, 0]))
    squared = e.op("Relu", e.op("Add", e.op("Sub", xx, e.op("Add", xw, xw)), ww))
    return e.cast_like(e.op("Sqrt", squared) if distance == "l2" else squared, x)


def row_norms(e: Emitter, t: str) -> str:
    """max(|t_i|, NORM_FLOOR) as [rows, 1]."""
    norms = e.op("Sqrt", e.reduce("ReduceSum", e.op("Mul", t, t), [1], True))
    return e.op("Max", norms, e.scalar(NORM_FLOOR, t))


def unit_rows(e: Emitter, t: str) -> str:
    return e.op("Div", t, row_norms(e, t))


class FunctionBody:
    """Collects the nodes of a function body; constants are Constant nodes cast to the
    input's type, since a function has no initializers and no fixed element type."""

    def __init__(self, opset: int):
        self.opset = opset
        self.nodes: list[onnx.NodeProto] = []

    def _emit(self, op_type: str, inputs, attributes) -> str:
        out = f"t{len(self.nodes)}"
        node = helper.make_node(op_type, list(inputs), [out])
        node.attribute.extend(attributes)
        self.nodes.append(node)
        return out

    def op(self, op_type: str, *inputs: str, **attrs) -> str:
        return self._emit(op_type, inputs, [helper.make_attribute(k, v)
                                            for k, v in attrs.items()])

    def reduce(self, op_type: str, x: str, axes, keepdims: bool) -> str:
        return self.op(op_type, x, self.ints(axes), keepdims=int(keepdims))

    def unsqueeze(self, x: str, axes) -> str:
        return self.op("Unsqueeze", x, self.ints(axes))

    def ints(self, values) -> str:
        return self.op("Constant", value=helper.make_tensor(
            "ints", TensorProto.INT64, [len(values)], list(values)))

    def like(self, value: str, like: str) -> str:
        return self.op("CastLike", value, like) if self.opset >= TYPED_CONSTANTS_OPSET else value

    def cast_like(self, value: str, like: str) -> str:
        if self.opset >= TYPED_CONSTANTS_OPSET:
            return self.op("CastLike", value, like)
        return self.op("Cast", value, to=TensorProto.FLOAT)

    def scalar(self, value: float, like: str) -> str:
        return self.like(self.op("Constant", value_float=float(value)), like)

    def attribute(self, name: str, like: str) -> str:
        """A float attribute of the calling node as a 0-d tensor of like's type."""
        ref = helper.make_attribute_ref("value_float", AttributeProto.FLOAT, ref_attr_name=name)
        return self.like(self._emit("Constant", [], [ref]), like)


def function_proto(distance: str, opset: int) -> onnx.FunctionProto:
    """The body for one distance, written for the model's ai.onnx opset."""
    if opset < OLDEST_OPSET:
        raise ModelError(f"{OP_TYPE} needs ai.onnx opset {OLDEST_OPSET} or newer, the model "
                         f"has {opset} (upgrade it with onnx.version_converter)")
    e = FunctionBody(opset)
    d = emit_distances(e, "x", "centers", distance)
    rows = e.op("Slice", e.op("Shape", "x"), e.ints([0]), e.ints([1]), e.ints([0]))
    column_shape = e.op("Concat", rows, e.ints([1]), axis=0)
    eps = e.op("Expand", e.attribute("epsilon", "x"), column_shape)
    z = e.op("Div", e.op("Concat", e.op("Neg", d), eps, axis=1),
             e.attribute("temperature", "x"))
    p = e.op("Softmax", z, axis=1)
    big = np.iinfo(np.int64).max
    e.nodes.append(helper.make_node("Slice", [p, e.ints([0]), e.ints([-1]), e.ints([1])],
                                    ["activations"]))
    last = e.op("Slice", p, e.ints([-1]), e.ints([big]), e.ints([1]))
    e.nodes.append(helper.make_node("Squeeze", [last, e.ints([1])], ["epsilon_activation"]))
    defaults = [helper.make_attribute("distance", distance),
                helper.make_attribute("temperature", 1.0),
                helper.make_attribute("epsilon", float("-inf"))]
    return helper.make_function(
        DOMAIN, OP_TYPE, ["x", "centers"], ["activations", "epsilon_activation"], e.nodes,
        [helper.make_opsetid("", opset)], attribute_protos=defaults, overload=distance,
        doc_string=f"{OP_TYPE} with the {distance} distance; see onnxplain.ops.epsilon_softmax")


def add_function(model: onnx.ModelProto, distance: str) -> None:
    """Make `model` able to call EpsilonSoftmax with this distance (idempotent)."""
    opset = ai_onnx_opset(model) or 0
    if not any(f.domain == DOMAIN and f.name == OP_TYPE and f.overload == distance
               for f in model.functions):
        model.functions.append(function_proto(distance, opset))
    if not any(entry.domain == DOMAIN for entry in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, DOMAIN_VERSION))
    if model.ir_version < 10:  # function overloads arrived with IR 10
        model.ir_version = 10
    set_runtime_ir_version(model)


def make_node(x: str, centers: str, activations: str, epsilon_activation: str, *,
              distance: str = "l2", temperature: float = 1.0,
              epsilon: float = float("-inf"), name: str | None = None) -> onnx.NodeProto:
    """An EpsilonSoftmax node; add_function must also be called on the model it goes in."""
    check_attributes(distance, temperature, epsilon)
    return helper.make_node(OP_TYPE, [x, centers], [activations, epsilon_activation],
                            name=name, domain=DOMAIN, overload=distance, distance=distance,
                            temperature=float(temperature), epsilon=float(epsilon))


def is_epsilon_softmax(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type == OP_TYPE
