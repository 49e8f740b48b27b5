"""Cuts over onnx-ir (graph.cut, graph.stem): a cut tensor becomes an input that every reader
reads, inside If branches and as a graph output too; a producer whose other outputs are
still read stays; the stem's prefix then suffix computes the model, also where the stem's
end is read inside a branch; weight and file stubs survive both. Oracles: the original model
under ONNX Runtime, and numpy."""

from __future__ import annotations

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxplain.errors import InputError
from onnxplain.graph.cut import cut_at
from onnxplain.graph.model import Model
from onnxplain.graph.stem import affine_stem
from onnxplain.runtime.session import Session

CPU = ["CPUExecutionProvider"]
RNG = np.random.default_rng(5)

CUTS = """
<ir_version: 8, opset_import: ["" : 17]>
cuts (float[N, 4] x) => (float[N, 4] y, float[N, 4] h, float[N, 2] rest)
<float[4] w = {0.5, -1.0, 2.0, 1.5}, float zero = {0.0}, int64[2] halves = {2, 2}>
{
  pre = Mul(x, w)
  h = Add(pre, w)
  r = Relu(h)
  m = ReduceSum<keepdims = 0>(h)
  c = Greater(m, zero)
  y = If(c) <then_branch = g1 () => (float[N, 4] t) { t = Mul(h, r) },
             else_branch = g2 () => (float[N, 4] e) { e = Sub(r, h) }>
  a, b = Split<axis = 1>(x, halves)
  rest = Add(a, b)
}
"""


def _run(proto: onnx.ModelProto, feeds: dict, weights=None) -> dict[str, np.ndarray]:
    return Session(proto, CPU, weights=weights).run(None, feeds)


def _x(rows: int = 3) -> np.ndarray:
    return RNG.standard_normal((rows, 4)).astype(np.float32)


@pytest.mark.parametrize("positive", [True, False])
def test_a_cut_tensor_is_read_everywhere_it_was(positive):
    """h: read by a node, inside both If branches, and an output."""
    proto = onnx.parser.parse_model(CUTS)
    cut = cut_at(Model(proto), "h")
    assert [spec.name for spec in cut.inputs] == ["x", "h"]
    assert [node.op_type for node in cut.proto.graph.node] == [
        "Relu", "ReduceSum", "Greater", "If", "Split", "Add"]  # what only computed h went
    assert [init.name for init in cut.proto.graph.initializer] == ["zero", "halves"]
    x = _x()
    want = _run(proto, {"x": x})
    assert all(np.array_equal(got, want[name])
               for name, got in _run(cut.proto, {"x": x, "h": want["h"]}).items())
    h = np.abs(_x()) * (1 if positive else -1)
    got = _run(cut.proto, {"x": x, "h": h})
    relu = np.maximum(h, 0)
    np.testing.assert_array_equal(got["y"], h * relu if positive else relu - h)
    np.testing.assert_array_equal(got["h"], h)


def test_a_producer_whose_other_outputs_are_read_stays():
    proto = onnx.parser.parse_model(CUTS)
    cut = cut_at(Model(proto), "a")
    assert "Split" in [node.op_type for node in cut.proto.graph.node]
    onnx.checker.check_model(cut.proto)
    x, a = _x(), _x()[:, :2]
    np.testing.assert_array_equal(_run(cut.proto, {"x": x, "a": a})["rest"], a + x[:, 2:])


@pytest.mark.parametrize(("tensor", "match"), [("x", "no node of the model computes 'x'"),
                                                ("nowhere", "type of tensor 'nowhere'")])
def test_a_cut_where_nothing_is_computed_is_refused_in_one_line(tensor, match):
    with pytest.raises(InputError, match=match):
        cut_at(Model(onnx.parser.parse_model(CUTS)), tensor)


BRANCH_READS = """
<ir_version: 8, opset_import: ["" : 17]>
branch (float[N, 4] x) => (float[N, 4] y)
<float[4] w = {0.5, -1.0, 2.0, 1.5}, float zero = {0.0}>
{
  scaled = Mul(x, w)
  s = Add(scaled, w)
  m = ReduceSum<keepdims = 0>(s)
  c = Greater(m, zero)
  y = If(c) <then_branch = g1 () => (float[N, 4] t) { t = Relu(s) },
             else_branch = g2 () => (float[N, 4] e) { e = Sigmoid(s) }>
}
"""


def test_a_stem_whose_end_a_branch_reads_splits_into_the_model():
    proto = onnx.parser.parse_model(BRANCH_READS)
    stem = affine_stem(Model(proto), "x")
    assert stem is not None and stem.frontier == "s"
    assert [node.op_type for node in stem.prefix.proto.graph.node] == ["Mul", "Add"]
    assert [spec.name for spec in stem.suffix.inputs] == ["s"]
    assert [node.op_type for node in stem.suffix.proto.graph.node] == [
        "ReduceSum", "Greater", "If"]
    assert [init.name for init in stem.suffix.proto.graph.initializer] == ["zero"]
    for x in (_x(), -np.abs(_x()) - 3):
        z = _run(stem.prefix.proto, {"x": x})["s"]
        np.testing.assert_array_equal(_run(stem.suffix.proto, {"s": z})["y"],
                                      _run(proto, {"x": x})["y"])


def _bytes(tensors) -> dict[str, bytes]:
    return {t.name: t.SerializeToString(deterministic=True) for t in tensors}


def test_stem_parts_and_cuts_keep_file_stubs(zoo):
    """resnet18_64 loaded from its file: its large weights are file stubs, which the stem's
    parts and a cut keep as they are; sessions read them from the file."""
    model = Model.load(zoo.model_path("resnet18_64"))
    name = model.inputs[0].name
    stem = affine_stem(model, name)
    assert stem is not None
    original = _bytes(model.proto.graph.initializer)
    for part in (stem.prefix, stem.suffix, cut_at(model, stem.frontier)):
        kept = _bytes(part.proto.graph.initializer)
        assert kept and all(original[key] == value for key, value in kept.items())
    assert set(_bytes(stem.prefix.proto.graph.initializer)) | set(
        _bytes(stem.suffix.proto.graph.initializer)) == set(original)
    x = zoo.sample("resnet18_64")[name][:1]
    z = _run(stem.prefix.proto, {name: x}, model.weights)[stem.frontier]
    whole = _run(model.proto, {name: x}, model.weights)[model.outputs[0].name]
    parts = _run(stem.suffix.proto, {stem.frontier: z}, model.weights)[model.outputs[0].name]
    np.testing.assert_allclose(parts, whole, rtol=1e-5, atol=1e-5)
