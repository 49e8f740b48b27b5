"""graph.ir's round trip (to_ir then to_proto) changes nothing a program is built from: on
every zoo model, as loaded and as a light copy, the initializers (weight stubs and file stubs
included) and nodes come back byte for byte, and ONNX Runtime, given the weights as
production hands them over (runtime.session), computes the same outputs bit for bit. Also on
what the zoo lacks: a model-local function, an If branch and a Loop body that read outer
tensors."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import onnx.printer
import pytest

from model_zoo.registry import ZOO
from onnxplain.graph.ir import to_ir, to_proto
from onnxplain.graph.model import Model
from onnxplain.graph.weights import file_span, is_stub, light_copy
from onnxplain.runtime.session import Session

CPU = ["CPUExecutionProvider"]


def _bytes(messages) -> list[bytes]:
    return [message.SerializeToString(deterministic=True) for message in messages]


def _same_program(before: onnx.ModelProto, after: onnx.ModelProto) -> None:
    """What a session runs: nodes (with their subgraphs), initializers, functions and the
    signature byte for byte, the same opsets."""
    assert _bytes(after.graph.node) == _bytes(before.graph.node)
    assert _bytes(after.graph.initializer) == _bytes(before.graph.initializer)
    assert _bytes(after.functions) == _bytes(before.functions)
    assert _bytes(after.graph.input) == _bytes(before.graph.input)
    assert _bytes(after.graph.output) == _bytes(before.graph.output)
    assert _opsets(after) == _opsets(before)
    assert after.ir_version == before.ir_version


def _opsets(model: onnx.ModelProto) -> dict[str, int]:
    return {opset.domain: opset.version for opset in model.opset_import}


def _rows(model: Model, sample: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The sample's first rows (as many as a fixed batch axis takes), in the inputs' types."""
    rows = model.batch.size or 1
    feeds = {}
    for spec in model.inputs:
        value = sample[spec.name]
        axis = model.batch.of_inputs.get(spec.name, 0)
        if axis is not None and value.ndim:
            value = np.take(value, range(rows), axis=axis)
        feeds[spec.name] = value.astype(spec.numpy_dtype, copy=False)
    return feeds


def _outputs(proto: onnx.ModelProto, model: Model, feeds: dict) -> dict[str, np.ndarray]:
    return Session(proto, CPU, weights=model.weights).run(None, feeds)


def _check_round_trips(model: Model, sample: dict[str, np.ndarray]) -> None:
    """The model and its light copy come back the same program, with the same outputs."""
    feeds = _rows(model, sample)
    want = _outputs(model.proto, model, feeds)
    for before in (model.proto, light_copy(model.proto)):
        after = to_proto(to_ir(before))
        _same_program(before, after)
        got = _outputs(after, model, feeds)
        assert list(got) == list(want)
        for output, value in want.items():
            np.testing.assert_array_equal(got[output], value, err_msg=output)


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_model_round_trips_unchanged(zoo, name):
    _check_round_trips(Model.load(zoo.model_path(name)), zoo.sample(name))


def test_file_stubs_and_weight_stubs_round_trip_unchanged(zoo):
    """resnet18 is large enough for stubs: loaded from its file, its large weights are file
    stubs; loaded from bytes, its light copy's are weight stubs."""
    path = zoo.model_path("resnet18")
    from_file = Model.load(path)
    assert any(file_span(init) for init in from_file.proto.graph.initializer)
    from_bytes = Model.load(path.read_bytes())
    assert any(is_stub(init) for init in light_copy(from_bytes.proto).graph.initializer)
    _check_round_trips(from_bytes, zoo.sample("resnet18"))


FEATURES = """
<ir_version: 10, opset_import: ["" : 21, "local" : 1]>
features (float[N, 4] x) => (float[N, 4] y, float[4] total)
<float[4] w = {0.5, 1.0, 2.0, -1.5}, float zero = {0.0}, int64 trips = {3}, bool go = {1},
 int64[1] rows = {0}>
{
  a = local.Scale(x, w)
  b = Add(a, w)
  m = ReduceSum<keepdims=0>(b)
  c = Greater(m, zero)
  y = If(c) <then_branch = g1 () => (float[N, 4] t) { t = Mul(b, w) },
             else_branch = g2 () => (float[N, 4] e) { e = Sub(b, w) }>
  first = ReduceSum<keepdims = 0>(a, rows)
  total = Loop(trips, go, first) <body = loop (int64 i, bool cond, float[4] acc)
      => (bool out, float[4] next) { out = Identity(cond)  next = Add(acc, w) }>
}
<domain: "local", opset_import: ["" : 21]>
Scale (x, w) => (y) { y = Mul(x, w) }
"""


def _text(model: onnx.ModelProto) -> str:
    """`model` in ONNX's text syntax, without value_info (onnx-ir declares initializers'
    types there) and without explicit empty domains (which the parser writes)."""
    bare = onnx.ModelProto()
    bare.CopyFrom(model)
    del bare.graph.value_info[:]
    return onnx.printer.to_text(bare)


def test_function_and_outer_reads_of_if_and_loop_round_trip_unchanged():
    proto = onnx.parser.parse_model(FEATURES)
    onnx.checker.check_model(proto)
    after = to_proto(to_ir(proto))
    assert _text(after) == _text(proto)
    _same_program(after, to_proto(to_ir(after)))
    model = Model(proto)
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    want = _outputs(proto, model, {"x": x})
    got = _outputs(after, model, {"x": x})
    for output, value in want.items():
        np.testing.assert_array_equal(got[output], value, err_msg=output)
