"""Chefer et al.'s relevance rules on LayerNorm and RMSNorm written out as primitive ops
(rules/lrp_norms.py): the same math as the LayerNormalization / RMSNormalization ops, so the
same weights exported both ways give the same Transformer Attribution and partial LRP."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import onnxplain

METHODS = ("transformer_attribution", "partial_lrp")


def _tokens(explainer: onnxplain.Explainer, sample: dict, method: str, target) -> np.ndarray:
    return explainer.explain(sample, method, target=target).tensors["tokens"]


def _relative(ours: np.ndarray, expected: np.ndarray) -> float:
    return float(np.abs(ours - expected).max() / np.abs(expected).max())


@pytest.mark.parametrize("method", METHODS)
def test_opset14_layer_norm_chain_matches_the_op(zoo, method):
    chains = onnxplain.Explainer(str(zoo.model_path("bert_small_opset14")), progress=False)
    ops = {n.op_type for n in onnx.load(zoo.model_path("bert_small_opset14")).graph.node}
    assert "LayerNormalization" not in ops and {"Pow", "Sqrt", "Div"} <= ops
    op = onnxplain.Explainer(str(zoo.model_path("bert_small")), progress=False)
    sample = zoo.sample("bert_small")
    target = op.forward(sample)["logits"].argmax(axis=1)
    expected = _tokens(op, sample, method, target)
    assert np.abs(expected).max() > 0
    assert _relative(_tokens(chains, sample, method, target), expected) < 1e-5


def _decompose_rms(model: onnx.ModelProto) -> onnx.ModelProto:
    """Each RMSNormalization (axis -1) as x * Reciprocal(Sqrt(ReduceMean(x^2) + eps)) * scale."""
    nodes, initializers = [], [numpy_helper.from_array(np.array([-1], np.int64), "rms/axes"),
                               numpy_helper.from_array(np.array(2.0, np.float32), "rms/two")]
    for node in model.graph.node:
        if node.op_type != "RMSNormalization":
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        assert attrs.get("axis", -1) == -1
        x, scale, p = node.input[0], node.input[1], node.output[0] + "/rms"
        eps = numpy_helper.from_array(np.array(attrs.get("epsilon", 1e-5), np.float32), p + "eps")
        initializers.append(eps)
        nodes += [helper.make_node("Pow", [x, "rms/two"], [p + "sq"]),
                  helper.make_node("ReduceMean", [p + "sq", "rms/axes"], [p + "ms"]),
                  helper.make_node("Add", [p + "ms", eps.name], [p + "var"]),
                  helper.make_node("Sqrt", [p + "var"], [p + "root"]),
                  helper.make_node("Reciprocal", [p + "root"], [p + "inv"]),
                  helper.make_node("Mul", [x, p + "inv"], [p + "normed"]),
                  helper.make_node("Mul", [p + "normed", scale], [node.output[0]])]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    out.graph.initializer.extend(initializers)
    return out


def test_rms_norm_chain_matches_the_op(zoo, tmp_path):
    path = zoo.model_path("llama_tiny_opset23")
    decomposed = _decompose_rms(onnx.load(path))
    assert "RMSNormalization" not in {n.op_type for n in decomposed.graph.node}
    onnx.save(decomposed, tmp_path / "decomposed.onnx")
    op = onnxplain.Explainer(str(path), progress=False)
    chains = onnxplain.Explainer(str(tmp_path / "decomposed.onnx"), progress=False)
    sample = zoo.sample("llama_tiny_opset23")
    logits = op.forward(sample)["logits"]
    np.testing.assert_allclose(chains.forward(sample)["logits"], logits, atol=1e-5)
    target = logits.argmax(axis=1)
    expected = _tokens(op, sample, "transformer_attribution", target)
    assert np.abs(expected).max() > 0
    ours = _tokens(chains, sample, "transformer_attribution", target)
    assert np.abs(ours - expected).max() < 1e-5 * max(1.0, np.abs(expected).max())


def test_statistics_used_elsewhere_are_refused(zoo, tmp_path):
    """A denominator read outside the chain would get relevance the rule drops: refused."""
    model = onnx.load(zoo.model_path("bert_small_opset14"))
    root = [n for n in model.graph.node if n.op_type == "Sqrt"][-1].output[0]
    head = next(n for n in model.graph.node if "logits" in n.output)
    head.output[:] = ["logits/before"]
    model.graph.node.extend([
        helper.make_node("ReduceMean", [root], [root + "/m"], keepdims=0, axes=[1]),
        helper.make_node("Add", ["logits/before", root + "/m"], ["logits"])])
    onnx.save(model, tmp_path / "tapped.onnx")
    explainer = onnxplain.Explainer(str(tmp_path / "tapped.onnx"), progress=False)
    sample = zoo.sample("bert_small")
    with pytest.raises(onnxplain.UnsupportedOpError, match="Sqrt"):
        explainer.explain(sample, "transformer_attribution", target=0)
