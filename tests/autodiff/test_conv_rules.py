import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.load import set_runtime_ir_version

from .cases import Const, OpCase, r
from .gradcheck import check_case


def conv(id, x, w, bias=None, opset=17, **attrs):
    inputs = [x, w] if bias is None else [x, w, bias]
    return OpCase(id, "Conv", inputs, attrs, opset=opset)


def convt(id, x, w, bias=None, opset=17, **attrs):
    inputs = [x, w] if bias is None else [x, w, bias]
    return OpCase(id, "ConvTranspose", inputs, attrs, opset=opset)


CONV = [
    # Stride 1 with constant weights: the flipped-weight Conv.
    conv("2d-const-w", r(2, 3, 6, 5), Const(r(4, 3, 3, 3)), pads=[1, 1, 1, 1]),
    conv("2d-const-w-asym", r(1, 2, 6, 7), Const(r(3, 2, 3, 2)), pads=[2, 0, 0, 1],
         dilations=[1, 2]),
    conv("2d-pad-beyond-kernel", r(1, 2, 4, 4), Const(r(2, 2, 1, 1)), pads=[1, 0, 2, 1]),
    conv("2d-all-active", r(2, 3, 7, 6), r(4, 3, 3, 2), r(4), kernel_shape=[3, 2],
         strides=[2, 1], pads=[1, 0, 1, 1]),
    conv("2d-strided-dilated", r(1, 2, 9, 8), Const(r(3, 2, 3, 3)), strides=[2, 3],
         dilations=[2, 1], pads=[0, 1, 2, 2]),
    conv("2d-group", r(2, 4, 6, 6), r(6, 2, 3, 3), kernel_shape=[3, 3], group=2, strides=[2, 2],
         pads=[1, 1, 0, 0]),
    conv("depthwise-stride2", r(1, 3, 7, 8), Const(r(3, 1, 3, 3)), group=3, strides=[2, 2],
         pads=[1, 1, 1, 1]),
    conv("depthwise-const-stride1", r(1, 3, 5, 5), Const(r(6, 1, 3, 3)), Const(r(6)), group=3,
         pads=[1, 1, 1, 1]),
    conv("1d", r(2, 2, 9), r(3, 2, 3), kernel_shape=[3], strides=[3], pads=[2, 1]),
    conv("1d-bias-only", Const(r(1, 2, 5)), Const(r(3, 2, 2)), r(3)),
    conv("3d", r(1, 2, 5, 4, 6), r(2, 2, 2, 3, 2), kernel_shape=[2, 3, 2], strides=[2, 1, 2],
         pads=[1, 0, 0, 0, 1, 1]),
    conv("same-upper-stride2", r(1, 2, 7, 8), r(3, 2, 3, 3), kernel_shape=[3, 3],
         auto_pad="SAME_UPPER", strides=[2, 2]),
    conv("same-lower-stride2", r(1, 2, 7, 6), Const(r(3, 2, 2, 3)), auto_pad="SAME_LOWER",
         strides=[2, 3]),
    conv("same-lower-stride1", r(1, 2, 5, 6), Const(r(2, 2, 2, 3)), auto_pad="SAME_LOWER"),
    conv("valid", r(1, 2, 7, 6), r(2, 2, 3, 3), kernel_shape=[3, 3], auto_pad="VALID",
         strides=[2, 2]),
    conv("opset9-stride1", r(2, 2, 5, 6), r(3, 2, 3, 3), r(3), kernel_shape=[3, 3],
         pads=[0, 1, 2, 1], opset=9),
    conv("opset11-same-strided", r(1, 2, 8, 7), r(3, 2, 3, 3), kernel_shape=[3, 3],
         auto_pad="SAME_UPPER", strides=[2, 2], opset=11),
    conv("opset22", r(1, 2, 6, 6), r(2, 1, 3, 3), kernel_shape=[3, 3], group=2, strides=[2, 2],
         dilations=[1, 2], pads=[1, 2, 1, 2], opset=22),
]

