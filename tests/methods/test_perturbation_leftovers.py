"""The perturbation family's loose ends (issue 19 review): `max_runs` bounds the forward runs
a row really takes (Kernel SHAP: its coalitions times the background rows) and is no part
of a program's key; an exported `feature_mask` reads an id outside 0..F-1 as no feature
(never perturbed, attribution 0) where in process such a mask is one line; a model whose
score ignores the input gets an all-zero map and the all-zero warning from every method
(RISE's sum alone was a map constant up to its masks' sampling noise)."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain.methods._graph as graph_module
from onnxplain import Explainer
from onnxplain.errors import AttributionWarning, InputError
from onnxplain.export.designs import coalitions
from onnxplain.export.occlusion import windows
from onnxplain.exporter import export_explainer

from ..export.test_export import _run

PERTURBATION = ("occlusion", "rise", "kernel_shap", "lime")


def _linear(weights: np.ndarray, bias: np.ndarray, dims: list) -> onnx.ModelProto:
    """x [batch, *dims] -> Flatten(x) @ weights + bias: [batch, classes]."""
    graph = helper.make_graph(
        [helper.make_node("Flatten", ["x"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", *dims])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", len(bias)])],
        [numpy_helper.from_array(weights.astype(np.float32), "w"),
         numpy_helper.from_array(bias.astype(np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _table(columns: int) -> onnx.ModelProto:
    rng = np.random.default_rng(columns)
    return _linear(rng.standard_normal((columns, 2)), rng.standard_normal(2), [columns])


def _x(rows: int, *dims: int) -> np.ndarray:
    return np.random.default_rng(7).standard_normal((rows, *dims)).astype(np.float32)


# ---- max_runs: the runs a row takes, and no part of the program ----------------------------

def test_kernel_shap_counts_every_coalition_once_per_background_row():
    """4 features: all 2^4 - 1 coalitions besides the full one are scored, each over the 3
    background rows: 45 runs per row, whatever n_samples says."""
    explainer = Explainer(_table(4), progress=False)
    x, background = _x(2, 4), _x(3, 4)
    with pytest.raises(InputError, match=r"^kernel_shap with 4 features and n_samples=2,048 "
                       r"over 3 background rows takes 45 forward runs per row, over the "
                       r"budget of max_runs=44: lower n_samples, use fewer background rows "
                       r"or allow it with -O max_runs=45 \(API: max_runs=45\)$"):
        explainer.explain(x, "kernel_shap", 0, baseline=background, max_runs=44)
    result = explainer.explain(x, "kernel_shap", 0, baseline=background, max_runs=45)
    assert result.extras["coalitions"] == 15 and np.all(np.isfinite(result.attributions["x"]))


@pytest.mark.parametrize("n_samples", [39, 40, 57])
def test_kernel_shap_sampled_budget_is_the_drawn_count(n_samples):
    """16 features: the coalitions are sampled; the budget is the drawn ones plus the empty
    one (a drawn pair is completed, so n_samples + 1 or + 2): exactly that runs, one less
    is refused naming it."""
    explainer = Explainer(_table(16), progress=False)
    x = _x(1, 16)
    runs = len(coalitions(16, n_samples, 0)[0]) + 1
    assert runs in (n_samples + 1, n_samples + 2)
    with pytest.raises(InputError, match=f"takes {runs} forward runs .* -O max_runs={runs} "):
        explainer.explain(x, "kernel_shap", 0, n_samples=n_samples, max_runs=runs - 1)
    result = explainer.explain(x, "kernel_shap", 0, n_samples=n_samples, max_runs=runs)
    assert result.extras["coalitions"] == runs


def test_lime_counts_its_samples_once_per_background_row():
    explainer = Explainer(_table(4), progress=False)
    x, background = _x(1, 4), _x(2, 4)
    with pytest.raises(InputError, match="n_samples=30 over 2 background rows takes 60 "
                                         "forward runs .* -O max_runs=60 "):
        explainer.explain(x, "lime", 0, n_samples=30, baseline=background, max_runs=59)
    explainer.explain(x, "lime", 0, n_samples=30, baseline=background, max_runs=60)


def test_export_checks_the_same_run_count():
    """The exported program is refused for the same count, its background rows included."""
    model, background = _table(4), _x(3, 4)
    with pytest.raises(InputError, match="takes 45 forward runs .* -O max_runs=45 "):
        export_explainer(model, "kernel_shap", baseline=background, max_runs=44)
    export_explainer(model, "kernel_shap", baseline=background, max_runs=45)
    with pytest.raises(InputError, match="^occlusion with window .* takes 16 forward runs"):
        export_explainer(_table(16), "occlusion", max_runs=15)


@pytest.mark.parametrize("method, options", [
    ("occlusion", {"window": 2}), ("kernel_shap", {"n_samples": 50}),
    ("lime", {"n_samples": 50}), ("rise", {"n_masks": 50})])
def test_max_runs_builds_no_new_program(monkeypatch, method, options):
    """Raising max_runs changes no number the program computes: the second call finds the
    program built by the first (one emit_explainer call) and returns the same values."""
    built = []
    emit = graph_module.emit_explainer
    monkeypatch.setattr(graph_module, "emit_explainer",
                        lambda *args, **kwargs: built.append(1) or emit(*args, **kwargs))
    explainer = Explainer(_table(16), progress=False)
    x = _x(2, 16)
    first = explainer.explain(x, method, 0, **options, max_runs=5000)
    second = explainer.explain(x, method, 0, **options, max_runs=6000)
    assert len(built) == 1
    np.testing.assert_array_equal(first.attributions["x"], second.attributions["x"])


def test_occlusion_defaults_resolve_in_one_place():
    """window None: 8 pixels over every channel for images, 1 element otherwise; stride
    None: the window. In-process extras and the exported program read the same."""
    assert windows((3, 16, 16), None, None) == ((3, 8, 8), (3, 8, 8), [1, 2, 2])
    assert windows((5,), None, None) == ((1,), (1,), [5])
    assert windows((16, 16, 3), 4, None) == ((4, 4, 3), (4, 4, 3), [4, 4, 1])
    image = _linear(np.random.default_rng(0).standard_normal((3 * 16 * 16, 2)), np.zeros(2),
                    [3, 16, 16])
    x = _x(2, 3, 16, 16)
    result = Explainer(image, progress=False).explain(x, "occlusion", 0)
    assert result.extras["window"] == [3, 8, 8] and result.extras["windows"] == 4
    got = _run(export_explainer(image, "occlusion"), {"x": x, "target": np.zeros(2, np.int64)})
    np.testing.assert_array_equal(got["attribution/x"], result.attributions["x"])


# ---- feature_mask ids ------------------------------------------------------------------------

@pytest.mark.parametrize("method", ["kernel_shap", "lime"])
def test_a_negative_feature_id_is_one_line_in_process_and_at_export(method):
    mask = np.array([0, -1, 1, 1])
    with pytest.raises(InputError, match="^a feature mask holds feature ids >= 0, got -1: "):
        Explainer(_table(4), progress=False).explain(_x(1, 4), method, 0, features=mask)
    with pytest.raises(InputError, match="^a feature mask holds feature ids >= 0, got -1: "):
        export_explainer(_table(4), method, features=mask)


@pytest.mark.parametrize("outside", [-1, -4, 4, 99])
def test_an_exported_mask_reads_an_id_outside_the_features_as_no_feature(outside):
    """Linear f = w . x + c, baseline 0, every coalition scored: the Shapley value of a
    group of elements is sum over it of w_i x_i. An element of no feature keeps its value
    in every copy, so it is credited nothing and moves no feature's value (-1 was read as
    feature F - 1, 4 and 99 failed in Gather)."""
    weights = np.array([[1.5], [-2.0], [0.5], [3.0]])
    model = _linear(weights, np.array([0.25]), [4])
    exported = export_explainer(model, "kernel_shap", features=np.arange(4))
    x = _x(2, 4)
    fed = np.array([[0, outside, 1, 1]], np.int64)
    got = _run(exported, {"x": x, "target": np.zeros(2, np.int64), "feature_mask": fed})
    contributions = x * weights[:, 0]
    values = np.stack([contributions[:, 0], contributions[:, 2:].sum(axis=1),
                       np.zeros(2), np.zeros(2)], axis=1)
    np.testing.assert_allclose(got["shap_values"], values, atol=1e-5)
    expected = np.stack([values[:, 0], np.zeros(2), values[:, 1], values[:, 1]], axis=1)
    np.testing.assert_allclose(got["attribution/x"], expected, atol=1e-5)
    assert np.all(got["attribution/x"][:, 1] == 0)


# ---- a score that ignores the input ----------------------------------------------------------

def _ignoring(dims: list) -> onnx.ModelProto:
    """logits = Flatten(x) @ 0 + bias: the output never depends on x."""
    width = int(np.prod(dims))
    return _linear(np.zeros((width, 3)), np.array([0.5, -1.0, 2.0]), dims)


@pytest.mark.parametrize("method", PERTURBATION)
@pytest.mark.parametrize("dims", [[6], [3, 16, 16]], ids=["table", "image"])
def test_an_input_the_score_ignores_gets_zeros_and_the_warning(method, dims):
    options = {"rise": {"n_masks": 64}, "kernel_shap": {"n_samples": 64},
               "lime": {"n_samples": 64}}.get(method, {})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = Explainer(_ignoring(dims), progress=False).explain(
            _x(2, *dims), method, 2, **options)
    assert np.all(result.attributions["x"] == 0)
    said = [str(w.message) for w in caught if issubclass(w.category, AttributionWarning)]
    assert any(text.startswith("every attribution is 0 in rows 0, 1") for text in said), said


def test_rise_still_explains_a_score_that_moves():
    """The zeroing is per row and only where no mask moved the score: a row whose score
    moves keeps its saliency (the sum over masks) next to one whose score cannot move."""
    weights = np.zeros((6, 1))
    weights[2] = 1.0
    model = _linear(weights, np.array([0.0]), [6])
    x = np.array([[0, 0, 0, 0, 0, 0], [1, 1, 4, 1, 1, 1]], np.float32)
    result = Explainer(model, progress=False).explain(x, "rise", 0, n_masks=200)
    saliency = result.attributions["x"]
    assert np.all(saliency[0] == 0)
    assert saliency[1].argmax() == 2 and saliency[1, 2] > 0


# ---- occlusion's copies: scattered into few-element windows, selected otherwise ------------

def _occlusion_reference(x, weights, baseline, size, step):
    """Linear score w . x: a window's drop is sum over its elements of w (x - baseline);
    each element the mean drop over the windows covering it (clipped at the border)."""
    row = x.shape[1:]
    counts = [-(-(d - s) // t) + 1 for d, s, t in zip(row, size, step, strict=True)]
    total, covered = np.zeros(x.shape), np.zeros(row)
    for corner in np.ndindex(*counts):
        region = tuple(slice(c * t, c * t + s) for c, t, s in zip(corner, step, size,
                                                                 strict=True))
        drop = ((x - baseline) * weights.reshape(row))[(slice(None), *region)]
        total[(slice(None), *region)] += drop.reshape(len(x), -1).sum(axis=1).reshape(
            -1, *[1] * len(row))
        covered[region] += 1
    return np.where(covered > 0, total / np.maximum(covered, 1), 0.0)


@pytest.mark.parametrize("dims, window, stride, path", [
    ([200], 3, 3, "scatter"),           # overhanging last window, clamped indices
    ([10], 3, 3, "select"),             # too many elements per window for the indices
    ([3, 20, 20], 3, 3, "scatter"),     # windows over every channel, clipped at the border
    ([3, 20, 20], 4, 5, "select"),      # gaps between windows: those elements stay 0
    ([3, 40, 40], 1, 2, "scatter"),     # one-pixel windows with gaps
])
def test_occlusion_copies_match_a_direct_computation(dims, window, stride, path):
    rng = np.random.default_rng(3)
    weights = rng.standard_normal(int(np.prod(dims)))
    model = _linear(weights[:, None], np.array([0.5]), dims)
    x = _x(2, *dims)
    baseline = rng.standard_normal(dims).astype(np.float32)  # one row, element by element
    size, step, _ = windows(tuple(dims), window, stride)
    scatter = np.prod(size) * (2 + len(dims)) * 8 <= np.prod(dims)
    assert scatter == (path == "scatter")
    result = Explainer(model, progress=False).explain(
        x, "occlusion", 0, window=window, stride=stride, baseline=baseline)
    want = _occlusion_reference(x.astype(np.float64), weights, baseline, size, step)
    np.testing.assert_allclose(result.attributions["x"], want, rtol=1e-4, atol=1e-4)
