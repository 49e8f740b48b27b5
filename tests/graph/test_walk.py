"""The graph walkers see into subgraphs: what a node reads from its enclosing graph, which
nodes an output needs (and so which initializers they read), renaming reads (not the names a
subgraph defines itself); a renamed model still computes what it did."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxplain.graph.walk import (
    ancestors,
    captures,
    defined_names,
    node_inputs,
    rename_reads,
)

F = TensorProto.FLOAT


def _value(name: str) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, F, [2])


def _model() -> onnx.ModelProto:
    """y = If(c, then: w * x + k (k an initializer of the branch), else: x + w) + scale,
    with an unread initializer and a node nothing needs."""
    k = numpy_helper.from_array(np.array([10.0, 20.0], np.float32), "k")
    then = helper.make_graph([helper.make_node("Mul", ["w", "x"], ["t"]),
                              helper.make_node("Add", ["t", "k"], ["t2"])],
                             "then", [], [_value("t2")], initializer=[k])
    other = helper.make_graph([helper.make_node("Add", ["x", "w"], ["e"])], "else", [],
                              [_value("e")])
    nodes = [helper.make_node("Neg", ["x0"], ["x"], name="neg"),
             helper.make_node("If", ["c"], ["branch"], name="if", then_branch=then,
                              else_branch=other),
             helper.make_node("Add", ["branch", "scale"], ["y"], name="add"),
             helper.make_node("Abs", ["x"], ["unused"], name="abs")]
    inits = [numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w"),
             numpy_helper.from_array(np.array([0.5, 0.5], np.float32), "scale"),
             numpy_helper.from_array(np.array([7.0, 7.0], np.float32), "never")]
    graph = helper.make_graph(nodes, "walk", [helper.make_tensor_value_info(
        "c", TensorProto.BOOL, []), _value("x0")], [_value("y")], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def _branch(model: onnx.ModelProto, name: str) -> onnx.GraphProto:
    return next(a.g for a in model.graph.node[1].attribute if a.name == name)


def _run(model: onnx.ModelProto, cond: bool) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"c": np.array(cond), "x0": np.array([3.0, -4.0], np.float32)})[0]


def test_node_inputs_add_what_subgraphs_read_from_outside():
    model = _model()
    branch = model.graph.node[1]
    reads = node_inputs(branch)  # each branch's reads, in attribute order
    assert reads[0] == "c" and sorted(reads[1:]) == ["w", "w", "x", "x"]
    assert sorted(captures(branch)) == ["w", "x"] and len(captures(branch)) == 2
    assert defined_names(_branch(model, "then_branch")) == {"t", "t2", "k"}


def test_ancestors_and_their_reads_follow_subgraph_reads():
    model = _model()
    needed = ancestors(model.graph.node, ["y"])
    assert [node.name for node in needed] == ["neg", "if", "add"]
    assert [node.name for node in ancestors(model.graph.node, ["y"], stop=["x"])] == ["if", "add"]
    read = {name for node in needed for name in node_inputs(node)}
    assert [init.name for init in model.graph.initializer if init.name in read] == ["w", "scale"]


def test_rename_reads_spares_the_names_a_subgraph_defines():
    model = _model()
    rename_reads(model.graph.node, {"x": "x_renamed", "k": "outer_k", "t": "outer_t"})
    then = _branch(model, "then_branch")
    assert [list(node.input) for node in then.node] == [["w", "x_renamed"], ["t", "k"]]
    assert list(model.graph.node[3].input) == ["x_renamed"]


def test_a_renamed_model_computes_the_same():
    model = _model()
    expected = {cond: _run(model, cond) for cond in (True, False)}
    np.testing.assert_array_equal(expected[True], np.array([-3 + 10.5, 8 + 20.5], np.float32))
    model.graph.node[0].output[:] = ["x_renamed"]
    rename_reads(model.graph.node, {"x": "x_renamed"})
    onnx.checker.check_model(model, full_check=True)
    for cond in (True, False):
        np.testing.assert_array_equal(_run(model, cond), expected[cond])
