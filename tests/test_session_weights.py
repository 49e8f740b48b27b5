"""Sessions over models with large weights: the weights go to ONNX Runtime as arrays or as
external data read from the model's file, beside a weightless model (runtime.session), with
the same results as the serialised model; programs share the model's weights instead of
copying them, and a model loaded from a file holds none of the weights it holds unchanged
(graph.weights)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.autodiff.program import build_gradient_program
from onnxplain.errors import ModelError
from onnxplain.graph import weights as weights_module
from onnxplain.graph.builder import GraphBuilder
from onnxplain.graph.model import Model
from onnxplain.graph.weights import SHARED_BYTES, file_span, is_stub, shareable, tensor_value
from onnxplain.runtime import session as session_module
from onnxplain.runtime.session import Session

CPU = ["CPUExecutionProvider"]


def _model() -> onnx.ModelProto:
    """x [N, 512] -> MatMul by a 1 MB weight -> Add a small bias -> Gemm by an int8 weight
    dequantized, so float and integer weights, large and small, are all handed over or kept."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((512, 512)).astype(np.float32)
    bias = rng.standard_normal(512).astype(np.float32)
    quantized = rng.integers(-127, 127, (512, 2048), dtype=np.int8)
    inits = [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(bias, "b"),
             numpy_helper.from_array(quantized, "q"),
             numpy_helper.from_array(np.array(0.01, np.float32), "scale")]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]),
             helper.make_node("Add", ["h", "b"], ["a"]),
             helper.make_node("DequantizeLinear", ["q", "scale"], ["dq"]),
             helper.make_node("MatMul", ["a", "dq"], ["y"])]
    graph = helper.make_graph(
        nodes, "weights", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 512])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 2048])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def test_handed_over_weights_give_the_serialised_models_results(monkeypatch):
    model = _model()
    before = model.SerializeToString()
    x = np.random.default_rng(1).standard_normal((3, 512)).astype(np.float32)
    expected = Session(model, CPU).run(None, {"x": x})["y"]
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)
    assert [init.name for init in model.graph.initializer if shareable(init)] == ["w", "q"]
    got = Session(model, CPU).run(None, {"x": x})["y"]
    np.testing.assert_array_equal(got, expected)
    assert model.SerializeToString() == before  # the caller's model is never modified


def test_unpacked_weights_give_the_float_meaning(monkeypatch):
    """Above UNPACKED_FROM dense weights are not pre-packed. Oracle: float64 numpy. (Packed,
    ONNX Runtime's extended level fuses DequantizeLinear + MatMul into a kernel that also
    quantizes the activations, 0.6% off here; unpacked it keeps the float MatMul.)"""
    model = _model()
    weights = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    x = np.random.default_rng(2).standard_normal((4, 512)).astype(np.float32)
    hidden = x.astype(np.float64) @ weights["w"] + weights["b"]
    expected = hidden @ (weights["q"] * np.float64(weights["scale"]))
    monkeypatch.setattr(session_module, "UNPACKED_FROM", 0)
    got = Session(model, CPU).run(None, {"x": x})["y"]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_an_unread_large_initializer_is_left_out(monkeypatch):
    """Rules may leave an initializer no node reads (LRP's unused negative part); ONNX Runtime
    drops it before taking the arrays and then refused the handed-over one."""
    model = _model()
    unread = np.ones((512, 1024), np.float32)
    model.graph.initializer.append(numpy_helper.from_array(unread, "unread"))
    x = np.random.default_rng(3).standard_normal((2, 512)).astype(np.float32)
    expected = Session(_model(), CPU).run(None, {"x": x})["y"]
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)
    np.testing.assert_array_equal(Session(model, CPU).run(None, {"x": x})["y"], expected)


def _share_all(monkeypatch) -> None:
    """Every model counts as large: programs share weights, sessions hand them over."""
    monkeypatch.setattr(weights_module, "SHARE_FROM", 0)
    monkeypatch.setattr(session_module, "HAND_OVER_FROM", 0)


def _saliency(source, x: np.ndarray) -> np.ndarray:
    explainer = onnxplain.Explainer(source, providers="cpu", progress=False)
    return explainer.explain(x, method="saliency", target=5).attributions["x"]


