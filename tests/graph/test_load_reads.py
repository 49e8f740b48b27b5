"""Model.load of a file with large weights parses it without their bytes (graph.weights
read_light): the loaded model equals the full parse with those initializers as file stubs,
whose values read back bit for bit; onnx never parses the whole file; what normalising
rewrites is never served from the file; a weight whose bytes contradict its shape is kept
for validation to refuse, and a truncated file still fails as not an ONNX model."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.errors import ModelError
from onnxplain.graph import load as load_module
from onnxplain.graph import model as model_module
from onnxplain.graph import weights as weights_module
from onnxplain.graph.model import Model
from onnxplain.graph.weights import file_span, tensor_value
from onnxplain.runtime.session import Session

CPU = ["CPUExecutionProvider"]


def _model(weight: np.ndarray | None = None) -> onnx.ModelProto:
    """x [N, 256] @ w (256 KB, large here) + b (small) -> y; an int64 shape (small)."""
    rng = np.random.default_rng(0)
    drawn = rng.standard_normal((256, 256)).astype(np.float32)
    weight = drawn if weight is None else weight
    inits = [numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(rng.standard_normal(256).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([-1, 256], np.int64), "shape")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("Reshape", ["a", "shape"], ["y"])]
    graph = helper.make_graph(
        nodes, "reads", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 256])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture
def large(monkeypatch) -> None:
    """Every file counts as large; initializers of 64 KB or more are file stubs."""
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(weights_module, "SHARED_BYTES", 64 << 10)


def _no_full_parse(monkeypatch) -> None:
    def refused(*args, **kwargs):
        raise AssertionError("onnx.load parsed the whole file")

    monkeypatch.setattr(load_module.onnx, "load", refused)


def _forward(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(model.SerializeToString(), providers=CPU).run(
        None, {"x": x})[0]


def test_a_large_file_is_parsed_without_its_weights(tmp_path, large, monkeypatch):
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    before = path.read_bytes()
    full = onnx.load(str(path))
    normalised = load_module.normalize(onnx.load(str(path)))
    _no_full_parse(monkeypatch)
    model = Model.load(str(path))
    loaded = model.proto.graph.initializer
    assert [init.name for init in loaded] == [init.name for init in full.graph.initializer]
    stubs = {init.name for init in loaded if file_span(init)}
    assert stubs == {"w"} and not any(init.raw_data for init in loaded if init.name in stubs)
    for got, want in zip(loaded, full.graph.initializer, strict=True):
        if got.name in stubs:  # the bytes at the stub's span are the full parse's
            assert (got.data_type, list(got.dims)) == (want.data_type, list(want.dims))
            span = file_span(got)
            assert before[span.offset:span.offset + span.length] == want.raw_data
            np.testing.assert_array_equal(tensor_value(got), numpy_helper.to_array(want))
        else:
            assert got == want
    assert list(model.proto.graph.node) == list(normalised.graph.node)
    x = np.random.default_rng(1).standard_normal((3, 256)).astype(np.float32)
    got = Session(model.proto, CPU, weights=model.weights).run(["y"], {"x": x})["y"]
    np.testing.assert_array_equal(got, _forward(full, x))
    assert path.read_bytes() == before


def test_a_rewritten_initializer_is_never_served_from_the_file(tmp_path, large, monkeypatch):
    """A normalisation that replaces a large initializer (here: w doubled, same name, type
    and shape) leaves bytes the file does not hold: the loaded model holds them, and runs
    on them, not on the file's."""
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    normalize = model_module.normalize

    def rewriting(proto):
        proto = normalize(proto)
        for init in proto.graph.initializer:
            if init.name == "w":
                init.CopyFrom(numpy_helper.from_array(2 * tensor_value(init), "w"))
        return proto

    monkeypatch.setattr(model_module, "normalize", rewriting)
    model = Model.load(str(path))
    w = next(init for init in model.proto.graph.initializer if init.name == "w")
    assert file_span(w) is None
    doubled = 2 * numpy_helper.to_array(_model().graph.initializer[0])
    np.testing.assert_array_equal(tensor_value(w), doubled)
    x = np.random.default_rng(2).standard_normal((2, 256)).astype(np.float32)
    got = Session(model.proto, CPU, weights=model.weights).run(["y"], {"x": x})["y"]
    np.testing.assert_array_equal(got, _forward(_model(doubled), x))
    assert not np.array_equal(got, _forward(_model(), x))


def test_weight_bytes_that_contradict_the_shape_are_refused(tmp_path, large):
    """raw_data 4 bytes short of w's [256, 256]: not a stub; validation names it."""
    broken = _model()
    broken.graph.initializer[0].raw_data = broken.graph.initializer[0].raw_data[:-4]
    path = tmp_path / "short.onnx"
    path.write_bytes(broken.SerializeToString())
    with pytest.raises(ModelError, match="initializer 'w'.* holds 262140 bytes"):
        Model.load(str(path))


def test_a_file_truncated_inside_a_weight_is_not_an_onnx_model(tmp_path, large):
    path = tmp_path / "truncated.onnx"
    data = _model().SerializeToString()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(ModelError, match="not an ONNX model"):
        Model.load(str(path))


def test_small_files_are_parsed_whole(tmp_path):
    """Below SHARE_FROM onnx parses the file; nothing is a file stub."""
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    assert weights_module.read_light(str(path)) is None
    model = Model.load(str(path))
    assert not any(file_span(init) for init in model.proto.graph.initializer)
