"""The affine stem of an input: where it ends, that prefix then suffix is the model, that the
prefix's gradient is its adjoint, and that Integrated Gradients through it is unchanged."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.graph.model import Model
from onnxplain.graph.stem import affine_stem
from onnxplain.runtime.engine import BatchNotice, OutputSeed
from onnxplain.runtime.session import Session

RNG = np.random.default_rng(3)


def _const(name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(RNG.standard_normal(shape).astype(np.float32), name)


def model(stem: list[onnx.NodeProto], extra: list[onnx.TensorProto] = (), first: str = "s",
          channels: int = 4) -> onnx.ModelProto:
    """x [batch, 3, 8, 8] -> `stem` (ending in tensor `first` with `channels`) -> Relu ->
    pool -> dense."""
    nodes = [*stem,
             helper.make_node("Relu", [first], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["p"]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("Gemm", ["f", "dense"], ["logits"])]
    inits = [_const("dense", channels, 5), *extra]
    graph = helper.make_graph(
        nodes, "stem", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 5])], inits)
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 8
    return proto


def normalise_conv_bn() -> onnx.ModelProto:
    """(x - mean) / std -> Conv -> BatchNormalization: all of it affine."""
    stem = [helper.make_node("Sub", ["x", "mean"], ["centred"]),
            helper.make_node("Div", ["centred", "std"], ["scaled"]),
            helper.make_node("Conv", ["scaled", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
            helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mu", "var"], ["s"])]
    std = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.5, np.float32), "std")
    var = numpy_helper.from_array(np.full(4, 2.0, np.float32), "var")
    extra = [_const("mean", 1, 3, 1, 1), std, _const("w", 4, 3, 3, 3), _const("b", 4),
             _const("gamma", 4), _const("beta", 4), _const("mu", 4), var]
    return model(stem, extra)


def test_stem_ends_where_the_first_non_affine_op_reads():
    stem = affine_stem(Model(normalise_conv_bn()), "x")
    assert stem is not None and stem.frontier == "s"
    assert [n.op_type for n in stem.prefix.proto.graph.node] == [
        "Sub", "Div", "Conv", "BatchNormalization"]
    assert [i.name for i in stem.suffix.proto.graph.input] == ["s"]
    assert "Conv" not in {n.op_type for n in stem.suffix.proto.graph.node}


def test_prefix_then_suffix_is_the_model():
    proto = normalise_conv_bn()
    stem = affine_stem(Model(proto), "x")
    x = RNG.standard_normal((3, 3, 8, 8)).astype(np.float32)
    whole = Session(proto, ["CPUExecutionProvider"]).run(None, {"x": x})["logits"]
    z = Session(stem.prefix.proto, ["CPUExecutionProvider"]).run(None, {"x": x})["s"]
    parts = Session(stem.suffix.proto, ["CPUExecutionProvider"]).run(None, {"s": z})["logits"]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-6)


def test_prefix_gradient_is_the_adjoint():
    """<s, L(x + d) - L(x)> = <L^T s, d> for an affine L, whatever x and d."""
    explainer = onnxplain.Explainer(normalise_conv_bn(), providers="cpu")
    engines = explainer.engine.stem("x")
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    d = RNG.standard_normal(x.shape).astype(np.float32)
    seed = RNG.standard_normal((2, 4, 8, 8)).astype(np.float32)
    moved = engines.prefix.forward({"x": x + d})["s"].astype(np.float64) - \
        engines.prefix.forward({"x": x})["s"]
    adjoint = engines.prefix.gradients({"x": x}, OutputSeed(seed), ["x"]).grads["x"]
    for row in range(2):
        expected = float((seed[row] * moved[row]).sum())
        assert float((adjoint[row].astype(np.float64) * d[row]).sum()) == pytest.approx(
            expected, rel=1e-4)


@pytest.mark.parametrize("case", ["normalise_conv_bn", "digits_cnn"])
def test_integrated_gradients_through_the_stem_is_unchanged(case, zoo, monkeypatch):
    if case == "digits_cnn":
        explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
        x = zoo.sample("digits_cnn")["image"][:5]
    else:
        explainer = onnxplain.Explainer(normalise_conv_bn(), providers="cpu")
        x = RNG.standard_normal((5, 3, 8, 8)).astype(np.float32)
    assert explainer.engine.stem(explainer.model.inputs[0].name) is not None
    options = {"method": "integrated_gradients", "n_steps": 24, "baseline": "uniform"}
    through = explainer.explain(x, **options)
    monkeypatch.setattr(explainer.engine, "stem", lambda name: None)
    direct = explainer.explain(x, **options)
    for name, values in direct.attributions.items():
        np.testing.assert_allclose(through.attributions[name], values, rtol=1e-4,
                                   atol=1e-5 * np.abs(values).max())
    np.testing.assert_allclose(through.extras["convergence_delta"],
                               direct.extras["convergence_delta"], atol=1e-4)


def _first(*nodes: onnx.NodeProto, extra: list[onnx.TensorProto] = ()) -> Model:
    return Model(model(list(nodes), list(extra), channels=3))


NO_STEM = {
    "relu first": lambda: _first(helper.make_node("Relu", ["x"], ["s"])),
    "x squared": lambda: _first(helper.make_node("Mul", ["x", "x"], ["s"])),
    "constant over x": lambda: _first(helper.make_node("Div", ["k", "x"], ["s"]),
                                      extra=[_const("k", 1, 3, 1, 1)]),
    "per-row constant": lambda: _first(helper.make_node("Add", ["x", "k"], ["s"]),
                                       extra=[_const("k", 2, 3, 8, 8)]),
    "x also read by Shape": lambda: _first(
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["x", "shape"], ["same"]),
        helper.make_node("Add", ["same", "k"], ["s"]), extra=[_const("k", 1, 3, 1, 1)]),
    "two ends": lambda: _first(
        helper.make_node("Add", ["x", "k"], ["a"]),
        helper.make_node("Relu", ["a"], ["ra"]),
        helper.make_node("Mul", ["a", "k"], ["b"]),
        helper.make_node("Add", ["ra", "b"], ["s"]), extra=[_const("k", 1, 3, 1, 1)]),
    "batch-mixing transpose": lambda: _first(
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2, 3]),
        helper.make_node("Transpose", ["t"], ["s"], perm=[1, 0, 2, 3])),
}


def _read_inside_if() -> Model:
    """a = x + k is read by Mul (in the stem) and inside an If branch: a second end."""
    def branch(label: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node("Identity", ["a"], [f"{label}_out"])],
                                 label, [], [helper.make_tensor_value_info(
                                     f"{label}_out", TensorProto.FLOAT, None)])

    nodes = [helper.make_node("Add", ["x", "k"], ["a"]),
             helper.make_node("Mul", ["a", "k"], ["b"]),
             helper.make_node("If", ["flag"], ["picked"], then_branch=branch("then"),
                              else_branch=branch("else")),
             helper.make_node("Add", ["b", "picked"], ["s"])]
    flag = numpy_helper.from_array(np.array(True), "flag")
    return _first(*nodes, extra=[_const("k", 1, 3, 1, 1), flag])


NO_STEM["read inside a subgraph"] = _read_inside_if


@pytest.mark.parametrize("case", sorted(NO_STEM))
def test_no_stem(case):
    assert affine_stem(NO_STEM[case](), "x") is None


def test_integrated_gradients_without_a_stem_still_runs():
    explainer = onnxplain.Explainer(NO_STEM["relu first"]().proto, providers="cpu")
    x = RNG.standard_normal((2, 3, 8, 8)).astype(np.float32)
    result = explainer.explain(x, method="integrated_gradients", n_steps=8)
    assert explainer.engine.stem("x") is None
    assert np.isfinite(result.attributions["x"]).all()


def test_fixed_batch_notice_comes_once(zoo, monkeypatch):
    """A model exported with batch 1 runs IG's rows one at a time, its Loop program walking
    the path at the stem's end, with the one notice the whole explain call gives; the same
    numbers as a program without the stem."""
    proto = onnx.load(str(zoo.model_path("digits_cnn")))
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].Clear()
        value.type.tensor_type.shape.dim[0].dim_value = 1
    explainer = onnxplain.Explainer(proto, providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:3]
    options = {"method": "integrated_gradients", "n_steps": 8, "delta_tolerance": 1.0}
    with pytest.warns(BatchNotice) as caught:
        through = explainer.explain(x, **options)
    assert len([w for w in caught if w.category is BatchNotice]) == 1
    assert affine_stem(explainer.model, "image") is not None
    monkeypatch.setattr("onnxplain.export.methods.affine_stem", lambda model, name: None)
    direct = onnxplain.Explainer(proto, providers="cpu").explain(x, **options)
    assert not np.array_equal(through.attributions["image"], direct.attributions["image"])
    np.testing.assert_allclose(through.attributions["image"], direct.attributions["image"],
                               rtol=1e-4, atol=1e-6)


def test_batch_size_holds_through_the_stem(zoo, monkeypatch):
    """explain(batch_size=2) runs at most two rows at once, also on the stem's engines."""
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:3]
    seen: list[int] = []
    original = Session.run

    def spy(self, outputs, feeds):
        seen.append(next(iter(feeds.values())).shape[0])
        return original(self, outputs, feeds)

    monkeypatch.setattr(Session, "run", spy)
    explainer.explain(x, method="integrated_gradients", n_steps=8, batch_size=2,
                      delta_tolerance=1.0)
    assert explainer.engine.stem("image") is not None
    assert seen and max(seen) <= 2
