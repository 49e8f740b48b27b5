"""Kernel SHAP against Shapley values computed by brute force from their definition (every
subset, on numpy references of small nonlinear ONNX models), against shap's KernelExplainer
on scikit-learn models exported with skl2onnx, and its invariants (additivity, batch equals
singles, convergence of the sampled estimate)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
import onnxplain.methods.kernel_shap  # noqa: F401 - registers the method
from onnxplain.errors import InputError
from onnxplain.export.designs import shapley_coalitions
from onnxplain.methods.kernel_shap import AdditivityWarning

from ..conftest import require


def _model(nodes, inputs, output, initializers, dtype=TensorProto.DOUBLE) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "tiny", inputs,
                              [helper.make_tensor_value_info(output, dtype, ["N", "K"])],
                              [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def product_model(features: int, classes: int = 3, seed: int = 1
                  ) -> tuple[onnx.ModelProto, dict[str, np.ndarray]]:
    """x [N, F] (float64) -> h = x W1 + b1; logits = (Relu(h) * h) W2 + (x * x) W3 + b."""
    rng = np.random.default_rng(seed)
    weights = {"w1": rng.standard_normal((features, 6)) / np.sqrt(features),
               "b1": rng.standard_normal(6),
               "w2": rng.standard_normal((6, classes)),
               "w3": rng.standard_normal((features, classes)) * 0.3,
               "b": rng.standard_normal(classes)}
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["xw"]),
             helper.make_node("Add", ["xw", "b1"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Mul", ["r", "h"], ["p"]),
             helper.make_node("MatMul", ["p", "w2"], ["a"]),
             helper.make_node("Mul", ["x", "x"], ["sq"]),
             helper.make_node("MatMul", ["sq", "w3"], ["c"]),
             helper.make_node("Add", ["a", "c"], ["ac"]),
             helper.make_node("Add", ["ac", "b"], ["logits"])]
    x = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", features])
    return _model(nodes, [x], "logits", weights), weights


def product_reference(weights: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    h = x @ weights["w1"] + weights["b1"]
    return (np.maximum(h, 0) * h) @ weights["w2"] + (x * x) @ weights["w3"] + weights["b"]


def shapley_kernel(width: int, size: int) -> float:
    return (width - 1) / (math.comb(width, size) * size * (width - size))


def subsets(width: int) -> np.ndarray:
    """[2^F, F] bool: subset s holds feature i when bit i of s is set."""
    return ((np.arange(2 ** width)[:, None] >> np.arange(width)) & 1).astype(bool)


def brute_force_shapley(values: np.ndarray, width: int) -> np.ndarray:
    """phi_i = sum_{S not holding i} |S|! (F - |S| - 1)! / F! (v(S + i) - v(S)), with
    values[s] = v(subset s) in the bit order of subsets()."""
    sizes = subsets(width).sum(axis=1)
    factor = np.array([math.factorial(s) * math.factorial(width - s - 1) / math.factorial(width)
                       if s < width else 0.0 for s in range(width + 1)])
    phi = np.empty(width)
    for i in range(width):
        without = np.flatnonzero(((np.arange(2 ** width) >> i) & 1) == 0)
        phi[i] = (factor[sizes[without]] * (values[without | (1 << i)] - values[without])).sum()
    return phi


def shapley_of_rows(weights, x, targets, background) -> np.ndarray:
    """Brute-force Shapley values of each row of x, absent features from each background
    row (a [B, F] array) and v(S) the mean over them."""
    width = x.shape[1]
    present = subsets(width)
    out = []
    for row, target in zip(x, targets, strict=True):
        mixed = np.where(present[:, None, :], row, background[None])  # [2^F, B, F]
        scores = product_reference(weights, mixed.reshape(-1, width))[:, target]
        out.append(brute_force_shapley(scores.reshape(2 ** width, -1).mean(axis=1), width))
    return np.array(out)


@pytest.fixture(scope="module")
def five():
    model, weights = product_model(5)
    x = np.random.default_rng(0).standard_normal((3, 5))
    return onnxplain.Explainer(model, providers="cpu"), weights, x


@pytest.mark.parametrize("baseline", [0.0, 0.3, "row", "background"])
def test_exact_values_equal_brute_force_shapley(five, baseline):
    explainer, weights, x = five
    targets = np.array([0, 2, 1])
    rng = np.random.default_rng(5)
    given = {"row": rng.standard_normal(5), "background": rng.standard_normal((4, 5))}
    given = given.get(baseline, baseline)
    background = np.atleast_2d(np.broadcast_to(given, (1, 5)) if np.ndim(given) < 2 else given)
    result = explainer.explain(x, "kernel_shap", targets, baseline=given)
    want = shapley_of_rows(weights, x, targets, background)
    assert np.abs(result.extras["values"] - want).max() < 1e-9
    # Columns: each element is its own feature, so the map on the input is the values.
    np.testing.assert_array_equal(result["x"], result.extras["values"])
    assert result.extras["exact"] and result.extras["coalitions"] == 2 ** 5 - 1
    # Additivity: E[f] is the mean score of the background, and sum(phi) + E[f] = f(x).
    fx = product_reference(weights, x)[np.arange(3), targets]
    expected = product_reference(weights, background)[:, targets].mean(axis=0)
    np.testing.assert_allclose(result.extras["expected_value"], expected, rtol=1e-12)
    np.testing.assert_allclose(result.extras["values"].sum(axis=1) + expected, fx, rtol=1e-12)
    assert result.extras["additivity_error"].max() < 1e-12


def test_predicted_class_is_explained_by_default(five):
    explainer, weights, x = five
    predicted = product_reference(weights, x).argmax(axis=1)
    result = explainer.explain(x, "kernel_shap")
    np.testing.assert_array_equal(result.target, predicted)
    want = shapley_of_rows(weights, x, predicted, np.zeros((1, 5)))
    assert np.abs(result.extras["values"] - want).max() < 1e-9


@pytest.fixture(scope="module")
def sixteen():
    model, weights = product_model(16, seed=3)
    x = np.random.default_rng(2).standard_normal((1, 16))
    truth = shapley_of_rows(weights, x, [1], np.zeros((1, 16)))[0]
    return onnxplain.Explainer(model, providers="cpu", progress=False), x, truth


def test_sampled_values_are_unbiased_within_sampling_error(sixteen):
    # F = 16 > 12: coalitions are sampled. Covert and Lee 2021 (arXiv:2012.01536) show the
    # Kernel SHAP estimate is asymptotically normal around the Shapley values with variance
    # O(1/n). Seeds give independent estimates, so the mean of 16 lies within 5 standard
    # errors of the truth (t with 15 degrees of freedom: P(|t| > 5) = 1.6e-4 per value). A
    # wrong kernel weight or size distribution gives a bias that no number of seeds removes.
    explainer, x, truth = sixteen
    runs = np.array([explainer.explain(x, "kernel_shap", 1, n_samples=2048, seed=seed)
                     .extras["values"][0] for seed in range(16)])
    standard_error = runs.std(axis=0, ddof=1) / np.sqrt(len(runs))
    assert np.all(np.abs(runs.mean(axis=0) - truth) <= 5 * standard_error + 1e-9)
    # And every single estimate is already close: within 5% of the largest value.
    assert np.abs(runs - truth).max() < 0.05 * np.abs(truth).max()
    np.testing.assert_allclose(runs.sum(axis=1), truth.sum(), rtol=1e-10)  # additivity


def test_sampled_coalitions_carry_the_shapley_kernel_weights():
    # pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|)) (Lundberg and Lee 2017, Theorem 2). With
    # 2048 of the 65534 coalitions of 16 features, sizes 1, 2, 14 and 15 fit the budget and
    # are enumerated with their exact weights; the sampled sizes must carry, on average over
    # seeds, the kernel's total mass C(F, s) pi(s) = (F - 1) / (s (F - s)) each.
    width = 16
    totals = []
    for seed in range(100):
        present, weights, exact = shapley_coalitions(width, 2048, seed)
        assert not exact and len(present) <= 2048
        sizes = present.sum(axis=1)
        for size in (1, 2, 14, 15):
            assert (sizes == size).sum() == math.comb(width, size)
            np.testing.assert_allclose(weights[sizes == size], shapley_kernel(width, size),
                                       rtol=1e-12)
        # Sampled in complementary pairs: each coalition's complement is there too.
        codes = present @ (1 << np.arange(width))
        assert np.isin(2 ** width - 1 - codes, codes).all()
        totals.append([weights[sizes == size].sum() for size in range(3, 14)])
    totals = np.array(totals)
    want = np.array([math.comb(width, s) * shapley_kernel(width, s) for s in range(3, 14)])
    standard_error = totals.std(axis=0, ddof=1) / np.sqrt(len(totals))
    assert np.all(np.abs(totals.mean(axis=0) - want) <= 5 * standard_error)
    # Exact enumeration: every coalition once, with its kernel weight.
    present, weights, exact = shapley_coalitions(5, 1, 0)
    sizes = present.sum(axis=1)
    assert exact and len({tuple(z) for z in present}) == len(present) == 2 ** 5 - 2
    np.testing.assert_allclose(weights, [shapley_kernel(5, s) for s in sizes], rtol=1e-12)


def test_sampled_values_converge_to_the_exact_ones(sixteen):
    explainer, x, truth = sixteen

    def error(n_samples: int) -> float:
        runs = [explainer.explain(x, "kernel_shap", 1, n_samples=n_samples, seed=seed)
                for seed in range(4)]
        return float(np.mean([np.abs(r.extras["values"][0] - truth).max() for r in runs]))

    # Error ~ 1/sqrt(n): 16 times the samples should cut it by about 4; ask for 2.
    assert error(8192) < error(512) / 2
    exact = explainer.explain(x, "kernel_shap", 1, n_samples=2 ** 16 - 2, max_runs=2 ** 16)
    assert exact.extras["exact"] and exact.extras["coalitions"] == 2 ** 16 - 1
    assert np.abs(exact.extras["values"][0] - truth).max() < 1e-9


def test_batch_equals_rows_one_by_one(sixteen):
    explainer, x, _ = sixteen
    batch = np.random.default_rng(8).standard_normal((3, 16))
    together = explainer.explain(batch, "kernel_shap", [0, 1, 2], n_samples=300)
    for row in range(3):
        alone = explainer.explain(batch[row:row + 1], "kernel_shap", row, n_samples=300)
        np.testing.assert_allclose(together.extras["values"][row], alone.extras["values"][0],
                                   rtol=1e-10, atol=1e-12)


def test_image_grid_features_map_back_onto_pixels():
    rng = np.random.default_rng(4)
    weights = {"w": rng.standard_normal((64, 2)), "shape": np.array([-1, 64])}
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["flat"]),
             helper.make_node("Relu", ["flat"], ["r"]),
             helper.make_node("Mul", ["r", "flat"], ["p"]),
             helper.make_node("MatMul", ["p", "w"], ["logits"])]
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 1, 8, 8])
    explainer = onnxplain.Explainer(_model(nodes, [x_info], "logits", weights), "cpu")
    x = rng.standard_normal((2, 1, 8, 8))
    result = explainer.explain(x, "kernel_shap", 0, cell=4)
    # Four 4x4 cells numbered row-major; v(S) computed from the model's formula.
    cells = (np.arange(8)[:, None] // 4) * 2 + np.arange(8)[None, :] // 4
    for row in range(2):
        kept = subsets(4)[:, cells]  # [16, 8, 8]
        flat = np.where(kept, x[row, 0], 0.0).reshape(16, 64)
        scores = (np.maximum(flat, 0) * flat) @ weights["w"][:, 0]
        want = brute_force_shapley(scores, 4)
        assert np.abs(result.extras["values"][row] - want).max() < 1e-9
        np.testing.assert_array_equal(result["x"][row, 0], result.extras["values"][row][cells])


def token_model(vocab: int = 11, dim: int = 4):
    rng = np.random.default_rng(6)
    weights = {"emb": rng.standard_normal((vocab, dim)), "w": rng.standard_normal((dim, 3))}
    nodes = [helper.make_node("Gather", ["emb", "ids"], ["e"]),
             helper.make_node("Relu", ["e"], ["r"]),
             helper.make_node("ReduceMax", ["r"], ["pooled"], axes=[1], keepdims=0),
             helper.make_node("MatMul", ["pooled", "w"], ["logits"])]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", "S"])
    return _model(nodes, [ids], "logits", weights), weights


def test_token_features_use_an_integer_baseline_id():
    model, weights = token_model()
    explainer = onnxplain.Explainer(model, providers="cpu")
    ids = np.array([[3, 7, 1, 9, 4, 2], [5, 5, 8, 10, 6, 1]])
    result = explainer.explain(ids, "kernel_shap", 2, baseline=0)
    for row in range(2):
        kept = np.where(subsets(6), ids[row], 0)  # absent tokens become id 0
        scores = np.maximum(weights["emb"][kept], 0).max(axis=1) @ weights["w"][:, 2]
        want = brute_force_shapley(scores, 6)
        assert np.abs(result.extras["values"][row] - want).max() < 1e-9
    assert result["ids"].shape == ids.shape and result["ids"].dtype == np.float32
    with pytest.raises(InputError, match="integer id"):
        explainer.explain(ids, "kernel_shap", 2, baseline=0.5)


def test_user_mask_groups_columns(five):
    explainer, weights, x = five
    mask = np.array([7, 7, 2, 9, 2])  # three features: {2, 4}, {0, 1}, {3}
    result = explainer.explain(x, "kernel_shap", 0, features=mask)
    groups = [np.array([2, 4]), np.array([0, 1]), np.array([3])]
    for row in range(3):
        kept = np.zeros((8, 5), dtype=bool)
        for g, members in enumerate(groups):
            kept[:, members] = subsets(3)[:, g:g + 1]
        scores = product_reference(weights, np.where(kept, x[row], 0.0))[:, 0]
        want = brute_force_shapley(scores, 3)
        assert np.abs(result.extras["values"][row] - want).max() < 1e-9
        mapped = result.extras["values"][row][[1, 1, 0, 2, 0]]
        np.testing.assert_array_equal(result["x"][row], mapped)


def test_nan_scores_warn_about_additivity():
    nodes = [helper.make_node("Log", ["x"], ["l"]),
             helper.make_node("ReduceSum", ["l", "axes"], ["y"], keepdims=1)]
    x_info = helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["N", 3])
    model = _model(nodes, [x_info], "y", {"axes": np.array([1])})
    explainer = onnxplain.Explainer(model, providers="cpu")
    with pytest.warns(AdditivityWarning, match="misses f"):
        explainer.explain(np.ones((1, 3)) * 2, "kernel_shap")  # log(0) under the baseline


@pytest.mark.parametrize("options, message", [
    ({"features": "bogus"}, "'features' of method 'kernel_shap' expects one of .*'bogus'"),
    ({"features": "grid"}, "needs an image row"),
    ({"n_samples": 0}, "'n_samples' of method 'kernel_shap' must be an integer >= 1"),
    ({"n_samples": "many"}, "expects an int"),
    ({"baseline": np.zeros(4)}, "does not fit an input row"),
    ({"baseline": np.zeros((2, 4))}, "background rows must be"),
    ({"features": np.array([0.5, 1, 2, 3, 4])}, "integer ids"),
    ({"input": "y"}, "unknown input 'y'"),
])
def test_bad_options_raise_one_line_input_errors(five, options, message):
    explainer, _, x = five
    with pytest.raises(InputError, match=message) as caught:
        explainer.explain(x, "kernel_shap", **options)
    assert "\n" not in str(caught.value)


# --- against shap's KernelExplainer on scikit-learn models exported with skl2onnx ----------

def exported(model, data: np.ndarray) -> onnxplain.Explainer:
    """An Explainer of the model's class probabilities, exported by skl2onnx."""
    skl2onnx = require("skl2onnx")
    final = model.steps[-1][1] if hasattr(model, "steps") else model
    proto = skl2onnx.to_onnx(model, data[:1].astype(np.float32),
                             options={id(final): {"zipmap": False}})
    return onnxplain.Explainer(proto, providers="cpu", output="probabilities", progress=False)


