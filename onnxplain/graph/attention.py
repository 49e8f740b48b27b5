"""Find the attention layers of an exported transformer: the probability tensor of each layer
and the tensors around it (scores, queries, keys, values, context, the hidden state it reads,
the inputs its mask comes from).

Exporters write self-attention as MatMul(Q, K^T) -> scale (Div/Mul) -> mask (Add/Where) ->
Softmax(axis=-1) -> MatMul(., V), possibly with Cast/Dropout/Identity in between (see
shared/REFERENCE.md); the standard Attention op (opset 23+) is decomposed into that form on
load (graph/attention_op.py). A layer is a Softmax over the last axis of a rank-4 tensor that
reads a product of two activations and feeds a product with a third: the probabilities
[batch, heads, queries, keys]. Layers are numbered in topological order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import onnx

from ..errors import InputError, ModelError, OnnxplainError
from .layers import tensor_of
from .model import Model
from .op_kinds import (
    ARITHMETIC,
    CASTS,
    DENSE,
    EXTREMA,
    FUSED_ATTENTION,
    IDENTITY,
    INFERENCE_IDENTITIES,
    LOGIT_CAPS,
    SHAPE_READERS,
    VALUE_MOVERS,
    WHERE,
)

# Ops between the Q K^T product and the Softmax (scale, mask, softcap, dtype casts).
_TO_SCORES = ARITHMETIC | WHERE | CASTS | IDENTITY | LOGIT_CAPS | EXTREMA
# Ops between the Softmax and the product with V (sdpa zeroes NaN rows of fully masked
# queries with a Where(IsNaN)).
_TO_CONTEXT = CASTS | INFERENCE_IDENTITIES | WHERE
# Ops that move a projection's output into heads, or scale it.
_TO_PROJECTION = VALUE_MOVERS | ARITHMETIC | CASTS
_PROJECTION = DENSE


@dataclass(frozen=True)
class AttentionLayer:
    """One self-attention layer as the exported graph computes it."""

    index: int
    probabilities: str          # the Softmax output, [batch, heads, queries, keys]
    node: str                   # the Softmax node
    heads: int | None           # None when the head axis is symbolic
    scores: str | None = None   # the Q K^T product
    query: str | None = None
    key: str | None = None
    value: str | None = None
    context: str | None = None  # probabilities x V, [batch, heads, queries, head size]
    hidden: str | None = None   # the residual stream this layer reads
    mask_inputs: tuple[str, ...] = ()

    def as_dict(self) -> dict:
        return {"layer": self.index, "probabilities": self.probabilities, "node": self.node,
                "heads": self.heads, "layout": "[batch, heads, queries, keys]",
                "hidden_state": self.hidden, "mask_inputs": list(self.mask_inputs)}


def patch_grid(shape: tuple[int, ...], layout: str, tokens: int
                ) -> tuple[int, tuple[int, int] | None]:
    """(leading non-patch tokens, patch grid) whose aspect ratio matches the image."""
    height, width = (shape[2], shape[3]) if layout == "NCHW" else (shape[1], shape[2])
    if height <= 0 or width <= 0 or tokens <= 0:
        return 0, None  # a declared size no image has: no grid (isqrt of a negative raises)
    for prefix in range(0, min(tokens, 5)):
        patches = tokens - prefix
        rows = math.isqrt(patches * height // width) if width else 0
        for grid_rows in (rows, rows + 1):
            if grid_rows and patches % grid_rows == 0:
                cols = patches // grid_rows
                if grid_rows * width == cols * height:
                    return prefix, (grid_rows, cols)
    return 0, None


def token_layout_of(model: Model, layers: Sequence[AttentionLayer]) -> dict | None:
    """What the static shapes say about the tokens: their count, and for image models the
    class tokens in front and the patch grid (None when the token count is symbolic)."""
    if not layers:
        return None
    info = model.infos.get(layers[-1].probabilities)
    tokens = info.shape[-1] if info is not None and info.shape else None
    if not isinstance(tokens, int):
        return None
    layout = {"tokens": tokens}
    for spec in model.inputs:
        dims = spec.dims
        if spec.is_float and dims and len(dims) == 4 and all(isinstance(d, int)
                                                             for d in dims[1:]):
            kind = "NCHW" if dims[1] in (1, 3, 4) else "NHWC"
            prefix, grid = patch_grid((1, *dims[1:]), kind, tokens)
            if grid is not None:
                layout.update(class_tokens=prefix, patch_grid=list(grid))
    return layout


def fused_attention_nodes(model: Model) -> list[onnx.NodeProto]:
    """The model's fused attention nodes (looked for once per model: every attention method
    asks on every call)."""
    if "fused attention" not in model.derived:
        model.derived["fused attention"] = [
            node for node in model.proto.graph.node
            if node.domain == "com.microsoft" and node.op_type in FUSED_ATTENTION]
    return model.derived["fused attention"]


def check_not_fused(model: Model) -> None:
    """Refuse graphs where ONNX Runtime's optimizer fused the attention away."""
    fused = fused_attention_nodes(model)
    if fused:
        kinds = ", ".join(sorted({f"com.microsoft::{n.op_type}" for n in fused}))
        raise ModelError(f"the model contains ONNX Runtime fused transformer ops ({kinds}) "
                         "whose attention cannot be read or differentiated; explain the "
                         "un-optimised export (before onnxruntime.transformers.optimizer)")


