"""Deletion, insertion and pixel-flipping curves against curves written down by hand on
linear models (where removing a feature takes exactly its contribution w_i x_i away), plus
batching invariance and the random baseline on the digits CNN."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from onnxplain import Explainer, InputError, metrics

from .models import linear, linear_image, token_sum

# Class 0 weights w = [1, 2, 3, 4] and bias 0.5; row 0 has contributions w x = [4, 3, 2, 1],
# row 1 the same values in the opposite order: both give the same curves.
W = np.array([[1, -1], [2, 0], [3, 1], [4, 2]], dtype=np.float64)
B = np.array([0.5, 0.0])
X = np.array([[4, 1.5, 2 / 3, 0.25], [1, 1, 1, 1]], dtype=np.float32)


@pytest.fixture(scope="module")
def tabular():
    explainer = Explainer(linear(W, B), "cpu", progress=False)
    attribution = explainer.explain(X, method="input_x_gradient", target=0)
    np.testing.assert_allclose(attribution["x"], [[4, 3, 2, 1], [1, 2, 3, 4]], rtol=1e-6)
    return explainer, attribution


def test_linear_curves_match_the_closed_form(tabular):
    explainer, attribution = tabular
    settings = {"steps": 4, "features": "columns"}
    deletion = metrics.deletion_curve(explainer, X, attribution, **settings)
    insertion = metrics.insertion_curve(explainer, X, attribution, **settings)
    morf = metrics.pixel_flipping(explainer, X, attribution, order="morf", **settings)
    lerf = metrics.pixel_flipping(explainer, X, attribution, order="lerf", **settings)
    np.testing.assert_allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1])
    # Removing the largest contribution first: 10.5 -> 6.5 -> 3.5 -> 1.5 -> 0.5 (the bias).
    np.testing.assert_allclose(deletion.scores, [[10.5, 6.5, 3.5, 1.5, 0.5]] * 2, rtol=1e-6)
    np.testing.assert_allclose(insertion.scores, [[0.5, 4.5, 7.5, 9.5, 10.5]] * 2, rtol=1e-6)
    np.testing.assert_allclose(lerf.scores, [[10.5, 9.5, 7.5, 4.5, 0.5]] * 2, rtol=1e-6)
    # Trapezoids of width 1/4: (8.5 + 5 + 2.5 + 1) / 4 and (2.5 + 6 + 8.5 + 10) / 4.
    np.testing.assert_allclose(deletion.auc, [4.25, 4.25], rtol=1e-6)
    np.testing.assert_allclose(insertion.auc, [6.75, 6.75], rtol=1e-6)
    # AOPC = mean of s_0 - s_k: (0 + 4 + 7 + 9 + 10) / 5 and (0 + 1 + 3 + 6 + 10) / 5.
    np.testing.assert_allclose(morf.aopc, [6.0, 6.0], rtol=1e-6)
    np.testing.assert_allclose(lerf.aopc, [4.0, 4.0], rtol=1e-6)
    np.testing.assert_allclose(morf.scores, deletion.scores)


def test_coarse_and_fine_steps(tabular):
    explainer, attribution = tabular
    coarse = metrics.deletion_curve(explainer, X, attribution, steps=2, features="columns")
    # n_k = 0, 2, 4 features: 10.5, 3.5, 0.5; AUC = ((10.5 + 3.5) / 2 + (3.5 + 0.5) / 2) / 2.
    np.testing.assert_allclose(coarse.scores[0], [10.5, 3.5, 0.5], rtol=1e-6)
    np.testing.assert_allclose(coarse.auc, [4.5, 4.5], rtol=1e-6)
    fine = metrics.deletion_curve(explainer, X, attribution, steps=8, features="columns")
    # n_k = floor(k / 2 + 1/2) = 0, 1, 1, 2, 2, 3, 3, 4, 4: every count twice but the ends.
    expected = [10.5, 6.5, 6.5, 3.5, 3.5, 1.5, 1.5, 0.5, 0.5]
    np.testing.assert_allclose(fine.scores[1], expected, rtol=1e-6)


def test_baseline_value_and_probability(tabular):
    explainer, attribution = tabular
    shifted = metrics.deletion_curve(explainer, X[:1], _rows(attribution, 0), steps=4,
                                     features="columns", baseline_value=1.0)
    # Removed features become 1: the score keeps w_i of each removed feature.
    removed = np.cumsum([0, 4, 3, 2, 1])
    kept = np.cumsum([0, 1, 2, 3, 4])  # w of the features removed so far, largest c first
    np.testing.assert_allclose(shifted.scores[0], 10.5 - removed + kept, rtol=1e-6)
    probability = metrics.deletion_curve(explainer, X, attribution, steps=4,
                                         features="columns", probability=True)
    for row in range(2):
        order = np.argsort(-(X[row] * W[:, 0]))
        points = []
        for k in range(5):
            x = X[row].astype(np.float64).copy()
            x[order[:k]] = 0
            logits = x @ W + B
            points.append(np.exp(logits[0]) / np.exp(logits).sum())
        np.testing.assert_allclose(probability.scores[row], points, rtol=1e-5)


def test_grid_patches_and_pixels_on_an_image():
    # Pixel (h, w) of a 4x4 image weighs 4h + w; on an image of ones 2x2 patches hold
    # 0+1+4+5 = 10, 2+3+6+7 = 18, 8+9+12+13 = 42 and 10+11+14+15 = 50.
    weights = np.stack([np.arange(16.0), np.zeros(16)], axis=1)
    explainer = Explainer(linear_image(weights), "cpu", progress=False)
    image = np.ones((1, 1, 4, 4), np.float32)
    attribution = explainer.explain(image, method="input_x_gradient", target=0)
    grid = metrics.deletion_curve(explainer, image, attribution, steps=4, features="grid",
                                  cell=2)
    np.testing.assert_allclose(grid.scores[0], [120, 70, 28, 10, 0], rtol=1e-6)
    np.testing.assert_allclose(grid.auc, [(95 + 49 + 19 + 5) / 4], rtol=1e-6)
    pixels = metrics.deletion_curve(explainer, image, attribution, steps=16)  # auto: pixels
    expected = 120 - np.concatenate([[0], np.cumsum(np.arange(15.0, -1, -1))])
    np.testing.assert_allclose(pixels.scores[0], expected, rtol=1e-6)
    insertion = metrics.insertion_curve(explainer, image, attribution, steps=4,
                                        features="grid", cell=2)
    np.testing.assert_allclose(insertion.scores[0], [0, 50, 92, 110, 120], rtol=1e-6)


def test_token_curves_insert_the_baseline_id():
    explainer = Explainer(token_sum(), "cpu", progress=False)
    ids = np.array([[3, 5, 1, 2]], dtype=np.int64)
    attribution = explainer.explain(ids, method="occlusion", target=0)
    # Occlusion by id 0 credits each token with its id: the ranking 5, 3, 2, 1.
    np.testing.assert_allclose(attribution["ids"], ids, rtol=1e-6)
    deletion = metrics.deletion_curve(explainer, ids, attribution, steps=4)  # auto: tokens
    np.testing.assert_allclose(deletion.scores[0], [11, 6, 3, 1, 0], rtol=1e-6)
    np.testing.assert_allclose(deletion.auc, [(8.5 + 4.5 + 2 + 0.5) / 4], rtol=1e-6)
    with pytest.raises(InputError, match="integer id"):
        metrics.deletion_curve(explainer, ids, attribution, baseline_value=0.5)


def test_batch_equals_singles_and_chunking(digits_path, zoo):
    explainer = Explainer(digits_path, "cpu", progress=False)
    images = zoo.sample("digits_cnn")["image"][:3]
    attribution = explainer.explain(images, method="saliency")
    kinds = ["deletion", "insertion", "morf", "lerf"]
    batch = metrics.evaluate(explainer, images, attribution, kinds, steps=10, random_draws=0)
    chunked = metrics.evaluate(explainer, images, attribution, kinds, steps=10,
                               random_draws=0, batch_size=7)
    for row in range(3):
        single = metrics.evaluate(explainer, images[row:row + 1], _rows(attribution, row),
                                  kinds, steps=10, random_draws=0)
        for kind in kinds:
            assert single["metrics"][kind]["per_row"][0] == pytest.approx(
                batch["metrics"][kind]["per_row"][row], rel=1e-5, abs=1e-5)
    for kind in kinds:
        np.testing.assert_allclose(chunked["metrics"][kind]["per_row"],
                                   batch["metrics"][kind]["per_row"], rtol=1e-6)


def test_attributions_beat_their_random_baseline(digits_path, zoo):
    explainer = Explainer(digits_path, "cpu", progress=False)
    images = zoo.sample("digits_cnn")["image"][:6]
    attribution = explainer.explain(images, method="integrated_gradients", n_steps=16)
    kinds = ["deletion", "insertion", "morf", "lerf"]
    first = metrics.evaluate(explainer, images, attribution, kinds, steps=16, seed=3)
    scores = first["metrics"]
    assert scores["deletion"]["mean"] < scores["deletion"]["random"]
    assert scores["insertion"]["mean"] > scores["insertion"]["random"]
    assert scores["morf"]["mean"] > scores["morf"]["random"]
    assert scores["lerf"]["mean"] < scores["lerf"]["random"]
    # Random curves start from the same clean input and end at the same baseline.
    curve, noise = scores["deletion"]["curve"], scores["deletion"]["random_curve"]
    assert noise[0] == pytest.approx(curve[0]) and noise[-1] == pytest.approx(curve[-1])
    again = metrics.evaluate(explainer, images, attribution, kinds, steps=16, seed=3)
    other = metrics.evaluate(explainer, images, attribution, kinds, steps=16, seed=4)
    assert again == first
    assert other["metrics"]["deletion"]["random"] != scores["deletion"]["random"]
    assert other["metrics"]["deletion"]["mean"] == scores["deletion"]["mean"]


def test_bad_settings_are_input_errors(tabular):
    explainer, attribution = tabular
    with pytest.raises(InputError, match="steps"):
        metrics.deletion_curve(explainer, X, attribution, steps=0)
    with pytest.raises(InputError, match="unknown features"):
        metrics.deletion_curve(explainer, X, attribution, features="blobs")
    with pytest.raises(InputError, match="needs image rows"):
        metrics.deletion_curve(explainer, X, attribution, features="pixels")
    with pytest.raises(InputError, match="shape"):
        metrics.deletion_curve(explainer, X[:, :3], attribution)
    with pytest.raises(InputError, match="explain the same inputs"):
        metrics.deletion_curve(explainer, np.concatenate([X, X]), _rows(attribution, 0))
    with pytest.raises(InputError, match="unknown metric"):
        metrics.evaluate(explainer, X, attribution, ["deletion", "beauty"])
    with pytest.raises(InputError, match="unknown curve setting"):
        metrics.deletion_curve(explainer, X, attribution, step=3)
    seeded = explainer.explain(X, method="input_x_gradient",
                               output_seed=np.ones((2, 2), np.float32))
    with pytest.raises(InputError, match="output_seed"):
        metrics.deletion_curve(explainer, X, seeded)
    curve = metrics.deletion_curve(explainer, X, seeded, steps=4, features="columns",
                                   output_seed=np.ones((2, 2), np.float32))
    assert curve.scores.shape == (2, 5)


def _rows(attribution, row: int):
    """The attribution of one row, as if that row had been explained alone."""
    return dataclasses.replace(
        attribution, attributions={k: v[row:row + 1] for k, v in attribution.attributions.items()},
        target=attribution.target[row:row + 1])