@pytest.fixture(scope="module")
def wine():
    from sklearn.datasets import load_wine

    data, labels = load_wine(return_X_y=True)
    rows = [5, 70, 150]  # one of each class
    return data, labels, rows, data[::18]  # background: 10 rows over the three classes


def shap_values(model, rows: np.ndarray, background: np.ndarray, n_samples: int,
                targets: np.ndarray, seed: int = 0) -> np.ndarray:
    """shap's values [rows, F] of the target classes (no feature selection: l1_reg=False)."""
    with warnings.catch_warnings():  # shap's plotting colours, set up on import
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        shap = require("shap")
    np.random.seed(seed)  # shap samples with numpy's global generator
    explainer = shap.KernelExplainer(model.predict_proba, background)
    values = explainer.shap_values(rows, nsamples=n_samples, l1_reg=False, silent=True)
    if isinstance(values, list):  # shap < 0.45: one [rows, F] array per class
        values = np.stack(values, axis=-1)
    return values[np.arange(len(rows)), :, targets]


def test_exact_values_match_shap_on_a_forest(wine):
    # Six features: both explainers enumerate all 2^6 coalitions, so they agree up to the
    # float32 arithmetic of the exported model (trees compare float32 values in both).
    from sklearn.ensemble import RandomForestClassifier

    data, labels, rows, background = wine
    columns = [0, 1, 6, 9, 10, 12]
    data, background = data[:, columns], background[:, columns]
    forest = RandomForestClassifier(n_estimators=20, max_depth=4, random_state=0)
    forest.fit(data, labels)
    explainer = exported(forest, data)
    x = data[rows]
    targets = forest.predict(x)
    want = shap_values(forest, x, background, 2 ** 6, targets)
    result = explainer.explain(x.astype(np.float32), "kernel_shap", targets,
                               baseline=background.astype(np.float32))
    np.testing.assert_allclose(result.extras["values"], want, atol=1e-5)
    expected = forest.predict_proba(background)[:, targets].mean(axis=0)
    np.testing.assert_allclose(result.extras["expected_value"], expected, atol=1e-6)


