"""The padding rule of token models, one definition run two ways: which of a sequence's T
positions are real, from the attention-mask inputs (0: padding). A mask of the row's own T
positions is read as it is; with a KV cache, the mask covers the P cached positions and then
the T new ones, so `cached` reads its last T columns. `real_positions` applies it to numpy
feeds (in process), `real_positions_in_graph` emits it as ONNX ops (gradient programs,
exported explainers), so both read the same tokens."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np

from .builder import GraphBuilder


def real_positions(feeds: Mapping[str, np.ndarray], masks: Iterable[str], rows: int,
                   length: int, cached: bool) -> np.ndarray:
    """bool [rows, length]: True where no mask input among `masks` shaped [rows, length] is 0
    (with `cached`, also [rows, past + length]: its last `length` columns). Inputs absent
    from `feeds` or of other shapes are not masks of these positions."""
    real = np.ones((rows, length), dtype=bool)
    for name in masks:
        value = feeds.get(name)
        if value is None or value.ndim != 2 or value.shape[0] != rows:
            continue
        if value.shape[1] == length or (cached and value.shape[1] > length):
            real &= value[:, value.shape[1] - length:] != 0
    return real


def real_positions_in_graph(b: GraphBuilder, masks: Iterable[str], width: str | None
                            ) -> str | None:
    """bool [N, T]: true where none of the [N, W] tensors `masks` is 0 (their element types
    known to `b`); with `width` (T, int64 [1]) in its last T columns (a KV cache's mask),
    else the whole mask (W = T). None without masks."""
    real = None
    for mask in masks:
        if width is not None:
            mask = b.slice(mask, b.op("Neg", width), [np.iinfo(np.int64).max], [1])
        here = b.op("Not", b.equal(mask, b.scalar(0, mask)))
        real = here if real is None else b.op("And", real, here)
    return real