def find_attention(model: Model, override: Sequence[str] | None = None
                   ) -> list[AttentionLayer]:
    """Every attention layer, in topological order; `override` names the probability tensors
    (or the nodes producing them) instead of searching."""
    check_not_fused(model)
    if override:
        return [_layer(model, i, tensor_of(model, name), strict=False)
                for i, name in enumerate(override)]
    return list(_search(model))


def require_attention(model: Model, override: Sequence[str] | None = None
                      ) -> list[AttentionLayer]:
    layers = find_attention(model, override)
    if not layers:
        raise InputError("no attention layer found (a Softmax over the last axis of a rank-4 "
                         "tensor between two activation products); name the probability "
                         "tensors with attention=TENSOR,... (see `onnxplain inspect`)")
    return layers


def _search(model: Model) -> tuple[AttentionLayer, ...]:
    if "attention" in model.derived:
        return model.derived["attention"]  # type: ignore[return-value]
    layers = []
    for node in model.proto.graph.node:
        if node.op_type == "Softmax" and _last_axis(model, node) and _is_rank4(model, node):
            layer = _layer(model, len(layers), node.output[0], strict=True)
            if layer is not None:
                layers.append(layer)
    model.derived["attention"] = tuple(layers)
    return tuple(layers)


def _layer(model: Model, index: int, probs: str, strict: bool) -> AttentionLayer | None:
    info = model.infos.get(probs)
    if not strict and (info is None or info.rank != 4):
        rank = None if info is None else info.rank
        raise InputError(f"attention tensor '{probs}' has rank {rank}; attention "
                         "probabilities are [batch, heads, queries, keys]")
    scores = _scores_product(model, model.node_by_output[probs].input[0])
    context = _context_product(model, probs)
    if strict and (scores is None or context is None):
        return None
    heads = info.shape[1] if info is not None and info.shape else None
    query = key = value = hidden = None
    if scores is not None:
        query, key = scores.input[0], scores.input[1]
    if context is not None:
        value = context.input[1]
    if query and key and value:
        hidden = _residual_stream(model, query, key, value)
    masks = _mask_inputs(model, model.node_by_output[probs].input[0], scores)
    return AttentionLayer(index, probs, model.node_by_output[probs].name,
                          heads if isinstance(heads, int) else None,
                          scores.output[0] if scores is not None else None, query, key, value,
                          context.output[0] if context is not None else None, hidden, masks)


def _last_axis(model: Model, node: onnx.NodeProto) -> bool:
    default = -1 if model.opset >= 13 else 1
    axis = next((a.i for a in node.attribute if a.name == "axis"), default)
    return axis in (-1, 3)


def _is_rank4(model: Model, node: onnx.NodeProto) -> bool:
    info = model.infos.get(node.input[0])
    return info is not None and info.rank == 4


def _walk_back(model: Model, start: str, through: frozenset[str], found, depth: int):
    """Breadth-first through the producers of `start` that are in `through`, following only
    computed inputs, until `found(node)` returns something (then that) or `depth` runs out."""
    frontier = [start]
    for _ in range(depth):
        following = []
        for name in frontier:
            node = model.node_by_output.get(name)
            if node is None:
                continue
            result = found(node)
            if result is not None:
                return result
            if node.op_type in through:
                following.extend(i for i in node.input if i and not _is_constant(model, i))
        frontier = following
    return None


def _scores_product(model: Model, start: str) -> onnx.NodeProto | None:
    """The MatMul of two activations (Q K^T) that the softmax logits come from."""
    def found(node):
        if node.op_type == "MatMul" and not any(_is_constant(model, i) for i in node.input):
            return node
        return None
    return _walk_back(model, start, _TO_SCORES, found, depth=8)


def _context_product(model: Model, probs: str) -> onnx.NodeProto | None:
    """The MatMul(probabilities, V) the softmax feeds, through casts and dropout."""
    frontier = [probs]
    for _ in range(4):
        following = []
        for name in frontier:
            for node in model.consumers.get(name, []):
                if node.op_type == "MatMul" and node.input[0] == name:
                    return node
                if node.op_type in _TO_CONTEXT:
                    following.append(node.output[0])
        frontier = following
    return None


