"""A path the gradient treats as constant beside a differentiable one (x * Round(x)) is named
in a warning and in the summary's notes; selections (Where's condition, ArgMax indices) and
the quantizers' scales are no such path, and no zoo model gets the warning."""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.autodiff.build import partial_cuts
from onnxplain.errors import AttributionWarning, UnsupportedOpError
from onnxplain.graph.model import Model

RNG = np.random.default_rng(0)
WEIGHT = RNG.normal(size=(4, 3)).astype(np.float32)
X = (RNG.normal(size=(2, 4)) * 3).astype(np.float32)


def _model(nodes: list[onnx.NodeProto], last: str) -> onnx.ModelProto:
    """x [N, 4] -> nodes -> `last` [N, 4] -> MatMul -> logits [N, 3]."""
    nodes = [*nodes, helper.make_node("MatMul", [last, "w"], ["logits"], name="head")]
    graph = helper.make_graph(
        nodes, "cut", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(WEIGHT, "w"), numpy_helper.from_array(np.float32(0.1), "k")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def rounded_product() -> onnx.ModelProto:
    """x * Round(x): the gradient keeps Round(x) and leaves out x's path through Round."""
    return _model([helper.make_node("Round", ["x"], ["r"], name="rounding"),
                   helper.make_node("Mul", ["x", "r"], ["h"], name="product")], "h")


def integer_cast() -> onnx.ModelProto:
    """x + float(int(x)), the integer part taken by a Cast to int32 and back."""
    return _model([helper.make_node("Cast", ["x"], ["i"], name="to_int", to=TensorProto.INT32),
                   helper.make_node("Cast", ["i"], ["f"], name="to_float",
                                    to=TensorProto.FLOAT),
                   helper.make_node("Add", ["x", "f"], ["h"], name="sum")], "h")


def leaky_by_where() -> onnx.ModelProto:
    """Where(x > 0, x, 0.1 x): the comparison only selects; the gradient is the whole answer."""
    return _model([helper.make_node("Greater", ["x", "zero"], ["positive"], name="compare"),
                   helper.make_node("Mul", ["x", "k"], ["small"]),
                   helper.make_node("Where", ["positive", "x", "small"], ["h"])], "h")


def max_by_argmax() -> onnx.ModelProto:
    """x gathered at its ArgMax (the max, broadcast): indices only select."""
    return _model([helper.make_node("ArgMax", ["x"], ["at"], name="argmax", axis=1),
                   helper.make_node("GatherElements", ["x", "at"], ["top"], axis=1),
                   helper.make_node("Add", ["x", "top"], ["h"])], "h")


def only_rounded() -> onnx.ModelProto:
    """Round(x) alone: every path is cut, which path_cuts refuses (not a warning)."""
    return _model([helper.make_node("Round", ["x"], ["h"], name="rounding")], "h")


def _with_zero(model: onnx.ModelProto) -> onnx.ModelProto:
    model.graph.initializer.append(numpy_helper.from_array(np.float32(0.0), "zero"))
    return model


def _explain(model: onnx.ModelProto, method: str = "saliency"):
    return onnxplain.Explainer(model, "cpu").explain(X, method, target=1)


@pytest.mark.parametrize(("make", "node"), [(rounded_product, "rounding"),
                                            (integer_cast, "to_int")])
def test_a_partly_cut_path_is_warned_and_noted(make, node):
    explainer = onnxplain.Explainer(make(), "cpu")
    with pytest.warns(AttributionWarning, match=f"'{node}'") as caught:
        first = explainer.explain(X, "saliency", target=1, abs=False)
    assert sum("as constant" in str(w.message) for w in caught) == 1
    assert any(f"'{node}'" in note and "as constant" in note for note in first.notes)
    with warnings.catch_warnings():  # warned once per explainer; noted in every summary
        warnings.simplefilter("error", AttributionWarning)
        second = explainer.explain(X, "input_x_gradient", target=1)
    assert any(f"'{node}'" in note for note in second.notes)


def test_the_warning_is_about_the_path_the_gradient_leaves_out():
    """The gradient of x * Round(x) at class 1 is Round(x) * w[:, 1], which is what it
    returns; the note says that the dependence through Round is not in it."""
    with pytest.warns(AttributionWarning):
        result = _explain(rounded_product())["x"]
    np.testing.assert_allclose(result, np.abs(np.round(X) * WEIGHT[:, 1]), rtol=1e-6)


@pytest.mark.parametrize("make", [leaky_by_where, max_by_argmax])
def test_selections_are_not_cuts(make):
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        result = _explain(_with_zero(make()))
    assert not any("as constant" in note for note in result.notes)


def test_a_path_cut_everywhere_is_still_refused():
    with pytest.raises(UnsupportedOpError, match="rounding"):
        _explain(only_rounded())


def test_a_non_gradient_method_gets_no_note():
    with warnings.catch_warnings():
        warnings.simplefilter("error", AttributionWarning)
        result = onnxplain.Explainer(rounded_product(), "cpu").explain(
            X, "occlusion", target=1, window=2)
    assert not any("as constant" in note for note in result.notes)


def test_no_zoo_model_has_a_partly_cut_path(zoo):
    """Quantizer pairs (the straight-through estimator), attention masks, SDPA's IsNaN
    guard: none is a cut on the explained path."""
    from model_zoo.registry import ZOO
    from onnxplain.graph.sources import find_sources
    from onnxplain.runtime.engine import pick_output

    for name in ZOO:
        model = Model.load(str(zoo.model_path(name)))
        sources, _ = find_sources(model, None)
        infos = model.infos
        cuts = partial_cuts(model.proto.graph.node, [s.tensor for s in sources],
                            [pick_output(model, None)],
                            lambda n, infos=infos: n in infos and infos[n].is_float)
        assert not cuts, (name, [c.name for c in cuts])
