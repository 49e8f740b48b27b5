"""Parquet text turned into token ids with a vocabulary (issue 20: "text with --vocab"), and
Parquet token ids explained over a BERT. Oracles: the zoo's own encoder (a dict lookup of
each word, padded with 0 and a 0 mask to the longest, written apart from onnxplain),
Vocabulary.encode_words (what `generate --text` feeds), and Explainer.explain on each row
alone (bit for bit)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnxplain import Explainer
from onnxplain.dataset import explain_dataset
from onnxplain.dataset.results import attribution, read_errors, read_results
from onnxplain.dataset.sources import open_source
from onnxplain.graph.model import Model
from onnxplain.vocab import load_vocabulary

from ..conftest import require
from .conftest import damage_column, one_line_error, read_rows, write_parquet

# 3, 3, 4, 7 and 3 tokens with [CLS] and [SEP]: every row is padded to the longest.
SENTENCES = ("good", "bad", "not bad", "the movie was not good", "great")


@pytest.fixture(autouse=True)
def _pyarrow():
    require("pyarrow")  # the dataset extra: in CI a failure, elsewhere a skip


@pytest.fixture(scope="module")
def sentiment(zoo) -> tuple[Path, Path]:
    folder = zoo.build("sentiment_bert")
    return folder / "model.onnx", folder / "vocab.txt"


def zoo_ids(zoo, sentences) -> tuple[np.ndarray, np.ndarray]:
    """The sentences' ids ([CLS] words [SEP]) and attention mask by the zoo's encoder, padded
    with 0 (and 0 in the mask) to the longest."""
    from model_zoo import sentiment

    vocab = {token: i for i, token in enumerate(sentiment.vocabulary())}
    ids, mask = sentiment.encode(list(sentences), vocab)
    return ids.numpy(), mask.numpy()


def test_text_feeds_the_vocabulary_ids_and_a_mask_of_ones(zoo, sentiment, tmp_path):
    model, vocab = sentiment
    texts = [f"[CLS] {s} [SEP]" for s in SENTENCES]
    path = write_parquet(tmp_path / "t.parquet",
                         {"text": texts[:2] + ["[CLS] zzz [SEP]", "", None] + texts[2:],
                          "label": [1, 0, 1, 0, 1, 1, 0, 1]}, row_group_size=3)
    source = open_source(Model.load(model), path, vocab=vocab)
    batches = list(source.batches(4))
    good = [batch for batch, _ in batches if len(batch)]
    # One shape for every row (a run's results hold one shape per input): full batches.
    assert [batch.ids for batch in good] == [
        ["t.parquet#0", "t.parquet#1", "t.parquet#5", "t.parquet#6"], ["t.parquet#7"]]
    ids, mask = zoo_ids(zoo, SENTENCES)
    for name, oracle in (("input_ids", ids), ("attention_mask", mask)):
        got = np.concatenate([batch.feeds[name] for batch in good])
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, oracle)
    errors = [error for _, errors in batches for error in errors]
    assert [error.id for error in errors] == ["t.parquet#2", "t.parquet#3", "t.parquet#4"]
    reasons = [error.reason for error in errors]
    assert "'zzz'" in reasons[0] and "empty" in reasons[1] and "null" in reasons[2]


def test_text_explains_as_explain_does_on_the_same_ids(zoo, sentiment, tmp_path):
    """The rows a text source hands out, explained, equal Explainer.explain on each row alone:
    the ids `generate --text` would feed (encode_words), then zeros, under a mask of ones
    then zeros."""
    model, vocab = sentiment
    texts = [f"[CLS] {s} [SEP]" for s in SENTENCES]
    path = write_parquet(tmp_path / "t.parquet", {"input_ids": texts})
    explainer = Explainer(str(model), "cpu", progress=False)
    words = load_vocabulary(vocab)
    batches = [batch for batch, _ in open_source(explainer.model, path, vocab=vocab).batches(8)]
    assert [len(batch) for batch in batches] == [len(texts)]
    got = explainer.explain(batches[0].feeds, method="saliency")
    longest = max(len(text.split()) for text in texts)
    for row, text in enumerate(texts):
        ids = np.zeros((1, longest), np.int64)
        ids[0, :len(text.split())] = words.encode_words(text)
        alone = explainer.explain({"input_ids": ids, "attention_mask": (ids > 0) * 1},
                                  method="saliency")
        np.testing.assert_array_equal(got["input_ids"][row:row + 1], alone["input_ids"])
        assert got.predicted[row] == alone.predicted[0]


def test_token_type_ids_are_zero_and_a_given_column_wins(zoo, tmp_path):
    """bert_small takes input_ids, attention_mask and token_type_ids: text in a column named
    after input_ids fills the mask with ones and the token types with zeros; a column of
    its own is read instead."""
    model = Model.load(zoo.model_path("bert_small"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[CLS]\n[SEP]\nhello\nworld\n")
    path = write_parquet(tmp_path / "a.parquet", {"input_ids": ["[CLS] hello world [SEP]"]})
    ids, _, feeds, errors = read_rows(open_source(model, path, vocab=vocab), rows=2)
    assert ids == ["a.parquet#0"] and not errors
    np.testing.assert_array_equal(feeds["input_ids"], [[1, 3, 4, 2]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 1, 1, 1]])
    np.testing.assert_array_equal(feeds["token_type_ids"], [[0, 0, 0, 0]])
    path = write_parquet(tmp_path / "b.parquet", {"input_ids": ["hello world"],
                                                  "token_type_ids": [[0, 1]]})
    _, _, feeds, _ = read_rows(open_source(model, path, vocab=load_vocabulary(vocab)), rows=2)
    np.testing.assert_array_equal(feeds["token_type_ids"], [[0, 1]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 1]])
    # Rows pad to the longest text: ids, types (given or filled) and the mask with 0.
    path = write_parquet(tmp_path / "c.parquet", {"input_ids": ["hello", "hello world world"],
                                                  "token_type_ids": [[1], [0, 1, 1]]})
    _, _, feeds, _ = read_rows(open_source(model, path, vocab=vocab), rows=2)
    np.testing.assert_array_equal(feeds["input_ids"], [[3, 0, 0], [3, 4, 4]])
    np.testing.assert_array_equal(feeds["token_type_ids"], [[1, 0, 0], [0, 1, 1]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 0, 0], [1, 1, 1]])
    # A given column must have one value per token of its row's text.
    path = write_parquet(tmp_path / "d.parquet", {"input_ids": ["hello world", "hello"],
                                                  "token_type_ids": [[0], [1]]})
    ids, _, _, errors = read_rows(open_source(model, path, vocab=vocab), rows=2)
    assert ids == ["d.parquet#1"] and [error.id for error in errors] == ["d.parquet#0"]
    assert "'token_type_ids'" in errors[0].reason and "2 tokens" in errors[0].reason


def test_texts_of_several_lengths_need_a_mask(zoo, tmp_path):
    """lstm_tokens_tiny takes input_ids alone: padding would change its answer, so its texts
    must agree in length (checked when the source opens)."""
    model = Model.load(zoo.model_path("lstm_tokens_tiny"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    path = write_parquet(tmp_path / "same.parquet", {"text": ["a b", "c a"]})
    ids, _, feeds, errors = read_rows(open_source(model, path, vocab=vocab), rows=4)
    assert len(ids) == 2 and not errors
    np.testing.assert_array_equal(feeds["input_ids"], [[0, 1], [2, 0]])
    path = write_parquet(tmp_path / "mixed.parquet", {"text": ["a b", "c"]})
    message = one_line_error(lambda: open_source(model, path, vocab=vocab))
    assert "attention mask" in message and "from 1 to 2 words" in message


def fixed_length_model(length: int, mask: bool) -> Model:
    """input_ids int64 [batch, length] (and attention_mask alike) -> their sum [batch, 1]:
    a model whose sequence length is declared."""
    names = ["input_ids", "attention_mask"] if mask else ["input_ids"]
    nodes = [helper.make_node("Cast", [name], [f"{name}_f"], to=TensorProto.FLOAT)
             for name in names]
    nodes += [helper.make_node("Concat", [f"{name}_f" for name in names], ["both"], axis=1),
              helper.make_node("ReduceSum", ["both"], ["sum"], keepdims=1)]
    graph = helper.make_graph(
        nodes, "fixed_length",
        [helper.make_tensor_value_info(name, TensorProto.INT64, ["batch", length])
         for name in names],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, ["batch", 1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return Model.load(model)


def reasons(errors) -> dict[str, str]:
    assert all(error.reason and "\n" not in error.reason for error in errors)
    return {error.id: error.reason for error in errors}


def test_padding_takes_the_vocabularys_pad_id(zoo, tmp_path):
    """[PAD] is id 4 here: the ids are padded with 4, the mask and token types with 0."""
    model = Model.load(zoo.model_path("bert_small"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[CLS]\n[SEP]\nhello\nworld\n[PAD]\n")
    path = write_parquet(tmp_path / "p.parquet", {"text": ["hello", "[CLS] hello world [SEP]"]})
    ids, _, feeds, errors = read_rows(open_source(model, path, vocab=vocab), rows=2)
    assert len(ids) == 2 and not errors
    np.testing.assert_array_equal(feeds["input_ids"], [[2, 4, 4, 4], [0, 2, 3, 1]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 0, 0, 0], [1, 1, 1, 1]])
    np.testing.assert_array_equal(feeds["token_type_ids"], [[0, 0, 0, 0], [0, 0, 0, 0]])


def test_a_given_text_length_is_kept_and_longer_texts_are_row_errors(zoo, tmp_path):
    """A resumed run passes its first length back (text_length): texts added since that
    are longer fail alone, in one clear line, and the rest take the length they took."""
    model = Model.load(zoo.model_path("bert_small"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\na\nb\n")
    first = write_parquet(tmp_path / "data" / "a.parquet", {"text": ["a", "a b b"]})
    source = open_source(model, first, vocab=vocab)
    assert source.uses_text and source.text_length == 3
    write_parquet(tmp_path / "data" / "b.parquet", {"text": ["b a", "a b a b", "b"]})
    source = open_source(model, tmp_path / "data", vocab=vocab, text_length=3)
    assert source.text_length == 3
    ids, _, feeds, errors = read_rows(source, rows=8)
    assert ids == ["a.parquet#0", "a.parquet#1", "b.parquet#0", "b.parquet#2"]
    np.testing.assert_array_equal(feeds["input_ids"],
                                  [[1, 0, 0], [1, 2, 2], [2, 1, 0], [2, 0, 0]])
    assert reasons(errors) == {"b.parquet#1": "the text has 4 words, this run takes at most 3 "
                                              "(its longest text when it began: explain longer "
                                              "texts in a new run)"}
    # Not given, the length is counted again: the longest text of all.
    assert open_source(model, tmp_path / "data", vocab=vocab).text_length == 4
    for bad in (0, -2, 2.5, True, "3"):
        message = one_line_error(lambda bad=bad: open_source(model, first, vocab=vocab,
                                                             text_length=bad))
        assert "text_length" in message


def test_a_declared_length_pads_shorter_texts_and_fails_longer_ones(tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("<pad>\na\nb\n")
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a", "a b b a", "a b b a b"]})
    source = open_source(fixed_length_model(4, mask=True), path, vocab=vocab)
    assert source.text_length == 4
    ids, _, feeds, errors = read_rows(source, rows=4)
    assert ids == ["t.parquet#0", "t.parquet#1"]
    np.testing.assert_array_equal(feeds["input_ids"], [[1, 0, 0, 0], [1, 2, 2, 1]])
    np.testing.assert_array_equal(feeds["attention_mask"], [[1, 0, 0, 0], [1, 1, 1, 1]])
    assert reasons(errors) == {"t.parquet#2": "the text has 5 words, the model takes at most 4"}
    message = one_line_error(lambda: open_source(fixed_length_model(4, mask=True), path,
                                                 vocab=vocab, text_length=5))
    assert "text_length is 5" in message and "takes 4 tokens" in message


def test_without_a_mask_texts_of_another_length_are_row_errors(zoo, tmp_path):
    """No attention mask, so no padding: a text of another length than the model's declared
    one (or the run's, for lstm_tokens_tiny) fails alone, saying so."""
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("a\nb\nc\n")
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a b c", "a b", "a b c a"]})
    source = open_source(fixed_length_model(3, mask=False), path, vocab=vocab)
    ids, _, feeds, errors = read_rows(source, rows=4)
    assert ids == ["t.parquet#0"] and source.text_length == 3
    np.testing.assert_array_equal(feeds["input_ids"], [[0, 1, 2]])
    assert reasons(errors) == {
        "t.parquet#1": "the text has 2 words, the model takes exactly 3 (it has no attention "
                       "mask to pad shorter texts)",
        "t.parquet#2": "the text has 4 words, the model takes exactly 3"}
    lstm = Model.load(zoo.model_path("lstm_tokens_tiny"))
    mixed = write_parquet(tmp_path / "mixed.parquet", {"text": ["a b", "c"]})
    ids, _, _, errors = read_rows(open_source(lstm, mixed, vocab=vocab, text_length=2), rows=4)
    assert ids == ["mixed.parquet#0"]
    assert reasons(errors) == {"mixed.parquet#1": "the text has 1 word, this run takes exactly "
                                                  "2 (the model has no attention mask to pad "
                                                  "texts to one length)"}


def test_the_source_says_whether_it_reads_text(zoo, sentiment, tmp_path):
    """A vocabulary given over token-id columns reads no text: the run need not record it."""
    model, vocab = sentiment
    bert = Model.load(model)
    ids, masks = zoo_ids(zoo, SENTENCES[:2])
    path = write_parquet(tmp_path / "ids.parquet",
                         {"input_ids": ids.tolist(), "attention_mask": masks.tolist()})
    source = open_source(bert, path, vocab=vocab, text_length=7)
    assert not source.uses_text and source.text_length is None
    digits = Model.load(zoo.model_path("digits_cnn"))
    images = open_source(digits, write_parquet(tmp_path / "i.parquet",
                                               {"image": [[[[0.0] * 8] * 8]]}))
    assert not images.uses_text and images.text_length is None


def test_a_damaged_text_group_leaves_the_length_to_the_others(zoo, tmp_path):
    """The length is counted over the row groups that can be read; the damaged one's rows
    fail when read."""
    model = Model.load(zoo.model_path("bert_small"))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\na\nb\n")
    path = write_parquet(tmp_path / "t.parquet", {"text": ["a b", "a", "a b a b b", "b"]},
                         row_group_size=2, write_page_checksum=True, compression="none",
                         use_dictionary=False)
    damage_column(path, 1, "text")
    source = open_source(model, path, vocab=vocab)
    assert source.text_length == 2
    ids, _, feeds, errors = read_rows(source, rows=4)
    assert ids == ["t.parquet#0", "t.parquet#1"]
    np.testing.assert_array_equal(feeds["input_ids"], [[1, 2], [1, 0]])
    assert [error.id for error in errors] == ["t.parquet#2", "t.parquet#3"]


def test_text_without_a_vocabulary_and_ambiguous_text_are_refused(zoo, sentiment, tmp_path):
    model, vocab = sentiment
    bert = Model.load(model)
    path = write_parquet(tmp_path / "t.parquet", {"text": ["[CLS] good [SEP]"]})
    message = one_line_error(lambda: open_source(bert, path))
    assert "--vocab" in message and "'text'" in message
    both = write_parquet(tmp_path / "both.parquet", {"text": ["good"], "input_ids": [[2, 3]]})
    assert "both" in one_line_error(lambda: open_source(bert, both, vocab=vocab))
    numbers = write_parquet(tmp_path / "n.parquet", {"text": [1, 2]})
    assert "not strings" in one_line_error(lambda: open_source(bert, numbers, vocab=vocab))
    # A model without token-id inputs takes no text column.
    digits = Model.load(zoo.model_path("digits_cnn"))
    image = write_parquet(tmp_path / "i.parquet", {"image": [[[[0.0] * 8] * 8]], "text": ["good"]})
    message = one_line_error(lambda: open_source(digits, image, vocab=vocab))
    assert "'text'" in message and "'label'" in message
    missing = tmp_path / "nowhere.txt"
    assert "not found" in one_line_error(lambda: open_source(bert, path, vocab=missing))


@pytest.mark.parametrize("method, options", [("saliency", {}),
                                             ("layer_integrated_gradients", {"n_steps": 8})])
def test_token_ids_explained_over_a_dataset_equal_explain_per_row(zoo, sentiment, tmp_path,
                                                                   method, options):
    """Issue 20's proof on "a Parquet file of token ids": list<int64> columns, padded with a
    mask as a tokenizer pads them, explained in batches of 4, equal Explainer.explain on each
    row alone."""
    model, _ = sentiment
    ids, masks = zoo_ids(zoo, SENTENCES + SENTENCES[:3])
    write_parquet(tmp_path / "ids.parquet",
                  {"input_ids": ids.tolist(), "attention_mask": masks.tolist()}, row_group_size=3)
    summary = explain_dataset(model, tmp_path / "ids.parquet", tmp_path / "out", method,
                              batch_size=4, progress=False, **options)
    assert summary["explained"] == len(ids) and summary["errors"] == 0
    assert not read_errors(tmp_path / "out").num_rows
    table = read_results(tmp_path / "out")
    assert table.column("id").to_pylist() == [f"ids.parquet#{i}" for i in range(len(ids))]
    explainer = Explainer(str(model), "cpu", progress=False)
    for index, (row, mask) in enumerate(zip(ids, masks, strict=True)):
        alone = explainer.explain({"input_ids": row[None], "attention_mask": mask[None]},
                                  method=method, **options)
        got = attribution(table.slice(index, 1), "input_ids")
        np.testing.assert_array_equal(got, alone["input_ids"])
        assert table.column("predicted")[index].as_py() == int(alone.predicted[0])


def test_the_cli_explains_text_with_vocab_and_refuses_another_vocabulary_on_resume(
        zoo, sentiment, tmp_path):
    """explain-dataset --vocab over a text column, stored as per-token maps (--store map):
    each row equals Explainer.explain on its ids alone; resuming with another vocabulary is
    refused, as its words would be other ids."""
    from click.testing import CliRunner

    from onnxplain_cli.main import main

    model, vocab = sentiment
    texts = [f"[CLS] {s} [SEP]" for s in SENTENCES]
    path = write_parquet(tmp_path / "t.parquet", {"text": texts})
    args = ["explain-dataset", str(model), "--data", str(path), "--vocab", str(vocab),
            "--store", "map", "-m", "saliency", "-o", str(tmp_path / "out"), "-q"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    table = read_results(tmp_path / "out")
    assert table.schema.metadata[b"onnxplain.store"] == b"map"
    explainer = Explainer(str(model), "cpu", progress=False)
    words, longest = load_vocabulary(vocab), max(len(text.split()) for text in texts)
    for row, text in enumerate(texts):
        ids = np.zeros((1, longest), np.int64)
        ids[0, :len(text.split())] = words.encode_words(text)
        alone = explainer.explain({"input_ids": ids, "attention_mask": (ids > 0) * 1},
                                  method="saliency")
        np.testing.assert_array_equal(attribution(table, "input_ids")[row], alone["input_ids"][0])
    other = tmp_path / "other.txt"
    other.write_text("\n".join(reversed(vocab.read_text().splitlines())) + "\n")
    again = CliRunner().invoke(main, [*args[:5], str(other), *args[6:], "--resume"])
    assert again.exit_code == 2 and "another vocab" in again.output