def projection_input(model: Model, start: str) -> str | None:
    """The activation that a Q, K or V projection (MatMul/Gemm with a constant weight) reads."""
    def found(node):
        if node.op_type not in _PROJECTION:
            return None
        active = [i for i in node.input[:2] if not _is_constant(model, i)]
        return active[0] if len(active) == 1 else None
    return _walk_back(model, start, _TO_PROJECTION, found, depth=10)


def _residual_stream(model: Model, query: str, key: str, value: str) -> str | None:
    """The hidden state that Q, K and V are projected from; in pre-norm blocks (the normalised
    tensor feeds only the projections) the stream before the LayerNormalization."""
    sources = {projection_input(model, t) for t in (query, key, value)}
    if len(sources) != 1 or None in sources:
        return None
    hidden = sources.pop()
    producer = model.node_by_output.get(hidden)
    readers = [n for n in model.consumers.get(hidden, []) if n.op_type not in SHAPE_READERS]
    if (producer is not None and producer.op_type == "LayerNormalization"
            and all(n.op_type in _PROJECTION for n in readers)):
        return producer.input[0]
    return hidden


def _mask_inputs(model: Model, logits: str, scores: onnx.NodeProto | None) -> tuple[str, ...]:
    """Graph inputs that reach the softmax logits other than through Q K^T: the mask's."""
    graph_inputs = {i.name for i in model.proto.graph.input}
    blocked = set(scores.output) if scores is not None else set()
    seen, found, frontier = set(), [], [logits]
    while frontier:
        name = frontier.pop()
        if name in seen or name in blocked:
            continue
        seen.add(name)
        if name in graph_inputs:
            found.append(name)
            continue
        node = model.node_by_output.get(name)
        if node is not None and node.op_type not in SHAPE_READERS:  # shapes carry no mask
            frontier.extend(i for i in node.input if i)
    return tuple(sorted(found))


def _is_constant(model: Model, name: str) -> bool:
    return name in model.constants


def cached_inputs(model: Model) -> tuple[str, ...]:
    """Float graph inputs [batch, heads, past, head size] that a layer's keys or values are
    computed from but not its queries: a KV cache (past_key_values), whatever its names."""
    if "cached_inputs" not in model.derived:
        model.derived["cached_inputs"] = _cached_inputs(model)
    return model.derived["cached_inputs"]


def _cached_inputs(model: Model) -> tuple[str, ...]:
    candidates = {spec.name for spec in model.inputs if spec.dims is not None
                  and len(spec.dims) == 4 and spec.numpy_dtype.kind == "f"}
    try:
        layers = find_attention(model) if candidates else ()
    except OnnxplainError:  # no attention layers to read the cache from
        return ()
    found: set[str] = set()
    for layer in layers:
        if not (layer.query and layer.key and layer.value):
            continue
        keys = _inputs_behind(model, [layer.key, layer.value], candidates, depth=12)
        found |= keys - _inputs_behind(model, [layer.query], keys, depth=None)
    return tuple(sorted(found))


def _inputs_behind(model: Model, starts: Sequence[str], inputs: set[str], depth: int | None
                   ) -> set[str]:
    """Which of `inputs` the values of tensors `starts` are computed from (`depth` producers
    back; not through Shape or Size: a position computed from the cache's length reads no
    cached value)."""
    seen, frontier, step = set(starts), list(starts), 0
    while frontier and (depth is None or step < depth):
        following = []
        for name in frontier:
            node = model.node_by_output.get(name)
            reads = node is not None and node.op_type not in SHAPE_READERS
            for tensor in node.input if reads else ():
                if tensor and tensor not in seen:
                    seen.add(tensor)
                    following.append(tensor)
        frontier, step = following, step + 1
    return seen & inputs


def attention_layers(model: Model, attention) -> list[AttentionLayer]:
    """The model's attention layers, or those named by the `attention` option (a list or a
    comma-separated string of probability tensors or Softmax nodes)."""
    if isinstance(attention, str):
        attention = [name.strip() for name in attention.split(",") if name.strip()]
    return require_attention(model, attention or None)


def probabilities(layers: Sequence[AttentionLayer]) -> list[str]:
    return [layer.probabilities for layer in layers]


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


def layer_index(start_layer, count: int) -> int:
    """A 0-based layer index (negative counts from the last), checked against `count`."""
    try:
        start = int(start_layer)
    except (TypeError, ValueError):
        raise InputError(f"start_layer must be a layer index, got '{start_layer}'") from None
    if not -count <= start < count:
        raise InputError(f"start_layer {start} is out of range for {count} attention layers")
    return start % count
