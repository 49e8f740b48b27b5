"""Causal language models with a KV cache ([Tq, P + Tq] attention maps) and grouped-query
heads: the attention methods read the explained row (the last new token) and report the P
cached positions as one block.

Oracle: a float64 torch reimplementation of rollout on the original module's eager
attention probabilities (heads averaged after grouped-query keys are repeated): each layer's
map gets identity rows for the cached positions (they are inputs of this step), the product
is read at row P + last, its first P entries summed into the block.
"""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain

from ..conftest import require
from ..test_zoo_coverage import explainer, worst_row_error

CACHED = ("gpt2_tiny_kv", "llama_tiny_kv")
GROUPED = ("qwen2_tiny_opset18", "qwen2_tiny_opset23")
# float64 torch against float32 ONNX Runtime; measured below 2e-6 of each row's largest score.
TOLERANCE = 1e-4


def _explainer(zoo, name: str) -> onnxplain.Explainer:
    return explainer(zoo.model_path(name))


def _torch_maps(zoo, name: str, feeds: dict) -> list[np.ndarray]:
    """Each layer's attention probabilities [N, heads, Tq, P + Tq] from the float64 torch
    original (eager attention, output_attentions)."""
    torch = require("torch")
    from transformers import DynamicCache

    module = zoo.load_torch(name).double().model
    module.set_attn_implementation("eager")
    tensors = {k: torch.from_numpy(v) for k, v in feeds.items()}
    past = sorted(k for k in tensors if k.startswith("past_"))
    kwargs = {}
    if past:
        cache = DynamicCache()
        for layer in range(len(past) // 2):
            cache.update(tensors[f"past_key_{layer}"], tensors[f"past_value_{layer}"], layer)
        kwargs = {"past_key_values": cache, "use_cache": True}
    with torch.no_grad():
        out = module(input_ids=tensors["input_ids"], attention_mask=tensors["attention_mask"],
                     output_attentions=True, **kwargs)
    return [a.numpy() for a in out.attentions]


def reference_rollout(maps: list[np.ndarray], query: int) -> tuple[np.ndarray, np.ndarray]:
    """(token scores [N, Tq] with the query's own entry 0, cached block [N])."""
    rows, _, queries, keys = maps[0].shape
    past = keys - queries
    v = np.zeros((rows, 1, keys))
    v[:, 0, past + query] = 1
    for a in reversed(maps):
        square = np.zeros((rows, keys, keys))
        square[:, past:] = a.mean(axis=1)
        step = np.eye(keys) + square
        v = v @ (step / step.sum(-1, keepdims=True))
    scores = v[:, 0, past:].copy()
    scores[:, query] = 0
    return scores, v[:, 0, :past].sum(axis=1)


def reference_raw(maps: list[np.ndarray], query: int) -> tuple[np.ndarray, np.ndarray]:
    last = maps[-1].mean(axis=1)[:, query]
    past = last.shape[-1] - maps[-1].shape[2]
    scores = last[:, past:].copy()
    scores[:, query] = 0
    return scores, last[:, :past].sum(axis=1)


@pytest.mark.parametrize("name", CACHED + GROUPED)
@pytest.mark.parametrize("method", ["rollout", "raw_attention"])
def test_attention_matches_the_torch_reference(zoo, name, method):
    feeds = zoo.sample(name)
    result = _explainer(zoo, name).explain(feeds, method)
    last = feeds["input_ids"].shape[1] - 1
    assert result.extras["query"] == last
    maps = _torch_maps(zoo, name, feeds)
    if name in GROUPED:  # 4 query heads over 2 key/value heads, square maps
        assert maps[0].shape[1:] == (4, last + 1, last + 1)
    want, block = {"rollout": reference_rollout, "raw_attention": reference_raw}[method](
        maps, last)
    assert worst_row_error(result.tensors["tokens"], want) < TOLERANCE
    if name in CACHED:
        assert result.extras["cached_positions"] == maps[0].shape[3] - maps[0].shape[2]
        np.testing.assert_allclose(result.extras["cached_block"], block, rtol=1e-5)
        assert min(block) > 0  # the cache is read, not dropped
    else:
        assert "cached_block" not in result.extras


@pytest.mark.parametrize("name", CACHED)
def test_partial_lrp_reads_the_last_relevance_over_the_new_tokens(zoo, name):
    """E_h R_L at the explained row, split into the new tokens and the cached block, from
    the relevance of the last map ([N, H, Tq, P + Tq]) that a gradient program of its own
    returns (Chefer et al.'s rules over the whole tail, no explained-row copy)."""
    from onnxplain.objective import NEXT_TOKEN, Place
    from onnxplain.rules.chefer import CHEFER
    from onnxplain.runtime.engine import DenseObjective

    feeds = zoo.sample(name)
    ex = _explainer(zoo, name)
    result = ex.explain(feeds, "partial_lrp")
    last_map = result.extras["layers"][-1]["probabilities"]
    run = ex.engine.gradients(feeds, DenseObjective(NEXT_TOKEN, Place()), [last_map],
                              rules=CHEFER, active_from=[s.tensor for s in ex.sources])
    relevance = run.grads[last_map].astype(np.float64)
    assert relevance.shape[2] < relevance.shape[3]  # keys cached
    want, block = reference_raw([relevance], feeds["input_ids"].shape[1] - 1)
    assert worst_row_error(result.tensors["tokens"], want) < TOLERANCE
    np.testing.assert_allclose(result.extras["cached_block"], block, rtol=1e-4,
                               atol=1e-7 * np.abs(block).max())


def test_rollout_with_a_cache_sums_to_one(zoo):
    """Every rolled-out matrix is row-stochastic (cached rows are identity rows): the new
    tokens, the cached block and the query's own entry sum to 1."""
    feeds = zoo.sample("gpt2_tiny_kv")
    ex = _explainer(zoo, "gpt2_tiny_kv")
    result = ex.explain(feeds, "rollout")
    maps = _torch_maps(zoo, "gpt2_tiny_kv", feeds)
    last = feeds["input_ids"].shape[1] - 1
    rows, _, queries, keys = maps[0].shape
    v = np.eye(keys)
    for a in maps:  # the full product's row P + last, own entry included
        square = np.zeros((rows, keys, keys))
        square[:, keys - queries:] = a.mean(axis=1)
        step = np.eye(keys) + square
        v = (step / step.sum(-1, keepdims=True)) @ v
    totals = result.tensors["tokens"].sum(1) + np.array(result.extras["cached_block"])
    np.testing.assert_allclose(totals + v[:, keys - queries + last, keys - queries + last],
                               1.0, rtol=1e-5)


def test_mean_query_is_refused_with_a_cache(zoo):
    with pytest.raises(onnxplain.errors.InputError, match="cached keys"):
        _explainer(zoo, "gpt2_tiny_kv").explain(zoo.sample("gpt2_tiny_kv"), "rollout",
                                                query="mean")


def test_the_maps_are_probed_once(zoo, monkeypatch):
    """One forward of the first row per model and input shapes, whatever the methods."""
    ex = onnxplain.Explainer(zoo.model_path("gpt2_tiny_kv"), "cpu")
    feeds = zoo.sample("gpt2_tiny_kv")
    rows = []
    forward = ex.engine.forward

    def counting(values, *args, **kwargs):
        rows.append(len(next(iter(values.values()))))
        return forward(values, *args, **kwargs)

    monkeypatch.setattr(ex.engine, "forward", counting)
    for method in ("rollout", "raw_attention", "rollout"):
        ex.explain(feeds, method)
    assert rows.count(1) == 1


def test_gradient_methods_report_the_cache_as_one_block(zoo):
    """input_x_gradient over gpt2_tiny_kv: the new tokens get their map, the four cached
    tensors one summed block per row, sum(past * d logit / d past) of float64 torch."""
    torch = require("torch")
    from transformers import DynamicCache

    feeds = zoo.sample("gpt2_tiny_kv")
    result = _explainer(zoo, "gpt2_tiny_kv").explain(feeds, "input_x_gradient")
    assert set(result.attributions) == {"input_ids"}
    assert result.extras["cached_inputs"] == sorted(k for k in feeds if k.startswith("past_"))
    module = zoo.load_torch("gpt2_tiny_kv").double().model
    past = {k: torch.from_numpy(v).double().requires_grad_() for k, v in feeds.items()
            if k.startswith("past_")}
    cache = DynamicCache()
    for layer in range(2):
        cache.update(past[f"past_key_{layer}"], past[f"past_value_{layer}"], layer)
    logits = module(input_ids=torch.from_numpy(feeds["input_ids"]), past_key_values=cache,
                    attention_mask=torch.from_numpy(feeds["attention_mask"]),
                    use_cache=True).logits
    rows = torch.arange(len(result.target))
    logits[rows, -1, torch.from_numpy(result.target)].sum().backward()
    want = sum((p * p.grad).sum(dim=(1, 2, 3)) for p in past.values()).detach().numpy()
    np.testing.assert_allclose(result.extras["cached_block"], want, rtol=1e-4,
                               atol=1e-6 * np.abs(want).max())


def _chained(matrices: list[np.ndarray], query: int, step: str) -> tuple[np.ndarray, np.ndarray]:
    """Row P + query of the chain of [N, Tq, P + Tq] matrices, cached rows kept as they are:
    zero rows before the identity is added ("accumulate": R = R + R M), identity rows in a
    plain product; (token scores with the query's own entry 0, cached block)."""
    rows, queries, keys = matrices[0].shape
    past = keys - queries
    v = np.zeros((rows, 1, keys))
    v[:, 0, past + query] = 1
    for m in reversed(matrices):
        square = np.zeros((rows, keys, keys))
        square[:, past:] = m
        if step == "product":
            square[:, np.arange(past), np.arange(past)] = 1
            v = v @ square
        else:
            v = v + v @ square
    scores = v[:, 0, past:].copy()
    scores[:, query] = 0
    return scores, v[:, 0, :past].sum(axis=1)


@pytest.mark.parametrize("name", CACHED)
@pytest.mark.parametrize("method", ["transformer_attribution", "generic_attention", "attgrad"])
def test_gradient_chains_over_the_cached_maps(zoo, name, method):
    """The in-graph chain over [Tq, P + Tq] maps equals its numpy recomputation from the
    gradients G_l, maps A_l and LRP relevances R_l that a gradient program of their own
    returns: Transformer Attribution rolls out E_h (G_l * R_l)+, generic attention
    accumulates E_h (G_l * A_l)+, AttGrad multiplies E_h (G_l * A_l), each with rows that
    keep the cached positions."""
    from onnxplain.export.attention_graph import relevance_pass
    from onnxplain.objective import NEXT_TOKEN, Place
    from onnxplain.runtime.engine import DenseObjective

    feeds = zoo.sample(name)
    ex = _explainer(zoo, name)
    result = ex.explain(feeds, method)
    names = [layer["probabilities"] for layer in result.extras["layers"]]
    run = ex.engine.gradients(feeds, DenseObjective(NEXT_TOKEN, Place()), names,
                              passes=[relevance_pass(names, [s.tensor for s in ex.sources])])
    maps = ex.forward(feeds, taps=names)
    last = feeds["input_ids"].shape[1] - 1
    g = {n: run.grads[n].astype(np.float64) for n in names}
    if method == "transformer_attribution":
        weighted = [np.maximum(g[n] * run.passes["relevance"][n], 0) for n in names]
        scores, block = reference_rollout(weighted, last)
    else:
        products = [g[n] * maps[n] for n in names]
        if method == "generic_attention":
            products = [np.maximum(p, 0) for p in products]
        scores, block = _chained([p.mean(axis=1) for p in products], last,
                                 "product" if method == "attgrad" else "accumulate")
    assert worst_row_error(result.tensors["tokens"], scores) < TOLERANCE
    np.testing.assert_allclose(result.extras["cached_block"], block, rtol=1e-4,
                               atol=1e-7 * np.abs(block).max())


@pytest.mark.parametrize("method", ["occlusion", "rise"])
def test_perturbation_methods_perturb_the_tokens_not_the_cache(zoo, method):
    feeds = zoo.sample("gpt2_tiny_kv")
    options = {"rise": {"n_masks": 64}}.get(method, {})
    result = _explainer(zoo, "gpt2_tiny_kv").explain(feeds, method, **options)
    assert set(result.attributions) == {"input_ids"}


def test_one_new_token_reads_the_cache_as_its_block(zoo):
    """A decoding step (one new token after 5 cached positions): the token map is only its
    own (zeroed) entry, said in a note; the block equals the torch reference's."""
    feeds = {k: v[:, -1:] if k == "input_ids" else v[:, :-2] if k == "attention_mask" else v
             for k, v in zoo.sample("gpt2_tiny_kv").items()}
    result = _explainer(zoo, "gpt2_tiny_kv").explain(feeds, "rollout")
    assert any("one new token after 5 cached positions" in note for note in result.notes)
    _, block = reference_rollout(_torch_maps(zoo, "gpt2_tiny_kv", feeds), 0)
    np.testing.assert_allclose(result.extras["cached_block"], block, rtol=1e-5)


def test_gradient_exports_refuse_a_kv_cache_in_one_line(zoo):
    """A KV cache is no input to attribute (attention methods export: see
    tests/export/test_same_program_attention.py)."""
    from onnxplain.exporter import export_explainer

    with pytest.raises(onnxplain.errors.InputError,
                       match="no float input besides its KV cache"):
        export_explainer(_explainer(zoo, "gpt2_tiny_kv").model, "saliency")


def _right_padded(feeds: dict, keep: list[int]) -> tuple[dict, list[dict]]:
    """Row i keeps its first keep[i] new tokens, the rest right padding (mask 0 in the last
    columns of the [N, P + T] mask); the singles are the rows cut to their real tokens."""
    padded = {k: v.copy() for k, v in feeds.items()}
    tokens = feeds["input_ids"].shape[1]
    singles = []
    for row, count in enumerate(keep):
        padded["input_ids"][row, count:] = 0
        padded["attention_mask"][row, padded["attention_mask"].shape[1] - tokens + count:] = 0
        cut = tokens - count
        singles.append({k: v[row:row + 1, :v.shape[1] - cut] if k in ("input_ids",
                                                                       "attention_mask")
                        else v[row:row + 1] for k, v in feeds.items()})
    return padded, singles


def test_a_right_padded_batch_with_a_cache_equals_singles(zoo):
    """With a cache, each row's explained position is its last real new token, read from the
    mask's last T columns: the next token, the token map and the cached block equal those of
    the row alone; so do the attention methods' maps (each row's query row is its own last
    real token, read in the graph: export.attention._auto_row)."""
    feeds = zoo.sample("gpt2_tiny_kv")
    tokens = feeds["input_ids"].shape[1]
    padded, singles = _right_padded(feeds, [tokens, tokens - 1])
    ex = _explainer(zoo, "gpt2_tiny_kv")
    batch = ex.explain(padded, "input_x_gradient")
    for row, single in enumerate(singles):
        alone = ex.explain(single, "input_x_gradient")
        count = single["input_ids"].shape[1]
        assert batch.target[row] == alone.target[0]
        np.testing.assert_allclose(batch.attributions["input_ids"][row, :count],
                                   alone.attributions["input_ids"][0], rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(batch.extras["cached_block"][row],
                                   alone.extras["cached_block"][0], rtol=1e-4, atol=1e-6)
    for method in ("rollout", "transformer_attribution"):
        batch = ex.explain(padded, method)
        assert batch.extras["query"] == [tokens - 1, tokens - 2]
        for row, single in enumerate(singles):
            alone = ex.explain(single, method)
            count = single["input_ids"].shape[1]
            value = alone.attributions["input_ids"][0]
            assert np.abs(value).max() > 0
            np.testing.assert_allclose(batch.attributions["input_ids"][row, :count], value,
                                       rtol=1e-5, atol=1e-6 * np.abs(value).max())
            assert not batch.attributions["input_ids"][row, count:].any()
            np.testing.assert_allclose(batch.extras["cached_block"][row],
                                       alone.extras["cached_block"][0], rtol=1e-5)


def test_right_padding_that_ends_rows_together_reads_that_row(zoo):
    feeds = zoo.sample("gpt2_tiny_kv")
    tokens = feeds["input_ids"].shape[1]
    padded, singles = _right_padded(feeds, [tokens - 1, tokens - 1])
    ex = _explainer(zoo, "gpt2_tiny_kv")
    batch = ex.explain(padded, "rollout")
    for row, single in enumerate(singles):
        alone = ex.explain(single, "rollout")
        np.testing.assert_allclose(batch.tensors["tokens"][row, :tokens - 1],
                                   alone.tensors["tokens"][0], rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(batch.extras["cached_block"][row],
                                   alone.extras["cached_block"][0], rtol=1e-5)


@pytest.mark.parametrize("method", ["transformer_attribution", "partial_lrp"])
def test_chefer_methods_with_a_cache_match_a_float64_reference(zoo, method):
    """Against test_lrp_resize_gelu's float64 reimplementation of GPT-2 and Chefer et al.'s
    rules, run with the cache: cached keys and values are fixed inputs (their relevance
    stops there; each map gets identity rows for them), the explained row is the last new
    position; the token scores and the cached block agree."""
    from .test_lrp_resize_gelu import gpt2_scores

    feeds = zoo.sample("gpt2_tiny_kv")
    assert np.all(feeds["attention_mask"] == 1)
    result = _explainer(zoo, "gpt2_tiny_kv").explain(feeds, method)
    past = [(feeds[f"past_key_{layer}"].astype(np.float64),
             feeds[f"past_value_{layer}"].astype(np.float64)) for layer in range(2)]
    want = gpt2_scores(zoo.load_torch("gpt2_tiny_kv"), feeds["input_ids"],
                       np.asarray(result.target), heads=2, past=past)[method]
    cached = result.extras["cached_positions"]
    scores, block = want[:, cached:], want[:, :cached].sum(axis=1)
    assert np.abs(scores).max() > 0 and np.abs(block).max() > 0
    # float32 ONNX Runtime against float64 torch.
    assert worst_row_error(result.tensors["tokens"], scores) < TOLERANCE
    np.testing.assert_allclose(result.extras["cached_block"], block, rtol=1e-4,
                               atol=1e-6 * np.abs(block).max())
