"""ExplainerGraph.add_input, the one way an explainer gets an input: required without a
default, optional with one (absent: its default; fed: the value given), declared once, and
described in one wording. Run by ONNX Runtime (the oracle for what an absent input reads)."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxplain.export.graph import ExplainerGraph
from onnxplain.graph.model import Model


def _graph() -> ExplainerGraph:
    node = helper.make_node("Relu", ["x"], ["y"], name="relu")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "x", TensorProto.FLOAT, ["N", 3])], [helper.make_tensor_value_info(
            "y", TensorProto.FLOAT, ["N", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return ExplainerGraph(Model.load(model.SerializeToString()), "y", any_output=True)


def _session(eg: ExplainerGraph, name: str) -> ort.InferenceSession:
    eg.declare(eg.b.op("Identity", name), "out", "the input as given")
    options = ort.SessionOptions()
    options.log_severity_level = 3  # an optional input is an "initializer in graph inputs"
    return ort.InferenceSession(eg.proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_an_input_with_a_default_is_optional():
    eg = _graph()
    default = np.array([[0.5, -1.0, 2.0]], np.float32)
    assert eg.add_input("shift", TensorProto.FLOAT, ["shift_rows", 3], default,
                        "added to x") == "shift"
    assert eg.added["shift"] == ("float [1 or N, 3], optional: added to x; absent: the values "
                                 "given at export")
    session = _session(eg, "shift")
    x = np.zeros((2, 3), np.float32)
    np.testing.assert_array_equal(session.run(["out"], {"x": x})[0], default)
    fed = np.ones((2, 3), np.float32)
    np.testing.assert_array_equal(session.run(["out"], {"x": x, "shift": fed})[0], fed)


def test_an_input_without_a_default_is_required_and_declared_once():
    eg = _graph()
    eg.add_input("seed", TensorProto.INT64, ["seed_rows"], None, "the seed")
    eg.add_input("seed", TensorProto.INT64, ["seed_rows"], np.array([7]), "another meaning")
    assert [i.name for i in eg.proto.graph.input] == ["x", "seed"]
    assert not any(init.name == "seed" for init in eg.proto.graph.initializer)
    assert eg.added["seed"] == "int64 [1 or N]: the seed"
    session = _session(eg, "seed")
    with pytest.raises(ValueError, match="seed"):  # onnxruntime: a required input missing
        session.run(["out"], {"x": np.zeros((1, 3), np.float32)})
    fed = np.array([3, 4], np.int64)
    np.testing.assert_array_equal(
        session.run(["out"], {"x": np.zeros((2, 3), np.float32), "seed": fed})[0], fed)


def test_a_one_value_default_is_described_by_its_value():
    eg = _graph()
    eg.add_input("rows", TensorProto.INT64, [], np.array(16, np.int64), "rows per iteration")
    assert eg.added["rows"] == "int64 scalar, optional: rows per iteration; absent: 16"
