"""Exported gradient explainers of an LSTM model run the gate-keeping Scan forward in the
LSTM kernel's place (no LSTM node left), keep the model's outputs, and attribute as the
in-process methods do."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.exporter import export_explainer
from tests.ops.epsilon_models import run

FEATURES, HIDDEN = 5, 6


@pytest.fixture(scope="module")
def lstm_path(tmp_path_factory):
    torch = pytest.importorskip("torch")
    from torch import nn

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.LSTM(FEATURES, HIDDEN, bidirectional=True, batch_first=True)
            self.head = nn.Linear(2 * HIDDEN, 4)

        def forward(self, features):
            states, _ = self.rnn(features)
            return self.head(states[:, -1])

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("lstm") / "lstm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Classifier().eval(), (torch.randn(2, 7, FEATURES),), str(path),
                          input_names=["features"], output_names=["logits"],
                          dynamic_axes={"features": {0: "batch", 1: "sequence"}},
                          opset_version=17, dynamo=False)
    return path


def _op_types(graph: onnx.GraphProto) -> set[str]:
    """Every op type in the graph and its subgraphs (Loop and Scan bodies, If branches)."""
    found = set()
    for node in graph.node:
        found.add(node.op_type)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found |= _op_types(attr.g)
    return found


@pytest.mark.parametrize("method,options", [
    ("saliency", {}), ("integrated_gradients", {"n_steps": 6})], ids=lambda v: str(v))
def test_exported_lstm_explainer_runs_the_scan_forward(method, options, lstm_path):
    original = onnx.load(str(lstm_path))
    assert "LSTM" in _op_types(original.graph)
    exported = export_explainer(str(lstm_path), method, **options)
    assert "LSTM" not in _op_types(exported.graph)
    x = np.random.default_rng(0).normal(size=(3, 7, FEATURES)).astype(np.float32)
    names = [o.name for o in exported.graph.output]
    got = dict(zip(names, run(exported, {"features": x}), strict=True))
    logits = run(original, {"features": x})[0]
    np.testing.assert_allclose(got["logits"], logits, rtol=0, atol=1e-5)
    quiet = {"delta_tolerance": 1e9} if method == "integrated_gradients" else {}
    expected = Explainer(str(lstm_path), "cpu").explain(x, method=method, **options, **quiet)
    np.testing.assert_array_equal(got["target_used"], expected.target)
    np.testing.assert_allclose(got["attribution/features"], expected.attributions["features"],
                               rtol=1e-5, atol=1e-6 * np.abs(expected.attributions["features"]
                                                             ).max())