CONV_TRANSPOSE = [
    convt("2d", r(2, 3, 4, 5), Const(r(3, 2, 3, 3)), pads=[1, 1, 1, 1]),
    convt("2d-strided", r(1, 2, 4, 3), r(2, 3, 3, 2), r(3), kernel_shape=[3, 2], strides=[2, 3],
          pads=[1, 0, 0, 1], output_padding=[1, 2]),
    convt("2d-dilated", r(1, 2, 3, 4), Const(r(2, 2, 2, 3)), strides=[2, 1], dilations=[2, 2],
          pads=[0, 1, 2, 0]),
    convt("group", r(1, 4, 3, 3), r(4, 3, 3, 3), kernel_shape=[3, 3], group=2, strides=[2, 2],
          pads=[1, 1, 0, 0]),
    convt("depthwise", r(2, 3, 4, 4), Const(r(3, 1, 2, 2)), group=3, strides=[2, 2]),
    convt("1d", r(2, 2, 5), r(2, 3, 3), kernel_shape=[3], strides=[2], pads=[2, 1],
          output_padding=[1]),
    convt("3d", r(1, 2, 3, 2, 3), Const(r(2, 2, 2, 2, 3)), strides=[2, 1, 2],
          pads=[1, 0, 0, 0, 1, 1]),
    convt("same-upper", r(1, 2, 4, 3), Const(r(2, 3, 3, 3)), auto_pad="SAME_UPPER",
          strides=[2, 2]),
    convt("same-lower", r(1, 2, 4, 3), r(2, 3, 4, 3), kernel_shape=[4, 3], auto_pad="SAME_LOWER",
          strides=[2, 3]),
    convt("opset11", r(1, 2, 3, 4), r(2, 2, 3, 3), kernel_shape=[3, 3], strides=[2, 2],
          pads=[1, 1, 1, 1], opset=11),
]

