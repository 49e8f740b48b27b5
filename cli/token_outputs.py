"""Token views of text explanations: one HTML page per row and the scores as JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from onnxplain.attribution import Attribution
from onnxplain.files import safe_name, save_json
from onnxplain.objective import NEXT_TOKEN
from onnxplain.viz.tokens import save_token_html, token_scores_json
from onnxplain.vocab import Vocabulary, ids_as_tokens

MAX_PAGES = 64


def token_inputs(attribution: Attribution, feeds: Mapping[str, np.ndarray]) -> list[str]:
    """Inputs of token ids whose attribution is one score per token."""
    return [name for name, values in attribution.attributions.items()
            if name in feeds and feeds[name].dtype.kind in "iu" and feeds[name].ndim == 2
            and values.shape == feeds[name].shape]


def padding(attribution: Attribution, feeds: Mapping[str, np.ndarray], shape: tuple
            ) -> np.ndarray | None:
    """1 for real tokens: from the attention masks the method found, else from an input
    named like a mask with the ids' shape."""
    layers = attribution.extras.get("layers") or []
    names = {n for layer in layers for n in layer.get("mask_inputs", [])}
    if not names:
        names = {n for n in feeds if "mask" in n.lower()}
    masks = [feeds[n] != 0 for n in sorted(names) if n in feeds and feeds[n].shape == shape]
    return np.logical_and.reduce(masks) if masks else None


def write_token_views(attribution: Attribution, feeds: Mapping[str, np.ndarray],
                      vocabulary: Vocabulary | None, target: Callable[[str], Path]) -> None:
    """tokens_INPUT_ROW.html per row (up to MAX_PAGES) and tokens.json with every score."""
    views: dict[str, list] = {}
    for name in token_inputs(attribution, feeds):
        ids, scores = feeds[name], attribution.attributions[name]
        mask = padding(attribution, feeds, ids.shape)
        rows = []
        for row in range(ids.shape[0]):
            tokens = vocabulary.tokens_for(ids[row]) if vocabulary else ids_as_tokens(ids[row])
            keep = None if mask is None else mask[row]
            rows.append(token_scores_json(tokens, scores[row], keep))
            if row < MAX_PAGES:
                explained = _explained(attribution, row, vocabulary)
                title = f"{attribution.method}, row {row}, {explained}"
                save_token_html(target(f"tokens_{safe_name(name)}_{row}.html"), tokens,
                                scores[row], mask=keep, title=title, signed=attribution.signed,
                                next_token=_next_token(attribution, row, vocabulary))
        views[name] = rows
    if views and attribution.objective == NEXT_TOKEN:
        views["next_tokens"] = next_tokens(attribution, vocabulary)
    if views:
        save_json(target("tokens.json"), views)


def next_tokens(attribution: Attribution, vocabulary: Vocabulary | None) -> list[dict]:
    """Per row of a next-token explanation: the position read, the explained token and the
    predicted one (ids and strings)."""
    positions = attribution.extras.get("explained_positions") or []
    found = []
    for row, token in enumerate(attribution.target.tolist()):
        entry = {"row": row, "position": positions[row] if row < len(positions) else None,
                 "id": token, "token": _string(token, vocabulary)}
        if attribution.predicted is not None:
            predicted = int(attribution.predicted[row])
            entry |= {"predicted_id": predicted, "predicted_token": _string(predicted,
                                                                            vocabulary)}
        found.append(entry)
    return found


def _explained(attribution: Attribution, row: int, vocabulary: Vocabulary | None) -> str:
    """'next token 'moo'' for a language model, else 'class 3' (the explained target)."""
    if attribution.target is None or row >= len(attribution.target):
        return "class ?"
    token = int(attribution.target[row])
    if attribution.objective == NEXT_TOKEN:
        return f"next token {_string(token, vocabulary)!r}"
    return f"class {token}"


def _next_token(attribution: Attribution, row: int, vocabulary: Vocabulary | None
                ) -> str | None:
    if attribution.objective != NEXT_TOKEN or row >= len(attribution.target):
        return None
    return _string(int(attribution.target[row]), vocabulary)


def _string(token: int, vocabulary: Vocabulary | None) -> str:
    return vocabulary.token(token) if vocabulary else ids_as_tokens(np.array([token]))[0]

