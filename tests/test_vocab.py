"""Vocabulary files: every format round-trips, and every bad file names itself in the error."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.vocab import (
    Vocabulary,
    as_vocabulary,
    ids_as_tokens,
    load_vocabulary,
    read_tokenizer_json,
)

from .conftest import require

# Tokens a careless reader would damage: spaces kept at both ends, characters that
# str.splitlines() or universal newlines treat as line breaks, non-ASCII, an empty token.
TOKENS = ["[PAD]", "[UNK]", "the", "##ing", " lead", "trail ", "a\x0bb", "x\u2028y", "c\rd",
          "é", "", "\t"]
TABLE = {"[UNK]": 0, "hello": 1, "##lo": 2, "Ġworld": 5, "é": 7}


def no_tokenizers_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "tokenizers", None)  # makes `import tokenizers` fail


def test_plain_vocab_round_trips_exactly(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_bytes("\n".join(TOKENS).encode() + b"\n")
    vocab = load_vocabulary(path)
    assert len(vocab) == len(TOKENS)
    assert vocab.tokens_for(np.arange(len(TOKENS))) == TOKENS


def test_plain_vocab_without_final_newline_and_with_crlf(tmp_path):
    bare, crlf = tmp_path / "bare.txt", tmp_path / "crlf.txt"
    bare.write_bytes(b"a\nb\nc")
    crlf.write_bytes(b"a\r\nb\r\nc\r\n")
    assert load_vocabulary(bare).tokens_for(np.arange(3)) == ["a", "b", "c"]
    assert load_vocabulary(crlf).tokens_for(np.arange(3)) == ["a", "b", "c"]


def test_plain_vocab_whose_first_token_looks_like_json(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("1\n{\n[\n")
    assert load_vocabulary(path).tokens_for(np.array([0, 1, 2])) == ["1", "{", "["]


def test_unknown_ids_are_marked():
    vocab = Vocabulary(["a", "b"])
    assert vocab.tokens_for(np.array([1, 2, -1, 1234])) == ["b", "[id 2]", "[id -1]", "[id 1234]"]


def test_json_vocab_round_trips(tmp_path):
    path = tmp_path / "vocab.json"
    path.write_text(json.dumps(TABLE, ensure_ascii=False), encoding="utf-8")
    vocab = load_vocabulary(path)
    assert len(vocab) == len(TABLE)
    assert vocab.tokens_for(np.array(list(TABLE.values()))) == list(TABLE)
    assert vocab.tokens_for(np.array([3])) == ["[id 3]"]  # a gap in the ids


def test_tokenizer_json_from_the_tokenizers_package(tmp_path, monkeypatch):
    tokenizers = require("tokenizers")
    # Contiguous ids: `tokenizers` numbers added tokens from len(vocab), gaps or not.
    table = {token: i for i, token in enumerate(TABLE)}
    tokenizer = tokenizers.Tokenizer(tokenizers.models.WordLevel(table, unk_token="[UNK]"))
    tokenizer.add_special_tokens(["[MASK]"])
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    ids = np.array([*table.values(), tokenizer.token_to_id("[MASK]")])
    expected = [*table, "[MASK]"]
    assert ids[-1] == len(table)
    assert load_vocabulary(path).tokens_for(ids) == expected
    # The fallback reads the same table from the JSON, with or without the package.
    assert read_tokenizer_json(path).tokens_for(ids) == expected
    no_tokenizers_package(monkeypatch)
    assert load_vocabulary(path).tokens_for(ids) == expected


def test_hand_written_tokenizer_json_without_the_package(tmp_path, monkeypatch):
    no_tokenizers_package(monkeypatch)
    wordpiece, unigram = tmp_path / "wordpiece.json", tmp_path / "unigram.json"
    wordpiece.write_text(json.dumps({
        "model": {"type": "WordPiece", "vocab": TABLE},
        "added_tokens": [{"id": 9, "content": "[SEP]"}, {"id": 0, "content": "<unk>"}]}))
    unigram.write_text(json.dumps({"model": {"type": "Unigram",
                                             "vocab": [["<unk>", 0.0], ["▁a", -1.5]]}}))
    vocab = load_vocabulary(wordpiece)
    assert vocab.tokens_for(np.array([0, 1, 9])) == ["<unk>", "hello", "[SEP]"]
    assert load_vocabulary(unigram).tokens_for(np.array([0, 1])) == ["<unk>", "▁a"]


def test_tokenizer_json_without_vocab_and_without_package_asks_for_it(tmp_path, monkeypatch):
    no_tokenizers_package(monkeypatch)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "Mystery"}}))
    with pytest.raises(InputError) as caught:
        load_vocabulary(path)
    message = str(caught.value)
    assert str(path) in message and "pip install tokenizers" in message
    assert "onnxplain[text]" in message and "\n" not in message


def test_broken_tokenizer_json_with_the_package(tmp_path):
    require("tokenizers")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps({"model": {"type": "Mystery"}}))
    with pytest.raises(InputError, match="not a valid tokenizer.json") as caught:
        load_vocabulary(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


BAD_FILES = {
    "empty.txt": (b"", "is empty"),
    "blank.txt": (b"\n\n  \n", "is empty"),
    "list.json": (b'["a", "b"]', "not a vocabulary"),
    "strings.json": (b'{"a": "b"}', "not a vocabulary"),
    "bools.json": (b'{"a": true}', "not a vocabulary"),
    "empty.json": (b"{}", "not a vocabulary"),
    "broken.json": (b'{"a": 0,', "not valid JSON"),
    "duplicate.json": (b'{"a": 0, "b": 1, "c": 0}', "id 0 to two tokens"),
    "latin1.txt": ("café\n".encode("latin-1"), "not UTF-8"),
    "nested.json": (b'{"model": {"vocab": {"a": 0, "b": 0}}}', "id 0 to two tokens"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_files_raise_input_error_naming_the_file(tmp_path, monkeypatch, name):
    if name == "nested.json":
        no_tokenizers_package(monkeypatch)  # the fallback's own duplicate check
    content, problem = BAD_FILES[name]
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem) as caught:
        load_vocabulary(path)
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_missing_file_and_directory_raise_input_error(tmp_path):
    missing = tmp_path / "nope.txt"
    for path, problem in ((missing, "not found"), (tmp_path, "is a directory")):
        with pytest.raises(InputError, match=problem) as caught:
            load_vocabulary(path)
        assert str(path) in str(caught.value)


def test_ids_must_be_one_row_of_integers():
    vocab = Vocabulary(["a", "b"])
    assert vocab.tokens_for(np.array([1.0, 0.0])) == ["b", "a"]
    with pytest.raises(InputError, match="1-D"):
        vocab.tokens_for(np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(InputError, match="integers"):
        ids_as_tokens(np.array([0.5]))


def test_ids_as_tokens_are_numbered_and_never_continuations():
    tokens = ids_as_tokens(np.array([101, 1996, 0], dtype=np.int64))
    assert tokens == ["#101", "#1996", "#0"]
    assert not any(token.startswith("##") for token in tokens)


def test_digest_takes_lone_surrogates_and_tells_them_from_the_pair_they_form():
    """A table built in Python may hold a lone surrogate (plain UTF-8 cannot encode it); two
    lone surrogates are two tokens' worth of characters, not the emoji they would pair into."""
    lone = Vocabulary(["a", "\ud800"])
    assert lone.digest() == Vocabulary(["a", "\ud800"]).digest()
    assert lone.digest() != Vocabulary(["a", "\ud801"]).digest()
    assert Vocabulary(["\ud83d\ude00"]).digest() != Vocabulary(["\U0001f600"]).digest()
    assert Vocabulary(["é"]).digest() != Vocabulary(["e"]).digest()


