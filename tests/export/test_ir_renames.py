"""Renames in the explainer graph go through onnx-ir (export.graph: free_name,
run_on_copies): a model whose If branch defines a tensor called 'target', whose Loop body
defines one called 'score' (both names the explainer adds) and whose main graph holds
'onnxplain/export/model_target' (the name a freed 'target' would take first) is explained,
in process and exported, exactly as the same model with those tensors renamed by hand. The
If branch and the Loop body read the input x from outside: the copies' reads of x
(run_on_copies) reach them too, or the rows would not line up."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain import Explainer
from onnxplain.export.graph import free_name, model_names
from onnxplain.exporter import export_explainer
from onnxplain.graph.ir import to_ir, to_proto
from onnxplain.graph.model import Model
from onnxplain.runtime.session import Session

from ..tiny_models import saved

F = TensorProto.FLOAT
CLASHING = {"then": "target", "body": "score", "top": "onnxplain/export/model_target"}
PLAIN = {"then": "then_t", "body": "body_s", "top": "top_r"}
METHODS = {"saliency": {"abs": False}, "integrated_gradients": {"n_steps": 4},
           "smoothgrad": {"n_samples": 3, "seed": 0},
           "deeplift": {}}


def _model(names: dict[str, str]) -> onnx.ModelProto:
    """logits = W2 r, r = Relu(Loop^2(v -> tanh(v k2 + x))(If(sum x > -1e9: tanh(x W k) + x,
    else: -x W))), the If's and the Loop's inner tensors and r called `names`."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=shape).astype(np.float32), name)
             for name, shape in (("w", (4, 4)), ("k", (4,)), ("k2", (4,)), ("w2", (4, 3)))]
    inits += [numpy_helper.from_array(np.array(-1e9, np.float32), "low"),
              numpy_helper.from_array(np.array(2, np.int64), "trips")]
    then = helper.make_graph(
        [helper.make_node("Mul", ["h", "k"], [names["then"]]),
         helper.make_node("Tanh", [names["then"]], ["tt"]),
         helper.make_node("Add", ["tt", "x"], ["then_out"])],
        "then", [], [helper.make_tensor_value_info("then_out", F, ["N", 4])])
    other = helper.make_graph([helper.make_node("Neg", ["h"], ["else_out"])], "else", [],
                              [helper.make_tensor_value_info("else_out", F, ["N", 4])])
    body = helper.make_graph(
        [helper.make_node("Mul", ["v", "k2"], ["vk"]),
         helper.make_node("Add", ["vk", "x"], [names["body"]]),
         helper.make_node("Tanh", [names["body"]], ["v_next"]),
         helper.make_node("Identity", ["go"], ["go_next"])],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("go", TensorProto.BOOL, []),
                 helper.make_tensor_value_info("v", F, ["N", 4])],
        [helper.make_tensor_value_info("go_next", TensorProto.BOOL, []),
         helper.make_tensor_value_info("v_next", F, ["N", 4])])
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "low"], ["cond"]),
             helper.make_node("If", ["cond"], ["branch"], then_branch=then, else_branch=other),
             helper.make_node("Loop", ["trips", "", "branch"], ["looped"], body=body),
             helper.make_node("Relu", ["looped"], [names["top"]]),
             helper.make_node("MatMul", [names["top"], "w2"], ["logits"])]
    graph = helper.make_graph(nodes, "renames", [helper.make_tensor_value_info("x", F, ["N", 4])],
                              [helper.make_tensor_value_info("logits", F, ["N", 3])], inits,
                              value_info=[helper.make_tensor_value_info(name, F, ["N", 4])
                                          for name in ("branch", "looped", names["top"])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model, full_check=True)
    return model


@pytest.mark.parametrize("method", sorted(METHODS))
def test_tensors_named_like_explainer_names_inside_subgraphs(tmp_path, monkeypatch, method):
    # Bit for bit with the exported file holds for the program run generic.
    monkeypatch.setattr("onnxplain.runtime.engine.SPECIALISE_MAX_BYTES", 0)
    clashing = saved(tmp_path, _model(CLASHING), "clashing")
    plain = saved(tmp_path, _model(PLAIN), "plain")
    x = np.random.default_rng(1).normal(size=(3, 4)).astype(np.float32)
    quiet = {"delta_tolerance": 1e9} if method in ("integrated_gradients", "deeplift") else {}
    options = {**METHODS[method], **quiet}
    target = np.array([0, 2, 1])
    expected = Explainer(plain, "cpu", progress=False).explain(x, method=method, target=target,
                                                                **options)
    got = Explainer(clashing, "cpu", progress=False).explain(x, method=method, target=target,
                                                             **options)
    assert np.abs(expected.attributions["x"]).max() > 0
    np.testing.assert_array_equal(got.attributions["x"], expected.attributions["x"])
    np.testing.assert_array_equal(got.outputs["logits"], expected.outputs["logits"])
    feeds = {"x": x, "target": target, "rows_per_iteration": np.array(1 << 20, np.int64)}
    exported = {name: _exported(path, method, feeds) for name, path in
                (("clashing", clashing), ("plain", plain))}
    for name in ("attribution/x", "logits"):
        np.testing.assert_array_equal(exported["clashing"][name], exported["plain"][name])
    if method != "smoothgrad":  # (in process, each row's noise seed mixes in the row)
        np.testing.assert_array_equal(exported["clashing"]["attribution/x"],
                                      got.attributions["x"])
        np.testing.assert_array_equal(exported["clashing"]["logits"], got.outputs["logits"])


def _exported(path: str, method: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs of `method`'s exported explainer of `path` (all points in one Loop
    iteration, as in process on a model this small: the same MatMul shapes, the same bits)."""
    exported = export_explainer(path, method, **METHODS[method])
    names = {v.name for v in exported.graph.input}
    return Session(exported, ["CPUExecutionProvider"]).run(
        None, {name: value for name, value in feeds.items() if name in names})


def test_free_name_renames_the_definitions_in_every_scope_and_their_reads():
    model = Model.load(_model(CLASHING))
    view = to_ir(model.proto)
    assert free_name(view, model, "target") == "onnxplain/export/model_target_"
    assert free_name(view, model, "score") == "onnxplain/export/model_score"
    renamed = Model.load(to_proto(view))
    names = model_names(renamed)
    assert {"target", "score"}.isdisjoint(names) and "onnxplain/export/model_target" in names
    branch = next(a.g for node in model.proto.graph.node if node.op_type == "If"
                  for a in node.attribute if a.name == "then_branch")
    assert branch.node[0].output[0] == "target"  # the model's own proto is untouched
    x = np.random.default_rng(2).normal(size=(2, 4)).astype(np.float32)
    before = Session(model.proto, ["CPUExecutionProvider"]).run(None, {"x": x})
    after = Session(renamed.proto, ["CPUExecutionProvider"]).run(None, {"x": x})
    np.testing.assert_array_equal(after["logits"], before["logits"])


def test_a_renamed_shared_stub_leaves_the_model_weights_as_they_are(monkeypatch):
    """A weight called 'target' shared as a stub: the freed copy holds a copy of its bytes
    under the new name; the model's own initializer keeps its name, so a later program (the
    same explanation again) still finds it."""
    from onnxplain.graph import weights as weights_module

    from .test_free_names import SMALL, _mlp, _saliency
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(weights_module, "SHARED_BYTES", SMALL)
    model, w1, w2 = _mlp("w1", "target")
    explainer = Explainer(model.SerializeToString(), "cpu", progress=False)
    x = np.random.default_rng(3).normal(size=(2, 16)).astype(np.float32)
    first = explainer.explain(x, method="saliency", abs=False)
    np.testing.assert_allclose(first["x"], _saliency(x, w1, w2, first.target), rtol=1e-5,
                               atol=1e-6)
    export_explainer(explainer.model, "saliency", abs="false")
    names = {init.name for init in explainer.model.weights.proto.graph.initializer}
    assert "target" in names and not any(name.startswith("onnxplain/") for name in names)
    other = {"method": "deeplift", "delta_tolerance": 1e9}  # a program built afresh
    fresh = Explainer(model.SerializeToString(), "cpu", progress=False)
    np.testing.assert_array_equal(explainer.explain(x, **other)["x"],
                                  fresh.explain(x, **other)["x"])
