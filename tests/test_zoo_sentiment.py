"""The sentiment_bert zoo model: its ONNX export, vocabulary and negation probes, checked under
ONNX Runtime against the trained torch module."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from .conftest import require


@pytest.fixture(scope="module")
def folder(zoo) -> Path:
    return zoo.build("sentiment_bert")


@pytest.fixture(scope="module")
def session(folder):
    ort = require("onnxruntime")
    return ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def vocab(folder) -> dict[str, int]:
    from model_zoo.sentiment import load_vocabulary

    return {token: i for i, token in enumerate(load_vocabulary(folder / "vocab.txt"))}


def run(session, ids, mask) -> np.ndarray:
    return session.run(["logits"], {"input_ids": np.asarray(ids),
                                    "attention_mask": np.asarray(mask)})[0]


def test_batch_and_sequence_axes_are_symbolic(session, folder):
    onnx = require("onnx")
    graph = onnx.load(str(folder / "model.onnx")).graph
    inputs = {value.name: value for value in graph.input}
    assert sorted(inputs) == ["attention_mask", "input_ids"]
    for value in inputs.values():
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "sequence"]
        assert not any(d.HasField("dim_value") for d in dims)
    assert [o.name for o in session.get_outputs()] == ["logits"]


def test_probes_are_classified_correctly(session, vocab):
    from model_zoo.sentiment import PROBES, encode

    ids, mask = encode(list(PROBES), vocab)
    predicted = run(session, ids, mask).argmax(1)
    assert dict(zip(PROBES, predicted.tolist(), strict=True)) == PROBES


def test_padding_is_masked(session, vocab):
    """Each row of a padded batch (longer than any sentence) gives the logits it gets alone."""
    from model_zoo.sentiment import SAMPLE_SENTENCES, encode

    ids, mask = encode(list(SAMPLE_SENTENCES), vocab, length=20)
    assert (mask == 0).any(axis=1).all()
    batch = run(session, ids, mask)
    for row, sentence in enumerate(SAMPLE_SENTENCES):
        one_ids, one_mask = encode([sentence], vocab)
        assert one_mask.all()
        np.testing.assert_allclose(batch[row], run(session, one_ids, one_mask)[0], atol=1e-4)


def test_vocabulary_file_round_trips_with_encode(folder, vocab):
    from model_zoo.sentiment import SPECIAL_TOKENS, encode, vocabulary

    tokens = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert tokens == vocabulary() and tokens[:4] == list(SPECIAL_TOKENS)
    assert len(set(tokens)) == len(tokens)
    sentences = (folder / "sentences.txt").read_text(encoding="utf-8").splitlines()
    ids, mask = encode(sentences, vocab)
    for row, sentence in enumerate(sentences):
        words = [tokens[i] for i in ids[row][mask[row] == 1].tolist()]
        assert words == ["[CLS]", *sentence.split(), "[SEP]"]
    assert encode(["good zzzunknown"], vocab)[0].tolist() == [[2, vocab["good"], 1, 3]]
    with pytest.raises(ValueError, match="more than length=3"):
        encode(["not bad at all"], vocab, length=3)


def test_sample_is_the_encoded_sentences(zoo, folder, vocab):
    from model_zoo.sentiment import SAMPLE_SENTENCES, encode

    sample = zoo.sample("sentiment_bert")
    ids, mask = encode(list(SAMPLE_SENTENCES), vocab)
    np.testing.assert_array_equal(sample["input_ids"], ids.numpy())
    np.testing.assert_array_equal(sample["attention_mask"], mask.numpy())
    assert sample["input_ids"].dtype == np.int64 and len(set(mask.sum(1).tolist())) > 3


def test_onnx_logits_equal_torch(zoo, session):
    torch = require("torch")
    sample = zoo.sample("sentiment_bert")
    module = zoo.load_torch("sentiment_bert")
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in sample.values())).numpy()
    got = run(session, sample["input_ids"], sample["attention_mask"])
    np.testing.assert_allclose(got, want, atol=1e-4)
    assert np.abs(want).max() > 1  # a trained, confident model, not all-zero logits


def test_the_readme_claims_about_the_demo(folder, tmp_path):
    """What README.md says `make demo` shows, run as the Makefile runs it: in "the movie was
    not good" both "not" and "good" count against "positive", in "not bad at all" both "not"
    and "bad" count for it, and "good" alone counts for it."""
    import json

    from .cli_helpers import run as cli

    result = cli("explain", str(folder / "model.onnx"), "--input", str(folder / "sample.npz"),
                 "--vocab", str(folder / "vocab.txt"), "--method", "layer_integrated_gradients",
                 "--target", "1", "--out", str(tmp_path))
    assert result.exit_code == 0, result.stderr
    rows = json.loads((tmp_path / "tokens.json").read_text())["input_ids"]
    by_text = {" ".join(t["token"] for t in row[1:-1]): {t["token"]: t["score"] for t in row}
               for row in rows}
    negated, double = by_text["the movie was not good"], by_text["not bad at all"]
    assert negated["not"] < 0 and negated["good"] < 0
    assert double["not"] > 0 and double["bad"] > 0
    assert by_text["good"]["good"] > 0
