"""Token views of text explanations: one HTML page per row and the scores as JSON."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np

from onnxplain.attribution import Attribution
from onnxplain.files import save_json
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
                title = f"{attribution.method}, row {row}, class {_class(attribution, row)}"
                save_token_html(target(f"tokens_{safe_name(name)}_{row}.html"), tokens,
                                scores[row], mask=keep, title=title, signed=attribution.signed)
        views[name] = rows
    if views:
        save_json(target("tokens.json"), views)


def _class(attribution: Attribution, row: int) -> str:
    if attribution.target is not None and row < len(attribution.target):
        return str(int(attribution.target[row]))
    return "?"


def safe_name(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in name)
