"""One graph per method (issue 19, item 1) for the attention methods: raw attention, rollout,
partial LRP, Transformer Attribution, generic attention and AttGrad run in process the very
program `export` saves (export.attention), so the exported model's outputs equal
Explainer.explain's bit for bit: on a BERT (token ids, padding), a ViT (the patch grid
resized over the image in the graph) and KV-cache decoders (the cached block summed in the
graph, the explained position read from the mask in the graph); its original outputs are the
model's own; a batch explains as its rows one by one."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer
from onnxplain.runtime.engine import PROGRAM_FUSIONS_OFF
from onnxplain.runtime.session import Session

METHODS = ["raw_attention", "rollout", "partial_lrp", "transformer_attribution",
           "generic_attention", "attgrad"]
MODELS = ["bert_small", "vit_small", "gpt2_tiny_kv", "llama_tiny_kv"]


@pytest.fixture(scope="module")
def explainers(zoo):
    return {name: Explainer(str(zoo.model_path(name)), "cpu", progress=False)
            for name in MODELS}


def _feeds(zoo, name: str) -> dict[str, np.ndarray]:
    feeds = {k: v[:3].copy() for k, v in zoo.sample(name).items()}
    if name == "bert_small":  # padding: row 1 is 4 tokens shorter
        feeds["attention_mask"][1, -4:] = 0
        feeds["input_ids"][1, -4:] = 0
    return feeds


def _exported(explainer, method: str, feeds: dict, **options) -> dict[str, np.ndarray]:
    """The exported explainer's outputs, from a session as the in-process programs get (ONNX
    Runtime's FastGeluFusion drops tensors the relevance pass reads: engine)."""
    proto = export_explainer(explainer.model, method, **options)
    session = Session(proto, ["CPUExecutionProvider"], disabled=PROGRAM_FUSIONS_OFF)
    return session.run(None, feeds)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", METHODS)
def test_exported_equals_in_process_bit_for_bit(explainers, zoo, name, method):
    explainer = explainers[name]
    feeds = _feeds(zoo, name)
    got = _exported(explainer, method, feeds)
    expected = explainer.explain(feeds, method=method)
    assert expected.attributions
    for key, value in expected.attributions.items():
        assert np.abs(value).max() > 0, key
        np.testing.assert_array_equal(got["attribution/" + key], value)
    np.testing.assert_array_equal(got["tokens"], expected.tensors["tokens"])
    if "patches" in expected.tensors:
        np.testing.assert_array_equal(got["patches"], expected.tensors["patches"])
    for key in ("cached_block", "head_relevance"):
        assert (key in got) == (key in expected.extras), key
        if key in got:
            np.testing.assert_array_equal(got[key], np.asarray(expected.extras[key],
                                                               np.float32))
    for key, value in expected.tensors.items():
        if key.startswith("attention/"):
            np.testing.assert_array_equal(got[key], value)
    for key, value in expected.outputs.items():  # the original outputs are the model's own
        np.testing.assert_array_equal(got[key], value)
        np.testing.assert_allclose(value, explainer.engine.forward(feeds)[key], rtol=1e-5,
                                   atol=1e-6 * np.abs(value).max())


@pytest.mark.parametrize("name", ["bert_small", "vit_small"])
@pytest.mark.parametrize(("method", "options"), [
    ("rollout", {"query": 2, "start_layer": 1}), ("rollout", {"query": "mean"}),
    ("transformer_attribution", {"query": 1, "start_layer": -1}),
    ("attgrad", {"upsample": "nearest"}), ("partial_lrp", {"upsample": "none"})])
def test_options_give_the_same_program_too(explainers, zoo, name, method, options):
    explainer = explainers[name]
    feeds = _feeds(zoo, name)
    got = _exported(explainer, method, feeds, **options)
    expected = explainer.explain(feeds, method=method, **options)
    for key, value in expected.attributions.items():
        np.testing.assert_array_equal(got["attribution/" + key], value)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("method", ["rollout", "transformer_attribution", "partial_lrp"])
def test_a_batch_explains_as_its_rows(explainers, zoo, name, method):
    explainer = explainers[name]
    feeds = _feeds(zoo, name)
    if name == "bert_small":  # rows of one length: the padded row is cut in its single
        feeds = {k: v[[0, 2]] for k, v in feeds.items()}
    batch = explainer.explain(feeds, method=method)
    rows = len(next(iter(feeds.values())))
    for row in range(rows):
        single = explainer.explain({k: v[row:row + 1] for k, v in feeds.items()},
                                   method=method)
        for key, value in batch.attributions.items():
            np.testing.assert_allclose(single.attributions[key][0], value[row], rtol=1e-5,
                                       atol=1e-6 * float(np.abs(value).max()))
        if "cached_block" in batch.extras:
            np.testing.assert_allclose(single.extras["cached_block"][0],
                                       batch.extras["cached_block"][row], rtol=1e-5)


