"""Relu -> MaxPool is run as MaxPool -> Relu in gradient programs: outputs and gradients stay
bit-identical, and the swap is skipped wherever the Relu's own output is asked for."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.autodiff.commute import pool_after_relu
from onnxplain.autodiff.program import build_gradient_program
from onnxplain.graph.model import Model
from onnxplain.runtime.session import Session

RNG = np.random.default_rng(5)


def conv_relu_pool(relu_is_output: bool = False, indices: bool = False) -> onnx.ModelProto:
    """x [batch, 2, 9, 9] -> Conv -> Relu -> MaxPool 3x3/2 -> Flatten -> MatMul."""
    pool_outputs = ["pooled", "indices"] if indices else ["pooled"]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("MaxPool", ["r"], pool_outputs, kernel_shape=[3, 3],
                              strides=[2, 2], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["pooled"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["logits"])]
    outputs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])]
    if relu_is_output:
        outputs.append(helper.make_tensor_value_info("r", TensorProto.FLOAT, None))
    inits = [numpy_helper.from_array(RNG.standard_normal((4, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(RNG.standard_normal((4 * 25, 3)).astype(np.float32),
                                     "dense")]
    graph = helper.make_graph(
        nodes, "crp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 2, 9, 9])],
        outputs, inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def _ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def _x() -> np.ndarray:
    # Repeated values make ties inside windows, positive and zero, as real images do.
    return np.round(RNG.standard_normal((4, 2, 9, 9)), 1).astype(np.float32)


def test_swap_keeps_the_forward_bit_identical():
    proto = conv_relu_pool()
    swapped = onnx.ModelProto()
    swapped.CopyFrom(proto)
    pool_after_relu(swapped.graph, dict(Model(proto).infos), keep=())
    assert _ops(swapped)[:3] == ["Conv", "MaxPool", "Relu"]
    onnx.checker.check_model(swapped, full_check=True)
    x = _x()
    before = Session(proto, ["CPUExecutionProvider"]).run(None, {"x": x})
    after = Session(swapped, ["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after["logits"], before["logits"])


def _gradient(proto: onnx.ModelProto, x: np.ndarray, taps=()) -> tuple[np.ndarray, list[str]]:
    program = build_gradient_program(Model(proto), "logits", ["x"], taps=taps)
    session = Session(program.model, ["CPUExecutionProvider"])
    out = session.run(None, {"x": x, program.target_input: np.array([0, 1, 2, 0])})
    return out[program.grads["x"]], _ops(program.model)


def test_gradient_is_bit_identical_to_the_unswapped_program():
    proto, x = conv_relu_pool(), _x()
    swapped, ops = _gradient(proto, x)
    assert ops[:3] == ["Conv", "MaxPool", "Relu"]
    kept, kept_ops = _gradient(proto, x, taps=["r"])  # a tap on r keeps the order
    assert kept_ops[:3] == ["Conv", "Relu", "MaxPool"]
    np.testing.assert_array_equal(swapped, kept)
    assert np.abs(swapped).max() > 0


@pytest.mark.parametrize("case", ["relu_is_output", "indices"])
def test_no_swap_when_the_relu_or_indices_are_read(case):
    proto = conv_relu_pool(**{case: True})
    program = build_gradient_program(Model(proto), "logits", ["x"])
    assert _ops(program.model)[:3] == ["Conv", "Relu", "MaxPool"]


def test_swap_moves_the_declared_shapes_with_the_tensors():
    """Float16 converters declare every tensor; the Relu's old output now holds the pooled
    values, so its declaration must say so, or shape inference (export's checker) refuses."""
    proto = onnx.shape_inference.infer_shapes(conv_relu_pool())
    declared = {info.name for info in proto.graph.value_info}
    assert {"r", "pooled"} <= declared
    pool_after_relu(proto.graph, dict(Model(proto).infos), keep=())
    onnx.checker.check_model(proto, full_check=True)
    shapes = {info.name: [d.dim_value or d.dim_param for d in info.type.tensor_type.shape.dim]
              for info in proto.graph.value_info}
    assert shapes["r"] == shapes["pooled"] == ["batch", 4, 5, 5]
