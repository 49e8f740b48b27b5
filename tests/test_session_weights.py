"""Sessions over models with large weights: the weights go to ONNX Runtime as arrays or as
external data read from the model's file, beside a weightless model (runtime.session), with
the same results as the serialised model; programs share the model's weights instead of
copying them (graph.weights)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.autodiff.program import build_gradient_program
from onnxplain.graph import weights as weights_module
from onnxplain.graph.builder import GraphBuilder
from onnxplain.graph.model import Model
from onnxplain.graph.weights import SHARED_BYTES, is_stub, shareable
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


def test_weights_read_from_the_file_and_not_after_it_changed(tmp_path, monkeypatch):
    """A model loaded from a file gives ONNX Runtime the offsets of its unchanged weights in
    that file (no arrays); once the file is rewritten (same size, zero weights) the arrays
    are used, so the explanation is still the loaded model's."""
    x = np.random.default_rng(5).standard_normal((2, 512)).astype(np.float32)
    expected = _saliency(_model(), x)
    integrated = onnxplain.Explainer(_model(), providers="cpu", progress=False).explain(
        x, method="integrated_gradients", target=5, n_steps=2).attributions["x"]
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
    assert not explainer.model.weights.readable()
    again = explainer.explain(x, method="integrated_gradients", target=5, n_steps=2)
    np.testing.assert_array_equal(again.attributions["x"], integrated)
    assert set(arrays) == {"q", "w"}
