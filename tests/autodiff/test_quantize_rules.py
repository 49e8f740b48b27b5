"""The straight-through rule of QuantizeLinear / DequantizeLinear / DynamicQuantizeLinear
against its definition, and the report of a cut gradient path.

Oracle: the estimator replaces round() by the identity, so the quantize-dequantize pair
becomes the surrogate fake(x) = (clip(x / s + z, qmin, qmax) - z) s, which is differentiable
except at the two clip points. Its central finite differences (float64, numpy, written from
the definition) must equal the gradient onnxplain's program computes in ONNX Runtime on the
quantized model. Inputs sit on the quantization grid (x = s (k - z) for integers k), so the
rounding in the real model is exact and the surrogate's value equals the model's; none is
within 1e-3 of a clip point.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.load import normalize, set_runtime_ir_version

RNG = np.random.default_rng(0)
RANGES = {"uint8": (0, 255), "int8": (-128, 127), "uint16": (0, 65535),
          "int16": (-32768, 32767), "int4": (-8, 7), "uint4": (0, 15)}
ONNX_TYPES = {"uint8": TensorProto.UINT8, "int8": TensorProto.INT8,
              "uint16": TensorProto.UINT16, "int16": TensorProto.INT16,
              "int4": TensorProto.INT4, "uint4": TensorProto.UINT4}


def grid_input(shape, s: np.ndarray, z: np.ndarray, qtype: str, axis: int = 1,
               block: int = 0) -> np.ndarray:
    """x = s (k - z) for integers k, some beyond the range on both sides (clipped there)."""
    qmin, qmax = RANGES[qtype]
    span = qmax - qmin
    k = RNG.integers(qmin - span // 4, qmax + span // 4, size=shape)
    k[np.isin(k, [qmin, qmax])] += 2  # keep clear of the clip points (kinks)
    return (s_full(s, shape, axis, block) * (k - s_full(z, shape, axis, block))
            ).astype(np.float32)


def s_full(p: np.ndarray, shape, axis: int, block: int) -> np.ndarray:
    """A scale or zero point broadcast to `shape` (per tensor, per axis or blocked)."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim == 0:
        return np.broadcast_to(p, shape)
    if block:
        return np.repeat(p, block, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = -1
    return np.broadcast_to(p.reshape(view), shape)


def fake(x, s, z, qtype, axis=1, block=0):
    """The estimator's surrogate of DequantizeLinear(QuantizeLinear(x)), in float64."""
    qmin, qmax = RANGES[qtype]
    sf, zf = s_full(s, x.shape, axis, block), s_full(z, x.shape, axis, block)
    return (np.clip(x / sf + zf, qmin, qmax) - zf) * sf


def finite_differences(f, x: np.ndarray, seed: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    x = x.astype(np.float64)
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = eps
        grad[i] = (np.sum(seed * f(x + step)) - np.sum(seed * f(x - step))) / (2 * eps)
    return grad


def qdq_model(shape, s, z, qtype, opset, between=(), domain="", **attrs) -> onnx.ModelProto:
    """x -> QuantizeLinear -> `between` (ops on the integers) -> DequantizeLinear -> y, the
    pair in `domain` (com.microsoft: ONNX Runtime's contrib ops)."""
    inits = [numpy_helper.from_array(np.asarray(s, np.float32), "s")]
    if z is not None:
        inits.append(helper.make_tensor("z", ONNX_TYPES[qtype], list(np.shape(z)),
                                        np.asarray(z).reshape(-1).tolist()))
    zp = ["z"] if z is not None else []
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", *zp], ["q0"], name="quantize",
                              domain=domain, **attrs)]
    for i, (op, extra) in enumerate(between):
        nodes.append(helper.make_node(op, [f"q{i}"], [f"q{i + 1}"], name=op, **extra))
    nodes.append(helper.make_node("DequantizeLinear", [f"q{len(between)}", "s", *zp], ["y"],
                                  name="dequantize", domain=domain, **attrs))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    imports = [helper.make_opsetid("", opset)] + (
        [helper.make_opsetid(domain, 1)] if domain else [])
    return helper.make_model(graph, opset_imports=imports)


