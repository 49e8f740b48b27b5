"""The experiment scripts' small runs, checked for real properties rather than just run:
ONNX Runtime against the numpy reference, rejection where it must and must not happen,
adversarial examples that really flip predictions, onnxplain's gradients against finite
differences, and our AUROC against scikit-learn's."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _script(name: str):
    """Import experiments/<name>.py from its path (experiments/ is not a package)."""
    module_name = f"_experiment_{name}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, ROOT / "experiments" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses look their module up while building
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def spirals(tmp_path_factory):
    module = _script("spirals")
    out = tmp_path_factory.mktemp("spirals")
    return module, module.main(out, small=True), out


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    module = _script("digits_rejection")
    out = tmp_path_factory.mktemp("digits")
    return module, module.main(out, small=True), out


# -- spirals ---------------------------------------------------------------------------------

def test_spirals_writes_report_and_small_pngs(spirals):
    _, result, out = spirals
    report = (out / "spirals.md").read_text()
    for png in ("spirals_neurons.png", "spirals_classes.png", "spirals_residual.png"):
        assert png in report
        assert 0 < (out / png).stat().st_size < 200_000


def test_spirals_onnx_matches_numpy_reference(spirals):
    module, result, _ = spirals
    rng = np.random.default_rng(3)
    points = rng.uniform(-module.EXTENT, module.EXTENT, (300, 2)).astype(np.float32)
    layers = [v["layer"] for v in result["classifier"].values() if isinstance(v, dict)]
    for layer in [*layers, result["residual"]["layer"]]:
        onnx_out = module.run_onnx(layer, points)
        np.testing.assert_allclose(onnx_out["output"], layer.forward(points), atol=2e-5)
        a, e = layer.activations(points)
        np.testing.assert_allclose(onnx_out["activations"], a, atol=2e-5)
        np.testing.assert_allclose(onnx_out["epsilon"], e, atol=2e-5)


def test_spirals_epsilon_neuron_wins_far_away_never_on_training_points(spirals):
    module, result, _ = spirals
    x = result["x"]
    layer = result["classifier"]["epsilon"]["layer"]
    angles = np.linspace(0, 2 * np.pi, 32, endpoint=False)
    far = (3.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)).astype(np.float32)
    far_index, _ = module.winners(module.run_onnx(layer, far))
    train_index, _ = module.winners(module.run_onnx(layer, x))
    assert (far_index == layer.size).all()
    assert (train_index != layer.size).all()
    assert np.array_equal(train_index == layer.size, layer.rejected(x))
    # Without the epsilon neuron nothing is ever rejected, however far.
    plain = result["classifier"]["no_epsilon"]["layer"]
    assert (module.winners(module.run_onnx(plain, far))[0] < plain.size).all()


def test_spirals_classifier_fits_the_spirals(spirals):
    _, result, _ = spirals
    assert result["classifier"]["epsilon"]["train_accuracy"] >= 0.9


def test_spirals_residual_shift_makes_classes_linearly_separable(spirals):
    module, result, _ = spirals
    x, y, moved = result["x"], result["y"], result["residual"]["moved"]
    assert module.linear_accuracy(x, y) < 0.8       # the spirals themselves are not
    assert module.linear_accuracy(moved, y) >= 0.97
    np.testing.assert_allclose(moved, result["residual"]["layer"].forward(x), atol=2e-5)


# -- digits ----------------------------------------------------------------------------------

def test_digits_accuracy_and_noise_rejection(digits):
    _, result, out = digits
    assert result["result"]["accuracy"] > 0.9
    assert result["noise_rejection"] >= 0.99
    report = (out / "digits_rejection.md").read_text()
    assert "test accuracy" in report
    for png in out.glob("*.png"):
        assert png.name in report and png.stat().st_size < 200_000


def test_digits_adversarial_examples_flip_predictions_within_budget(digits):
    module, result, _ = digits
    attacked = result["result"]["attacked"]
    for (name, budget), row in result["result"]["attacks"].items():
        assert row["count"] > 10, name
        adv, origin, labels = row["adversarial"], row["origin"], row["labels"]
        assert (attacked.predict(origin) == labels).all()   # started correct
        assert (attacked.predict(adv) != labels).all()       # and the model now errs
        assert np.abs(adv - origin).max() <= budget + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1


def test_digits_rejection_is_the_epsilon_neuron(digits):
    """The distance threshold and the ONNX model's epsilon neuron give the same decisions."""
    module, result, _ = digits
    r = result["result"]
    deployed = r["deployed"]
    for row in r["attacks"].values():
        by_onnx = deployed.rejected(row["adversarial"])
        by_distance = module.nearest_distance(r["layer"], row["adversarial"]) > -r["epsilon"]
        assert np.mean(by_onnx == by_distance) >= 0.99   # ties at float32 rounding aside


