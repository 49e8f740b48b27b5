"""The quantized-op decompositions (onnxplain/graph/canonical/quantized.py) against ONNX
Runtime's own kernels, on random inputs.

The decomposed model runs with ONNX Runtime's graph optimisations off: with them on, its QDQ
fusion would turn DequantizeLinear -> Conv -> QuantizeLinear back into QLinearConv and the test
would compare the kernel with itself. Float outputs match to 1e-5 relative. Integer outputs
match exactly except where the float result lies within rounding error of a half-way point
between two quanta: ONNX Runtime requantizes an int32 accumulator with one float multiply,
the decomposition rounds the float op's result, so an element may differ by one quantum, and
then only where the decomposition's unrounded value lies within 1e-4 quanta of a tie (checked:
this is float rounding, not a different formula).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.errors import ModelError
from onnxplain.graph.canonical import canonicalise

MS = "com.microsoft"
RNG = np.random.default_rng(0)
U8, I8, F32 = np.uint8, np.int8, np.float32


def q(shape, dtype=U8) -> np.ndarray:
    info = np.iinfo(dtype)
    return RNG.integers(info.min, info.max + 1, size=shape).astype(dtype)


def scale(value=0.02, shape=()) -> np.ndarray:
    return (value * RNG.uniform(0.5, 1.5, size=shape)).astype(F32) if shape else \
        np.array(value, dtype=F32)


def zp(value, dtype=U8, shape=()) -> np.ndarray:
    return np.full(shape, value, dtype=dtype)


@dataclass
class Case:
    id: str
    op: str
    feeds: dict[str, np.ndarray]     # graph inputs, in the op's input order with `consts`
    consts: dict[str, np.ndarray]    # initializers
    order: list[str]                 # the op's inputs ('' for an absent optional one)
    out: int                         # output element type
    domain: str = ""
    attrs: dict = field(default_factory=dict)
    cast_output: bool = False        # read the output through Cast(to=float), as ORT writes
    opset: int = 17


def _conv_case(id_: str, per_channel: bool, **attrs) -> Case:
    m, c, group = 6, 4, attrs.get("group", 1)
    w_scale = scale(0.01, (m,)) if per_channel else scale(0.01)
    return Case(id_, "QLinearConv", {"x": q((2, c, 9, 9))},
                {"xs": scale(0.03), "xz": zp(120), "w": q((m, c // group, 3, 3), I8),
                 "ws": w_scale, "wz": zp(0, I8, w_scale.shape), "ys": scale(0.5),
                 "yz": zp(60), "b": RNG.integers(-500, 500, (m,)).astype(np.int32)},
                ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz", "b"], TensorProto.UINT8,
                attrs=dict(kernel_shape=[3, 3], **attrs))


def _contrib(case: Case, channels_last: int) -> Case:
    """The com.microsoft form of a QLinearConv case (ONNX Runtime's NHWC transformer writes
    it), x [N, C, H, W] moved to [N, H, W, C] where channels_last=1."""
    x = case.feeds["x"]
    feeds = {"x": np.ascontiguousarray(x.transpose(0, 2, 3, 1))} if channels_last else \
        case.feeds
    return Case(case.id, case.op, feeds, case.consts, case.order, case.out, MS,
                {**case.attrs, "channels_last": channels_last})


CASES = [
    _conv_case("qlinearconv", False, pads=[1, 1, 1, 1]),
    _conv_case("qlinearconv_per_channel_strided_grouped", True, strides=[2, 2],
               pads=[0, 1, 1, 0], group=2),
    Case("qlinearmatmul", "QLinearMatMul", {"a": q((2, 3, 16))},
         {"as": scale(0.05), "az": zp(128), "b": q((16, 5), I8), "bs": scale(0.02),
          "bz": zp(0, I8), "ys": scale(0.3), "yz": zp(100)},
         ["a", "as", "az", "b", "bs", "bz", "ys", "yz"], TensorProto.UINT8),
    Case("matmulinteger_to_cast", "MatMulInteger", {"a": q((2, 3, 16))},
         {"b": q((16, 5), I8), "az": zp(128), "bz": q((5,), I8)},
         ["a", "b", "az", "bz"], TensorProto.INT32, cast_output=True),
    Case("matmulinteger_int32", "MatMulInteger", {"a": q((3, 16))},
         {"b": q((16, 5), U8), "az": zp(3), "bz": zp(7)},
         ["a", "b", "az", "bz"], TensorProto.INT32),
    Case("convinteger_to_cast", "ConvInteger", {"x": q((1, 3, 7, 7))},
         {"w": q((4, 3, 3, 3), U8), "xz": zp(100), "wz": zp(120)},
         ["x", "w", "xz", "wz"], TensorProto.INT32, attrs={"pads": [1, 1, 1, 1]},
         cast_output=True),
    Case("qgemm_quantized", "QGemm", {"a": q((4, 16))},
         {"as": scale(0.05), "az": zp(128), "b": q((6, 16), I8), "bs": scale(0.02, (6,)),
          "bz": zp(0, I8, (6,)), "c": RNG.integers(-300, 300, (6,)).astype(np.int32),
          "ys": scale(0.2), "yz": zp(130)},
         ["a", "as", "az", "b", "bs", "bz", "c", "ys", "yz"], TensorProto.UINT8, MS,
         {"transB": 1, "alpha": 0.5}),
    Case("qgemm_float", "QGemm", {"a": q((4, 16))},
         {"as": scale(0.05), "az": zp(128), "b": q((16, 6), I8), "bs": scale(0.02),
          "bz": zp(0, I8), "c": RNG.integers(-300, 300, (6,)).astype(np.int32)},
         ["a", "as", "az", "b", "bs", "bz", "c"], TensorProto.FLOAT, MS),
    Case("qlinearadd_broadcast", "QLinearAdd", {"a": q((2, 4, 5)), "b": q((4, 1))},
         {"as": scale(0.05), "az": zp(128), "bs": scale(0.04), "bz": zp(100),
          "cs": scale(0.08), "cz": zp(120)},
         ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], TensorProto.UINT8, MS),
    Case("qlinearmul_int8", "QLinearMul", {"a": q((2, 4, 5), I8), "b": q((2, 4, 5), I8)},
         {"as": scale(0.05), "az": zp(3, I8), "bs": scale(0.04), "bz": zp(-5, I8),
          "cs": scale(0.2), "cz": zp(0, I8)},
         ["a", "as", "az", "b", "bs", "bz", "cs", "cz"], TensorProto.INT8, MS),
    Case("qlinearglobalaveragepool", "QLinearGlobalAveragePool", {"x": q((2, 3, 5, 6))},
         {"xs": scale(0.05), "xz": zp(128), "ys": scale(0.01), "yz": zp(120)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.UINT8, MS, {"channels_last": 0}),
    Case("qlinearaveragepool", "QLinearAveragePool", {"x": q((2, 3, 7, 7))},
         {"xs": scale(0.05), "xz": zp(128), "ys": scale(0.02), "yz": zp(120)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.UINT8, MS,
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
          "count_include_pad": 0}),
    Case("qlinearglobalaveragepool_nhwc", "QLinearGlobalAveragePool", {"x": q((2, 5, 6, 3))},
         {"xs": scale(0.05), "xz": zp(128), "ys": scale(0.01), "yz": zp(120)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.UINT8, MS, {"channels_last": 1}),
    Case("qlinearaveragepool_nhwc_int8", "QLinearAveragePool", {"x": q((2, 7, 7, 3), I8)},
         {"xs": scale(0.05), "xz": zp(3, I8), "ys": scale(0.02), "yz": zp(-4, I8)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.INT8, MS,
         {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1],
          "count_include_pad": 1, "channels_last": 1}),
    _contrib(_conv_case("ms_qlinearconv_nhwc", True, strides=[2, 2], pads=[0, 1, 1, 0],
                        group=2), channels_last=1),
    _contrib(_conv_case("ms_qlinearconv_nchw", False, pads=[1, 1, 1, 1]), channels_last=0),
    Case("nhwc_maxpool", "NhwcMaxPool", {"x": q((2, 7, 7, 3))}, {}, ["x"], TensorProto.UINT8,
         MS, {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}),
    Case("nhwc_maxpool_int8_opset11", "NhwcMaxPool", {"x": q((2, 6, 6, 3), I8)}, {}, ["x"],
         TensorProto.INT8, MS, {"kernel_shape": [2, 2]}, opset=11),
    Case("qlinearconcat", "QLinearConcat", {"a": q((2, 3, 4)), "b": q((2, 5, 4))},
         {"ys": scale(0.05), "yz": zp(128), "as": scale(0.03), "az": zp(100),
          "bs": scale(0.06), "bz": zp(140)},
         ["ys", "yz", "a", "as", "az", "b", "bs", "bz"], TensorProto.UINT8, MS, {"axis": 1}),
    Case("qlinearsigmoid", "QLinearSigmoid", {"x": q((3, 17))},
         {"xs": scale(0.05), "xz": zp(128), "ys": scale(1 / 256), "yz": zp(0)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.UINT8, MS),
    Case("qlinearleakyrelu", "QLinearLeakyRelu", {"x": q((3, 17), I8)},
         {"xs": scale(0.05), "xz": zp(5, I8), "ys": scale(0.04), "yz": zp(-20, I8)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.INT8, MS, {"alpha": 0.1}),
    Case("qlinearsoftmax", "QLinearSoftmax", {"x": q((3, 4, 10))},
         {"xs": scale(0.05), "xz": zp(128), "ys": scale(1 / 256), "yz": zp(0)},
         ["x", "xs", "xz", "ys", "yz"], TensorProto.UINT8, MS, {"axis": -1, "opset": 13}),
    Case("dynamicquantizematmul", "DynamicQuantizeMatMul",
         {"a": RNG.standard_normal((2, 3, 16)).astype(F32)},
         {"b": q((16, 5), I8), "bs": scale(0.02, (5,)), "bz": zp(0, I8, (5,)),
          "bias": RNG.standard_normal(5).astype(F32)},
         ["a", "b", "bs", "bz", "bias"], TensorProto.FLOAT, MS),
    Case("matmulintegertofloat", "MatMulIntegerToFloat", {"a": q((2, 3, 16))},
         {"b": q((16, 5), I8), "as": scale(0.05), "bs": scale(0.02, (5,)), "az": zp(128),
          "bz": zp(0, I8, (5,)), "bias": RNG.standard_normal(5).astype(F32)},
         ["a", "b", "as", "bs", "az", "bz", "bias"], TensorProto.FLOAT, MS),
    Case("ms_quantizelinear_per_axis", "QuantizeLinear",
         {"x": RNG.standard_normal((2, 3, 4)).astype(F32)},
         {"s": scale(0.02, (3,)), "z": zp(0, I8, (3,))}, ["x", "s", "z"], TensorProto.INT8,
         MS, {"axis": 1}),
    Case("ms_dequantizelinear", "DequantizeLinear", {"x": q((2, 3, 4))},
         {"s": scale(0.02), "z": zp(128)}, ["x", "s", "z"], TensorProto.FLOAT, MS),
    # Per axis before opset 13 (ONNX Runtime's quantizer writes these for old opsets): split
    # into per-slice standard ops.
    Case("ms_quantizelinear_per_axis_opset11", "QuantizeLinear",
         {"x": RNG.standard_normal((2, 3, 4)).astype(F32)},
         {"s": scale(0.02, (4,)), "z": q((4,), I8)}, ["x", "s", "z"], TensorProto.INT8,
         MS, {"axis": -1}, opset=11),
    Case("ms_dequantizelinear_axis_one_scale_opset10", "DequantizeLinear", {"x": q((2, 3))},
         {"s": scale(0.02), "z": zp(7)}, ["x", "s", "z"], TensorProto.FLOAT, MS, {"axis": 1},
         opset=10),
    Case("ms_dequantizelinear_per_axis_opset10", "DequantizeLinear", {"x": q((2, 3, 4))},
         {"s": scale(0.02, (3,)), "z": q((3,))}, ["x", "s", "z"], TensorProto.FLOAT, MS,
         {"axis": 1}, opset=10),
]


def build(case: Case) -> onnx.ModelProto:
    node = helper.make_node(case.op, case.order, ["y"], domain=case.domain or None,
                            name="quantized_op", **case.attrs)
    nodes, out, out_type = [node], "y", case.out
    if case.cast_output:
        nodes.append(helper.make_node("Cast", ["y"], ["y_float"], to=TensorProto.FLOAT))
        out, out_type = "y_float", TensorProto.FLOAT
    inputs = [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype),
                                            list(v.shape)) for k, v in case.feeds.items()]
    graph = helper.make_graph(nodes, case.id, inputs,
                              [helper.make_tensor_value_info(out, out_type, None)],
                              [numpy_helper.from_array(v, k) for k, v in case.consts.items()])
    opsets = [helper.make_opsetid("", case.opset), helper.make_opsetid(MS, 1)]
    return helper.make_model(graph, opset_imports=opsets, ir_version=10)


def run(model: onnx.ModelProto, feeds: dict, optimise: bool = True) -> np.ndarray:
    options = ort.SessionOptions()
    if not optimise:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def decomposed(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    canonicalise(copy)
    left = [n.op_type for n in copy.graph.node if n.domain == MS or n.op_type in (
        "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger")]
    assert not left, f"not decomposed: {left}"
    return copy


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_decomposition_matches_onnxruntime_kernel(case: Case):
    model = build(case)
    expected = run(model, case.feeds)
    ours = decomposed(model)
    got = run(ours, case.feeds, optimise=False)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    if expected.dtype.kind == "f":
        scale_ = max(1.0, float(np.abs(expected).max()))
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5 * scale_)
        return
    off = got != expected
    if not off.any():
        return
    diff = np.abs(got.astype(np.int64) - expected.astype(np.int64))
    assert diff.max() <= 1, f"off by {diff.max()} quanta"
    halfway = distance_to_halfway(ours, case)[off]
    assert halfway.max() < 1e-4, f"off by one {halfway.max():.2g} quanta from a tie"


def distance_to_halfway(model: onnx.ModelProto, case: Case) -> np.ndarray:
    """How far (in quanta) the unrounded output x / scale + zero point of the final
    QuantizeLinear lies from the nearest half-way point between two integers."""
    quantize = next(n for n in model.graph.node if n.op_type == "QuantizeLinear"
                    and n.output[0] == "y")
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    probe.graph.output[0].CopyFrom(helper.make_tensor_value_info(quantize.input[0],
                                                                 TensorProto.FLOAT, None))
    real = run(probe, case.feeds, optimise=False).astype(np.float64)
    values = {**case.consts, **{i.name: numpy_helper.to_array(i)
                                for i in model.graph.initializer}}
    unrounded = real / values[quantize.input[1]] + values[quantize.input[2]]
    return np.abs(unrounded - np.floor(unrounded) - 0.5)


def test_integer_product_read_as_int32_stays_int32():
    """Where something other than Cast-to-float reads MatMulInteger, the result stays int32
    (exact: the sums are far below 2^24)."""
    case = next(c for c in CASES if c.id == "matmulinteger_int32")
    model = decomposed(build(case))
    assert [n.op_type for n in model.graph.node][-1] == "Cast"


def test_channels_last_of_unknown_rank_refused_naming_the_node():
    case = next(c for c in CASES if c.id == "qlinearglobalaveragepool_nhwc")
    model = build(case)
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ModelError, match=r"QLinearGlobalAveragePool node 'quantized_op' "
                                         r"\(channels_last=1\): channels_last=1 on an input "
                                         "of unknown rank"):
        decomposed(model)


def test_per_axis_before_opset_13_matches_the_kernel():
    """QLinearConv with per-channel weights at opset 12: the weights dequantized slice by
    slice (DequantizeLinear has no axis before 13)."""
    case = next(c for c in CASES if c.id == "qlinearconv_per_channel_strided_grouped")
    test_decomposition_matches_onnxruntime_kernel(Case(**{**case.__dict__, "opset": 12}))


def test_computed_per_axis_scale_before_opset_13_refused():
    case = next(c for c in CASES if c.id == "ms_quantizelinear_per_axis_opset11")
    feeds = {**case.feeds, "s": case.consts["s"]}
    model = build(Case(**{**case.__dict__, "feeds": feeds,
                          "consts": {"z": case.consts["z"]}}))
    with pytest.raises(ModelError, match="per-axis scale 's' or its zero point is computed"):
        decomposed(model)