def onnxplain_gradient(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray
                       ) -> tuple[np.ndarray, np.ndarray]:
    """(y, d sum(seed * y) / dx) from onnxplain's gradient program in ONNX Runtime."""
    model = normalize(model)
    diff = differentiate(model, ["x"])
    set_runtime_ir_version(diff.model)
    session = ort.InferenceSession(diff.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    out = model.graph.output[0].name
    y, grad = session.run([out, diff.grads["x"]], {"x": x, diff.seeds[out]: seed})
    return y, grad


CASES = [  # id, shape, scale, zero point, type, opset, QuantizeLinear attributes
    ("uint8", (2, 3, 4), np.float32(0.05), np.uint8(128), "uint8", 13, {}),
    ("int8", (2, 3, 4), np.float32(0.02), np.int8(-7), "int8", 13, {}),
    ("no-zero-point", (3, 5), np.float32(0.1), None, "uint8", 10, {}),
    ("per-axis", (2, 3, 2, 2), np.array([0.01, 0.05, 0.2]), np.array([0, 3, -9]), "int8",
     13, {"axis": 1}),
    ("per-axis-last", (2, 4), np.array([0.01, 0.05, 0.2, 0.1]), np.array([10, 3, 200, 0]),
     "uint8", 13, {"axis": -1}),
    ("int16", (3, 4), np.float32(1e-4), np.int16(100), "int16", 21, {}),
    ("uint16", (3, 4), np.float32(1e-4), np.uint16(30000), "uint16", 21, {}),
    ("int4", (3, 4), np.float32(0.3), np.int8(1), "int4", 21, {}),
    ("blocked", (2, 5), np.array([[0.1, 0.2, 0.3], [0.05, 0.5, 1.0]]),
     np.array([[0, 1, 2], [3, 4, 5]]), "int8", 21, {"axis": 1, "block_size": 2}),
]


# com.microsoft QuantizeLinear / DequantizeLinear per axis below opset 13, as ONNX Runtime's
# quantizer writes them for old opsets (canonicalised into per-slice standard ops).
MS_CASES = [
    ("ms-per-axis-opset11", (2, 3, 2, 2), np.array([0.01, 0.05, 0.2]), np.array([0, 3, -9]),
     "int8", 11, {"axis": 1}),
    ("ms-per-axis-last-opset10", (2, 4), np.array([0.01, 0.05, 0.2, 0.1]),
     np.array([10, 3, 200, 0]), "uint8", 10, {"axis": 1}),
]


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_straight_through_matches_its_definition(case):
    check_straight_through(case)


@pytest.mark.parametrize("case", MS_CASES, ids=[c[0] for c in MS_CASES])
def test_contrib_per_axis_before_opset_13_matches_its_definition(case):
    check_straight_through(case, domain="com.microsoft")


def check_straight_through(case, domain: str = "") -> None:
    _, shape, s, z, qtype, opset, attrs = case
    axis, block = attrs.get("axis", 1) % len(shape), attrs.get("block_size", 0)
    zero = 0 if z is None else z
    x = grid_input(shape, s, zero, qtype, axis, block)
    seed = RNG.standard_normal(shape).astype(np.float32)
    model = qdq_model(shape, s, z, qtype, opset, domain=domain, **attrs)
    y, grad = onnxplain_gradient(model, x, seed)
    surrogate = lambda v: fake(v, s, zero, qtype, axis, block)  # noqa: E731
    np.testing.assert_allclose(y, surrogate(x), rtol=1e-5, atol=1e-6)  # the grid is exact
    expected = finite_differences(surrogate, x, seed)
    np.testing.assert_allclose(grad, expected, rtol=1e-4, atol=1e-5)
    clipped = (expected == 0).mean()
    assert 0.1 < clipped < 0.9, "the input should reach both sides of the clip points"


def test_integer_max_pool_and_reshape_carry_the_gradient():
    """MaxPool and Flatten on the quantized values (as QOperator exports write them) pass the
    gradient to the element each window picked."""
    shape, s, z = (1, 2, 4, 4), np.float32(0.1), np.uint8(100)
    k = RNG.permutation(np.arange(60, 92))[:32].reshape(shape)  # distinct: no ties
    x = (s * (k - 100.0)).astype(np.float32)
    between = [("MaxPool", {"kernel_shape": [2, 2], "strides": [2, 2]}), ("Flatten", {})]
    seed = RNG.standard_normal((1, 8)).astype(np.float32)

    def surrogate(v):
        pooled = fake(v, s, z, "uint8").reshape(1, 2, 2, 2, 2, 2).max(axis=(3, 5))
        return pooled.reshape(1, 8)

    _, grad = onnxplain_gradient(qdq_model(shape, s, z, "uint8", 13, between), x, seed)
    np.testing.assert_allclose(grad, finite_differences(surrogate, x, seed), atol=1e-5)


def test_dynamic_quantization_is_the_identity_inside_its_range():
    """DynamicQuantizeLinear -> MatMulInteger -> Cast -> Mul by the scales (what
    quantize_dynamic writes): the estimator's gradient is seed @ W^T with W dequantized."""
    w_q = RNG.integers(-127, 128, (6, 3)).astype(np.int8)
    w_scale = np.float32(0.02)
    nodes = [
        helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"], name="dql"),
        helper.make_node("MatMulInteger", ["xq", "w", "xz", "wz"], ["acc"], name="mmi"),
        helper.make_node("Cast", ["acc"], ["accf"], to=TensorProto.FLOAT, name="cast"),
        helper.make_node("Mul", ["xs", "ws"], ["scale"], name="scales"),
        helper.make_node("Mul", ["accf", "scale"], ["y"], name="rescale"),
    ]
    inits = [numpy_helper.from_array(w_q, "w"), numpy_helper.from_array(np.int8(0), "wz"),
             numpy_helper.from_array(w_scale, "ws")]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, [4, 6])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = RNG.standard_normal((4, 6)).astype(np.float32)
    seed = RNG.standard_normal((4, 3)).astype(np.float32)
    y, grad = onnxplain_gradient(model, x, seed)
    w = w_q.astype(np.float64) * w_scale
    np.testing.assert_allclose(y, x @ w, atol=0.05)  # 8-bit activations: within a few quanta
    np.testing.assert_allclose(grad, seed @ w.T, rtol=1e-5, atol=1e-6)


