"""Degenerate explanations get their own plain-language warning, never an absurd percentage:
an output that does not depend on the input, a baseline equal to the input, equal scores at
both ends of the path, tied classes."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import AttributionWarning
from onnxplain.methods.deeplift import SummationWarning
from onnxplain.methods.integrated_gradients import ConvergenceWarning

X = np.random.default_rng(3).uniform(0.2, 1.0, (3, 4)).astype(np.float32)


def _model(nodes, initializers, classes: int = 2) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", classes])],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _caught(explain) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain()
    return caught


def _texts(caught, category) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, category)]


def constant_model() -> onnx.ModelProto:
    """y = 0 * x W + b: the output does not depend on the input."""
    return _model([helper.make_node("MatMul", ["x", "w"], ["h"]),
                   helper.make_node("Add", ["h", "b"], ["y"])],
                  {"w": np.zeros((4, 2), np.float32), "b": np.array([1.0, 2.0], np.float32)})


def square_model() -> onnx.ModelProto:
    """y = [sum(x^2), 0]: equal at x and -x, with nonzero gradients on the way."""
    return _model([helper.make_node("Mul", ["x", "x"], ["sq"]),
                   helper.make_node("MatMul", ["sq", "w"], ["y"])],
                  {"w": np.array([[1, 0]] * 4, np.float32)})


# Every method that runs the program `export` saves (methods._graph) included.
@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift", "saliency",
                                    "input_x_gradient", "guided_backprop", "deconvnet", "lrp",
                                    "smoothgrad", "smoothgrad_sq", "vargrad", "occlusion",
                                    "kernel_shap", "lime"])
def test_output_independent_of_the_input(method):
    explainer = onnxplain.Explainer(constant_model(), "cpu")
    caught = _caught(lambda: explainer.explain(X, method, target=1))
    assert not _texts(caught, (ConvergenceWarning, SummationWarning))
    zero = _texts(caught, AttributionWarning)
    assert len(zero) == 1 and zero[0].startswith("every attribution is 0 in rows 0, 1, 2")
    assert all("%" not in str(w.message) for w in caught)


def test_baseline_equal_to_the_input():
    explainer = onnxplain.Explainer(square_model(), "cpu")
    result = None

    def run():
        nonlocal result
        result = explainer.explain(X, "integrated_gradients", target=0, baseline=X)
    caught = _caught(run)
    assert not np.any(result["x"])
    assert not _texts(caught, ConvergenceWarning)
    assert _texts(caught, AttributionWarning)[0].startswith("every attribution is 0")


def test_equal_scores_at_both_ends_with_a_sum_left_over():
    """S(x) = S(-x): completeness asks for a zero sum; the riemann rule with 2 steps leaves
    a sum, which is reported as such, never as a percentage of zero."""
    explainer = onnxplain.Explainer(square_model(), "cpu")
    caught = _caught(lambda: explainer.explain(X, "integrated_gradients", target=0,
                                               baseline=-X, n_steps=2, rule="riemann_left"))
    texts = _texts(caught, ConvergenceWarning)
    assert len(texts) == 1 and "%" not in texts[0]
    assert "the explained score is the same at the input and at the reference in rows 0, " \
           "1, 2" in texts[0] and texts[0].endswith("(or rule=gausslegendre)")


def test_equal_scores_at_both_ends_with_an_exact_integral_are_quiet():
    """The default rule integrates x^2 exactly: the sum is 0, nothing to warn about."""
    explainer = onnxplain.Explainer(square_model(), "cpu")
    caught = _caught(lambda: explainer.explain(X, "integrated_gradients", target=0,
                                               baseline=-X, n_steps=4))
    assert not _texts(caught, (ConvergenceWarning, AttributionWarning))


def test_tied_classes_are_named():
    """Two identical columns of W: classes 0 and 1 tie in every row."""
    w = np.random.default_rng(1).standard_normal((4, 1)).astype(np.float32)
    model = _model([helper.make_node("MatMul", ["x", "w"], ["y"])],
                   {"w": np.concatenate([w, w, w - 5], axis=1)}, classes=3)
    explainer = onnxplain.Explainer(model, "cpu")
    result = None

    def run():
        nonlocal result
        result = explainer.explain(X, "saliency")
    texts = _texts(_caught(run), AttributionWarning)
    positive = np.flatnonzero((X @ w)[:, 0] > -2.5)
    assert texts == [f"rows {', '.join(map(str, positive))}: classes 0, 1 tie for the highest "
                     f"score in row {positive[0]}; the first, 0, was explained (pass a target "
                     "to choose)"]
    assert texts[0] in result.summary()["notes"]
    quiet = _caught(lambda: explainer.explain(X, "saliency", target=1))
    assert not _texts(quiet, AttributionWarning)


def constant_conv_model() -> onnx.ModelProto:
    """Conv -> Relu -> global pool -> 0 * W + b: activations move, the output does not."""
    rng = np.random.default_rng(2)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"], pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]),
         helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]),
         helper.make_node("Gemm", ["f", "w", "b"], ["y"])],
        "m", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 1, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(rng.standard_normal((3, 1, 3, 3)).astype(np.float32), "k"),
         numpy_helper.from_array(np.zeros((3, 2), np.float32), "w"),
         numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("method", ["grad_cam", "grad_cam_plus_plus", "guided_grad_cam", "cam"])
def test_layer_maps_of_an_output_independent_of_the_input(method):
    """The layer-map programs (export.layer_maps) give 0 everywhere: warned, never NaN."""
    explainer = onnxplain.Explainer(constant_conv_model(), "cpu")
    x = np.random.default_rng(4).uniform(0.2, 1.0, (3, 1, 6, 6)).astype(np.float32)
    result = None

    def run():
        nonlocal result
        result = explainer.explain(x, method, target=1)
    zero = _texts(_caught(run), AttributionWarning)
    assert not np.any(result["x"]) and np.all(np.isfinite(result["x"]))
    assert len(zero) == 1 and zero[0].startswith("every attribution is 0 in rows 0, 1, 2")


def test_nan_or_infinite_attributions_are_reported_naming_the_rows():
    """Sqrt's derivative is infinite at 0: row 1's saliency holds inf, and a warning names
    that row alone (row 0's inputs are away from 0), not as a constant map too."""
    weights = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([[1, 2, 3], [0, 1, 4]], np.float32)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = onnxplain.Explainer(model, "cpu", progress=False).explain(x, method="saliency",
                                                                            target=[0, 0])
    texts = [str(w.message) for w in caught if issubclass(w.category, AttributionWarning)]
    assert [t for t in texts if "NaN or infinite in row 1:" in t] and len(texts) == 1, texts
    assert np.isinf(result["x"][1, 0]) and np.isfinite(result["x"][0]).all()
