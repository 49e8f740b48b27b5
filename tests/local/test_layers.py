"""Local layers: the ONNX model equals the numpy forward of the definitions, and layers built
from data behave as the seed document says (training rows fit without training, the
epsilon neuron takes over far from the data)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxplain.errors import InputError
from onnxplain.local import (
    LocalLayer,
    LocalNetwork,
    auto_temperature,
    calibrate_epsilon,
    classifier_from_data,
    mlp_from_data,
    pick_centers,
)
from onnxplain.ops import epsilon_softmax as es
from tests.ops.epsilon_models import run


def _blobs(rows=300, seed=0):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 3, rows)
    means = np.array([[0.0, 0.0, 0.0, 0.0], [3.0, 3.0, 0.0, 0.0], [0.0, 3.0, 3.0, -3.0]])
    x = (means[labels] + 0.5 * rng.normal(size=(rows, 4))).astype(np.float32)
    return x, labels


def _network(kinds, distance):
    x, labels = _blobs()
    layers = []
    for kind in kinds:
        if kind == "classifier":
            layers.append(classifier_from_data(x, labels, 30, distance=distance, epsilon=-2.0))
        else:
            targets = np.tanh(x[:, ::-1]) if kind == "mlp" else x + 1.0
            layers.append(mlp_from_data(x, targets, 25, residual=kind == "residual",
                                        distance=distance, epsilon=-3.0))
        x = layers[-1].forward(x)
    return LocalNetwork(layers)


@pytest.mark.parametrize("distance", es.DISTANCES)
@pytest.mark.parametrize("kinds", [("classifier",), ("mlp",), ("residual",),
                                   ("residual", "classifier")])
def test_onnx_model_equals_the_numpy_forward(kinds, distance):
    network = _network(kinds, distance)
    model = network.to_onnx(top=3)
    onnx.checker.check_model(model, full_check=True)
    x, _ = _blobs(40, seed=5)
    outputs = dict(zip([o.name for o in model.graph.output], run(model, {"x": x}),
                       strict=True))
    np.testing.assert_allclose(outputs["output"], network.forward(x), atol=2e-5)
    hidden = x
    for i, layer in enumerate(network.layers):
        a, e = layer.activations(hidden)
        np.testing.assert_allclose(outputs[f"layer{i}/activations"], a, atol=2e-5)
        np.testing.assert_allclose(outputs[f"layer{i}/epsilon"], e, atol=2e-5)
        top = outputs[f"layer{i}/prototypes"]
        assert top.shape == (40, 3)
        np.testing.assert_array_equal(top[:, 0], a.argmax(1))
        hidden = layer.forward(hidden)


def test_a_classifier_from_data_fits_its_own_centers_without_training():
    x, labels = _blobs()
    layer = classifier_from_data(x, labels, 60, epsilon=-1.0)
    centers = x[layer.sources]
    np.testing.assert_array_equal(layer.forward(centers).argmax(1), labels[layer.sources])
    np.testing.assert_array_equal(layer.labels, labels[layer.sources])
    assert not layer.rejected(centers).any()
    far = centers + 50.0
    assert layer.rejected(far).all()
    _, e = layer.activations(far)
    assert (e > 0.99).all()
    # The class shares and the epsilon neuron share the activation mass.
    y = layer.forward(x)
    np.testing.assert_allclose(y.sum(1) + layer.activations(x)[1], 1.0, atol=1e-5)


def test_residual_values_carry_each_center_to_its_target():
    x, _ = _blobs()
    targets = x * 2.0 + 1.0
    layer = mlp_from_data(x, targets, 20, residual=True, temperature=0.01)
    centers = x[layer.sources]
    np.testing.assert_allclose(layer.forward(centers), targets[layer.sources], atol=1e-3)


def test_stratified_centers_share_the_classes_evenly():
    labels = np.repeat([0, 1, 2], [100, 10, 50])
    x = np.random.default_rng(0).normal(size=(160, 2)).astype(np.float32)
    chosen = pick_centers(x, 30, "stratified", labels)
    assert len(set(chosen)) == 30
    assert sorted(np.bincount(labels[chosen])) == [10, 10, 10]
    chosen = pick_centers(x, 60, "stratified", labels)  # class 1 runs out after 10
    assert np.bincount(labels[chosen]).tolist() == [25, 10, 25]


def test_kmeans_plus_plus_spreads_centers_over_clusters():
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(c, 0.01, size=(50, 2)) for c in (0.0, 10.0, 20.0)])
    for seed in range(5):
        chosen = pick_centers(x.astype(np.float32), 3, "kmeans++", seed=seed)
        assert sorted(chosen // 50) == [0, 1, 2]
    random = pick_centers(x.astype(np.float32), 20, "random", seed=0)
    assert len(set(random)) == 20


def test_calibrated_epsilon_rejects_the_asked_share_of_held_out_rows():
    x, labels = _blobs(1000)
    layer = classifier_from_data(x[:500], labels[:500], 40)
    for rate in (0.02, 0.05, 0.2):
        layer.epsilon = calibrate_epsilon(layer, x[500:], rate)
        assert abs(layer.rejected(x[500:]).mean() - rate) <= 2 / 500


def test_auto_temperature_skips_each_rows_own_center():
    """Every row a center, at magnitudes where l2's expansion leaves ~1e-4 between a row and
    its own copy: the temperature is still 0.1 x the median distance to the nearest OTHER
    row, computed here from explicit differences."""
    x = 1000 + np.random.default_rng(3).standard_normal((300, 16))
    explicit = np.sqrt(((x[:, None] - x[None]) ** 2).sum(-1))
    np.fill_diagonal(explicit, np.inf)
    expected = 0.1 * np.median(explicit.min(1))
    got = auto_temperature(x, x.astype(np.float32), "l2", sources=np.arange(300))
    assert np.isclose(got, expected, rtol=1e-3)


def test_auto_temperature_scales_with_the_data():
    x, _ = _blobs()
    w = x[:20]
    assert np.isclose(auto_temperature(10 * x, 10 * w, "l2"), 10 * auto_temperature(x, w, "l2"),
                      rtol=1e-5)


@pytest.mark.parametrize("make,message", [
    (lambda: LocalLayer("deep", np.ones((2, 3)), np.ones((3, 1))), "unknown local layer kind"),
    (lambda: LocalLayer("mlp", np.ones((2, 3)), np.ones((2, 1))), r"values must be \[K \+ 1"),
    (lambda: LocalLayer("residual", np.ones((2, 3)), np.ones((3, 2))), "as many columns"),
    (lambda: LocalLayer("mlp", np.ones((2, 3)), np.ones((3, 1)), sources=[1]), "one entry per"),
    (lambda: LocalLayer("mlp", np.ones((2, 3)), np.ones((3, 1)), distance="l9"),
     "unknown distance"),
    (lambda: LocalNetwork([LocalLayer("classifier", np.ones((2, 3)), np.ones((3, 3))),
                           LocalLayer("mlp", np.ones((2, 3)), np.ones((3, 1)))]),
     "only the last layer may be one"),
    (lambda: LocalNetwork([LocalLayer("mlp", np.ones((2, 3)), np.ones((3, 2))),
                           LocalLayer("mlp", np.ones((2, 3)), np.ones((3, 1)))]),
     "gives 2 features but layer 1 takes 3"),
    (lambda: pick_centers(np.ones((5, 2)), 6), "cannot pick 6 centers from 5 rows"),
    (lambda: pick_centers(np.ones((5, 2)), 2, "stratified"), "stratified centers need labels"),
    (lambda: classifier_from_data(np.ones((5, 2)), np.array([0, 1, 2, 1, 0]), 3, classes=2),
     "labels must be below classes"),
    (lambda: classifier_from_data(np.ones((5, 2)), np.array([0.5] * 5), 3), "labels must be"),
])
def test_bad_layers_are_input_errors(make, message):
    with pytest.raises(InputError, match=message):
        make()
