"""Quantized zoo models (model_zoo/quantized.py) are explained through the straight-through
estimator, and their attributions agree with the float model they were quantized from.

Oracle: the same method on `float.onnx`, the export before quantization, for the float
model's predicted class. 8-bit activations move each layer's input by at most half a
quantum, so the gradients differ only where a ReLU mask or a clip flips near its threshold:
measured per-row cosines are 0.96-1.0 for saliency and 0.98-1.0 for integrated gradients
(digits CNNs, 64 test digits), top-10 pixel overlaps 0.93-0.97 on average. The thresholds
(every row's cosine > 0.9, mean > 0.98; mean top-10 overlap > 0.85) leave room for other
CPUs' rounding and fail on the old behaviour, an all-zero map (cosine undefined).
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.autodiff.ops.quantize import STE_NOTE

from .cli_helpers import run

DIGITS = ["digits_cnn_qdq", "digits_cnn_qoperator", "digits_resnet_qdq",
          "digits_resnet_qoperator"]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 10) -> np.ndarray:
    a, b = np.abs(a.reshape(len(a), -1)), np.abs(b.reshape(len(b), -1))
    return np.array([len(set(np.argsort(-u)[:k]) & set(np.argsort(-v)[:k])) / k
                     for u, v in zip(a, b, strict=True)])


@pytest.fixture(scope="module")
def test_digits(zoo) -> np.ndarray:
    from model_zoo.digits import digits_data

    return digits_data()[2][:64]


def test_onnxruntime_optimized_nhwc_file_is_explained_as_the_quantized_model(
        zoo, test_digits, tmp_path):
    """The file ONNX Runtime saves at ORT_ENABLE_ALL from a quantized ResNet holds its NHWC
    contrib ops (com.microsoft QLinearConv and QLinearGlobalAveragePool with channels_last=1,
    NhwcMaxPool, QLinearAdd): explained, it gives the quantized model's saliency (same
    arithmetic after canonicalisation; measured cosine 1.0000) and agrees with the float
    model as the quantized one does (thresholds of the test below)."""
    folder = zoo.build("digits_resnet_qdq")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    options.log_severity_level = 3  # its warning that the file is hardware specific
    ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node
           if n.domain == "com.microsoft"}
    assert {"QLinearConv", "NhwcMaxPool", "QLinearGlobalAveragePool"} <= ops, ops
    target = onnxplain.Explainer(str(folder / "float.onnx"), "cpu").explain(
        test_digits, "saliency").predicted
    expected = onnxplain.Explainer(str(folder / "model.onnx"), "cpu").explain(
        test_digits, "saliency", target=target).attributions["image"]
    got = onnxplain.Explainer(options.optimized_model_filepath, "cpu").explain(
        test_digits, "saliency", target=target).attributions["image"]
    assert cosines(got, expected).min() > 0.999


@pytest.mark.parametrize("name", DIGITS)
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_quantized_cnn_attribution_matches_float_model(zoo, test_digits, name, method):
    folder = zoo.build(name)
    float_model = onnxplain.Explainer(str(folder / "float.onnx"), "cpu")
    quantized = onnxplain.Explainer(str(folder / "model.onnx"), "cpu")
    target = float_model.explain(test_digits, "saliency").predicted
    expected = float_model.explain(test_digits, method, target=target).attributions["image"]
    result = quantized.explain(test_digits, method, target=target)
    got = result.attributions["image"]
    similarity = cosines(got, expected)
    assert np.all(np.isfinite(similarity)) and similarity.min() > 0.9, similarity.min()
    assert similarity.mean() > 0.98, similarity.mean()
    assert top_k_overlap(got, expected).mean() > 0.85
    assert STE_NOTE in result.notes


@pytest.mark.parametrize("name", DIGITS)
def test_explained_forward_is_the_quantized_model(zoo, test_digits, name):
    """The canonicalised QOperator graph computes what ONNX Runtime computes on the file
    (logits within one output quantum: see tests/graph/test_canonical_quantized.py)."""
    path = zoo.build(name) / "model.onnx"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    direct = session.run(None, {"image": test_digits})[0]
    ours = onnxplain.Explainer(str(path), "cpu").forward(test_digits)["logits"]
    quantum = np.min(np.abs(np.diff(np.unique(direct))))
    np.testing.assert_allclose(ours, direct, atol=1.01 * quantum)
    assert np.mean(ours != direct) < 0.01


@pytest.fixture(scope="module")
def sentiment(zoo):
    folder = zoo.build("sentiment_bert_dynamic")
    return folder, zoo.sample("sentiment_bert_dynamic")


@pytest.mark.parametrize("method", ["saliency", "input_x_gradient",
                                    "layer_integrated_gradients"])
def test_dynamically_quantized_bert_matches_float_model(sentiment, method):
    """Token attributions at the (dequantized) embedding lookup; measured cosines >= 0.95."""
    folder, sample = sentiment
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows run one at a time: DynamicQuantizeLinear
        float_model = onnxplain.Explainer(str(folder / "float.onnx"), "cpu")
        target = float_model.explain(sample, "saliency").predicted
        expected = float_model.explain(sample, method, target=target).attributions
        result = onnxplain.Explainer(str(folder / "model.onnx"), "cpu").explain(
            sample, method, target=target)
    similarity = cosines(result.attributions["input_ids"], expected["input_ids"])
    assert similarity.min() > 0.9, similarity
    assert STE_NOTE in result.notes


def test_dynamic_quantization_rows_are_explained_alone(sentiment):
    """DynamicQuantizeLinear takes one scale over the whole batch: each row is explained as
    if it came alone, so a batch gives the rows' single results."""
    folder, sample = sentiment
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        explainer = onnxplain.Explainer(str(folder / "model.onnx"), "cpu")
        batch = explainer.explain(sample, "saliency", target=1).attributions["input_ids"]
        first = explainer.explain({k: v[:1] for k, v in sample.items()}, "saliency",
                                  target=1).attributions["input_ids"]
    np.testing.assert_allclose(batch[:1], first, rtol=1e-5, atol=1e-7)


def test_cli_explains_a_quantized_model_and_states_the_rule(zoo, tmp_path, test_digits):
    np.save(tmp_path / "digits.npy", test_digits[:2])
    path = zoo.build("digits_cnn_qoperator") / "model.onnx"
    result = run("explain", str(path), "-i", str(tmp_path / "digits.npy"),
                 "-o", str(tmp_path / "out"))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert STE_NOTE in summary["notes"]
    assert np.abs(np.load(tmp_path / "out" / "attribution.npy")).max() > 0


@pytest.mark.parametrize("name", ["digits_cnn_qdq", "digits_resnet_qoperator"])
def test_exported_saliency_equals_in_process(zoo, test_digits, name):
    from onnxplain.exporter import export_explainer

    path = str(zoo.build(name) / "model.onnx")
    proto = export_explainer(path, "saliency")
    session = ort.InferenceSession(proto.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    exported = dict(zip([o.name for o in session.get_outputs()],
                        session.run(None, {"image": test_digits[:8]}), strict=True))
    expected = onnxplain.Explainer(path, "cpu").explain(test_digits[:8], "saliency")
    np.testing.assert_allclose(exported["attribution/image"], expected.attributions["image"],
                               rtol=1e-5, atol=1e-6)
