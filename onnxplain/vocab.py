"""Token ids to strings: BERT-style vocab.txt, GPT-2-style vocab.json, or a tokenizer.json.

The Hugging Face `tokenizers` package is optional (the `onnxplain[text]` extra): a
tokenizer.json is read with it when it is installed, and its "model" -> "vocab" table is read
directly when it is not.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import InputError

__all__ = ["Vocabulary", "as_vocabulary", "ids_as_tokens", "load_vocabulary",
           "read_tokenizer_json"]

_EXPECTED = "expected a vocab.txt (one token per line), a {token: id} JSON or a tokenizer.json"
# Padding tokens by convention: BERT's, then RoBERTa's, BART's and T5's.
PAD_TOKENS = ("[PAD]", "<pad>")


class Vocabulary:
    """An id -> token table; ids need not be contiguous (added tokens may leave gaps)."""

    def __init__(self, tokens: Sequence[str] | Mapping[int, str], source: str = ""):
        items = tokens.items() if isinstance(tokens, Mapping) else enumerate(tokens)
        self._tokens: dict[int, str] = {int(i): str(token) for i, token in items}
        self._ids: dict[str, int] | None = None  # token -> id, built on first use
        self.source = source

    def __len__(self) -> int:
        return len(self._tokens)

    def __repr__(self) -> str:
        where = f" from {self.source}" if self.source else ""
        return f"<Vocabulary of {len(self)} tokens{where}>"

    def digest(self) -> str:
        """A digest of the id -> token table: two vocabularies that encode alike share it."""
        table = json.dumps(sorted(self._tokens.items()), ensure_ascii=False)
        # surrogatepass: a table built in Python may hold a lone surrogate, which plain UTF-8
        # cannot encode; it keeps its own bytes, unlike JSON's \u escapes, where two lone
        # surrogates would read as the character they pair into.
        return hashlib.blake2b(table.encode("utf-8", "surrogatepass"),
                               digest_size=16).hexdigest()

    def tokens_for(self, ids: np.ndarray) -> list[str]:
        """The strings of one row of token ids; an unknown id becomes '[id 1234]'."""
        row = _id_row(ids)
        return [self._tokens.get(i, f"[id {i}]") for i in row]

    def token(self, token_id: int) -> str:
        """The string of one id ('[id 1234]' when the table has none)."""
        return self._tokens.get(int(token_id), f"[id {int(token_id)}]")

    def id_of(self, token: str) -> int:
        """The id of one token string; InputError when the vocabulary lacks it (the lowest
        id wins when a token is listed twice)."""
        ids = self._by_token()
        if token not in ids:
            where = f" {self.source}" if self.source else ""
            raise InputError(f"token {token!r} is not in the vocabulary{where}")
        return ids[token]

    def pad_id(self) -> int:
        """The id that pads token ids to one length: that of "[PAD]" or "<pad>" when the
        vocabulary has one, else 0. Padded positions are masked out (attention mask 0), yet
        the id still reaches the embedding: it should be the one the model was trained with."""
        ids = self._by_token()
        return next((ids[token] for token in PAD_TOKENS if token in ids), 0)

    @staticmethod
    def words(text: str) -> list[str]:
        """The words of `text` that encode_words makes one token each: split at whitespace."""
        return text.split()

    def encode_words(self, text: str) -> np.ndarray:
        """Ids of the whitespace-separated words of `text`, each a whole token of the
        vocabulary (no subword splitting: for word-level vocabularies)."""
        words = self.words(text)
        if not words:
            raise InputError("the text is empty: give at least one word")
        return np.array([self.id_of(word) for word in words], dtype=np.int64)

    def _by_token(self) -> dict[str, int]:
        """The token -> id table, built on first use (the lowest id wins for a token listed
        twice)."""
        if self._ids is None:
            self._ids = {}
            for i in sorted(self._tokens, reverse=True):
                self._ids[self._tokens[i]] = i
        return self._ids


def ids_as_tokens(ids: np.ndarray) -> list[str]:
    """Stand-in strings when no vocabulary is given: id 1996 becomes '#1996'.

    One '#' reads as "number" and cannot be mistaken for a WordPiece '##' continuation, so
    token views never glue two bare ids together.
    """
    return [f"#{i}" for i in _id_row(ids)]


def as_vocabulary(vocab: Vocabulary | str | os.PathLike | None) -> Vocabulary | None:
    """`vocab` as a Vocabulary: one given is kept, a path is read (load_vocabulary), None
    stays None; anything else raises InputError."""
    if vocab is None or isinstance(vocab, Vocabulary):
        return vocab
    if isinstance(vocab, str | os.PathLike):
        return load_vocabulary(vocab)
    raise InputError(f"vocab is a Vocabulary or the path of a vocabulary file, got "
                     f"{type(vocab).__name__}")


def load_vocabulary(path: str | os.PathLike) -> Vocabulary:
    """Read a vocabulary file; every problem raises InputError naming the file."""
    path = os.fspath(path)
    text = _read_text(path)
    if not text.strip():
        raise _error(path, "is empty")
    data = _json_object(path, text)
    if data is None:
        return _plain(path, text)
    if isinstance(data.get("model"), dict):
        return _tokenizer(path, data)
    if data and all(type(value) is int for value in data.values()):
        return Vocabulary(_by_id(path, data), source=path)
    raise _error(path, f"is JSON but not a vocabulary ({_EXPECTED})")


def read_tokenizer_json(path: str | os.PathLike, data: dict | None = None) -> Vocabulary:
    """A tokenizer.json's "model" -> "vocab" table plus its "added_tokens", without `tokenizers`.

    Handles the {token: id} tables of WordPiece, BPE and WordLevel and the [[token, score]]
    list of Unigram (id = position).
    """
    path = os.fspath(path)
    table = _tokenizer_table(path, _json_object(path, _read_text(path)) if data is None else data)
    if table is None:
        raise _error(path, 'has no "model" -> "vocab" table of tokens')
    return Vocabulary(table, source=path)


def _tokenizer(path: str, data: dict) -> Vocabulary:
    try:
        import tokenizers
    except ImportError:
        table = _tokenizer_table(path, data)
        if table is None:
            raise _error(path, "needs the tokenizers package to be read: pip install tokenizers "
                               "(or the extra onnxplain[text])") from None
        return Vocabulary(table, source=path)
    try:
        tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as err:  # the Rust bindings raise a bare Exception for every parse error
        table = _tokenizer_table(path, data)
        if table is None:
            raise _error(path, f"is not a valid tokenizer.json ({_first_line(err)})") from None
        return Vocabulary(table, source=path)
    # id_to_token resolves an added token that reuses a model id the way encoding does.
    ids = set(tokenizer.get_vocab(with_added_tokens=True).values())
    return Vocabulary({i: tokenizer.id_to_token(i) for i in ids}, source=path)


def _tokenizer_table(path: str, data: dict | None) -> dict[int, str] | None:
    """The id -> token table of a parsed tokenizer.json, or None when it holds none."""
    model = data.get("model") if isinstance(data, dict) else None
    vocab = model.get("vocab") if isinstance(model, dict) else None
    if isinstance(vocab, dict) and vocab and all(type(v) is int for v in vocab.values()):
        table = _by_id(path, vocab)
    elif isinstance(vocab, list) and vocab and all(_is_pair(entry) for entry in vocab):
        table = {i: entry[0] for i, entry in enumerate(vocab)}
    else:
        return None
    for added in data.get("added_tokens") or []:
        # Added tokens win over the model's table for their id, as in `tokenizers` itself.
        if isinstance(added, dict) and type(added.get("id")) is int:
            table[added["id"]] = str(added.get("content", ""))
    return table


def _plain(path: str, text: str) -> Vocabulary:
    # split("\n"), not splitlines(): that also splits on \x0b, \x1c, \u2028 ..., which are
    # legitimate characters inside tokens; line number = id only holds with "\n" alone.
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()  # the final newline ends the last line, it does not start a new token
    if all(line.endswith("\r") for line in lines):
        lines = [line[:-1] for line in lines]  # a CRLF file, not tokens ending in "\r"
    return Vocabulary(lines, source=path)


def _by_id(path: str, token_ids: Mapping[str, int]) -> dict[int, str]:
    table: dict[int, str] = {}
    for token, i in token_ids.items():
        if i in table:
            raise _error(path, f"gives id {i} to two tokens, {table[i]!r} and {token!r}")
        table[i] = token
    return table


def _json_object(path: str, text: str) -> dict | None:
    """The parsed JSON object, or None for a plain vocabulary file."""
    is_json_name = path.lower().endswith(".json")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        if is_json_name:
            raise _error(path, f"is not valid JSON ({err})") from None
        return None
    if isinstance(data, dict):
        return data
    if is_json_name:
        raise _error(path, f"is JSON but not a vocabulary ({_EXPECTED})")
    return None  # e.g. a one-token vocab.txt holding "1": plain text that happens to parse


def _read_text(path: str) -> str:
    file = Path(path)
    if not file.exists():
        raise InputError(f"vocabulary file not found: {path}")
    if file.is_dir():
        raise InputError(f"vocabulary path is a directory, not a file: {path} ({_EXPECTED})")
    try:
        # newline="" keeps "\r" as written; utf-8-sig drops a BOM that is not part of token 0.
        with open(path, encoding="utf-8-sig", newline="") as stream:
            return stream.read()
    except UnicodeDecodeError as err:
        raise _error(path, f"is not UTF-8 text ({err.reason} at byte {err.start})") from None
    except OSError as err:
        raise _error(path, f"cannot be read ({_first_line(err)})") from None


def _id_row(ids: np.ndarray) -> list[int]:
    row = np.asarray(ids)
    if row.ndim != 1:
        raise InputError(f"token ids must be one row (1-D), got shape {row.shape}")
    if row.dtype.kind == "f" and np.all(np.isfinite(row)) and np.all(row == np.round(row)):
        row = row.astype(np.int64)  # ids that went through a float tensor
    if row.dtype.kind not in "iu":
        raise InputError(f"token ids must be integers, got {row.dtype}")
    return [int(i) for i in row]


def _is_pair(entry: object) -> bool:
    return isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str)


def _error(path: str, problem: str) -> InputError:
    return InputError(f"vocabulary file {path} {problem}")


def _first_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__
