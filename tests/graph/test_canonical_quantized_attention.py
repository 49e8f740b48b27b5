"""QAttention and QEmbedLayerNormalization (graph/canonical/quantized_attention.py) against
ONNX Runtime's own kernels, on random quantized inputs.

Tolerance. The outputs are float. QAttention's kernel multiplies the exact int32 product
(x - zx)(w - zw) by input_scale * weight_scale; the decomposition dequantizes first and
multiplies in float32, so the same real number is rounded differently (both are exact
products of integers below 2^24 times one scale, a few ulps apart), then goes through the
softmax and the value product: measured 2e-7 to 5e-7 of the largest output, checked at 1e-5 like the
float contrib ops (tests/graph/ms_oracle.py). QEmbedLayerNormalization dequantizes each
table element exactly as the kernel does (x - z) s, then the same layer normalisation
(measured 1.3e-7): 1e-5.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import ModelError

from .ms_oracle import assert_matches, fused_model

RNG = np.random.default_rng(3)
BATCH, SEQ, HIDDEN, HEADS = 2, 5, 16, 4


def _u8(shape) -> np.ndarray:
    return RNG.integers(0, 256, size=shape).astype(np.uint8)


def _i8(shape) -> np.ndarray:
    return RNG.integers(-127, 128, size=shape).astype(np.int8)


def _f32(value) -> np.ndarray:
    return np.asarray(value, dtype=np.float32)


def _qattention_inputs(mask: np.ndarray | None, per_column: str = "", signed: bool = True,
                       past: np.ndarray | None = None) -> list:
    """QAttention's nine inputs; `per_column`: "", "both", "scale" or "zero_point"."""
    columns = 3 * HIDDEN
    weight = _i8((HIDDEN, columns)) if signed else _u8((HIDDEN, columns))
    w_scale = _f32(RNG.uniform(0.002, 0.006, size=columns) if per_column in ("both", "scale")
                   else 0.004)
    zero_type = np.int8 if signed else np.uint8
    w_zero = (RNG.integers(-3, 4, size=columns) if per_column in ("both", "zero_point")
              else np.array(2 if not signed else 1)).astype(zero_type)
    if not signed:
        w_zero = w_zero + np.array(128, np.uint8)
    return [("input", _u8((BATCH, SEQ, HIDDEN))), ("weight", weight, "const"),
            ("bias", _f32(RNG.normal(size=columns) * 0.1), "const"),
            ("input_scale", _f32(0.03), "const"), ("weight_scale", w_scale, "const"),
            None if mask is None else ("mask_index", mask),
            ("input_zero_point", np.array(120, np.uint8), "const"),
            ("weight_zero_point", w_zero, "const"),
            None if past is None else ("past", past)]


LENGTHS = np.array([5, 3], np.int32)
RAW_MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32)


@pytest.mark.parametrize(("mask", "per_column", "signed"), [
    (None, "", True), (LENGTHS, "", True), (RAW_MASK, "", True), (RAW_MASK, "both", True),
    (LENGTHS, "scale", True), (LENGTHS, "zero_point", False), (RAW_MASK, "", False)],
    ids=["no-mask", "lengths", "raw-mask", "per-column", "per-column-scale",
         "per-column-zero-uint8", "uint8-weight"])
