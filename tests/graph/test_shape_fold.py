"""Models whose Reshape targets are computed at run time in ways static shape inference cannot
follow (paddle2onnx: Shape, Slice, comparisons, NonZero, Gather, Concat): `inspect` reports
them and marks the nodes whose rank is known only at run time; explaining builds the program
specialised to the feed shapes, with those computations folded (graph.shape_fold).

Oracle: the same network with a constant Reshape target (its ranks known statically),
explained by the ordinary program: the gradients must agree to float32 rounding.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.describe import describe_model
from onnxplain.graph.model import Model
from onnxplain.graph.shape_fold import fold_static_shapes

RNG = np.random.default_rng(0)
WEIGHTS = {"w": (RNG.normal(size=(8, 8, 3, 3)) * 0.2).astype(np.float32),
           "head": RNG.normal(size=(8, 3)).astype(np.float32)}
X = RNG.normal(size=(5, 8, 6, 6)).astype(np.float32)


def _slice(b: str, out: str, start: int, end: int, opset: int) -> list[onnx.NodeProto]:
    if opset < 10:
        return [helper.make_node("Slice", [b], [out], starts=[start], ends=[end], axes=[0])]
    return [helper.make_node("Slice", [b, f"i{start}", f"i{end}"], [out])]


def network(opset: int, runtime_shape: bool) -> onnx.ModelProto:
    """x [N, 8, 6, 6] -> Conv -> Relu -> Reshape to [N, 8, 36, 1] -> MaxPool 2x1 ->
    ReduceMean over the last two axes -> MatMul -> logits [N, 3]. With `runtime_shape`, the
    Reshape target is [N] + (the dims of [8, 6, 6] above 6) + [-1, 1], computed in the graph
    through NonZero, so static inference cannot tell its length."""
    if runtime_shape:
        shape_nodes = [
            helper.make_node("Shape", ["r"], ["s"]),
            *_slice("s", "batch", 0, 1, opset),
            *_slice("s", "rest", 1, 4, opset),
            helper.make_node("Greater", ["rest", "six"], ["wide"]),
            helper.make_node("NonZero", ["wide"], ["nonzero"]),
            helper.make_node("Squeeze", ["nonzero"], ["index"], axes=[0]),
            helper.make_node("Gather", ["rest", "index"], ["kept"]),
            helper.make_node("Concat", ["batch", "kept", "minus1", "i1"], ["target"], axis=0)]
    else:
        shape_nodes = []
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             *shape_nodes,
             helper.make_node("Reshape", ["r", "target"], ["u"], name="runtime_reshape"),
             helper.make_node("MaxPool", ["u"], ["v"], kernel_shape=[2, 1], pads=[0, 0, 1, 0]),
             helper.make_node("ReduceMean", ["v"], ["pooled"], axes=[2, 3], keepdims=0),
             helper.make_node("MatMul", ["pooled", "head"], ["logits"], name="classifier")]
    constants = {"i0": [0], "i1": [1], "i4": [4], "minus1": [-1]}
    if not runtime_shape:
        constants["target"] = [0, 8, -1, 1]
    inits = [numpy_helper.from_array(v, k) for k, v in WEIGHTS.items()]
    inits += [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in constants.items()]
    inits.append(numpy_helper.from_array(np.array(6, np.int64), "six"))
    graph = helper.make_graph(
        nodes, "runtime_shapes", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                [-1, 8, 6, 6])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [-1, 3])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=6)
    onnx.checker.check_model(model)
    return model


@pytest.mark.parametrize("opset", [9, 11])
def test_inspect_marks_the_nodes_whose_rank_is_known_at_run_time(opset):
    description = describe_model(Model.load(network(opset, runtime_shape=True)))
    unknown = {entry["node"]: entry["note"] for entry in description["rank_unknown_statically"]}
    assert unknown.get("runtime_reshape") == "rank known only at run time"
    assert describe_model(Model.load(network(opset, False)))["rank_unknown_statically"] == []
    if opset == 9:  # MatMul's opset-9 check needs the rank: a reason, not a crash
        reasons = {item["node"]: item["reason"]
                   for item in description["ops_without_backward_rule"]}
        assert "known only at run time" in reasons["classifier"]


@pytest.mark.parametrize("opset", [9, 11])
@pytest.mark.parametrize("method", ["saliency", "integrated_gradients"])
def test_explaining_uses_the_shapes_of_the_run(opset, method):
    def explain(model, **options):
        return onnxplain.Explainer(model, "cpu").explain(X, method, target=1, **options)["x"]

    expected = explain(network(opset, runtime_shape=False))
    np.testing.assert_allclose(explain(network(opset, True)), expected, rtol=1e-5,
                               atol=1e-6 * np.abs(expected).max())
    # Chunks of 2, 2 and 1 rows: one program per feed shape.
    np.testing.assert_allclose(explain(network(opset, True), batch_size=2), expected,
                               rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_folding_keeps_the_forward_and_folds_no_float_values():
    model = network(11, runtime_shape=True)
    static = onnx.ModelProto()
    static.CopyFrom(model)
    for dim, size in zip(static.graph.input[0].type.tensor_type.shape.dim, X.shape,
                         strict=True):
        dim.Clear()
        dim.dim_value = size
    folded = fold_static_shapes(Model.load(static))
    assert folded.infos["pooled"].shape == (5, 8)
    ops = [node.op_type for node in folded.proto.graph.node]
    assert "NonZero" not in ops and ops.count("Conv") == 1 and "MatMul" in ops
    new = {init.name for init in folded.proto.graph.initializer} - \
        {init.name for init in model.graph.initializer}
    assert all(numpy_helper.to_array(init).dtype.kind in "biu"
               for init in folded.proto.graph.initializer if init.name in new)
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
           .run(None, {"x": X})[0] for m in (model, folded.proto)]
    np.testing.assert_array_equal(run[0], run[1])
