"""Attention methods on float16 BERTs agree with the float32 model they were converted from.

bert_small_fp16 (onnxconverter-common, float16 logits) and bert_small_ort_fp16
(onnxruntime.transformers.float16 with keep_io_types, fused Attention canonicalised on load)
hold bert_small's weights rounded to float16. Oracle: the same method on bert_small, same
sample, same target. Before the fix, Transformer Attribution and AttGrad returned all-zero
maps on both (their per-layer products, ~1e-8 and ~1e-10 here, underflow float16: the
attention post-processing now runs in float32) and the relevance pass could not load on the
keep_io_types model (a float32 relevance fed a float16 layer through the logits' Cast).

Tolerance. float16's unit roundoff is 2^-11 = 4.9e-4; weights, activations, gradients and
relevances each carry a few such errors through two layers. Measured relative L2 errors
against float32: 1e-4 (raw attention, rollout) to 2.6e-3 (partial LRP), cosines per row
> 0.99999. The bound, relative L2 < 1e-2 and every row's cosine > 0.999, leaves a margin of
about 4 and fails on a zero map (cosine undefined) or a wrong relevance split.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain

MODELS = ["bert_small_fp16", "bert_small_ort_fp16"]
METHODS = ["raw_attention", "rollout", "partial_lrp", "transformer_attribution",
           "generic_attention", "attgrad", "cat", "attncat"]
RELATIVE_L2 = 1e-2
ROW_COSINE = 0.999

_CACHE: dict = {}


def _explainer(zoo, name: str) -> onnxplain.Explainer:
    if name not in _CACHE:
        _CACHE[name] = onnxplain.Explainer(str(zoo.model_path(name)), "cpu")
    return _CACHE[name]


def _row_cosines(got: np.ndarray, want: np.ndarray) -> np.ndarray:
    got = got.reshape(len(got), -1).astype(np.float64)
    want = want.reshape(len(want), -1).astype(np.float64)
    return (got * want).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(want, axis=1))


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_half_precision_attention_matches_float32_model(zoo, name, method):
    sample = zoo.sample("bert_small")
    parent = _explainer(zoo, "bert_small")
    target = parent.explain(sample, "saliency").predicted
    want = parent.explain(sample, method, target=target).attributions["input_ids"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an all-zero map warns: fail on it
        got = _explainer(zoo, name).explain(sample, method, target=target)
    got = got.attributions["input_ids"]
    assert np.all(np.isfinite(got))
    error = np.linalg.norm((got - want).astype(np.float64)) / np.linalg.norm(want)
    assert error < RELATIVE_L2, error
    cosines = _row_cosines(got, want)
    assert cosines.min() > ROW_COSINE, cosines


def test_scores_come_back_in_float32(zoo):
    """Transformer Attribution's scores here are ~1e-8, below float16's normal range: the
    program returns them in float32, not rounded to a handful of subnormal steps."""
    sample = zoo.sample("bert_small")
    result = _explainer(zoo, "bert_small_fp16").explain(sample, "transformer_attribution",
                                                        target=0)
    scores = result.attributions["input_ids"]
    assert 0 < np.abs(scores).max() < 1e-6
    steps = np.unique(np.abs(scores[scores != 0]))
    assert len(steps) > 8  # float16 subnormals would give at most a few distinct values
