"""Parameter randomisation: which layers are found, what each cascade step randomises, that
the user's model stays as it was, and Spearman's rho against scipy."""

from __future__ import annotations

import hashlib

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from onnxplain import Explainer, InputError, metrics

from ..conftest import require
from ..tiny_models import mlp
from .models import linear, matmul_add_relu


def _weights(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}


def test_layers_in_topological_order_with_their_biases(digits_path):
    layers = metrics.weighted_layers(onnx.load(digits_path))
    assert [(layer.op_type, layer.weights, layer.fan_in) for layer in layers] == [
        ("Conv", ("features.0.weight", "features.0.bias"), 1 * 3 * 3),
        ("Conv", ("features.2.weight", "features.2.bias"), 16 * 3 * 3),
        ("Conv", ("features.5.weight", "features.5.bias"), 32 * 3 * 3),
        ("Gemm", ("classifier.weight", "classifier.bias"), 64),  # transB: [out, in]
    ]
    tiny = metrics.weighted_layers(mlp())
    assert [(layer.node, layer.weights, layer.fan_in) for layer in tiny] == [
        ("dense1", ("w1", "b1"), 6), ("dense2", ("w2",), 8)]
    split = metrics.weighted_layers(matmul_add_relu())
    assert [(layer.node, layer.weights, layer.fan_in) for layer in split] == [
        ("first", ("w1", "b1"), 3), ("second", ("w2",), 5)]


def test_cascade_randomises_from_the_top_and_leaves_the_model_alone():
    model = matmul_add_relu()
    before = model.SerializeToString()
    original = _weights(model)
    layers = metrics.weighted_layers(model)[::-1]
    steps = list(metrics.randomised_models(model, layers, seed=1))
    assert [layer.node for layer, _ in steps] == ["second", "first"]
    first_step, second_step = (_weights(copy) for _, copy in steps)
    assert not np.array_equal(first_step["w2"], original["w2"])
    np.testing.assert_array_equal(first_step["w1"], original["w1"])
    np.testing.assert_array_equal(first_step["b1"], original["b1"])
    # Cumulative: the top layer keeps its random weights, the next one is now random too.
    np.testing.assert_array_equal(second_step["w2"], first_step["w2"])
    assert not np.array_equal(second_step["w1"], original["w1"])
    assert not np.array_equal(second_step["b1"], original["b1"])
    assert np.abs(second_step["w1"]).max() <= 1 / np.sqrt(3)  # U(+-1/sqrt(fan_in))
    assert model.SerializeToString() == before
    independent = [_weights(copy) for _, copy in
                   metrics.randomised_models(model, layers, seed=1, order="independent")]
    np.testing.assert_array_equal(independent[1]["w2"], original["w2"])
    again = [_weights(copy) for _, copy in metrics.randomised_models(model, layers, seed=1)]
    other = [_weights(copy) for _, copy in metrics.randomised_models(model, layers, seed=2)]
    np.testing.assert_array_equal(again[1]["w1"], second_step["w1"])
    assert not np.array_equal(other[1]["w1"], second_step["w1"])


def test_digits_explanations_decorrelate(digits_path, zoo):
    digest = hashlib.sha256(digits_path.read_bytes()).hexdigest()
    explainer = Explainer(digits_path, "cpu", progress=False)
    proto = explainer.model.proto.SerializeToString()
    images = zoo.sample("digits_cnn")["image"][:4]
    attribution = explainer.explain(images, method="saliency")
    found = metrics.parameter_randomisation(explainer, images, attribution, seed=0)
    assert [layer.node for layer in found.layers] == [
        "/classifier/Gemm", "/features/features.5/Conv", "/features/features.2/Conv",
        "/features/features.0/Conv"]
    assert found.spearman.shape == found.spearman_abs.shape == (4, 4)
    assert np.all(np.abs(found.spearman) <= 1)
    # Saliency passes on this model: random weights leave little of the original ranking.
    assert found.spearman[-1].mean() < 0.5
    assert hashlib.sha256(digits_path.read_bytes()).hexdigest() == digest
    assert explainer.model.proto.SerializeToString() == proto
    again = metrics.parameter_randomisation(explainer, images, attribution, seed=0, layers=2)
    np.testing.assert_allclose(again.spearman, found.spearman[:2])


def test_unchanged_weights_correlate_perfectly():
    # The pipeline check: "randomising" to the same weights re-explains the same model.
    explainer = Explainer(mlp(), "cpu", progress=False)
    x = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    attribution = explainer.explain(x, method="input_x_gradient", target=1)
    same = metrics.parameter_randomisation(explainer, x, attribution,
                                           randomise=lambda layer, weights, rng: weights)
    np.testing.assert_allclose(same.spearman, 1.0)
    scores = metrics.evaluate(explainer, x, attribution, ["randomization"], layers=["dense2"])
    entry = scores["metrics"]["randomization"]
    assert [layer["node"] for layer in entry["layers"]] == ["dense2"]
    assert entry["mean"] == pytest.approx(entry["last"])
    assert abs(entry["random"]) < 0.6  # noise vs the attribution: chance level
    with pytest.raises(InputError, match="no weighted layer named"):
        metrics.parameter_randomisation(explainer, x, attribution, layers=["dense9"])
    with pytest.raises(InputError, match="order"):
        metrics.parameter_randomisation(explainer, x, attribution, order="sideways")


def test_models_without_weights_are_refused():
    model = linear(np.ones((4, 2)), np.zeros(2))
    # A Gemm whose weight is an input is no layer: nothing to randomise.
    model.graph.initializer.pop(0)
    model.graph.input.append(onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT,
                                                                [4, 2]))
    assert metrics.weighted_layers(model) == []
    explainer = Explainer(model, "cpu", progress=False)
    feeds = {"x": np.ones((4, 4), np.float32), "w": np.ones((4, 2), np.float32)}
    attribution = explainer.explain(feeds, method="saliency", target=0)
    with pytest.raises(InputError, match="no weighted layers"):
        metrics.parameter_randomisation(explainer, feeds, attribution)


def test_spearman_matches_scipy():
    stats = require("scipy.stats")  # a reference: fails in CI when missing
    rng = np.random.default_rng(4)
    a = rng.integers(0, 5, (6, 30)).astype(float)  # many ties
    b = a + rng.standard_normal((6, 30))
    expected = [stats.spearmanr(x, y)[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(metrics.spearman(a, b), expected, rtol=1e-12)
    assert np.isnan(metrics.spearman(np.ones((1, 5)), b[:1, :5]))[0]
