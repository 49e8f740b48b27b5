"""LIME against what its regression must give: the exact weights of a linear model (where
the coalition's score is linear in the presence of each feature), the closed-form ridge
solution, scikit-learn's Ridge with sample weights (which the lime package fits), and the
cosine-distance kernel of lime's image and text explainers."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import onnxplain
import onnxplain.methods.lime  # noqa: F401 - registers the method
from onnxplain.errors import InputError
from onnxplain.export.designs import lime_kernel, lime_samples

from .test_kernel_shap import _model, product_model, product_reference


@pytest.fixture(scope="module")
def linear():
    """y = x W + b with x [N, 6] (float64) and three outputs."""
    rng = np.random.default_rng(11)
    weights = {"w": rng.standard_normal((6, 3)), "b": rng.standard_normal(3)}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 6])
    explainer = onnxplain.Explainer(_model(nodes, [x_info], "y", weights), providers="cpu")
    return explainer, weights, rng.standard_normal((3, 6))


@pytest.mark.parametrize("baseline", [0.0, 0.5])
def test_unregularised_fit_recovers_a_linear_model(linear, baseline):
    # The score of coalition z is b_c + sum_i w_ic (z_i x_i + (1 - z_i) r)
    #   = (b_c + r sum_i w_ic) + sum_i z_i w_ic (x_i - r):
    # exactly linear in z, so the least squares fit has weights w_ic (x_i - r), intercept
    # b_c + r sum_i w_ic and R^2 = 1, whatever the samples and their kernel weights.
    explainer, weights, x = linear
    targets = np.array([0, 2, 1])
    result = explainer.explain(x, "lime", targets, alpha=0.0, baseline=baseline)
    w = weights["w"][:, targets].T  # [N, F]
    np.testing.assert_allclose(result.extras["weights"], w * (x - baseline), rtol=1e-9)
    np.testing.assert_allclose(result.extras["intercept"],
                               weights["b"][targets] + baseline * w.sum(axis=1), rtol=1e-9)
    np.testing.assert_allclose(result.extras["score"], 1.0, atol=1e-12)
    np.testing.assert_array_equal(result["x"], result.extras["weights"])


def test_ridge_fit_of_a_linear_model_shrinks_as_derived(linear):
    # With y = b + Z beta exactly, the ridge solution is
    #   coef = (Zc' W Zc + alpha I)^-1 Zc' W Zc beta, b = mean_w(y) - mean_w(z) . coef,
    # Zc the coalitions centred by their weighted mean; beta = w_c * x (baseline 0).
    explainer, weights, x = linear
    result = explainer.explain(x, "lime", 1, n_samples=500, seed=3)
    present = lime_samples(6, 500, 3).astype(np.float64)
    pi = lime_kernel(present > 0, 0.25)
    mean = pi @ present / pi.sum()
    centred = present - mean
    gram = centred.T @ (pi[:, None] * centred)
    for row in range(3):
        beta = weights["w"][:, 1] * x[row]
        coef = np.linalg.solve(gram + np.eye(6), gram @ beta)
        y = weights["b"][1] + present @ beta
        np.testing.assert_allclose(result.extras["weights"][row], coef, rtol=1e-9)
        np.testing.assert_allclose(result.extras["intercept"][row],
                                   pi @ y / pi.sum() - mean @ coef, rtol=1e-9)
        # The shrinkage is real (a few percent here): alpha must not be ignored.
        assert np.abs(coef - beta).max() > 1e-3 * np.abs(beta).max()


def test_fit_matches_sklearn_ridge_on_a_nonlinear_model():
    # Scores of the coalitions recomputed from the model's formula, fitted by scikit-learn's
    # Ridge with sample weights (the lime package's default regressor).
    from sklearn.linear_model import Ridge

    model, weights = product_model(5)
    explainer = onnxplain.Explainer(model, providers="cpu")
    x = np.random.default_rng(0).standard_normal((2, 5))
    result = explainer.explain(x, "lime", 2, n_samples=400, seed=1, baseline=0.25)
    present = lime_samples(5, 400, 1)
    pi = lime_kernel(present, 0.25)
    for row in range(2):
        y = product_reference(weights, np.where(present, x[row], 0.25))[:, 2]
        reference = Ridge(alpha=1.0).fit(present.astype(np.float64), y, sample_weight=pi)
        np.testing.assert_allclose(result.extras["weights"][row], reference.coef_, rtol=1e-8,
                                   atol=1e-10)
        assert abs(result.extras["intercept"][row] - reference.intercept_) < 1e-8
        score = reference.score(present.astype(np.float64), y, sample_weight=pi)
        assert abs(result.extras["score"][row] - score) < 1e-8


def test_kernel_is_lime_cosine_kernel():
    from sklearn.metrics import pairwise_distances

    present = lime_samples(9, 300, 0)
    assert present[0].all() and 0.3 < present[1:].mean() < 0.7  # first: the input itself
    present[5] = False  # the empty coalition: cosine distance 1 (sklearn's convention)
    distance = pairwise_distances(present, present[:1], metric="cosine").ravel()
    # lime_image.py: kernel = sqrt(exp(-d^2 / width^2)), d the cosine distance to all ones.
    want = np.sqrt(np.exp(-distance ** 2 / 0.25 ** 2))
    np.testing.assert_allclose(lime_kernel(present, 0.25), want, rtol=1e-12)
    assert lime_kernel(present, 0.25)[0] == 1.0


def test_constant_scores_fit_exactly():
    # y = 0 x + 3: every coalition scores 3 (up to rounding), so the fit is exact.
    weights = {"w": np.zeros((4, 2)), "b": np.array([3.0, 1.0])}
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 4])
    explainer = onnxplain.Explainer(_model(nodes, [x_info], "y", weights), providers="cpu")
    result = explainer.explain(np.ones((1, 4)), "lime", 0, n_samples=50, alpha=0.0)
    np.testing.assert_allclose(result.extras["weights"], 0.0, atol=1e-12)
    np.testing.assert_allclose(result.extras["intercept"], 3.0)
    np.testing.assert_array_equal(result.extras["score"], 1.0)  # sklearn's R^2 of a constant


def test_image_cells_share_their_weight():
    rng = np.random.default_rng(2)
    weights = {"w": rng.standard_normal((3 * 8 * 8, 2)), "shape": np.array([-1, 192])}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("MatMul", ["flat", "w"], ["y"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 3, 8, 8])
    explainer = onnxplain.Explainer(_model(nodes, [x_info], "y", weights), providers="cpu")
    x = rng.standard_normal((1, 3, 8, 8))
    result = explainer.explain(x, "lime", 0, cell=4, alpha=0.0)
    # Linear model: the weight of a cell is the sum of w * x over its pixels and channels.
    contribution = (weights["w"][:, 0] * x.ravel()).reshape(3, 2, 4, 2, 4)
    np.testing.assert_allclose(result.extras["weights"][0],
                               contribution.sum(axis=(0, 2, 4)).ravel(), rtol=1e-9)
    cells = result.extras["feature_mask"][0]
    np.testing.assert_array_equal(result["x"][0], result.extras["weights"][0][cells])


@pytest.mark.parametrize("options, message", [
    ({"features": "bogus"}, "'features' of method 'lime' expects one of auto, .*got 'bogus'"),
    ({"n_samples": 0}, "'n_samples' of method 'lime' must be an integer >= 1"),
    ({"kernel_width": 0.0}, "'kernel_width' of method 'lime' must be a finite number > 0"),
    ({"kernel_width": -1.0}, "'kernel_width' of method 'lime' must be a finite number > 0"),
    ({"alpha": -0.5}, "'alpha' of method 'lime' must be a finite number >= 0"),
    ({"kernel_width": "wide"}, "expects a float"),
    ({"baseline": np.zeros(5)}, "does not fit an input row"),
])
def test_bad_options_raise_one_line_input_errors(linear, options, message):
    explainer, _, x = linear
    with pytest.raises(InputError, match=message) as caught:
        explainer.explain(x, "lime", **options)
    assert "\n" not in str(caught.value)


def test_superpixel_count_follows_n_segments(zoo):
    """`n_segments` reaches SLIC: more segments, more features (weights per row)."""
    from onnxplain.features import feature_mask

    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu",
                                    progress=False)
    x = zoo.sample("digits_cnn")["image"][:1]
    counts = []
    for segments in (4, 16):
        result = explainer.explain(x, "lime", features="superpixels", n_segments=segments,
                                   n_samples=64)
        features = int(feature_mask(x[0], "superpixels", n_segments=segments).max()) + 1
        assert np.asarray(result.extras["weights"]).shape[1] == features
        counts.append(features)
    assert counts[0] < counts[1]
    with pytest.raises(InputError, match="n_segments"):
        explainer.explain(x, "kernel_shap", features="superpixels", n_segments=0)
