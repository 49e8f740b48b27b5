"""Perturbation methods on models no gradient method can explain: an ArgMax head that
returns class labels, and an integer-quantised model (ONNX Runtime's dynamic quantisation)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import InputError


def _argmax_model() -> onnx.ModelProto:
    """x [N, 4] -> label [N] = argmax(x W): a classifier that only returns its decision."""
    w = np.array([[1, -1, 0], [0, 2, -1], [-1, 0, 1], [0.5, 0.5, 0.5]], dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["scores"]),
             helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0)]
    graph = helper.make_graph(
        nodes, "argmax", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"])],
        [onnx.numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                             ir_version=9)


def _topk_indices_model() -> onnx.ModelProto:
    """x [N, 4] -> the indices of the 2 best classes of x W, best first (no scores)."""
    model = _argmax_model()
    graph = model.graph
    del graph.node[1:]
    graph.node.append(helper.make_node("TopK", ["scores", "k"], ["values", "top"], axis=1))
    graph.initializer.append(onnx.numpy_helper.from_array(np.array([2], np.int64), "k"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info("top", TensorProto.INT64, ["N", 2]))
    return model


def test_a_topk_head_is_explained_by_its_first_choice():
    explainer = onnxplain.Explainer(_topk_indices_model(), providers="cpu")
    x = np.array([[2.0, 0.1, 0.0, 0.0], [0.0, 1.0, 0.0, 0.2]], dtype=np.float32)
    top = explainer.forward(x)["top"]
    result = explainer.explain(x, "occlusion", baseline=0.0)
    np.testing.assert_array_equal(result.target, top[:, 0])
    for row in range(2):
        for column in range(4):
            occluded = x[row:row + 1].copy()
            occluded[0, column] = 0.0
            kept = explainer.forward(occluded)["top"][0, 0] == top[row, 0]
            assert result["x"][row, column] == pytest.approx(1.0 - float(kept))
    shap = explainer.explain(x, "kernel_shap", features="columns")
    # Additivity on the decision: the values sum to 1 (the class is chosen) minus its
    # expected value over the coalitions' baseline (all zeros: class 0 of x W = 0 wins ties).
    base = float(explainer.forward(np.zeros((1, 4), np.float32))["top"][0, 0] == top[0, 0])
    assert shap["x"][0].sum() == pytest.approx(1.0 - base, abs=1e-6)


def test_occlusion_explains_an_argmax_head_by_its_decision():
    explainer = onnxplain.Explainer(_argmax_model(), providers="cpu")
    assert explainer.output == "label"
    x = np.array([[2.0, 0.1, 0.0, 0.0], [0.0, 1.0, 0.0, 0.2]], dtype=np.float32)
    result = explainer.explain(x, "occlusion", baseline=0.0)
    assert result.target.tolist() == [0, 1]
    labels = explainer.forward(x)["label"]
    for row in range(2):
        for column in range(4):
            occluded = x[row:row + 1].copy()
            occluded[0, column] = 0.0
            flipped = explainer.forward(occluded)["label"][0] != labels[row]
            assert result["x"][row, column] == pytest.approx(float(flipped))
    with pytest.raises(InputError, match="not a float tensor"):
        explainer.explain(x, "saliency")


def test_occlusion_explains_a_dynamically_quantised_model(zoo, tmp_path):
    from onnxruntime.quantization import QuantType, quantize_dynamic

    path = tmp_path / "quantised.onnx"
    quantize_dynamic(str(zoo.model_path("digits_mlp")), str(path), weight_type=QuantType.QInt8)
    ops = {node.op_type for node in onnx.load(path).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}, ops
    explainer = onnxplain.Explainer(path, providers="cpu")
    name = explainer.model.inputs[0].name
    x = zoo.sample("digits_mlp")[name][:2]
    # Dynamic quantisation takes one scale over the batch: rows must run one at a time.
    with pytest.warns(onnxplain.BatchNotice, match="DynamicQuantizeLinear"):
        result = explainer.explain(x, "occlusion", window=8, stride=8, target=[1, 2])
    clean = explainer.forward(x)["logits"]
    for row, target in enumerate([1, 2]):
        for start in range(0, 64, 8):
            occluded = x[row:row + 1].copy()
            occluded[0, start:start + 8] = 0.0
            drop = clean[row, target] - explainer.forward(occluded)["logits"][0, target]
            assert np.allclose(result[name][row, start:start + 8], drop, atol=1e-5)
