"""A model whose batch axis is declared symbolic but that only runs at batch 1 (a Reshape to
a constant [1, ...] shape, as RotaryEmbedding caches exported with batch 1 are): the
perturbation runtime retries one copy per run, says so once, and scores as if every copy
ran alone. Oracle: a float64 numpy reference of the occluded scores."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import BatchNotice, Explainer, OnnxplainError

FEATURES, CLASSES = 8, 3


def batch_one_only() -> onnx.ModelProto:
    """x [batch, F] -> Reshape to [1, F] -> MatMul w -> logits [batch, C]."""
    w = np.random.default_rng(5).standard_normal((FEATURES, CLASSES)).astype(np.float32)
    inits = [numpy_helper.from_array(w, "w"),
             numpy_helper.from_array(np.array([1, FEATURES], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "batch_one",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", FEATURES])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", CLASSES])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def occluded_reference(model: onnx.ModelProto, x: np.ndarray, window: int) -> np.ndarray:
    """The drop of the predicted class's score with each window of x set to 0, in float64."""
    w = numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    x = x.astype(np.float64)
    clean = x @ w
    target = clean.argmax(axis=1)
    drops = np.zeros_like(x)
    for start in range(0, x.shape[1], window):
        hidden = x.copy()
        hidden[:, start:start + window] = 0
        drop = clean[0, target[0]] - (hidden @ w)[0, target[0]]
        drops[:, start:start + window] = drop
    return drops


@pytest.fixture(scope="module")
def model():
    return batch_one_only()


def test_the_model_fails_at_batch_two(model):
    explainer = Explainer(model, progress=False)
    with pytest.raises(OnnxplainError, match="ONNX Runtime failed"):
        explainer.forward(np.ones((2, FEATURES), np.float32))


def test_occlusion_retries_one_copy_per_run_and_says_so_once(model):
    x = np.random.default_rng(1).standard_normal((1, FEATURES)).astype(np.float32)
    explainer = Explainer(model, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = explainer.explain(x, "occlusion", window=2, baseline=0.0, batch_size=2)["x"]
    notices = [w for w in caught if issubclass(w.category, BatchNotice)]
    assert len(notices) == 1, [str(w.message) for w in notices]
    assert "one copy per run" in str(notices[0].message)
    np.testing.assert_allclose(got, occluded_reference(model, x, 2), rtol=1e-5, atol=1e-6)
    alone = explainer.explain(x, "occlusion", window=2, baseline=0.0, batch_size=1)["x"]
    np.testing.assert_array_equal(got, alone)
