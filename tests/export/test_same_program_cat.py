"""One graph per method (issue 19) for CAT and AttnCAT: Explainer.explain runs the very
program `export` saves (export.cat), so the exported model's scores, per-layer shares, patch
grid and resized maps equal the in-process ones bit for bit, for every query choice; its
original outputs are the model's own; a batch explains as its rows one by one. The query
choices other than the class token (the float64 oracles in tests/transformers read that
one) are checked here against the float64 PyTorch reference's hidden states, gradients and
attention maps."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer

from ..conftest import require
from .test_export import _run, assert_model_outputs

METHODS = ["cat", "attncat"]
MODELS = ["bert_small", "sentiment_bert", "vit_small", "clip_vision_tiny"]
OPTIONS = [{}, {"query": "mean"}, {"query": -2}, {"query": 3}]


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in MODELS}


def _compared(result) -> dict[str, np.ndarray]:
    """The in-process values the program returns, under the program's output names."""
    values = {"attribution/" + name: value for name, value in result.attributions.items()}
    values.update(result.tensors)
    return values


@pytest.mark.parametrize("options", OPTIONS, ids=str)
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_exported_equals_in_process_bit_for_bit(zoo, explainers, name, method, options):
    explainer, feeds = explainers[name], zoo.sample(name)
    got = _run(export_explainer(explainer.model, method, **options), feeds)
    expected = explainer.explain(feeds, method=method, **options)
    values = _compared(expected)
    assert {"tokens", "layer/0"} <= set(values)
    assert any(key.startswith("attribution/") for key in values)
    for key, value in values.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
    np.testing.assert_array_equal(got["target_used"], expected.target)
    assert np.abs(values["tokens"]).max() > 0
    assert_model_outputs(explainer, got, feeds)


@pytest.mark.parametrize(("name", "method", "options"), [
    ("llama_tiny_kv", "cat", {}), ("qwen2_tiny_opset18", "attncat", {"query": -1}),
    ("bert_small_fp16", "attncat", {}), ("bert_small_attention23", "cat", {})])
def test_causal_cached_and_half_precision_models_too(zoo, name, method, options):
    """A next-token objective (with a KV cache: scores for the new tokens; a causal model's
    last token reads the others), float16 maps and gradients (the products in float32), the
    opset-23 Attention op: the same program."""
    explainer = Explainer(str(zoo.model_path(name)), "cpu", progress=False)
    feeds = zoo.sample(name)
    got = _run(export_explainer(explainer.model, method, **options), feeds)
    values = _compared(explainer.explain(feeds, method=method, **options))
    assert np.abs(values["tokens"]).max() > 0
    for key, value in values.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", MODELS)
def test_batch_equals_rows_one_by_one(zoo, explainers, name, method):
    explainer, feeds = explainers[name], zoo.sample(name)
    batch = explainer.explain(feeds, method=method)
    for row in range(len(batch.target)):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                   method=method, target=int(batch.target[row]))
        for key, value in _compared(batch).items():
            np.testing.assert_allclose(_compared(single)[key][0], value[row], rtol=1e-5,
                                       atol=1e-6 * float(np.abs(value).max()), err_msg=key)


def test_padding_and_the_query_token_are_zero(zoo, explainers):
    explainer, feeds = explainers["sentiment_bert"], zoo.sample("sentiment_bert")
    padded = feeds["attention_mask"] == 0
    assert padded.any()
    tokens = padded.shape[1]
    for method in METHODS:
        for query, own in (("auto", 0), (-2, tokens - 2), (3, 3)):
            result = explainer.explain(feeds, method=method, query=query)
            scores = result.tensors["tokens"]
            assert np.all(scores[padded] == 0)
            assert np.all(scores[:, own] == 0) and result.extras["query"] == own
            real = ~padded
            real[:, own] = False
            assert np.count_nonzero(scores[real]) == real.sum()


