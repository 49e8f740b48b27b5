"""Relevance rule sets (LRP, Chefer et al.'s) pass quantize and dequantize ops by the
straight-through estimator: round() as the identity, relevance unchanged (autodiff/ops/
quantize.py, relevance_straight_through).

Oracles:
- exact: a linear layer quantized as ONNX Runtime's quantize_dynamic writes it
  (DynamicQuantizeLinear, MatMulInteger, Cast, Mul by the two scales, Add bias), and one
  behind a static QuantizeLinear/DequantizeLinear pair, fed inputs on the quantization grid,
  compute exactly what the float layer computes, so their relevance must equal the float
  layer's (to float32 rounding; 1e-5 of the largest value). The gradient's estimator (dq/dx =
  1/s) would be off by the scale here: relevance is in units of the score, not of the input.
- trained models: LRP on the quantized digits CNNs against the float model they came from
  (per-row cosines measured >= 0.995, mean 0.9998; thresholds 0.98 and 0.995).
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.rules.chefer import CHEFER

GRID = 2.0 ** -4  # the input scale: every input is an integer multiple of it
W_SCALE = 2.0 ** -5
RNG = np.random.default_rng(0)
W_INT = RNG.integers(-127, 128, size=(8, 3)).astype(np.int8)
BIAS = RNG.normal(size=3).astype(np.float32)


def _model(nodes, initializers) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "layer", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 3])],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=10)


def float_layer() -> onnx.ModelProto:
    weight = (W_INT.astype(np.float32) * W_SCALE).astype(np.float32)
    return _model([helper.make_node("MatMul", ["x", "w"], ["xw"]),
                   helper.make_node("Add", ["xw", "bias"], ["logits"])],
                  {"w": weight, "bias": BIAS})


def dynamic_layer() -> onnx.ModelProto:
    """quantize_dynamic's form of float_layer."""
    return _model([
        helper.make_node("DynamicQuantizeLinear", ["x"], ["q", "q_scale", "q_zero"]),
        helper.make_node("MatMulInteger", ["q", "w_q", "q_zero", "w_zero"], ["product"]),
        helper.make_node("Cast", ["product"], ["product_float"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["q_scale", "w_scale"], ["scales"]),
        helper.make_node("Mul", ["product_float", "scales"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["logits"])],
        {"w_q": W_INT, "w_zero": np.array(0, np.int8),
         "w_scale": np.array(W_SCALE, np.float32), "bias": BIAS})


def qdq_layer() -> onnx.ModelProto:
    """float_layer behind a static QuantizeLinear/DequantizeLinear pair (uint8, zero 64)."""
    return _model([
        helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "x_scale", "x_zero"], ["xq"]),
        helper.make_node("DequantizeLinear", ["w_q", "w_scale"], ["w"]),
        helper.make_node("MatMul", ["xq", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "bias"], ["logits"])],
        {"x_scale": np.array(GRID, np.float32), "x_zero": np.array(64, np.uint8),
         "w_q": W_INT, "w_scale": np.array(W_SCALE, np.float32), "bias": BIAS})


def grid_inputs(rows: int = 4) -> np.ndarray:
    """Integer multiples of GRID in [-64, 191] GRID, each row reaching both ends, so that
    DynamicQuantizeLinear picks scale GRID and zero point 64 (rows run one at a time) and
    every value is exactly representable."""
    k = RNG.integers(-64, 192, size=(rows, 8))
    k[:, 0], k[:, 1] = -64, 191
    return (k * GRID).astype(np.float32)


def _explain(model: onnx.ModelProto, x: np.ndarray, method: str, **options) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DynamicQuantizeLinear: rows run one at a time
        return onnxplain.Explainer(model, "cpu").explain(
            x, method, target=[0, 1, 2, 0], **options).attributions["x"]


