"""Dims declared as -1 or "?" (paddle2onnx and older exporters) are unknown, never a fixed
size of -1 nor one symbol shared by unrelated axes."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain

from ..tiny_models import mlp, mlp_reference


def _declare(model: onnx.ModelProto, first_dim) -> onnx.ModelProto:
    for value in (*model.graph.input, *model.graph.output):
        dim = value.type.tensor_type.shape.dim[0]
        dim.Clear()
        if isinstance(first_dim, int):
            dim.dim_value = first_dim
        else:
            dim.dim_param = first_dim
    return model


@pytest.mark.parametrize("declared", [-1, "?", "-1"])
def test_a_batch_axis_declared_unknown_is_symbolic(declared, tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(_declare(mlp(), declared), path)
    explainer = onnxplain.Explainer(str(path), "cpu")
    assert explainer.model.batch.symbolic
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    result = explainer.explain(x, target=2, abs=False)
    _, jacobian = mlp_reference(mlp(), x)
    np.testing.assert_allclose(result["x"], jacobian[:, 2], rtol=1e-5, atol=1e-6)
    assert onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0].HasField(
        "dim_value" if isinstance(declared, int) else "dim_param")  # the file is untouched


def test_question_marks_are_not_one_symbol():
    """Were both '?' one symbol, the shape facts would claim the two inputs' first axes
    equal, which nothing proved."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "g",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["?", 3]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, ["?", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["?", 3])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    explainer = onnxplain.Explainer(model, "cpu")
    dims = [spec.dims[0] for spec in explainer.model.inputs]
    assert dims[0] != dims[1] and "?" not in dims
