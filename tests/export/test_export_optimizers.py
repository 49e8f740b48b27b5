"""ONNX Runtime 1.31's FastGeluFusion drops a tanh-GELU's inner tensor (0.5·x) that partial
LRP's relevance pass reads, so an exported partial_lrp of GPT-2 fails to load in a default
session: export finds the pattern, warns naming the optimizer and records it in the
metadata; loaded with it disabled the explainer equals the in-process method bit for bit."""

from __future__ import annotations

import warnings

import numpy as np
import onnxruntime as ort
import pytest
from onnx import ModelProto, TensorProto, helper

from onnxplain import Explainer
from onnxplain.errors import ExportWarning
from onnxplain.export.optimizers import FAST_GELU_FUSION, optimizers_to_disable
from onnxplain.exporter import export_explainer
from onnxplain.runtime.session import Session


def test_partial_lrp_of_gpt2_names_fast_gelu_fusion(zoo):
    path = str(zoo.model_path("gpt2_tiny_kv"))
    with pytest.warns(ExportWarning, match=FAST_GELU_FUSION):
        exported = export_explainer(path, "partial_lrp")
    props = {p.key: p.value for p in exported.metadata_props}
    disabled = props["onnxplain.disable_optimizers"].split(",")
    assert disabled == [FAST_GELU_FUSION]
    with pytest.raises(Exception, match="is not a graph input"):  # the reason it is recorded
        ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {k: v[:2] for k, v in zoo.sample("gpt2_tiny_kv").items()}
    got = Session(exported, ["CPUExecutionProvider"], disabled=disabled).run(None, feeds)
    expected = Explainer(path, "cpu", progress=False).explain(feeds, method="partial_lrp")
    assert expected.attributions
    for key, value in expected.attributions.items():
        assert np.abs(value).max() > 0, key
        np.testing.assert_array_equal(got["attribution/" + key], value)


def test_rollout_of_gpt2_needs_no_optimizer_off(zoo):
    """Rollout reads no GELU inner tensor: no warning, and a
    default session loads it (the check does not fire on every GELU)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", ExportWarning)
        exported = export_explainer(str(zoo.model_path("gpt2_tiny_kv")), "rollout")
    assert "onnxplain.disable_optimizers" not in {p.key for p in exported.metadata_props}
    ort.InferenceSession(exported.SerializeToString(), providers=["CPUExecutionProvider"])


def _gelu(read: str | None) -> ModelProto:
    """y = 0.5·x·(1 + tanh(√(2/π)·(x + 0.044715·x³))), and, if `read` names an inner
    tensor, that tensor also an input of another node (as a backward rule reads it)."""
    const = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in
             [("half", 0.5), ("three", 3.0), ("cube", 0.044715), ("root", 0.7978845608),
              ("one", 1.0)]]
    nodes = [helper.make_node("Mul", ["x", "half"], ["h"]),
             helper.make_node("Pow", ["x", "three"], ["p"]),
             helper.make_node("Mul", ["p", "cube"], ["c"]),
             helper.make_node("Add", ["x", "c"], ["s"]),
             helper.make_node("Mul", ["s", "root"], ["r"]),
             helper.make_node("Tanh", ["r"], ["t"]),
             helper.make_node("Add", ["t", "one"], ["u"]),
             helper.make_node("Mul", ["h", "u"], ["y"])]
    outputs = [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])]
    if read:
        nodes.append(helper.make_node("Neg", [read], ["z"]))
        outputs.append(helper.make_tensor_value_info("z", TensorProto.FLOAT, [2, 3]))
    graph = helper.make_graph(nodes, "gelu",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
                              outputs, const)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


@pytest.mark.parametrize(("read", "flagged"), [(None, False), ("h", True), ("s", False)])
def test_the_check_follows_fast_gelu_fusion(read, flagged):
    """FastGeluFusion checks that every inner tensor of the pattern feeds only the pattern,
    except 0.5·x (fast_gelu_fusion.cc): only a reader of 0.5·x is left dangling; a reader
    of another inner tensor (x + 0.044715·x³) stops the fusion. (Whether ONNX Runtime fuses
    a graph this small at all is its own choice: GPT-2 above is the end-to-end check.)"""
    assert (FAST_GELU_FUSION in optimizers_to_disable(_gelu(read))) == flagged


def test_the_check_looks_inside_loop_bodies():
    """ONNX Runtime fuses inside subgraphs too: the same GELU as a Loop body is flagged."""
    gelu = _gelu("h").graph
    body = helper.make_graph(
        list(gelu.node) + [helper.make_node("Identity", ["cond"], ["cond_out"])], "body",
        [helper.make_tensor_value_info("i", TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []), *gelu.output],
        list(gelu.initializer))
    loop = helper.make_node("Loop", ["trips", ""], ["y", "z"], body=body)
    graph = helper.make_graph([loop], "outer", list(gelu.input), [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 3]),
        helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 3])],
        [helper.make_tensor("trips", TensorProto.INT64, [], [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    assert FAST_GELU_FUSION in optimizers_to_disable(model)