def test_window_attention_is_skipped_with_a_warning(zoo):
    """Swin's windowed layers are not over the image's tokens: read the others, say so."""
    explainer = Explainer(str(zoo.model_path("swin_tiny")), "cpu", progress=False)
    for method in METHODS:
        with pytest.warns(UserWarning, match="skips layers 0"):
            result = explainer.explain(zoo.sample("swin_tiny"), method=method)
        assert result.attributions["pixel_values"].shape[-2:] == (32, 32)
        assert sorted(key for key in result.tensors if key.startswith("layer/")) == \
            ["layer/0", "layer/1"]
        with pytest.raises(InputError, match="window attention"):
            export_explainer(explainer.model, method)


def test_bad_requests_are_one_line_errors(zoo, explainers):
    explainer, feeds = explainers["sentiment_bert"], zoo.sample("sentiment_bert")
    tokens = feeds["input_ids"].shape[1]
    for query in (tokens, -tokens - 1):
        with pytest.raises(InputError, match="out of range"):
            explainer.explain(feeds, method="attncat", query=query)
    cached = Explainer(str(zoo.model_path("llama_tiny_kv")), "cpu", progress=False)
    with pytest.raises(InputError, match="KV cache"):
        cached.explain(zoo.sample("llama_tiny_kv"), method="attncat")
    with pytest.raises(InputError, match="KV cache"):
        export_explainer(cached.model, "attncat")
    fused = Explainer(str(zoo.model_path("sentiment_bert_dynamic")), "cpu", progress=False)
    with pytest.raises(InputError, match="hidden state"):
        fused.explain(zoo.sample("sentiment_bert_dynamic"), method="cat")


@pytest.mark.parametrize("query", ["mean", 3, -2])
def test_other_query_rows_match_the_float64_reference(zoo, explainers, query):
    """AttnCAT reading another row of each map (or their mean), and CAT (which reads no
    map), from the reference's float64 hidden states, gradients and maps."""
    require("torch")
    from tests.transformers import torch_reference as reference

    explainer, feeds = explainers["bert_small"], zoo.sample("bert_small")
    target = explainer.forward(feeds)["logits"].argmax(axis=1)
    pieces = reference.reference_pieces(zoo.load_torch("bert_small"), feeds, target=target)
    mask = feeds["attention_mask"].astype(bool)
    tokens = mask.shape[1]
    cat = np.zeros(mask.shape)
    attncat = np.zeros(mask.shape)
    for a, h, g in zip(pieces.attentions, pieces.hidden, pieces.hidden_grads, strict=True):
        a, h, g = a.numpy(), h.numpy(), g.numpy()
        heads = a.shape[1]
        shares = (g * h).reshape(*h.shape[:2], heads, -1).sum(-1)  # [N, S, H]
        row = a.mean(axis=2) if query == "mean" else a[:, :, query]  # [N, H, S]
        cat += shares.mean(-1)
        attncat += (shares * row.transpose(0, 2, 1)).mean(-1)
    own = None if query == "mean" else query % tokens
    for method, expected in (("cat", cat), ("attncat", attncat)):
        expected = np.where(mask, expected, 0.0)
        if own is not None:
            expected[:, own] = 0.0
        ours = explainer.explain(feeds, method=method, query=query, target=target)
        got = ours.tensors["tokens"].astype(np.float64)
        scale = np.abs(expected).max(axis=1, keepdims=True)
        assert float((np.abs(got - expected) / scale).max()) < 1e-4, method


@pytest.mark.parametrize("method", METHODS)
def test_auto_reads_the_last_real_token_of_a_causal_lm(zoo, method):
    """query='auto' is the attention methods' rule (export.attention._auto_row): on a causal
    LM each row's last real token, whose attention sees the prompt (token 0 sees only
    itself: attncat was all zero), exported as in process."""
    explainer = Explainer(str(zoo.model_path("qwen2_tiny_opset18")), "cpu", progress=False)
    feeds = zoo.sample("qwen2_tiny_opset18")
    last = feeds["input_ids"].shape[1] - 1
    got = _run(export_explainer(explainer.model, method), feeds)
    result = explainer.explain(feeds, method=method)
    assert result.extras["query"] == last
    np.testing.assert_array_equal(got["query_row"], np.full(len(result.target), last))
    values = _compared(result)
    assert np.abs(values["tokens"]).max(axis=1).min() > 0
    assert not values["tokens"][:, last].any()  # the query's own entry
    for key, value in values.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)
