"""AttnLRP (Achtibat et al., ICML 2024) against an independent float64 PyTorch oracle
(attn_lrp_reference.py: the paper's rules as modified gradients on the same `transformers`
model), on every zoo transformer (test_zoo_coverage.ATTN_LRP_REFERENCE: encoders, a token
tagger, ViT, Swin, SegFormer, DETR, CLIP, BART, a Llama classifier and causal LMs, with and
without a KV cache, padded where the model has padding) and two other exporters of
bert_small; and the oracle's own checks: with its rules off it is torch's input x gradient,
and its relevance is conserved up to what the softmax rule absorbs."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import onnxplain

from ..conftest import require
from ..test_zoo_coverage import ATTN_LRP_REFERENCE, worst_row_error
from . import attn_lrp_reference as reference

MODELS = ["bert_small_dynamo", "bert_small_attention23", *ATTN_LRP_REFERENCE]
RIGHT_PADDED = ("llama_tiny_opset23", "qwen2_tiny_opset18", "qwen2_tiny_opset23", "gpt2_tiny",
                "causal_lm", "llama_tiny_legacy", "gpt2_tiny_kv", "llama_tiny_kv")
# Relative to the largest |relevance| of the row: float32 ONNX Runtime against float64 torch
# (measured at most 1.1e-6, sentiment_bert; the plain input x gradient is 0.4 to 9 off), or
# twice the drift of the same reference run in float32 where that is larger.
TOLERANCE = 1e-5


def _feeds(zoo, name: str) -> dict[str, np.ndarray]:
    """The zoo sample; a decoder's row 1 ends two tokens early (right padding, id 0; with
    a KV cache, two of its three new tokens)."""
    feeds = {k: v.copy() for k, v in zoo.sample(name).items()}
    if name in RIGHT_PADDED:
        feeds["input_ids"][1, -2:] = 0
        if "attention_mask" in feeds:
            feeds["attention_mask"][1, -2:] = 0
    return feeds


@pytest.fixture(scope="module")
def torch_models(zoo):
    torch = require("torch")
    loaded = {}

    def load(name: str) -> torch.nn.Module:
        if name not in loaded:
            loaded[name] = zoo.load_torch(name)
        return loaded[name]
    return load


@pytest.fixture(scope="module", params=MODELS)
def case(request, zoo, torch_models):
    """(feeds, onnxplain's result, the reference, the reference in float32). Both pick the
    target themselves; outputs scored per position (token tags, DETR's queries) explain the
    seed that onnxplain resolved (objective.Dense, checked by the zoo coverage test)."""
    torch = require("torch")
    name = request.param
    feeds = _feeds(zoo, name)
    model = torch_models(name)
    result = onnxplain.Explainer(zoo.model_path(name)).explain(feeds, "attn_lrp")
    # A language model's seed is its target at the explained position: no seed needed.
    dense = result.seed is not None and not result.target.size
    seed = {"seed": result.seed} if dense else {}
    expected = reference.attn_lrp(model, feeds, **seed)
    with reference.precision(torch.float32):
        drift = reference.attn_lrp(model, feeds, expected.target, **seed)
    return feeds, result, expected, drift


def test_attn_lrp_matches_the_reference(case):
    feeds, result, expected, drift = case
    np.testing.assert_array_equal(result.target, expected.target.numpy())
    assert set(expected.maps) <= set(result.attributions)  # BERT's token types: unchecked
    for name, want in expected.maps.items():
        want = want.numpy()
        assert np.abs(want).max() > 0, "the reference must not be all zeros"
        ours = result.attributions[name]
        assert ours.shape == want.shape
        float32 = worst_row_error(drift.maps[name].double().numpy(), want)
        assert float32 < 1e-3, "float32 drift may widen the tolerance, not replace it"
        assert worst_row_error(ours, want) < max(TOLERANCE, 2 * float32)
    if expected.cached is not None:  # the KV cache's relevance, as one block per row
        want = expected.cached.numpy()
        scale = np.abs(np.concatenate([m.numpy() for m in expected.maps.values()], 1)).max()
        assert np.abs(result.extras["cached_block"] - want).max() < TOLERANCE * scale
    # Conservation's two ends: the relevance given (the score) and the sum of every map the
    # method returned (BERT's token types are the reference's blind spot: left out there).
    np.testing.assert_allclose(result.extras["output_relevance"], expected.score.numpy(),
                               rtol=1e-5)
    if set(result.attributions) == set(expected.maps):
        found = sum(m.reshape(len(m), -1).sum(1, dtype=np.float64)
                    for m in expected.maps.values() for m in [m.numpy()])
        if expected.cached is not None:
            found = found + expected.cached.numpy().reshape(len(found), -1).sum(1)
        scale = np.abs(expected.score.numpy()).max()
        assert np.abs(result.extras["input_relevance"] - found).max() < 1e-5 * scale


# Hugging Face's RMSNorm computes in float32 even in a float64 model (measured 2e-6 here,
# 8e-16 with the upcast removed); the reference computes it in float64.
RULES_OFF = {"bert_small": 1e-12, "gpt2_tiny": 1e-12, "vit_small": 1e-12,
             "llama_tiny_opset23": 1e-5, "qwen2_tiny_opset18": 1e-5}


@pytest.mark.parametrize("name", sorted(RULES_OFF))
def test_without_its_rules_the_reference_is_input_times_gradient(zoo, torch_models, name):
    """Torch autograd on the unpatched model (sdpa attention: another implementation)."""
    torch = require("torch")
    feeds = _feeds(zoo, name)
    model = torch_models(name)
    plain = reference.attn_lrp(model, feeds, rules=False)
    hf = copy.deepcopy(reference.unwrap(model)).double().eval()
    hf.config._attn_implementation = "sdpa"
    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    leaves = []
    if "pixel_values" in inputs:
        leaves.append(inputs["pixel_values"].double().requires_grad_())
        inputs["pixel_values"] = leaves[0]
    else:
        hf.get_input_embeddings().register_forward_hook(
            lambda _m, _a, out: leaves.append(out.detach().requires_grad_()) or leaves[-1])
    logits = hf(**inputs).logits
    if logits.dim() == 3:
        logits = logits[torch.arange(len(logits)), plain.positions]
    (grad,) = torch.autograd.grad(logits.gather(1, plain.target[:, None]).sum(), leaves)
    want = leaves[0] * grad if "pixel_values" in inputs else (leaves[0] * grad).sum(-1)
    assert worst_row_error(plain.input.numpy(), want.detach().numpy()) < RULES_OFF[name]
    with_rules = reference.attn_lrp(model, feeds, plain.target).input.numpy()
    assert worst_row_error(with_rules, want.detach().numpy()) > 1e-3, "the rules must matter"


@pytest.mark.parametrize("name", ["sentiment_bert", "llama_tiny_opset23", "qwen2_tiny_opset18",
                                  "gpt2_tiny", "vit_small"])
def test_relevance_is_conserved_but_for_the_softmax(zoo, torch_models, monkeypatch, name):
    """With every bias and additive embedding zeroed, the logit put in comes out at the
    inputs, less what the softmaxes absorb (their rule's Taylor bias term), to rounding once
    the identity rule's 1e-10 stabiliser is off (with it: 1e-10 of the logit). The softmax's
    share is not small: 1% to 60% of the logit on these models."""
    monkeypatch.setattr(reference, "EPSILON", 0.0)
    unbiased = reference.zero_biases(torch_models(name))
    got = reference.attn_lrp(unbiased, _feeds(zoo, name))
    total = got.input.reshape(len(got.input), -1).sum(1)
    np.testing.assert_allclose((total + got.softmax_deficit).numpy(), got.score.numpy(),
                               rtol=1e-12, atol=0)
    assert np.abs(got.softmax_deficit.numpy()).max() > 1e-3 * np.abs(got.score.numpy()).max()
