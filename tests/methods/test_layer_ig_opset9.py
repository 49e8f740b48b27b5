"""Layer IG on an opset-9 token model (no computed Slice for the program's Loop) runs on
the model cut at the embedding, its path folded: complete, as on opset 17."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer


def _token_model(opset: int):
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(20, 6)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(size=(6, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Gather", ["table", "input_ids"], ["embedded"]),
             helper.make_node("Tanh", ["embedded"], ["h"]),
             helper.make_node("ReduceMean", ["h"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tokens", [helper.make_tensor_value_info("input_ids", TensorProto.INT64,
                                                        ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                             ir_version=7)


@pytest.mark.parametrize("opset", [9, 17])
def test_layer_ig_on_an_old_opset_is_complete(opset):
    ids = np.random.default_rng(1).integers(0, 20, (3, 5)).astype(np.int64)
    result = Explainer(_token_model(opset), "cpu", progress=False).explain(
        ids, method="layer_integrated_gradients", target=1, n_steps=32)
    scores = result["input_ids"]
    assert scores.shape == (3, 5) and np.abs(scores).max() > 0
    assert np.abs(result.extras["convergence_delta"]).max() < 1e-3 * np.abs(scores).sum()
