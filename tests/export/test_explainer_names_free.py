"""Every name the explainer adds (inputs via add_input, outputs via declare) is free in the
model: a model tensor called 'score' or 'rows_per_iteration' is renamed inside, so
integrated gradients and occlusion give, in process and exported, what they give on the
same model with other names; a model input or output of such a name is refused in one line
(ONNX Runtime's own message about the clash misleads)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.errors import ModelError
from onnxplain.exporter import export_explainer
from onnxplain.runtime.session import Session

from ..tiny_models import saved

METHODS = {"integrated_gradients": {"n_steps": 8}, "occlusion": {}}


def _model(first: str, second: str, output: str = "logits") -> onnx.ModelProto:
    """logits = Relu(x W1 + c) W2: the hidden tensors called `first` and `second`."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(6, 5)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=5).astype(np.float32), "c"),
             numpy_helper.from_array(rng.normal(size=(5, 3)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw"]),
             helper.make_node("Add", ["xw", "c"], [first]),
             helper.make_node("Relu", [first], [second]),
             helper.make_node("MatMul", [second, "w2"], [output])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["N", 3])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_model_tensors_named_like_explainer_outputs(tmp_path, monkeypatch, method):
    # Bit for bit with the exported file holds for the program run generic (a copy
    # specialised to static shapes may pick other MatMul kernels: last bits).
    monkeypatch.setattr("onnxplain.runtime.engine.SPECIALISE_MAX_BYTES", 0)
    clashing = saved(tmp_path, _model("score", "rows_per_iteration"), "clashing")
    plain = saved(tmp_path, _model("h1", "h2"), "plain")
    feeds = {"x": np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)}
    options = METHODS[method]
    quiet = {"delta_tolerance": 1e9} if method == "integrated_gradients" else {}
    expected = Explainer(plain, "cpu", progress=False).explain(feeds, method=method,
                                                                **options, **quiet)
    got = Explainer(clashing, "cpu", progress=False).explain(feeds, method=method, **options,
                                                             **quiet)
    assert np.abs(expected.attributions["x"]).max() > 0
    np.testing.assert_array_equal(got.attributions["x"], expected.attributions["x"])
    exported = export_explainer(clashing, method, **options)
    added = {v.name for v in exported.graph.input} | {v.name for v in exported.graph.output}
    assert "rows_per_iteration" in added  # both methods loop over their points
    assert b"onnxplain/export/model_rows_per_iteration" in exported.SerializeToString()
    # All points in one Loop iteration, as in process on a model this small: the same
    # MatMul shapes, so the same bits.
    everything = {**feeds, "rows_per_iteration": np.array(1 << 20, np.int64)}
    outputs = Session(exported, ["CPUExecutionProvider"]).run(None, everything)
    np.testing.assert_array_equal(outputs["attribution/x"], got.attributions["x"])
    np.testing.assert_array_equal(outputs["logits"], got.outputs["logits"])
    if "score" in outputs:
        assert outputs["score"].shape == (3,)  # the explained score, not the hidden tensor


def test_a_model_output_named_like_an_explainer_output_is_refused(tmp_path):
    path = saved(tmp_path, _model("h1", "h2", output="rows_per_iteration"), "output")
    with pytest.raises(ModelError, match="named 'rows_per_iteration', which the explainer "
                                         "adds: rename it in the model"):
        export_explainer(path, "integrated_gradients", n_steps=8)