# Strided windows at opset 9 and output_shape need static input lengths (rejections below).
STATIC_ONLY = [
    conv("opset9-stride2", r(1, 2, 7, 6), Const(r(3, 2, 3, 3)), strides=[2, 2],
         pads=[1, 1, 1, 1], opset=9),
    conv("opset9-stride2-active-w", r(1, 2, 7, 6), r(3, 2, 3, 3), kernel_shape=[3, 3],
         strides=[2, 2], pads=[1, 0, 1, 1], opset=9),
    convt("output-shape-same-upper", r(1, 2, 5), Const(r(2, 3, 3)), strides=[2],
          output_shape=[8], auto_pad="SAME_UPPER"),
    convt("output-shape-same-lower", r(1, 2, 4, 3), r(2, 2, 3, 3), kernel_shape=[3, 3],
          strides=[2, 2], output_shape=[8, 5], auto_pad="SAME_LOWER"),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CONV + CONV_TRANSPOSE, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


@pytest.mark.parametrize("case", STATIC_ONLY, ids=repr)
def test_static_shapes_match_finite_differences(case):
    check_case(case, symbolic=False)


def _model(op: str, x_dims: list, w: np.ndarray, opset: int, **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_dims)],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w.astype(np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_runtime_ir_version(model)
    return model


@pytest.mark.parametrize(("op", "x_dims", "w_shape", "opset", "attrs", "reason"), [
    ("Conv", ["n", 2, "h", "w"], (3, 2, 3, 3), 9, {"strides": [2, 2]}, "needs opset 10"),
    ("Conv", ["n", 2, "h", "w"], (3, 2, 3, 3), 10,
     {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, "needs opset 11"),
    ("ConvTranspose", ["n", 2, "h"], (2, 3, 3), 17, {"output_shape": [9]},
     "output_shape with dynamic input"),
    ("ConvTranspose", [1, 2, 5], (2, 3, 3), 17, {"output_shape": [9], "pads": [1, 1]},
     "output_shape together with explicit pads"),
    ("ConvTranspose", [1, 2, 5], (2, 3, 1), 17, {"output_shape": [12], "strides": [2]},
     "negative padding"),
    ("ConvTranspose", [1, 2, 5], (2, 3, 3), 17, {"output_padding": [2], "strides": [2],
                                                 "dilations": [3]}, "output_padding not below"),
])
def test_unsupported_cases_are_rejected_with_a_reason(op, x_dims, w_shape, opset, attrs,
                                                      reason):
    model = _model(op, x_dims, r(*w_shape), opset, **attrs)
    with pytest.raises(UnsupportedOpError, match=reason):
        differentiate(model, ["x"])


def test_stride1_constant_weights_use_a_flipped_conv():
    """The fast path: no ConvTranspose when a stride-1 Conv has constant weights."""
    model = _model("Conv", ["n", 3, "h", "w"], r(4, 3, 3, 3), 17, pads=[1, 1, 1, 1])
    diff = differentiate(model, ["x"])
    ops = [node.op_type for node in diff.model.graph.node]
    assert "ConvTranspose" not in ops and ops.count("Conv") == 2


def test_conv_transpose_output_shape_follows_onnxruntime():
    """The reference evaluator cannot run output_shape without auto_pad; ONNX Runtime's own
    forward on unit inputs is the oracle (total padding 1 goes first, as the spec says)."""
    model = _model("ConvTranspose", [1, 2, 5], r(2, 3, 3), 17, strides=[2], output_shape=[10])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    seed = r(1, 3, 10).astype(np.float32)
    expected = np.zeros(10, dtype=np.float32)
    for i in range(expected.size):
        unit = np.zeros(10, dtype=np.float32)
        unit[i] = 1.0
        expected[i] = np.sum(session.run(None, {"x": unit.reshape(1, 2, 5)})[0] * seed)
    diff = differentiate(model, ["x"])
    gradient = ort.InferenceSession(diff.model.SerializeToString(),
                                    providers=["CPUExecutionProvider"])
    got = gradient.run([diff.grads["x"]], {"x": np.zeros((1, 2, 5), np.float32),
                                           diff.seeds["y"]: seed})[0]
    np.testing.assert_allclose(got.reshape(-1), expected, atol=1e-5)


def test_bias_gradient_when_the_incoming_gradient_has_no_recorded_rank():
    """A Conv's dB sums dY over every axis but the channels. Where the gradient reaching it
    comes through ops whose output shapes inference leaves open (here a Resize feeding
    another Conv, its output declared without a shape), its rank comes from X: once this
    raised ModelError. Checked against central differences (float32, ONNX Runtime has no
    double Conv; y is affine in the biases, so a unit step is exact up to rounding)."""
    from onnx import TensorProto, numpy_helper

    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Resize", ["c", "", "scales"], ["r"], mode="linear"),
             helper.make_node("ConvTranspose", ["r", "w2", "b2"], ["y"], pads=[1, 1, 1, 1])]
    graph = helper.make_graph(
        nodes, "unranked",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [3]),
         helper.make_tensor_value_info("b2", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [numpy_helper.from_array(r32(rng, 3, 2, 3, 3), "w"),
         numpy_helper.from_array(r32(rng, 3, 2, 3, 3), "w2"),
         numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_runtime_ir_version(model)
    feeds = {"x": r32(rng, 2, 2, 4, 4), "b": r32(rng, 3), "b2": r32(rng, 2)}
    seed = r32(rng, 2, 2, 8, 8)
    diff = differentiate(model, ["b", "b2"], outputs=["y"])
    session = ort.InferenceSession(diff.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    grads = session.run([diff.grads["b"], diff.grads["b2"]], {**feeds, diff.seeds["y"]: seed})
    forward = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])

    def objective(changed: dict) -> float:
        return float(np.sum(seed.astype(np.float64)
                            * forward.run(["y"], {**feeds, **changed})[0]))

    for name, grad in zip(["b", "b2"], grads, strict=True):
        numeric = np.zeros_like(feeds[name])
        for i in range(numeric.size):
            step = np.zeros_like(feeds[name])
            step[i] = 1
            numeric[i] = (objective({name: feeds[name] + step})
                          - objective({name: feeds[name] - step})) / 2
        np.testing.assert_allclose(grad, numeric, rtol=1e-4, atol=1e-4)


def r32(rng, *shape) -> np.ndarray:
    return rng.standard_normal(shape).astype(np.float32)