def test_qattention_matches_kernel(mask, per_column, signed):
    model, feeds = fused_model("QAttention", _qattention_inputs(mask, per_column, signed),
                               ["output"], {"num_heads": HEADS})
    canon = assert_matches(model, feeds)
    softmaxes = [n for n in canon.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 1  # the attention probabilities, for the locator


def test_qattention_with_past_and_present():
    past = RNG.normal(size=(2, BATCH, HEADS, 3, HIDDEN // HEADS)).astype(np.float32)
    mask = np.ones((BATCH, 3 + SEQ), np.int32)
    model, feeds = fused_model("QAttention", _qattention_inputs(mask, past=past),
                               ["output", "present"], {"num_heads": HEADS})
    assert_matches(model, feeds)


def test_qattention_unidirectional():
    model, feeds = fused_model("QAttention", _qattention_inputs(None), ["output"],
                               {"num_heads": HEADS, "unidirectional": 1})
    assert_matches(model, feeds)


def _qembed_inputs(segments: bool, mask: np.ndarray | None, signed: bool) -> list:
    vocab, positions, kinds = 20, 8, 2
    table = _i8 if signed else _u8
    zero_type = np.int8 if signed else np.uint8

    def quantized(name, shape, scale, zero):
        return [(name, table(shape), "const"), (f"{name}_scale", _f32(scale), "const"),
                (f"{name}_zero_point", np.array(zero, zero_type), "const")]
    word = quantized("word", (vocab, HIDDEN), 0.02, 3 if signed else 131)
    position = quantized("position", (positions, HIDDEN), 0.01, -2 if signed else 126)
    segment = quantized("segment", (kinds, HIDDEN), 0.015, 0 if signed else 128)
    gamma = quantized("gamma", (HIDDEN,), 0.01, -100 if signed else 28)
    beta = quantized("beta", (HIDDEN,), 0.005, 0 if signed else 128)
    parts = [word, position, segment if segments else [None] * 3, gamma, beta]
    ids = RNG.integers(0, vocab, size=(BATCH, SEQ)).astype(np.int32)
    segment_ids = RNG.integers(0, kinds, size=(BATCH, SEQ)).astype(np.int32)
    return ([("input_ids", ids), ("segment_ids", segment_ids) if segments else None]
            + [p[0] for p in parts] + [None if mask is None else ("mask", mask)]
            + [p[1] for p in parts] + [p[2] for p in parts])


@pytest.mark.parametrize(("segments", "mask", "signed"), [
    (True, RAW_MASK, False), (True, RAW_MASK, True), (False, None, False),
    (True, np.array([[1, 2, 1, 0, 0], [1, 1, 1, 1, 1]], np.int32), True)],
    ids=["uint8", "int8", "no-segments-no-mask", "mask-entry-2"])
def test_qembed_layer_norm_matches_kernel(segments, mask, signed):
    model, feeds = fused_model("QEmbedLayerNormalization",
                               _qembed_inputs(segments, mask, signed),
                               ["output", "mask_index"], {"epsilon": 1e-12})
    canon = assert_matches(model, feeds)
    names = {out for node in canon.graph.node for out in node.output}
    assert "fused_QEmbedLayerNormalization/word_embedding" in names


def test_qattention_refuses_rotary():
    model, feeds = fused_model("QAttention", _qattention_inputs(None), ["output"],
                               {"num_heads": HEADS, "do_rotary": 1},
                               shapes={"output": ((BATCH, SEQ, HIDDEN), np.float32)})
    with pytest.raises(ModelError, match="QAttention node 'fused_QAttention'.*do_rotary=1"):
        assert_matches(model, feeds)


# ---- the zoo model: quantize_dynamic on the optimized BERT ---------------------------------
def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@pytest.fixture(scope="module")
def dynamic_bert(zoo):
    import warnings

    import onnxplain

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DynamicQuantizeLinear: rows run one at a time
        quantized = onnxplain.Explainer(str(zoo.model_path("bert_small_ort_dynamic")), "cpu")
    return (quantized, onnxplain.Explainer(str(zoo.model_path("bert_small_ort")), "cpu"),
            zoo.sample("bert_small_ort_dynamic"), zoo.model_path("bert_small_ort_dynamic"))


def test_dynamic_bert_holds_the_quantized_contrib_ops(dynamic_bert):
    """quantize_dynamic on the optimized BERT writes QAttention and QEmbedLayerNormalization
    (the point of the zoo model); canonicalised, each layer's attention is a Softmax."""
    import onnx

    quantized, _, _, path = dynamic_bert
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"QAttention", "QEmbedLayerNormalization"} <= ops
    assert not [n for n in quantized.model.proto.graph.node if n.domain]
    assert sum(n.op_type == "Softmax" for n in quantized.model.proto.graph.node) == 2


def test_dynamic_bert_forward_is_onnx_runtimes(dynamic_bert):
    """Row by row (DynamicQuantizeLinear takes one scale per run; onnxplain runs rows
    alone): measured 1.4e-7 of the largest logit."""
    import onnxruntime as ort

    quantized, _, sample, path = dynamic_bert
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    rows = len(sample["input_ids"])
    direct = np.concatenate([session.run(["logits"], {k: v[i:i + 1] for k, v in
                                                      sample.items()})[0] for i in range(rows)])
    with pytest.warns(UserWarning, match="rows run one at a time"):
        got = quantized.forward(sample)["logits"]
    np.testing.assert_allclose(got, direct, atol=1e-5 * np.abs(direct).max())


@pytest.mark.parametrize("method", ["saliency", "layer_integrated_gradients", "rollout",
                                    "transformer_attribution"])
def test_dynamic_bert_attribution_matches_optimized_float_model(dynamic_bert, method):
    """Against bert_small_ort, the float file it was quantized from, for its predicted
    class. 8-bit activations move the logits by ~1% of their size; measured per-row cosines
    >= 0.9999 (saliency, layer IG, rollout) and >= 0.994 (Transformer Attribution).
    Thresholds as tests/test_quantized_models.py: every row > 0.9, mean > 0.98."""
    import warnings

    quantized, plain, sample, _ = dynamic_bert
    target = plain.explain(sample, "saliency").predicted
    steps = {"n_steps": 16} if method == "layer_integrated_gradients" else {}
    want = plain.explain(sample, method, target=target, **steps).attributions["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        got = quantized.explain(sample, method, target=target, **steps)
    cosines = _cosines(got.attributions["input_ids"], want)
    assert np.all(np.isfinite(cosines)) and cosines.min() > 0.9, cosines
    assert cosines.mean() > 0.98, cosines