@pytest.mark.parametrize("adaptive_weight", [0.0, 1.0])
def test_digits_gradient_matches_finite_differences(digits, adaptive_weight):
    module, result, _ = digits
    r = result["result"]
    model = r["deployed"] if adaptive_weight else r["attacked"]
    rng = np.random.default_rng(0)
    # Off the pixel grid, so no coordinate sits on an l1 kink (|x - w| = 0).
    x = (result["test_x"][:2] + rng.uniform(0.02, 0.05, (2, 64))).astype(np.float32)
    labels = result["test_y"][:2]
    grad = model.gradient(x, labels, adaptive_weight).astype(np.float64)
    step = 2e-3
    for _ in range(3):
        direction = rng.standard_normal(x.shape).astype(np.float32)
        plus = model.objective(x + step * direction, labels, adaptive_weight)
        minus = model.objective(x - step * direction, labels, adaptive_weight)
        numeric = (plus - minus) / (2 * step)
        analytic = (grad * direction).sum(axis=1)
        np.testing.assert_allclose(analytic, numeric, rtol=2e-2, atol=2e-3)


def test_digits_auroc_and_curve_match_sklearn(digits):
    from sklearn.metrics import roc_auc_score, roc_curve

    module, result, _ = digits
    clean = result["result"]["clean_scores"]
    for row in result["result"]["attacks"].values():
        truth = np.r_[np.zeros(len(clean)), np.ones(len(row["scores"]))]
        scores = np.r_[clean, row["scores"]]
        assert module.auroc(clean, row["scores"]) == pytest.approx(
            roc_auc_score(truth, scores), abs=1e-12)
        fpr, tpr, _ = roc_curve(truth, scores, drop_intermediate=False)
        ours_fpr, ours_tpr = module.rejection_curve(clean, row["scores"])
        np.testing.assert_allclose(ours_fpr, fpr)
        np.testing.assert_allclose(ours_tpr, tpr)
    # Ties count one half, as in the Mann-Whitney statistic.
    tied = np.array([1.0, 2.0, 2.0, 3.0])
    assert module.auroc(tied[:2], tied[2:]) == pytest.approx(
        roc_auc_score([0, 0, 1, 1], tied))


def test_digits_rejection_at_respects_the_clean_rate(digits):
    module, result, _ = digits
    clean = result["result"]["clean_scores"]
    row = result["result"]["attacks"][("pgd", 0.2)]
    rate, reached = module.rejection_at(clean, row["scores"], 0.06)
    assert reached <= 0.06
    # Brute force over every threshold: the best adversarial rejection with <= 6% of clean
    # inputs rejected (scores >= threshold are rejected).
    thresholds = np.r_[np.unique(np.r_[clean, row["scores"]]), np.inf]
    best = max(np.mean(row["scores"] >= t) for t in thresholds if np.mean(clean >= t) <= 0.06)
    assert rate == pytest.approx(best)


def test_digits_small_configuration(digits):
    module, result, _ = digits
    layer = result["result"]["layer"]
    assert layer.size == module.SMALL.fixed.count and layer.distance == "l1"
    assert layer.epsilon == float("-inf")   # eps is only set on the deployed copy
    assert result["result"]["deployed"].layer.epsilon == result["result"]["epsilon"]