@pytest.mark.parametrize("tokens, pad", [
    (["[CLS]", "[SEP]", "hello", "[PAD]"], 3),
    ({5: "<s>", 9: "<pad>", 2: "</s>"}, 9),
    (["<pad>", "x", "[PAD]"], 2),  # BERT's name first
    (["[CLS]", "hello"], 0),
    ({}, 0),
])
def test_pad_id_is_the_padding_tokens_else_0(tokens, pad):
    assert Vocabulary(tokens).pad_id() == pad


def test_words_are_what_encode_words_makes_one_token_each():
    vocab = Vocabulary(["[CLS]", "not", "bad", "[SEP]"])
    text = " [CLS]\tnot\n bad  [SEP] "
    assert Vocabulary.words(text) == ["[CLS]", "not", "bad", "[SEP]"]
    assert vocab.encode_words(text).tolist() == [vocab.id_of(w) for w in vocab.words(text)]


def test_as_vocabulary_reads_paths_and_keeps_vocabularies(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n")
    vocab = Vocabulary(["x"])
    assert as_vocabulary(vocab) is vocab and as_vocabulary(None) is None
    for given in (path, str(path)):
        assert as_vocabulary(given).tokens_for(np.arange(2)) == ["a", "b"]
    with pytest.raises(InputError, match="got int"):
        as_vocabulary(3)
    with pytest.raises(InputError, match="not found"):
        as_vocabulary(tmp_path / "missing.txt")