def test_rounding_then_casting_to_integer_is_reported_not_zero():
    """x -> Cast(int64) -> Cast(float) -> y: no gradient path; the error names the node."""
    nodes = [helper.make_node("Cast", ["x"], ["i"], to=TensorProto.INT64, name="to_int"),
             helper.make_node("Cast", ["i"], ["f"], to=TensorProto.FLOAT, name="to_float"),
             helper.make_node("Mul", ["f", "x2"], ["y"], name="scale")]
    graph = helper.make_graph(nodes, "cut", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match=r"ai.onnx::Cast \(opset 17\) at node "
                                                 r"'to_int' \(the explained output depends"):
        differentiate(normalize(model), ["x"])
    differentiate(normalize(model), ["x2"])  # the other input has a path: no error


def test_argmax_cut_is_reported():
    nodes = [helper.make_node("ArgMax", ["x"], ["i"], axis=1, keepdims=1, name="pick"),
             helper.make_node("GatherElements", ["x2", "i"], ["y"], axis=1, name="read")]
    graph = helper.make_graph(nodes, "argmax", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3]),
        helper.make_tensor_value_info("x2", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    with pytest.raises(UnsupportedOpError, match="ArgMax .* at node 'pick'"):
        differentiate(normalize(model), ["x"])


def test_float8_quantization_is_refused_with_a_reason():
    shape = (2, 3)
    inits = [numpy_helper.from_array(np.float32(0.1), "s"),
             helper.make_tensor("z", TensorProto.FLOAT8E4M3FN, [], [0])]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="quantize"),
             helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dequantize")]
    graph = helper.make_graph(nodes, "fp8", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, list(shape))], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])
    with pytest.raises(UnsupportedOpError, match="no straight-through rule for quantizing "
                                                 "to FLOAT8E4M3FN"):
        differentiate(normalize(model), ["x"])
