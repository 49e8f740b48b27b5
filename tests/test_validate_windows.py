"""Conv-like and pooling nodes whose attributes contradict their weight or input (issue 18):
group that does not divide the channels, a weight shaped for another group count or kernel,
per-axis attributes of the wrong length. Each is refused at load in one ModelError naming the
node and the attribute, where ONNX Runtime itself fails on it (the oracle); consistent ones
load."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.errors import ModelError
from onnxplain.graph.model import Model


def windowed(op: str, x_dims, w_dims=None, bias=None, **attrs) -> bytes:
    """x -> op(x, W[, B]) -> y with initializers W of `w_dims` (no W: a pooling op) and B of
    `bias`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, list(x_dims))
    inits = [] if w_dims is None else [
        numpy_helper.from_array(np.ones(w_dims, np.float32), "W")]
    if bias is not None:
        inits.append(numpy_helper.from_array(np.ones(bias, np.float32), "B"))
    node = helper.make_node(op, ["x", *(i.name for i in inits)], ["y"], name="n", **attrs)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", *"abcd"[:len(x_dims) - 1]])
    graph = helper.make_graph([node], op, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    model.ir_version = 10
    return model.SerializeToString()


BROKEN = {
    "conv_group_not_dividing_channels": (
        windowed("Conv", ("N", 3, 8, 8), (4, 1, 3, 3), group=2), "group=2"),
    "conv_group_not_dividing_outputs": (
        windowed("Conv", ("N", 4, 8, 8), (3, 2, 3, 3), group=2), "group=2"),
    "conv_weight_for_other_group": (
        windowed("Conv", ("N", 4, 8, 8), (4, 1, 3, 3), group=2), "group=2"),
    "conv_weight_for_other_channels": (
        windowed("Conv", ("N", 4, 8, 8), (4, 3, 3, 3)), "group=1"),
    "conv_kernel_against_weight": (
        windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3), kernel_shape=[5, 5]), "kernel_shape"),
    "conv_pads_length": (
        windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3), pads=[1, 1]), "pads=[1, 1]"),
    "conv_strides_length": (
        windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3), strides=[1, 1, 1]), "strides"),
    "conv_dilations_length": (
        windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3), dilations=[2]), "dilations"),
    "conv_rank_against_weight": (
        windowed("Conv", ("N", 3, 8, 8), (4, 3, 3)), "rank"),
    "convtranspose_group": (
        windowed("ConvTranspose", ("N", 3, 8, 8), (3, 2, 3, 3), group=2), "group=2"),
    "convtranspose_channels": (
        windowed("ConvTranspose", ("N", 4, 8, 8), (2, 2, 3, 3)), "group=1"),
    "convtranspose_output_padding": (
        windowed("ConvTranspose", ("N", 2, 8, 8), (2, 2, 3, 3), output_padding=[1]),
        "output_padding"),
    "conv_bias": (windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3), bias=(3,)), "bias 'B'"),
    "convtranspose_bias": (
        windowed("ConvTranspose", ("N", 4, 8, 8), (4, 3, 3, 3), bias=(3,), group=2),
        "bias 'B'"),
    "maxpool_pads_length": (
        windowed("MaxPool", ("N", 3, 8, 8), kernel_shape=[2, 2], pads=[0, 0, 0]), "pads"),
    "averagepool_strides_length": (
        windowed("AveragePool", ("N", 3, 8, 8), kernel_shape=[2, 2], strides=[2]), "strides"),
    "maxpool_kernel_rank": (
        windowed("MaxPool", ("N", 3, 8, 8), kernel_shape=[2, 2, 2]), "kernel_shape"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_contradicting_window_attributes_are_refused_at_load(case):
    data, attribute = BROKEN[case]
    with pytest.raises(ModelError) as caught:
        Model.load(data)
    text = str(caught.value)
    assert len(text.splitlines()) == 1, text
    assert "'n'" in text and attribute in text, text


@pytest.mark.parametrize("op,x_dims,w_dims,attrs", [
    ("Conv", ("N", 4, 8, 8), (6, 2, 3, 3), {"group": 2}),
    ("Conv", ("N", 4, 8, 8), (4, 1, 3, 3), {"group": 4, "pads": [1, 1, 1, 1]}),
    ("ConvTranspose", ("N", 4, 8, 8), (4, 3, 3, 3), {"group": 2, "bias": (6,)}),
    ("Conv", ("N", 4, 8, 8), (6, 4, 3, 3), {"bias": (6,)}),
    ("Conv", ("N", "C", 8), (4, 2, 3), {"group": 2}),  # channels unknown: the weight decides
    ("MaxPool", ("N", 3, 8, 8), None, {"kernel_shape": [2, 2], "strides": [2, 2]}),
])
def test_consistent_windows_load(op, x_dims, w_dims, attrs):
    Model.load(windowed(op, x_dims, w_dims, **attrs))


def test_onnx_agrees_these_are_broken():
    """The oracle for BROKEN: ONNX Runtime refuses or fails on each (so refusing is right)."""
    import onnxruntime as ort

    for case, (data, _) in BROKEN.items():
        feeds = {"x": np.ones(_dims(data), np.float32)}
        with pytest.raises(Exception):  # noqa: B017,PT011 - any failure of the runtime
            session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
            session.run(None, feeds)
        del case


def _dims(data: bytes) -> list[int]:
    dims = onnx.load_from_string(data).graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else 2 for d in dims]


