"""A Loop body may not redefine a name of its enclosing graph: export.loop renames the
body's own definitions that do (inputs, node outputs, initializers) and their reads, and
spares a nested subgraph's own initializer of that name (onnx-ir values), so the
renamed Loop computes what each scope meant."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_ir
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from onnxplain.export.loop import BODY_PREFIX, _rename_shadowing
from onnxplain.graph.ir import subgraph_to_ir
from onnxplain.graph.walk import defined_names

F = TensorProto.FLOAT


def _value(name: str, dtype=F, shape=(2,)) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, list(shape))


def _array(values) -> np.ndarray:
    return np.array(values, np.float32)


def _loop_model() -> onnx.ModelProto:
    """One trip: acc + w_body + If(c, then: w_then (the branch's own 'w'), else: -w_body),
    with 'w' also the outer graph's initializer (read outside the Loop)."""
    then = helper.make_graph([helper.make_node("Identity", ["w"], ["t"])], "then", [],
                             [_value("t")],
                             initializer=[numpy_helper.from_array(_array([100, 200]), "w")])
    other = helper.make_graph([helper.make_node("Neg", ["w"], ["e"])], "else", [],
                              [_value("e")])
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "w"], ["s"]),
         helper.make_node("If", ["c"], ["branch"], then_branch=then, else_branch=other),
         helper.make_node("Add", ["s", "branch"], ["acc_out"]),
         helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [_value("i", TensorProto.INT64, ()), _value("cond", TensorProto.BOOL, ()),
                 _value("acc")],
        [_value("cond_out", TensorProto.BOOL, ()), _value("acc_out")],
        initializer=[numpy_helper.from_array(_array([10, 20]), "w")])
    nodes = [helper.make_node("Loop", ["trips", "", "x"], ["looped"], body=body),
             helper.make_node("Add", ["looped", "w"], ["y"])]
    inits = [numpy_helper.from_array(_array([1, 2]), "w"),
             numpy_helper.from_array(np.array(1, np.int64), "trips")]
    graph = helper.make_graph(nodes, "outer", [_value("c", TensorProto.BOOL, ()), _value("x")],
                              [_value("y")], initializer=inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_a_body_initializer_shadowing_an_outer_name_is_renamed_nested_ones_kept():
    model = _loop_model()
    graph = subgraph_to_ir(model.graph.node[0].attribute[0].g)
    _rename_shadowing(graph, defined_names(model.graph))
    model.graph.node[0].attribute[0].g.CopyFrom(onnx_ir.serde.serialize_graph(graph))
    body = model.graph.node[0].attribute[0].g
    renamed = f"{BODY_PREFIX}/w"
    assert [init.name for init in body.initializer] == [renamed]
    assert list(body.node[0].input) == ["acc", renamed]
    branches = {a.name: a.g for a in body.node[1].attribute}
    then, other = branches["then_branch"], branches["else_branch"]
    assert list(then.node[0].input) == ["w"] and then.initializer[0].name == "w"
    assert list(other.node[0].input) == [renamed]
    onnx.checker.check_model(model, full_check=True)
    session = ort.InferenceSession(model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    x = _array([3, 4])
    for cond, branch in ((True, _array([100, 200])), (False, -_array([10, 20]))):
        (y,) = session.run(None, {"c": np.array(cond), "x": x})
        np.testing.assert_array_equal(y, x + _array([10, 20]) + branch + _array([1, 2]))