def test_programs_hold_no_copy_of_large_weights(monkeypatch):
    """The gradient program's ModelProto holds stubs, not bytes, for the large weights; its
    builder reads their values from the model; the saliency equals the full-copy path's."""
    x = np.random.default_rng(4).standard_normal((3, 512)).astype(np.float32)
    expected = _saliency(_model(), x)
    _share_all(monkeypatch)
    model = Model.load(_model())
    program = build_gradient_program(model, "y", ["x"])
    large = {init.name for init in model.proto.graph.initializer if shareable(init)}
    assert large == {"w", "q"}
    stubs = {init.name for init in program.model.graph.initializer if is_stub(init)}
    assert stubs == large
    held = sum(len(init.raw_data) for init in program.model.graph.initializer)
    assert held < SHARED_BYTES
    builder = GraphBuilder(program.model, model.infos, weights=program.weights)
    original = {init.name: numpy_helper.to_array(init) for init in _model().graph.initializer}
    np.testing.assert_array_equal(builder.static_value("w"), original["w"])
    np.testing.assert_array_equal(_saliency(_model(), x), expected)


def test_weights_read_from_the_file_and_refused_after_it_changed(tmp_path, monkeypatch):
    """A model loaded from a file gives ONNX Runtime the offsets of its weights in that file
    (no arrays); once the file is rewritten (same size, zero weights) a new session or a
    read of a weight is refused, naming the file, instead of explaining another model."""
    x = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    expected = _saliency(_model(), x)
    _share_all(monkeypatch)
    arrays: list[str] = []
    make_array = session_module._array
    monkeypatch.setattr(session_module, "_array",
                        lambda init: arrays.append(init.name) or make_array(init))
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    explainer = onnxplain.Explainer(str(path), providers="cpu", progress=False)
    assert set(explainer.model.weights.spans) == {"w", "q"}
    got = explainer.explain(x, method="saliency", target=5).attributions["x"]
    np.testing.assert_array_equal(got, expected)
    assert arrays == []
    changed = _model()
    for init in changed.graph.initializer:
        if init.name == "w":
            init.raw_data = np.zeros((512, 512), np.float32).tobytes()
    onnx.save(changed, str(path))
    stub = next(i for i in explainer.model.proto.graph.initializer if i.name == "w")
    with pytest.raises(ModelError, match="changed after it was loaded") as raised:
        tensor_value(stub)
    assert str(path) in str(raised.value) and "\n" not in str(raised.value)
    with pytest.raises(ModelError, match="changed after it was loaded"):
        explainer.explain(x, method="integrated_gradients", target=5, n_steps=2)


def test_a_model_loaded_from_a_file_holds_no_large_weight_bytes(tmp_path, monkeypatch):
    """Its large initializers are file stubs (no raw_data): the values read back equal the
    file's, bit for bit; the file is left as it was; models given as bytes or ModelProto
    keep their bytes."""
    _share_all(monkeypatch)
    path = tmp_path / "model.onnx"
    onnx.save(_model(), str(path))
    before = path.read_bytes()
    model = Model.load(str(path))
    held = {init.name: len(init.raw_data) for init in model.proto.graph.initializer}
    assert held["w"] == held["q"] == 0
    assert sum(held.values()) < 4096 and model.proto.ByteSize() < 8192
    stubs = {init.name for init in model.proto.graph.initializer if file_span(init)}
    assert stubs == {"w", "q"}
    from_file = {init.name: numpy_helper.to_array(init)
                 for init in onnx.load(str(path)).graph.initializer}
    for init in model.proto.graph.initializer:
        read = tensor_value(init)
        assert read.dtype == from_file[init.name].dtype
        np.testing.assert_array_equal(read, from_file[init.name])
    builder = GraphBuilder(model.proto, model.infos, weights=model.weights)
    np.testing.assert_array_equal(builder.static_value("q"), from_file["q"])
    assert path.read_bytes() == before
    for source in (_model(), _model().SerializeToString()):
        proto = Model.load(source).proto
        assert not any(file_span(init) for init in proto.graph.initializer)
        assert sum(len(init.raw_data) for init in proto.graph.initializer) > 2 * SHARED_BYTES
