"""Which token positions a probe counts, and how well a reconstruction names their tokens:
one definition for fit (info) and explain (summaries, reports).

Padding is left out however the model marks it: an attention mask (0: padding; the inputs
objective.mask_inputs names, read by graph.padding.real_positions as every method reads
them), else a lengths input a recurrent layer reads as sequence_lens (positions at or after
a row's length are padding, as ONNX Runtime skips them), else every position counts and
`RealTokens.rule` says so.

Token accuracy is pooled: the share of all real positions (over every row) whose nearest
embedding row is the true id. Its chance baseline is the share of real positions holding
the most frequent true token: a decoder that always named that token would score it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from ..graph.model import Model
from ..graph.padding import real_positions
from ..inputs import dim_value, sequence_lengths
from ..objective import mask_inputs

ALL_POSITIONS = "every position (the model has no attention mask or lengths input)"


@dataclass(frozen=True)
class RealTokens:
    """bool [N, T] `real`: True for positions that are not padding; `rule`: how padding was
    told apart (for info and summaries)."""

    real: np.ndarray
    rule: str


def real_tokens(model: Model, feeds: Mapping[str, np.ndarray], ids: str) -> RealTokens:
    """The real positions of token-ids input `ids` ([N, T]) in `feeds`: by the model's
    attention masks, else by a lengths input of the same rows and T, else every position."""
    rows, length = feeds[ids].shape[:2]
    masks = [name for name in mask_inputs(model)
             if name in feeds and feeds[name].shape == (rows, length)]
    if masks:
        real = real_positions(feeds, masks, rows, length, cached=False)
        return RealTokens(real, f"attention mask {_names(masks)}")
    lengths = [name for name, dim in sequence_lengths(model)
               if dim_value(model, feeds, dim) == length and name in feeds
               and feeds[name].shape == (rows,)]
    lengths = list(dict.fromkeys(lengths))
    if lengths:
        real = np.ones((rows, length), dtype=bool)
        for name in lengths:
            real &= np.arange(length)[None, :] < feeds[name][:, None]
        return RealTokens(real, f"lengths input {_names(lengths)}")
    return RealTokens(np.ones((rows, length), dtype=bool), ALL_POSITIONS)


def token_accuracy(found: np.ndarray, ids: np.ndarray, real: np.ndarray) -> float:
    """Pooled share of the real positions whose nearest token `found` is the true id `ids`
    (all [N, T]); NaN without real positions."""
    hits = (np.asarray(found) == np.asarray(ids))[real]
    return float(hits.mean()) if hits.size else float("nan")


def row_token_accuracy(found: np.ndarray, ids: np.ndarray, real: np.ndarray) -> np.ndarray:
    """token_accuracy of each row alone: [N] (NaN for a row that is all padding)."""
    return np.array([token_accuracy(f, i, r) for f, i, r in zip(found, ids, real, strict=True)])


def chance_accuracy(ids: np.ndarray, real: np.ndarray) -> float:
    """The token-accuracy baseline: the share of real positions holding the most frequent
    true id among them; NaN without real positions."""
    values = np.asarray(ids)[real]
    if not values.size:
        return float("nan")
    return float(np.unique(values, return_counts=True)[1].max() / values.size)


def token_scores(found: np.ndarray, ids: np.ndarray, tokens: RealTokens) -> dict:
    """Plain JSON for info and summaries: {"token_accuracy", "chance_accuracy",
    "real_positions" (how many were counted), "padding" (tokens.rule)}."""
    return {"token_accuracy": token_accuracy(found, ids, tokens.real),
            "chance_accuracy": chance_accuracy(ids, tokens.real),
            "real_positions": int(tokens.real.sum()), "padding": tokens.rule}


def _names(names: list[str]) -> str:
    return ", ".join(f"'{name}'" for name in names)
