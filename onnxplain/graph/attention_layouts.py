"""The layout of each attention layer, and which layers a token method can read together.

Token methods read maps [batch, heads, tokens, tokens] over the explained sequence and chain
them with the residual identity. A layer is classified from the shape of its probability
tensor on one row and from where its queries and keys are projected from, never from names:

- "self": queries and keys projected from one stream, one map per row, square;
- "cache": keys the queries' own projection after cached ones (more keys than queries);
- "windowed": more maps than rows (Swin: [batch x windows, heads, w^2, w^2]), each over one
  window, not over the sequence;
- "pooled": keys projected from a strided or pooled copy of the query stream (SegFormer's
  spatial reduction): fewer keys than queries, on another grid;
- "cross": keys projected from another sequence (an encoder's output, another input);
- "decoder": self-attention over a sequence that is not the one the cross-attention reads
  (an encoder-decoder's decoder, DETR's object queries); the tokens are those of the
  encoder, so only its self-attention is read.

Self and cache layers of the explained sequence are read (cached keys are handled, or
refused, by the methods); the others are skipped with one warning naming them, or, when none
is left, refused with one line naming them all.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ..errors import InputError
from .attention import AttentionLayer, projection_input
from .model import Model
from .op_kinds import CASTS, DEQUANTIZERS, IDENTITY, QUANTIZERS
from .walk import produced_from

READ = frozenset({"self", "cache"})
_WHY = {"windowed": "window attention", "pooled": "keys pooled from the tokens",
        "cross": "keys from another sequence", "decoder": "self-attention of the decoder",
        "other": "another sequence length or grid"}


@dataclass(frozen=True)
class Layout:
    layer: AttentionLayer
    kind: str
    shape: tuple[int, ...]     # the map's shape on one row

    def describe(self) -> str:
        if len(self.shape) != 4:
            size = f"shape {list(self.shape)}"
        elif self.kind == "windowed":
            size = f"{self.shape[0]} windows of {self.shape[2]} tokens"
        else:
            size = f"{self.shape[2]} queries x {self.shape[3]} keys"
        why = _WHY.get(self.kind, self.kind)
        return f"{self.layer.index} ('{self.layer.probabilities}', {why}: {size})"


def classify(model: Model, layers: Sequence[AttentionLayer],
             shapes: Sequence[tuple[int, ...]]) -> list[Layout]:
    """The layout of each layer from its map's shape on one row and where its keys come
    from (see the module docstring); computed once per model, layers and shapes (the walks
    back through the graph are not repeated on every call)."""
    shapes = [tuple(shape) for shape in shapes]
    key = (tuple(layer.probabilities for layer in layers), tuple(shapes))
    known = model.derived.setdefault("attention_layouts", {})
    if key not in known:
        known[key] = _classified(model, layers, shapes)
    return known[key]


def _classified(model: Model, layers: Sequence[AttentionLayer],
                shapes: Sequence[tuple[int, ...]]) -> list[Layout]:
    kinds = [_kind(model, layer, shape) for layer, shape in zip(layers, shapes, strict=True)]
    memory = _memory(model, [layer for layer, kind in zip(layers, kinds, strict=True)
                             if kind == "cross"])
    if memory is not None:
        kinds = [("decoder" if kind in READ and layer.probabilities not in memory else kind)
                 for layer, kind in zip(layers, kinds, strict=True)]
    return [Layout(layer, kind, shape)
            for layer, kind, shape in zip(layers, kinds, shapes, strict=True)]


def readable(model: Model, layers: Sequence[AttentionLayer],
             shapes: Callable[[], Sequence[tuple[int, ...]]], method: str
             ) -> list[AttentionLayer]:
    """The layers `method` reads: self-attention (or cached) layers of the explained sequence,
    the token count of the last of them. Warns once naming the skipped layers and why;
    InputError naming them all when none is left."""
    layouts = classify(model, layers, shapes())
    read = [lay for lay in layouts if lay.kind in READ]
    if read:  # one sequence: the token count of the last layer read
        layouts = [replace(lay, kind="other") if lay.kind in READ
                   and lay.shape[2] != read[-1].shape[2] else lay for lay in layouts]
    kept = [lay for lay in layouts if lay.kind in READ]
    skipped = [lay for lay in layouts if lay.kind not in READ]
    if not kept:
        raise InputError(f"{method} reads self-attention maps over one sequence (tokens x "
                         f"tokens), and layers {_listed(skipped)} are not: name self-attention "
                         "layers with attention=...")
    if skipped:
        indices = ", ".join(str(lay.layer.index) for lay in kept)
        warnings.warn(f"{method}: reads attention layers {indices} ({kept[-1].shape[2]} "
                      f"tokens) and skips layers {_listed(skipped)}", stacklevel=2)
    return [lay.layer for lay in kept]


def _listed(layouts: Sequence[Layout]) -> str:
    return ", ".join(lay.describe() for lay in layouts)


def _kind(model: Model, layer: AttentionLayer, shape: Sequence[int]) -> str:
    if len(shape) != 4:
        return "other"
    if shape[0] > 1:  # one row ran: more maps than rows are windows
        return "windowed"
    source = _key_source(model, layer)
    if source == "pooled":
        return "pooled"
    if source == "other":
        return "cross"
    return "cache" if shape[3] > shape[2] else "self"


def _key_source(model: Model, layer: AttentionLayer) -> str:
    """"same" when queries and keys are projected from one tensor (or that is unknown),
    "pooled" when the keys' from a reduced copy of the queries' stream, else "other"."""
    if layer.query is None or layer.key is None:
        return "same"
    queries = _unquantized(model, projection_input(model, layer.query))
    keys = _unquantized(model, projection_input(model, layer.key))
    if queries is None or keys is None or queries == keys:
        return "same"
    return "pooled" if queries in _ancestors(model, keys, depth=12) else "other"


# Ops that carry one stream's values under another encoding: a quantized model dequantizes
# the same quantized hidden state separately for each projection.
_SAME_VALUES = QUANTIZERS | DEQUANTIZERS | CASTS | IDENTITY


def _unquantized(model: Model, name: str | None) -> str | None:
    """`name` followed back through re-encodings of the same values."""
    return name and produced_from(model.node_by_output, name, _SAME_VALUES)


def _ancestors(model: Model, start: str, depth: int | None = None) -> set[str]:
    """The tensors `start` is computed from (`depth` producers back at most)."""
    seen, frontier, step = set(), [start], 0
    while frontier and (depth is None or step < depth):
        following = []
        for name in frontier:
            node = model.node_by_output.get(name)
            if node is None:
                continue
            for tensor in node.input:
                if tensor and tensor not in seen:
                    seen.add(tensor)
                    following.append(tensor)
        frontier, step = following, step + 1
    return seen


def _memory(model: Model, cross: Sequence[AttentionLayer]) -> set[str] | None:
    """Everything the keys of the cross-attention layers are computed from (the encoder's
    side), or None without cross-attention."""
    if not cross:
        return None
    memory: set[str] = set()
    for layer in cross:
        memory |= _ancestors(model, layer.key) if layer.key else set()
    return memory