def test_a_kv_decoder_exports_the_explained_position_per_row(explainers, zoo):
    """Right padding: each row's last real token is its query row in the exported graph (in
    process, attention methods refuse rows that end apart; the export reads each its own):
    the exported rows equal the rows explained alone."""
    explainer = explainers["llama_tiny_kv"]
    feeds = {k: v.copy() for k, v in zoo.sample("llama_tiny_kv").items()}
    tokens = feeds["input_ids"].shape[1]
    feeds["attention_mask"][1, -1] = 0
    got = _exported(explainer, "rollout", feeds)
    for row, keep in enumerate([tokens, tokens - 1]):
        single = {k: v[row:row + 1, :v.shape[1] - (tokens - keep)]
                  if k in ("input_ids", "attention_mask") else v[row:row + 1]
                  for k, v in feeds.items()}
        alone = explainer.explain(single, method="rollout")
        np.testing.assert_allclose(got["attribution/input_ids"][row, :keep],
                                   alone.attributions["input_ids"][0], rtol=1e-5,
                                   atol=1e-7)
        assert not got["attribution/input_ids"][row, keep:].any()
        np.testing.assert_allclose(got["cached_block"][row], alone.extras["cached_block"][0],
                                   rtol=1e-5)


@pytest.fixture(scope="module")
def gpt2(zoo):
    return Explainer(str(zoo.model_path("gpt2_tiny")), "cpu", progress=False)


@pytest.mark.parametrize("method", ["transformer_attribution", "raw_attention"])
@pytest.mark.parametrize("where", [{"query": 3}, {"position": 3}])
def test_a_causal_lm_reads_the_explained_position_when_exported(gpt2, zoo, method, where):
    """query=P and position=P name one place on a causal LM (methods._tokens.
    query_is_position): the exported model reads row P and explains the next token after P,
    as in process (there, the other row explained would give all-zero maps)."""
    feeds = {k: v[:2] for k, v in zoo.sample("gpt2_tiny").items()}
    got = _exported(gpt2, method, feeds, **where)
    expected = gpt2.explain(feeds, method=method, **where)
    value = expected.attributions["input_ids"]
    assert np.abs(value).max(axis=1).min() > 0  # every row holds information
    assert not value[:, 4:].any()  # nothing after the query row in a causal model
    np.testing.assert_array_equal(got["attribution/input_ids"], value)


def test_query_and_position_naming_different_rows_are_refused_on_export(gpt2):
    with pytest.raises(InputError, match="name different rows"):
        export_explainer(gpt2.model, "rollout", query=2, position=3)


@pytest.mark.parametrize("method", ["rollout", "transformer_attribution"])
def test_a_causal_classifier_reads_the_last_real_token_in_both(zoo, method):
    """One "auto" rule, decided in the graph (export.attention._auto_row): a causal model
    with a class objective (a Llama classifier) reads each row's last real token exported as
    in process; a bidirectional one (BERT) its class token."""
    explainer = Explainer(str(zoo.model_path("llama_tiny_opset23")), "cpu", progress=False)
    feeds = {k: v[:2] for k, v in zoo.sample("llama_tiny_opset23").items()}
    last = feeds["input_ids"].shape[1] - 1
    got = _exported(explainer, method, feeds)
    expected = explainer.explain(feeds, method=method)
    assert expected.extras["query"] == last
    np.testing.assert_array_equal(got["query_row"], [last, last])
    value = expected.attributions["input_ids"]
    assert np.abs(value).max(axis=1).min() > 0
    np.testing.assert_array_equal(got["attribution/input_ids"], value)


def test_a_bidirectional_model_reads_its_class_token(explainers, zoo):
    feeds = _feeds(zoo, "bert_small")
    got = _exported(explainers["bert_small"], "rollout", feeds)
    np.testing.assert_array_equal(got["query_row"], [0, 0, 0])
    assert explainers["bert_small"].explain(feeds, method="rollout").extras["query"] == 0


@pytest.mark.parametrize("name", ["gpt2_tiny_kv", "llama_tiny_kv"])
def test_a_row_of_padding_alone_is_zero_exported_and_refused_in_process(explainers, zoo, name):
    """Exported, a row with no real token reads its row 0 (not the last row, silently) and
    its scores are 0 (padding); its neighbour is untouched. In process it is refused."""
    explainer = explainers[name]
    feeds = {k: v[:2].copy() for k, v in zoo.sample(name).items()}
    tokens = feeds["input_ids"].shape[1]
    feeds["attention_mask"][1, -tokens:] = 0
    got = _exported(explainer, "transformer_attribution", feeds)
    assert got["query_row"][1] == 0
    assert not got["attribution/input_ids"][1].any()
    alone = explainer.explain({k: v[:1] for k, v in feeds.items()},
                              method="transformer_attribution").attributions["input_ids"][0]
    np.testing.assert_allclose(got["attribution/input_ids"][0], alone, rtol=1e-5,
                               atol=1e-6 * np.abs(alone).max())
    with pytest.raises(InputError, match="all padding"):
        explainer.explain(feeds, method="transformer_attribution")
