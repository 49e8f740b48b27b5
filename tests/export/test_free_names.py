"""A model tensor named like an explainer input (`target`, `output_seed`) is renamed inside
the explainer (export.graph._free_names). Where it is a large weight, a stub of the model's
(graph.weights: a shared stub, or a file stub of the model's file), the renamed stub must
still stand for the right bytes: the exported explainer and the in-process run give
saliency's closed form for a ReLU MLP, d y_c / d x = W1 diag(h > 0) W2[:, c]."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.exporter import export_explainer
from onnxplain.graph import weights as weights_module
from onnxplain.graph.weights import file_span, is_stub
from onnxplain.runtime import session as session_module

from .test_export import _run

SMALL = 2048  # initializers of this many bytes or more are stubs here


@pytest.fixture
def small_stubs(monkeypatch) -> None:
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(weights_module, "SHARED_BYTES", SMALL)
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)


def _mlp(first: str, second: str) -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """x [N, 16] -> Relu(x @ first) -> @ second -> logits [N, 10], both weights large."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((16, 64)).astype(np.float32)
    w2 = rng.standard_normal((64, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", first], ["h"], name="mm1"),
         helper.make_node("Relu", ["h"], ["r"], name="relu"),
         helper.make_node("MatMul", ["r", second], ["logits"], name="mm2")],
        "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w1, first), numpy_helper.from_array(w2, second)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    return model, w1, w2


def _saliency(x: np.ndarray, w1: np.ndarray, w2: np.ndarray, target: np.ndarray
              ) -> np.ndarray:
    x64, w1, w2 = x.astype(np.float64), w1.astype(np.float64), w2.astype(np.float64)
    active = (x64 @ w1 > 0).astype(np.float64)
    return np.stack([w1 @ (active[n] * w2[:, target[n]]) for n in range(len(x))])


@pytest.mark.parametrize("names", [("target", "w2"), ("w1", "output_seed")], ids=str)
@pytest.mark.parametrize("source", ["file", "bytes"])
def test_a_renamed_stub_keeps_its_bytes(names, source, small_stubs, tmp_path):
    model, w1, w2 = _mlp(*names)
    path = tmp_path / "mlp.onnx"
    onnx.save(model, str(path))
    given = str(path) if source == "file" else model.SerializeToString()
    explainer = onnxplain.Explainer(given, providers="cpu", progress=False)
    if source == "file":  # the case under test: the weights stay in the file
        assert all(file_span(i) for i in explainer.model.proto.graph.initializer)
    x = np.random.default_rng(1).standard_normal((4, 16)).astype(np.float32)
    explained = explainer.explain(x, method="saliency", abs=False)
    expected = _saliency(x, w1, w2, explained.target)
    np.testing.assert_allclose(explained["x"], expected, rtol=1e-5, atol=1e-6)
    exported = export_explainer(explainer.model, "saliency", abs="false")
    assert not any(is_stub(i) or file_span(i) for i in exported.graph.initializer)
    got = _run(exported, {"x": x})
    np.testing.assert_array_equal(got["attribution/x"], explained["x"])
    np.testing.assert_array_equal(got["logits"], _run(model, {"x": x})["logits"])
