"""Models passed through ONNX Runtime's transformer optimizer explain like their
un-optimised exports: the canonical graph runs what ONNX Runtime runs on the optimised file,
and every gradient and attention method gives the un-optimised export's answer.

Tolerance: the optimizer changes float32 rounding only (fused kernels sum in another order):
the logits of the two files differ by about 2e-7 of their largest value, and the attributions
measured here by at most 1.2e-6 of each row's largest |score|. 2e-5 leaves a margin of 16
and still fails on any change of meaning: splitting relevance differently at one GELU (the
gate written x·0.5·(1 + erf) instead of x·(1 + erf)·0.5) moved Transformer Attribution on
vit_small_ort by 4e-4."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.graph.attention import find_attention

TOLERANCE = 2e-5
PAIRS = {"bert_small_ort": "bert_small", "bert_small_ort_mha": "bert_small",
         "vit_small_ort": "vit_small", "gpt2_tiny_ort": "gpt2_tiny"}
GRADIENT = {"bert_small_ort": ["saliency", "layer_integrated_gradients"],
            "bert_small_ort_mha": ["saliency", "layer_integrated_gradients"],
            "vit_small_ort": ["saliency", "integrated_gradients"],
            "gpt2_tiny_ort": ["saliency", "layer_integrated_gradients"]}
ATTENTION = {"bert_small_ort": ["rollout", "transformer_attribution", "attgrad"],
             "bert_small_ort_mha": ["rollout", "transformer_attribution", "attgrad"],
             "vit_small_ort": ["rollout", "transformer_attribution", "attgrad"],
             "gpt2_tiny_ort": ["rollout"]}


_CACHE: dict = {}


def _pair(zoo, name: str):
    """(optimised explainer, un-optimised explainer, sample, optimised file), built once."""
    if name not in _CACHE:
        _CACHE[name] = (onnxplain.Explainer(zoo.model_path(name)),
                        onnxplain.Explainer(zoo.model_path(PAIRS[name])), zoo.sample(name),
                        zoo.model_path(name))
    return _CACHE[name]


def _worst_row_error(ours: np.ndarray, expected: np.ndarray) -> float:
    ours = ours.reshape(len(ours), -1).astype(np.float64)
    expected = expected.reshape(len(expected), -1).astype(np.float64)
    scale = np.abs(expected).max(axis=1) + 1e-30
    return float((np.abs(ours - expected).max(axis=1) / scale).max())


def _options(name: str, explainer, sample) -> dict:
    """GPT-2's logits are [batch, sequence, vocabulary]: explain the last position's
    largest logit through an output seed."""
    if not name.startswith("gpt2"):
        return {}
    logits = explainer.forward(sample)["logits"]
    seed = np.zeros_like(logits)
    for row, token in enumerate(logits[:, -1].argmax(axis=-1)):
        seed[row, -1, token] = 1.0
    return {"output_seed": seed}


@pytest.mark.parametrize("name", sorted(PAIRS))
def test_canonical_graph_runs_what_onnx_runtime_runs(zoo, name):
    optimized, _, sample, path = _pair(zoo, name)
    assert not [n.op_type for n in optimized.model.proto.graph.node if n.domain]
    (want,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
        ["logits"], sample)
    got = optimized.forward(sample)["logits"]
    assert _worst_row_error(got, want) < 1e-5


@pytest.mark.parametrize(("name", "method"), [(n, m) for n in sorted(GRADIENT)
                                              for m in GRADIENT[n]])
def test_gradient_methods_match_the_unoptimised_export(zoo, name, method):
    optimized, plain, sample, _ = _pair(zoo, name)
    steps = {"n_steps": 16} if "integrated" in method else {}
    ours = optimized.explain(sample, method, **steps, **_options(name, optimized, sample))
    theirs = plain.explain(sample, method, **steps, **_options(name, plain, sample))
    # The same attributed inputs in the same order (the embeddings carry other names).
    assert len(ours.tensors) == len(theirs.tensors)
    for got, want in zip(ours.tensors.values(), theirs.tensors.values(), strict=True):
        assert np.abs(want).max() > 0
        assert _worst_row_error(got, want) < TOLERANCE


@pytest.mark.parametrize(("name", "method"), [(n, m) for n in sorted(ATTENTION)
                                              for m in ATTENTION[n]])
def test_attention_methods_match_the_unoptimised_export(zoo, name, method):
    optimized, plain, sample, _ = _pair(zoo, name)
    # A causal model's first token attends to itself alone: read the last token's row.
    query = {"query": sample["input_ids"].shape[1] - 1} if name.startswith("gpt2") else {}
    ours = optimized.explain(sample, method, **query)
    theirs = plain.explain(sample, method, **query)
    assert np.abs(theirs.tensors["tokens"]).max() > 0
    assert _worst_row_error(ours.tensors["tokens"], theirs.tensors["tokens"]) < TOLERANCE


def test_fused_attention_becomes_located_probabilities(zoo):
    import onnx

    for name, op in (("bert_small_ort", "Attention"), ("bert_small_ort_mha",
                                                       "MultiHeadAttention")):
        path = zoo.model_path(name)
        fused = [n.name for n in onnx.load(str(path)).graph.node if n.op_type == op]
        layers = find_attention(onnxplain.Explainer(path).model)
        assert len(fused) == 2
        assert [layer.probabilities for layer in layers] == [f"{n}/softmax" for n in fused]
        assert all(layer.heads == 4 and layer.mask_inputs == ("attention_mask",)
                   for layer in layers)
