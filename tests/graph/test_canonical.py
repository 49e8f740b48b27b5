"""The canonicalisation registry: decompositions run on load, nest, and refuse with one line."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import onnxplain
from onnxplain.errors import ModelError
from onnxplain.graph import canonical
from onnxplain.graph.canonical import DECOMPOSITIONS, Rewrite, decomposes


@pytest.fixture()
def registered():
    """Two test ops: Triple -> Double + x, Double -> x * 2; Refused always refuses."""
    @decomposes("test.onnxplain", "Triple")
    def triple(rewrite: Rewrite):
        doubled = rewrite.fresh("doubled")
        rewrite.nodes.append(helper.make_node("Double", [rewrite.node.input[0]], [doubled],
                                              domain="test.onnxplain", name="inner"))
        rewrite.op("Add", doubled, rewrite.node.input[0], out=rewrite.node.output[0])
        return rewrite.nodes

    @decomposes("test.onnxplain", "Double")
    def double(rewrite: Rewrite):
        two = rewrite.const(np.array(2.0, np.float32), "two")
        rewrite.op("Mul", rewrite.node.input[0], two, out=rewrite.node.output[0])
        return rewrite.nodes

    @decomposes("test.onnxplain", "Refused")
    def refused(rewrite: Rewrite):
        raise rewrite.refuse("mode 7 is not covered")

    yield
    for op in ("Triple", "Double", "Refused"):
        DECOMPOSITIONS.pop(("test.onnxplain", op))


def _model(op: str, **attrs) -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["h"], domain="test.onnxplain", name="fused", **attrs),
         helper.make_node("Tanh", ["h"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("test.onnxplain", 1)])


def test_nested_decompositions_run_on_load_and_differentiate(registered):
    model = _model("Triple")
    explainer = onnxplain.Explainer(model, "cpu")
    ops = [node.op_type for node in explainer.model.proto.graph.node]
    assert ops == ["Mul", "Add", "Tanh"]
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(explainer.forward(x)["y"], np.tanh(3 * x), rtol=1e-6)
    result = explainer.explain(x, output_seed=np.ones((2, 3), np.float32), abs=False)
    np.testing.assert_allclose(result["x"], 3 * (1 - np.tanh(3 * x) ** 2), rtol=1e-5)
    assert [n.op_type for n in model.graph.node] == ["Triple", "Tanh"]  # the user's is kept


def test_a_refused_case_is_one_line_naming_node_and_attributes(registered):
    with pytest.raises(ModelError) as caught:
        onnxplain.Explainer(_model("Refused", mode=7), "cpu")
    assert str(caught.value) == ("cannot canonicalise test.onnxplain::Refused node 'fused' "
                                 "(mode=7): mode 7 is not covered")


def test_a_decomposition_that_never_ends_is_an_error(registered):
    @decomposes("test.onnxplain", "Forever")
    def forever(rewrite: Rewrite):
        return [helper.make_node("Forever", list(rewrite.node.input), list(rewrite.node.output),
                                 domain="test.onnxplain")]
    try:
        with pytest.raises(ModelError, match="did not converge"):
            canonical.canonicalise(_model("Forever"))
    finally:
        DECOMPOSITIONS.pop(("test.onnxplain", "Forever"))


@pytest.fixture()
def waiting():
    """Waits: decomposes to Neg once its input's producer is a standard op, which Triple's
    decomposition makes it in the next round (the case of an NHWC pool whose input rank
    only inference on standard ops can tell)."""
    @decomposes("test.onnxplain", "Waits")
    def waits(rewrite: Rewrite):
        producer = rewrite.index.producers.get(rewrite.node.input[0])
        if producer is None or producer.domain == "test.onnxplain":
            raise rewrite.later("its input comes from a test op")
        rewrite.op("Neg", rewrite.node.input[0], out=rewrite.node.output[0])
        return rewrite.nodes

    yield
    DECOMPOSITIONS.pop(("test.onnxplain", "Waits"))


def test_a_waiting_decomposition_runs_in_a_later_round(registered, waiting):
    model = _model("Triple")
    model.graph.node[1].CopyFrom(helper.make_node("Waits", ["h"], ["y"], name="waits",
                                                  domain="test.onnxplain"))
    canonical.canonicalise(model)
    assert [node.op_type for node in model.graph.node] == ["Mul", "Add", "Neg"]


def test_a_decomposition_that_waits_for_nothing_is_refused(waiting):
    with pytest.raises(ModelError, match=r"^cannot canonicalise test.onnxplain::Waits node "
                                         r"'fused' \(no attributes\): its input comes from"):
        canonical.canonicalise(_model("Waits"))
