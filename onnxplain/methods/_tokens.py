"""What the attention methods share: the attention layers of the model, which token row they
read, padding, and how one score per token becomes an attribution of each input (token ids
keep one score per token; images get the patch grid resized over the image)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph.attention import AttentionLayer, patch_grid, require_attention
from ..viz.heatmap import image_layout
from ._layer import maps_per_image_input


def attention_layers(model, attention) -> list[AttentionLayer]:
    """The model's attention layers, or those named by the `attention` option (a list or a
    comma-separated string of probability tensors or Softmax nodes)."""
    if isinstance(attention, str):
        attention = [name.strip() for name in attention.split(",") if name.strip()]
    return require_attention(model, attention or None)


def probabilities(layers: Sequence[AttentionLayer]) -> list[str]:
    return [layer.probabilities for layer in layers]


@dataclass(frozen=True)
class TokenLayout:
    """How the S tokens of the attention maps relate to the inputs.

    `query` is the row read (the class token), or None to average every row (models without
    one); `prefix` tokens (class, distillation) come before `grid` patches in images.
    """

    tokens: int
    query: int | None
    prefix: int
    grid: tuple[int, int] | None
    text_inputs: tuple[str, ...]


def token_layout(feeds: Mapping[str, np.ndarray], sources, tokens: int, query) -> TokenLayout:
    """The layout for attention maps over `tokens` tokens; token ids of `sources` (inputs
    looked up into embeddings) shaped [batch, tokens] take the scores as they are."""
    text = tuple(s.input for s in sources if s.per_token and feeds[s.input].ndim == 2
                 and feeds[s.input].shape[1] == tokens)
    images = [value for value in feeds.values()
              if value.dtype.kind == "f" and image_layout(value.shape) is not None]
    prefix, grid = 0, None
    if images and not text:
        prefix, grid = patch_grid(images[0].shape, image_layout(images[0].shape), tokens)
    if is_auto_query(query):
        row = 0 if (text or prefix) else None
    else:
        row = query_index(query, tokens)
    return TokenLayout(tokens, row, prefix, grid, text)


def resolve_query(engine, feeds: Mapping[str, np.ndarray], sources,
                  layers: Sequence[AttentionLayer], query) -> int | None:
    """The query row before running (in-graph methods need it): as token_layout decides,
    with the token count from the token ids or the maps' static shape (else the first)."""
    text = [feeds[s.input] for s in sources if s.per_token and feeds[s.input].ndim == 2]
    tokens = text[0].shape[1] if text else None
    if tokens is None:
        info = engine.model.infos.get(layers[-1].probabilities)
        last = info.shape[-1] if info is not None and info.shape else None
        tokens = last if isinstance(last, int) else None
    if tokens is None:
        return 0 if is_auto_query(query) else query_index(query, None)
    return token_layout(feeds, sources, tokens, query).query


def is_auto_query(query) -> bool:
    return query is None or (isinstance(query, str) and query.strip().lower() == "auto")


def query_index(query, tokens: int | None) -> int | None:
    if isinstance(query, str) and query.strip().lower() == "mean":
        return None
    try:
        row = int(query)
    except (TypeError, ValueError):
        raise InputError(f"query must be a token index, 'auto' or 'mean', got '{query}'"
                         ) from None
    if tokens is None:
        if row < 0:
            raise InputError(f"query token {row}: negative indices need a known token count")
        return row
    if not -tokens <= row < tokens:
        raise InputError(f"query token {row} is out of range for {tokens} tokens")
    return row % tokens


def padding_mask(feeds: Mapping[str, np.ndarray], layers: Sequence[AttentionLayer], rows: int,
                 tokens: int) -> np.ndarray:
    """[N, S], 1 for real tokens: from the inputs the attention masks are computed from, when
    one of them is shaped [batch, tokens]."""
    mask = np.ones((rows, tokens), dtype=bool)
    names = {name for layer in layers for name in layer.mask_inputs}
    for name in sorted(names):
        value = feeds.get(name)
        if value is not None and value.shape == (rows, tokens):
            mask &= value != 0
    return mask


def read_row(matrices: np.ndarray, layout: TokenLayout) -> np.ndarray:
    """[N, S, S] -> [N, S]: the query row, or the mean of all rows."""
    if layout.query is None:
        return matrices.mean(axis=1)
    return matrices[:, layout.query, :]


def token_output(feeds: Mapping[str, np.ndarray], scores: np.ndarray, layout: TokenLayout,
                 mask: np.ndarray, upsample: str) -> tuple[dict, dict]:
    """(attributions per input, tensors): scores with padding and the query token's own
    entry zeroed; for images the patches as a grid, resized to each image input."""
    scores = np.where(mask, scores, 0.0)
    if layout.query is not None:
        scores[:, layout.query] = 0.0
    scores = scores.astype(np.float32)
    tensors = {"tokens": scores}
    at_inputs = {name: scores for name in layout.text_inputs}
    if layout.grid is not None:
        patches = scores[:, layout.prefix:].reshape(scores.shape[0], 1, *layout.grid)
        tensors["patches"] = patches
        at_inputs.update(maps_per_image_input(feeds, patches, upsample))
    return at_inputs, tensors


def layer_stack(values: Mapping[str, np.ndarray], layers: Sequence[AttentionLayer]
                ) -> list[np.ndarray]:
    """The tapped or differentiated tensors of each layer, in float64, checked to be
    [batch, heads, tokens, tokens]."""
    out = []
    for layer in layers:
        value = np.asarray(values[layer.probabilities], dtype=np.float64)
        if value.ndim != 4 or value.shape[2] != value.shape[3]:
            raise InputError(f"attention tensor '{layer.probabilities}' has shape "
                             f"{value.shape}; self-attention is [batch, heads, tokens, tokens]")
        out.append(value)
    if len({value.shape[2] for value in out}) != 1:
        raise InputError("the attention layers have different token counts; rollout needs "
                         "one sequence (name the layers with attention=...)")
    return out


def layer_index(start_layer, count: int) -> int:
    """A 0-based layer index (negative counts from the last), checked against `count`."""
    try:
        start = int(start_layer)
    except (TypeError, ValueError):
        raise InputError(f"start_layer must be a layer index, got '{start_layer}'") from None
    if not -count <= start < count:
        raise InputError(f"start_layer {start} is out of range for {count} attention layers")
    return start % count