def _chefer(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = onnxplain.Explainer(model, "cpu").engine
        run = engine.gradients({"x": x}, np.array([0, 1, 2, 0]), ["x"], rules=CHEFER)
    return np.asarray(run.grads["x"])


@pytest.mark.parametrize("quantized", [dynamic_layer, qdq_layer])
def test_quantized_layer_computes_the_float_layer_on_the_grid(quantized):
    x = grid_inputs()
    want = onnxplain.Explainer(float_layer(), "cpu").forward(x)["logits"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = onnxplain.Explainer(quantized(), "cpu").forward(x[:1])["logits"]
    np.testing.assert_allclose(got, want[:1], rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("quantized", [dynamic_layer, qdq_layer])
@pytest.mark.parametrize("composite", ["epsilon", "z-plus", "alpha-beta"])
def test_lrp_relevance_passes_quantization_unchanged(quantized, composite):
    x = grid_inputs()
    want = _explain(float_layer(), x, "lrp", composite=composite)
    got = _explain(quantized(), x, "lrp", composite=composite)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("quantized", [dynamic_layer, qdq_layer])
def test_chefer_relevance_passes_quantization_unchanged(quantized):
    x = grid_inputs()
    want, got = _chefer(float_layer(), x), _chefer(quantized(), x)
    assert np.abs(want).max() > 0
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())


DIGITS = ["digits_cnn_qdq", "digits_cnn_qoperator", "digits_resnet_qdq",
          "digits_resnet_qoperator"]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.mark.parametrize("name", DIGITS)
def test_lrp_on_quantized_cnn_matches_float_model(zoo, name):
    """The composite's first-layer rule lands on the first quantized layer too (the layer
    finder walks through quantized values), and the maps agree with the float model's."""
    from model_zoo.digits import digits_data

    x = digits_data()[2][:64]
    folder = zoo.build(name)
    float_model = onnxplain.Explainer(str(folder / "float.onnx"), "cpu")
    target = float_model.explain(x, "saliency").predicted
    want = float_model.explain(x, "lrp", target=target, composite="epsilon-plus-flat")
    got = onnxplain.Explainer(str(folder / "model.onnx"), "cpu").explain(
        x, "lrp", target=target, composite="epsilon-plus-flat")
    assert sorted(got.extras["rules"].values()) == sorted(want.extras["rules"].values())
    cosines = _cosines(got.attributions["image"], want.attributions["image"])
    assert cosines.min() > 0.98 and cosines.mean() > 0.995, cosines


@pytest.fixture(scope="module")
def sentiment_rows(zoo):
    """64 held-out sentences of the sentiment data, encoded as the model reads them."""
    from model_zoo.sentiment import encode, sentiment_data, vocabulary

    vocab = {token: i for i, token in enumerate(vocabulary())}
    ids, mask = encode([sentence for sentence, _ in sentiment_data()[1][:64]], vocab)
    return {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}


def _top_k_overlap(a: np.ndarray, b: np.ndarray, k: int = 3) -> float:
    return float(np.mean([len(set(np.argsort(-u)[:k]) & set(np.argsort(-v)[:k])) / k
                          for u, v in zip(a, b, strict=True)]))


def test_transformer_attribution_on_dynamically_quantized_bert(zoo, sentiment_rows):
    """sentiment_bert_dynamic against its float export, 64 held-out sentences, the float
    model's predicted class.

    Measured: median row cosine 0.9999, 56 of 64 rows above 0.9, mean top-3 token overlap
    0.90; gradient x attention (generic_attention, no LRP) above 0.997 on every row. The
    rows that move are the LRP's, not the quantization rule's: Chefer et al.'s residual rule
    divides each element's relevance by z = a + b, which on those rows comes within 1e-3 of
    0 while a and b are ~0.5, so the 1% that 8-bit activations move a and b swings the split
    between the branches (the single-layer tests above show the rule itself is exact).
    Thresholds: median > 0.99, at least 3/4 of rows > 0.9, top-3 overlap > 0.8, and the
    gradient control > 0.99 everywhere."""
    folder = zoo.build("sentiment_bert_dynamic")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # rows run one at a time: DynamicQuantizeLinear
        float_model = onnxplain.Explainer(str(folder / "float.onnx"), "cpu")
        quantized = onnxplain.Explainer(str(folder / "model.onnx"), "cpu")
        target = float_model.explain(sentiment_rows, "saliency").predicted
        found = {m: [e.explain(sentiment_rows, m, target=target).attributions["input_ids"]
                     for e in (quantized, float_model)]
                 for m in ("transformer_attribution", "generic_attention")}
    got, want = found["transformer_attribution"]
    cosines = _cosines(got, want)
    assert np.all(np.isfinite(cosines))
    assert np.median(cosines) > 0.99 and np.mean(cosines > 0.9) >= 0.75, np.sort(cosines)
    assert _top_k_overlap(got, want) > 0.8
    assert _cosines(*found["generic_attention"]).min() > 0.99
