"""One graph per method (issue 19) for Kernel SHAP and LIME: in-process runs the program
`export` saves (export.coalitions: the coalitions fixed by the seed, the regression one
constant matrix), so the exported model's outputs equal Explainer.explain's bit for bit; a
batch explains as its rows one by one; the original outputs are the model's own. The matrix
itself is checked against the regressions it replaces, solved directly in float64."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export import emit_explainer
from onnxplain.export.designs import (
    lime_kernel,
    lime_samples,
    ridge_map,
    shapley_coalitions,
    shapley_map,
)
from onnxplain.exporter import export_explainer
from onnxplain.graph.weights import standalone

from .test_export import _run, assert_model_outputs
from .test_node_client import node as _node  # noqa: F401 - the fixture, named _node here

MODELS = ["digits_cnn", "rgb_cnn"]
EXTRAS = {"kernel_shap": ("values", "expected_value", "additivity_error"),
          "lime": ("weights", "intercept", "score")}
OUTPUTS = {"values": "shap_values", "weights": "lime_weights", "intercept": "lime_intercept",
           "score": "lime_r2"}  # extras whose program output has another name
FAST = {"kernel_shap": {"n_samples": 300}, "lime": {"n_samples": 200}}


def _rows(zoo, name: str, count: int = 3) -> dict[str, np.ndarray]:
    return {k: v[:count] for k, v in zoo.sample(name).items()}


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in MODELS}


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_exported_equals_in_process_bit_for_bit(zoo, explainers, name, method):
    explainer, feeds = explainers[name], _rows(zoo, name)
    (key,) = feeds
    got = _run(export_explainer(explainer.model, method), feeds)
    expected = explainer.explain(feeds, method=method)
    np.testing.assert_array_equal(got["attribution/" + key], expected[key])
    for extra in EXTRAS[method]:
        np.testing.assert_array_equal(got[OUTPUTS.get(extra, extra)], expected.extras[extra])
    np.testing.assert_array_equal(got["target_used"], expected.target)
    assert_model_outputs(explainer, got, feeds)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_exported_options_are_the_in_process_ones(zoo, explainers, method):
    """A background set, a cell size, a seed and a sample count baked into the export give
    what explain gives with them; the exported background input takes other rows too."""
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn", 2)
    rng = np.random.default_rng(3)
    background = rng.random((3, 1, 8, 8)).astype(np.float32)
    options = {**FAST[method], "cell": 2, "seed": 7, "baseline": background}
    exported = export_explainer(explainer.model, method, **options)
    got = _run(exported, feeds)
    expected = explainer.explain(feeds, method=method, **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    other = rng.random((3, 1, 8, 8)).astype(np.float32)
    fed = _run(exported, {**feeds, "background/image": other})
    again = explainer.explain(feeds, method=method, **{**options, "baseline": other})
    np.testing.assert_array_equal(fed["attribution/image"], again["image"])


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_batch_equals_rows_one_by_one(zoo, explainers, name, method):
    explainer, feeds = explainers[name], _rows(zoo, name)
    batch = explainer.explain(feeds, method=method, **FAST[method])
    for row in range(len(batch.target)):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                   method=method, target=int(batch.target[row]),
                                   **FAST[method])
        for key, value in batch.attributions.items():
            np.testing.assert_allclose(single.attributions[key][0], value[row], rtol=1e-5,
                                       atol=1e-6 * float(np.abs(value).max()))


def test_superpixels_of_different_counts_run_one_program_each(zoo, explainers):
    """Rows whose superpixel counts differ (each row's mask is the program's input) come
    back in row order, their per-feature extras padded with NaN, as each row alone."""
    pytest.importorskip("skimage")
    explainer, feeds = explainers["digits_cnn"], _rows(zoo, "digits_cnn", 4)
    options = {"features": "superpixels", "n_segments": 12, "n_samples": 64}
    batch = explainer.explain(feeds, method="lime", **options)
    counts = [int(mask.max()) + 1 for mask in batch.extras["feature_mask"]]
    assert len(set(counts)) > 1, counts  # the case under test
    for row, count in enumerate(counts):
        alone = explainer.explain({"image": feeds["image"][row:row + 1]}, method="lime",
                                  target=int(batch.target[row]), **options)
        np.testing.assert_allclose(batch.extras["weights"][row, :count],
                                   alone.extras["weights"][0], rtol=1e-5, atol=1e-9)
        assert np.isnan(batch.extras["weights"][row, count:]).all()
        np.testing.assert_allclose(batch["image"][row], alone["image"][0], rtol=1e-5,
                                   atol=1e-9)
    with pytest.raises(InputError, match="superpixels depend on each image") as caught:
        export_explainer(explainer.model, "lime", features="superpixels")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_token_ids_run_the_same_program(zoo, method):
    """Token ids (a symbolic length: no mask to bake, so export refuses in one line): the
    in-process run equals the emitted program, saved and run alone, bit for bit."""
    explainer = Explainer(str(zoo.model_path("lstm_tokens_tiny")), "cpu", progress=False)
    feeds = _rows(zoo, "lstm_tokens_tiny", 2)
    name = next(k for k, v in feeds.items() if v.dtype.kind in "iu" and v.ndim == 2)
    result = explainer.explain(feeds, method=method, baseline=0, **FAST[method])
    with pytest.raises(InputError, match="row shape of input") as caught:
        export_explainer(explainer.model, method, baseline=0)
    assert "\n" not in str(caught.value)
    mask = result.extras["feature_mask"]
    options = {**FAST[method], "features": "fed", "n_features": int(mask.max()) + 1,
               "seed": 0, "baseline": np.zeros((1, feeds[name].shape[1]), np.int64),
               "input": name, "kernel_width": 0.25, "alpha": 1.0, "internal_batch_size": 16}
    proto = standalone(emit_explainer(explainer.model, method, options,
                                      explainer.output).proto, explainer.model.weights)
    alone = _run(proto, {**feeds, "feature_mask": mask,
                         "target": np.asarray(result.target, np.int64)})
    np.testing.assert_array_equal(alone["attribution/" + name], result[name])


def test_shapley_map_is_the_constrained_regression():
    """A [E, v(z), f(x)] equals the kernel-weighted least squares with sum(phi) = f(x) - E,
    solved directly (numpy lstsq on the eliminated system, as shap does), for random
    scores: exact enumeration, sampling, and one feature."""
    rng = np.random.default_rng(0)
    for width, n_samples in ((5, 2048), (16, 2048), (40, 500), (2, 10)):
        present, weights, _ = shapley_coalitions(width, n_samples, 0)
        scores = rng.standard_normal((4, len(present) + 2))
        expected, values, fx = scores[:, 0], scores[:, 1:-1], scores[:, -1]
        delta = fx - expected
        z = present.astype(np.float64)
        root = np.sqrt(weights)
        design = (z[:, :-1] - z[:, -1:]) * root[:, None]
        response = (values - expected[:, None] - delta[:, None] * z[:, -1]) * root
        head = np.linalg.lstsq(design, response.T, rcond=None)[0].T
        np.testing.assert_allclose(scores @ shapley_map(present, weights).T, head,
                                   rtol=0, atol=1e-10)
    assert shapley_map(np.zeros((0, 1), bool), np.zeros(0)).shape == (0, 2)


def test_ridge_map_is_the_weighted_ridge():
    """C y and c . y equal the weighted ridge fit solved directly (centred normal
    equations), with and without a penalty, and with fewer samples than features."""
    rng = np.random.default_rng(1)
    for width, n_samples, alpha in ((6, 1000, 1.0), (64, 1000, 0.0), (30, 20, 0.0)):
        present = lime_samples(width, n_samples, 2)
        weights = lime_kernel(present, 0.25)
        scores = rng.standard_normal((3, n_samples))
        z = present.astype(np.float64)
        mean_z = weights @ z / weights.sum()
        mean_y = scores @ weights / weights.sum()
        zc, yc = z - mean_z, scores - mean_y[:, None]
        gram = zc.T @ (weights[:, None] * zc) + alpha * np.eye(width)
        coef = np.linalg.lstsq(gram, zc.T @ (weights[:, None] * yc.T), rcond=None)[0].T
        matrix, intercept = ridge_map(present, weights, alpha)
        scale = np.abs(coef).max()
        np.testing.assert_allclose(scores @ matrix.T, coef, rtol=0, atol=1e-10 * scale)
        np.testing.assert_allclose(scores @ intercept, mean_y - coef @ mean_z, rtol=0,
                                   atol=1e-10 * max(scale, 1.0))


def test_exported_metadata_names_the_inputs(zoo, explainers):
    exported = export_explainer(explainers["digits_cnn"].model, "kernel_shap")
    names = {value.name for value in exported.graph.input}
    assert {"feature_mask", "background/image"} <= names
    props = {p.key: p.value for p in exported.metadata_props}
    assert any("feature id" in value for value in props.values())
    onnx.checker.check_model(exported)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_output_seed_is_the_same_program(zoo, explainers, method):
    """Weights on the output (baked row exported, fed per row in-process): bit for bit."""
    explainer, feeds = explainers["rgb_cnn"], _rows(zoo, "rgb_cnn", 2)
    row = np.random.default_rng(1).standard_normal(10).astype(np.float32)
    got = _run(export_explainer(explainer.model, method, output_seed=row, **FAST[method]),
               feeds)
    seeds = np.repeat(row[None], len(feeds["image"]), axis=0)
    expected = explainer.explain(feeds, method=method, output_seed=seeds, **FAST[method])
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_fixed_batch_model_runs_one_copy_per_iteration(zoo, explainers, method):
    """A batch axis fixed to 1: the copies run one per iteration, row by row, and give
    what the symbolic model gives."""
    import onnxplain

    feeds = _rows(zoo, "digits_cnn", 2)
    proto = onnx.load(zoo.model_path("digits_cnn"))
    proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    with pytest.warns(onnxplain.BatchNotice):
        fixed = Explainer(proto, "cpu", progress=False).explain(feeds, method=method,
                                                                 **FAST[method])
    whole = explainers["digits_cnn"].explain(feeds, method=method, **FAST[method])
    np.testing.assert_allclose(fixed["image"], whole["image"], rtol=1e-5,
                               atol=1e-6 * float(np.abs(whole["image"]).max()))


def test_node_client_runs_exported_kernel_shap(_node, zoo, explainers, tmp_path):  # noqa: F811
    """The exported Kernel SHAP (its Loop, the feature mask and background defaults) runs in
    onnxruntime-node as in Python, and as Explainer.explain."""
    from .test_node_client import assert_same_run, export_to, run_node, run_python

    path = zoo.model_path("digits_cnn")
    feeds = _rows(zoo, "digits_cnn", 2)
    model_file = export_to(tmp_path, path, "kernel_shap", FAST["kernel_shap"])
    from_node = run_node(_node, model_file, feeds, tmp_path, "kernel_shap")
    assert_same_run(from_node, run_python(model_file, feeds))
    expected = explainers["digits_cnn"].explain(feeds, "kernel_shap", **FAST["kernel_shap"])
    np.testing.assert_allclose(from_node["shap_values"], expected.extras["values"], rtol=1e-6,
                               atol=1e-9)


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_opset_10_maps_features_without_gather_elements(method):
    """Below opset 11 (no GatherElements) each element takes its feature's value through a
    one-hot product: the same map as at opset 13."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weights = numpy_helper.from_array(rng.standard_normal((6, 3)).astype(np.float32), "w")

    def model(opset: int) -> onnx.ModelProto:
        graph = helper.make_graph(
            [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])],
            "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 6])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [weights])
        made = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        made.ir_version = 7
        return made

    x = rng.standard_normal((2, 6)).astype(np.float32)
    mask = np.array([0, 0, 1, 2, 2, 3])
    old, new = (Explainer(model(opset), "cpu", progress=False).explain(
        x, method, target=[0, 2], features=mask, **FAST[method]) for opset in (10, 13))
    np.testing.assert_allclose(old["x"], new["x"], rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(old["x"][:, 0], old["x"][:, 1])  # one feature, one value


@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_regression_matrices_over_the_memory_budget_are_one_line(zoo, method):
    """Columns of a 3x32x32 image are 3,072 features: the float64 matrices of the
    regression (LIME's gram 3,072^2 too) are refused under a 16 MB budget, naming them."""
    explainer = Explainer(str(zoo.model_path("rgb_cnn")), "cpu", progress=False,
                          memory_budget_mb=16)
    x = zoo.sample("rgb_cnn")["image"][:1]
    with pytest.raises(InputError, match="with 3,072 features and n_samples=") as caught:
        explainer.explain(x, method, features="columns")
    assert "\n" not in str(caught.value) and "memory budget" in str(caught.value)
    with pytest.raises(InputError, match="features and n_samples=") as caught:
        export_explainer(explainer.model, method, features="columns", n_samples=10**5,
                         max_runs=10**5)
    assert "\n" not in str(caught.value)
