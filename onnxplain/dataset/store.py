"""What a dataset run keeps of each row's attribution (`--store`), applied by the result
writer as it builds a shard (RowResult.attributions stay whole in memory):

  full     the attribution as the method gave it, one value per input value.
  map      one value per position, as the heatmaps draw it: an image row's [C, H, W] or
           [H, W, C] attribution (images.image_layout) summed over its channels to [H, W] by
           viz.heatmap.row_maps (|values| for unsigned methods, values for signed ones).
           Other inputs are kept as they are: token-id inputs already hold one value per
           token (the method's reduction over the embedding axes), and vectors or float
           embeddings have no channel axis the library reduces anywhere.
  topk=K   the K entries of largest |value| of each row's attribution flattened in C order
           (every channel of every pixel: np.unravel_index says which), as their flat indices
           and signed values, largest first, ties to the lower index, NaN last; K is clipped
           to the attribution's size. The whole attribution rather than its map, so that
           scattering them back (results.dense) gives what `full` would hold, zeros elsewhere.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..viz.heatmap import row_map

KINDS = ("full", "map", "topk")
# Column name prefixes, followed by the input's name.
ATTRIBUTION, TOPK_INDEX, TOPK_VALUE = "attribution/", "topk_index/", "topk_value/"
_TOPK = re.compile(r"topk=([0-9]+)")
_FORMS = "full, map or topk=K (K a positive whole number)"


@dataclass(frozen=True)
class Store:
    """One of `--store`'s forms: `kind` ('full', 'map' or 'topk') and, for topk, `k`.
    str() gives the form as typed, canonical ('topk=5'): what the run's meta records."""

    kind: str
    k: int | None = None

    def __post_init__(self) -> None:
        whole = isinstance(self.k, int) and not isinstance(self.k, bool)  # True is no K
        if self.kind not in KINDS or (self.kind == "topk") != (self.k is not None) \
                or (self.k is not None and (not whole or self.k < 1)):
            raise InputError(f"--store must be {_FORMS}, not {self!r}")

    def __str__(self) -> str:
        return f"topk={self.k}" if self.kind == "topk" else self.kind


FULL, MAP = Store("full"), Store("map")


def parse_store(text: str) -> Store:
    """'full', 'map' or 'topk=K' as a Store; anything else is a one-line InputError."""
    if text in ("full", "map"):
        return Store(text)
    match = _TOPK.fullmatch(text)
    if match and int(match.group(1)) > 0:
        return Store("topk", int(match.group(1)))
    raise InputError(f"--store must be {_FORMS}, not {text!r}")


@dataclass(frozen=True)
class Kept:
    """How one input's attributions are kept: each row's `shape` as the method gave it and
    the float dtype stored; `stored` is each row's shape in the attribution column (full,
    map) or (k,), the length of the top-k columns."""

    shape: tuple[int, ...]
    dtype: type
    stored: tuple[int, ...]

    @classmethod
    def of(cls, store: Store, shape: tuple[int, ...], dtype: type) -> Kept:
        """What `store` keeps of attributions shaped `shape`."""
        if store.kind == "topk":
            return cls(shape, dtype, (min(store.k, int(np.prod(shape, dtype=np.int64))),))
        return cls(shape, dtype, map_shape(shape) if store.kind == "map" else shape)


def map_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape of the map of a row shaped `shape` (viz.heatmap.row_map): the reduction's
    own, computed on zeros (broadcast: nothing allocated), so that it cannot drift."""
    return row_map(np.broadcast_to(np.float32(0), shape), True).shape


def top_entries(attribution: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The flat (C-order) indices of the min(k, size) entries of largest |value|, largest
    first, ties to the lower index, NaN after every number; and their signed values."""
    flat = attribution.reshape(-1)
    k = min(k, flat.size)
    # One total order: -|value| ascending, NaN as +inf, then the index. In the values' own
    # float type (negation and |.| are exact): half the time of float64 on an image.
    key = -np.abs(flat if flat.dtype.kind == "f" else flat.astype(np.float64))
    unordered = np.isnan(key)
    if unordered.any():
        key[unordered] = np.inf
    if k < flat.size:  # only the k-th key is needed to choose; sort the k chosen alone
        bound = np.partition(key, k - 1)[k - 1]
        above = np.flatnonzero(key < bound)
        chosen = np.concatenate([above, np.flatnonzero(key == bound)[:k - above.size]])
    else:
        chosen = np.arange(flat.size)
    order = chosen[np.lexsort((chosen, key[chosen]))].astype(np.int64)
    return order, flat[order]


def stored_columns(store: Store, name: str, values: Sequence[np.ndarray], layout: Kept,
                   signed: bool) -> dict[str, np.ndarray]:
    """The columns that keep these rows' attributions of input `name`, each [rows, width]:
    attribution/<name> (full, map), or topk_index/<name> and topk_value/<name>."""
    rows = [np.asarray(value, layout.dtype) for value in values]
    width = int(np.prod(layout.stored, dtype=np.int64))
    if store.kind == "topk":
        pairs = [top_entries(row, store.k) for row in rows]
        return {TOPK_INDEX + name: _stacked([i for i, _ in pairs], width, np.int64),
                TOPK_VALUE + name: _stacked([v for _, v in pairs], width, layout.dtype)}
    if store.kind == "map":
        rows = [row_map(row, signed) for row in rows]
    return {ATTRIBUTION + name: _stacked(rows, width, layout.dtype)}


def _stacked(rows: list[np.ndarray], width: int, dtype) -> np.ndarray:
    if not rows:
        return np.zeros((0, width), dtype)
    return np.stack([row.reshape(-1) for row in rows]).astype(dtype, copy=False)