@pytest.mark.parametrize("size", [0, -7, 2**40])
def test_lrn_window_size_is_checked_at_load(size):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 4, 4])
    node = helper.make_node("LRN", ["x"], ["y"], name="n", size=size)
    model = helper.make_model(helper.make_graph([node], "lrn", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 21)])
    with pytest.raises(ModelError, match=f"node 'n' \\(LRN\\) has size={size}"):
        Model.load(model.SerializeToString())


@pytest.mark.parametrize("field", ["producer_name", "node_name", "input_name"])
def test_text_that_is_not_utf8_is_refused_at_load(field):
    """A flipped bit in a name: protobuf hands the field back as bytes, which every later
    reader of names (inspect, the rules) would trip over."""
    data = windowed("Conv", ("N", 3, 8, 8), (4, 3, 3, 3))
    model = onnx.load_from_string(data)
    marker = "QQQQ"
    if field == "producer_name":
        model.producer_name = marker
    elif field == "node_name":
        model.graph.node[0].name = marker
    else:
        model.graph.input[0].name = marker
        model.graph.node[0].input[0] = marker
    broken = model.SerializeToString().replace(marker.encode(), b"\xff\xfeQQ")
    with pytest.raises(ModelError, match="is not UTF-8 text"):
        Model.load(broken)


def _fused_conv(kernel: int, x_size: int = 5) -> bytes:
    """ONNX Runtime's FusedConv (a Conv and its activation) over x [N, 1, x_size, x_size]."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, x_size, x_size])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2, "h", "w"])
    weight = numpy_helper.from_array(np.ones((2, 1, kernel, kernel), np.float32), "W")
    node = helper.make_node("FusedConv", ["x", "W"], ["y"], name="n", domain="com.microsoft",
                            kernel_shape=[kernel, kernel], activation="Relu")
    model = helper.make_model(helper.make_graph([node], "fused", [x], [y], [weight]),
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 9
    return model.SerializeToString()


@pytest.mark.parametrize("data", [_fused_conv(7), windowed("MaxPool", ("N", 3, 5, 5),
                                                           kernel_shape=[7, 7])],
                         ids=["fused_conv", "maxpool"])
def test_a_window_wider_than_its_input_is_refused_at_load(data):
    """One check for every windowed op, ONNX Runtime's FusedConv included; the runtime
    fails on these too (the oracle)."""
    import onnxruntime as ort

    with pytest.raises(ModelError, match="'n' .*has kernel_shape=\\[7, 7\\], wider than its "
                                         "input 'x'"):
        Model.load(data)
    with pytest.raises(Exception):  # noqa: B017,PT011 - any failure of the runtime
        session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
        session.run(None, {"x": np.ones((1, *_dims(data)[1:]), np.float32)})


def test_a_fused_conv_that_fits_loads():
    Model.load(_fused_conv(3))