def test_sampled_values_match_shap_within_sampling_error(wine):
    # 13 features: both sample. Against the exact values (every coalition enumerated, where
    # both explainers agree), our estimate's error must be of the size of shap's at the same
    # budget of model runs: the algorithms are the same (kernel-proportional sizes, complete
    # sizes enumerated, paired draws), only the random draws differ.
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data, labels, rows, background = wine
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, max_iter=2000))
    pipeline.fit(data, labels)
    explainer = exported(pipeline, data)
    x = data[rows]
    targets = pipeline.predict(x)
    x32, bg32 = x.astype(np.float32), background.astype(np.float32)
    exact = explainer.explain(x32, "kernel_shap", targets, baseline=bg32,  # 81,910 runs
                              n_samples=2 ** 13 - 2, max_runs=10**5).extras["values"]
    np.testing.assert_allclose(exact, shap_values(pipeline, x, background, 2 ** 13 - 2,
                                                  targets), atol=1e-5)
    # Sampling errors vary from draw to draw: compare their means over six seeds each.
    scale = np.abs(exact).max(axis=1)
    ours, theirs = [], []
    for seed in range(6):
        found = explainer.explain(x32, "kernel_shap", targets, baseline=bg32, n_samples=600,
                                  seed=seed).extras["values"]
        ours.append(np.abs(found - exact).max(axis=1) / scale)
        found = shap_values(pipeline, x, background, 600, targets, seed)
        theirs.append(np.abs(found - exact).max(axis=1) / scale)
    ours, theirs = np.mean(ours, axis=0), np.mean(theirs, axis=0)
    assert np.all(ours < 1.5 * theirs), (ours, theirs)
    assert np.all(ours < 0.2)  # and both are useful: within 20% of the largest value
