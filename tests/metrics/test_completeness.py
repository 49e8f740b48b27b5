"""Completeness read from what IG, DeepLIFT, LRP and KernelSHAP report, checked against the
output difference computed here with plain forward runs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxplain import Explainer, InputError, metrics

from ..tiny_models import mlp

X = np.random.default_rng(5).standard_normal((3, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def explainer():
    return Explainer(mlp(), "cpu", progress=False)


def _score(explainer, x, target) -> np.ndarray:
    logits = explainer.forward(x)["logits"].astype(np.float64)
    return logits[np.arange(len(x)), target]


def test_integrated_gradients_against_forward_runs(explainer):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps on purpose: a visible gap
        attribution = explainer.explain(X, method="integrated_gradients", n_steps=3,
                                        rule="riemann_left")
    found = metrics.completeness(attribution)
    target = attribution.target
    difference = _score(explainer, X, target) - _score(explainer, np.zeros_like(X), target)
    total = attribution["x"].astype(np.float64).sum(axis=1)
    assert found.source == "convergence_delta"
    np.testing.assert_allclose(found.difference, difference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(found.error, total - difference, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(found.absolute, np.abs(attribution.extras["convergence_delta"]))
    np.testing.assert_allclose(found.relative, np.abs(total - difference) / np.abs(difference),
                               rtol=1e-4)
    assert found.absolute.max() > 1e-3  # 3 left Riemann steps are far from exact


def test_deeplift_is_complete_on_a_relu_mlp(explainer):
    attribution = explainer.explain(X, method="deeplift")
    found = metrics.completeness(attribution)
    difference = _score(explainer, X, attribution.target) - _score(
        explainer, np.zeros_like(X), attribution.target)
    np.testing.assert_allclose(found.difference, difference, rtol=1e-5, atol=1e-5)
    assert found.relative.max() < 1e-4


def test_lrp_conservation(explainer):
    attribution = explainer.explain(X, method="lrp", composite="epsilon")
    found = metrics.completeness(attribution)
    assert found.source == "conservation"
    # The relevance put in is the target logit; what arrives is the sum over the inputs.
    np.testing.assert_allclose(found.difference, _score(explainer, X, attribution.target),
                               rtol=1e-5)
    np.testing.assert_allclose(found.error, attribution["x"].sum(axis=1) - found.difference,
                               rtol=1e-4, atol=1e-5)


def test_kernel_shap_additivity(explainer):
    attribution = explainer.explain(X, method="kernel_shap", baseline=0.0)
    found = metrics.completeness(attribution)
    assert found.source == "additivity_error"
    difference = _score(explainer, X, attribution.target) - _score(
        explainer, np.zeros_like(X), attribution.target)
    np.testing.assert_allclose(found.difference, difference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(found.absolute, attribution.extras["additivity_error"],
                               atol=1e-6)
    assert found.relative.max() < 1e-4


def test_random_baseline_and_methods_without_completeness(explainer):
    attribution = explainer.explain(X, method="deeplift")
    scores = metrics.evaluate(explainer, X, attribution, ["completeness"], random_draws=4)
    entry = scores["metrics"]["completeness"]
    assert entry["available"] and entry["source"] == "convergence_delta"
    assert entry["mean"] < 1e-4 < entry["random"]
    assert entry["relative"]["mean"] < 1e-4 < entry["relative"]["random"]
    assert len(entry["per_row"]) == len(entry["random_per_row"]) == 3
    again = metrics.evaluate(explainer, X, attribution, ["completeness"], random_draws=4)
    assert again == scores
    saliency = explainer.explain(X, method="saliency")
    with pytest.raises(InputError, match="reports no completeness"):
        metrics.completeness(saliency)
    skipped = metrics.evaluate(explainer, X, saliency, ["completeness"])
    assert skipped["metrics"]["completeness"]["available"] is False
    assert skipped["metrics"]["completeness"]["mean"] is None
