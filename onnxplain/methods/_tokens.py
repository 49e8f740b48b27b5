"""What the attention methods share: the attention layers of the model, which token row they
read, padding, and where the scores go (token ids keep one score per token; images get the
patch grid resized over them, in the graph: export.attention), resolved from the inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph.attention import AttentionLayer, patch_grid, require_attention
from ..graph.op_kinds import SHAPE_READERS
from ..images import image_layout
from ..objective import last_positions, mask_inputs
from ._common import rows_text


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


@dataclass(frozen=True)
class Rows:
    """The row of the maps a method reads and how their keys relate to their queries.

    `query` indexes the queries (the new tokens when keys are cached), None for the mean of
    all rows; `past` counts the cached keys before the queries' own ([Tq, past + Tq] maps):
    they are inputs of this step, so each layer's map gets identity rows for them (it
    becomes square), and their scores are reported as one block.
    """

    query: int | None
    past: int = 0
    tokens: int | None = None  # the queries (new tokens) per map
    last: bool = False  # `query` is the explained position: each row's last real token


@dataclass(frozen=True)
class Reading:
    """What an attention method's graph (export.attention) reads and where its scores go,
    resolved before building: in process from the inputs, by export from static shapes.

    `query`: the row read (None: the mean of all rows; LAST_REAL: each row's last real
    token, read from the padding mask in the graph); `prefix` tokens before the `grid` of
    patches of an image; `text`: token-id inputs that take one score per token; `cached`:
    the maps are [Tq, P + Tq] (a KV cache), squared in the graph.
    """

    query: int | str | None
    prefix: int = 0
    grid: tuple[int, int] | None = None
    text: tuple[str, ...] = ()
    cached: bool = False


LAST_REAL = "last_real"


@dataclass(frozen=True)
class _Probe:
    """One forward run of the first row: each layer's map size, and for each query row of the
    last layer its largest weight on a later token (0 in a causal model)."""

    sizes: tuple[tuple[int, ...], ...]
    spill: tuple[float, ...]

    def causal(self, last: int) -> bool:
        return len(self.spill) > last and max(self.spill[:last + 1]) <= 1e-6


def resolve_query(engine, feeds: Mapping[str, np.ndarray], sources,
                  layers: Sequence[AttentionLayer], query, method: str) -> Rows:
    """The rows read, decided before running (in-graph methods need them): as token_layout
    decides, except "auto" on a causal model over token ids, whose row is the explained
    position (the last non-padding one, objective.last_positions: the only row that sees the
    whole prompt). Maps must be square, or [Tq, past + Tq] of a causal model (a KV cache):
    others are refused naming the layers."""
    text = [feeds[s.input] for s in sources if s.per_token and feeds[s.input].ndim == 2]
    wants_last = is_auto_query(query) and bool(text)
    static = _static_tokens(engine.model, layers)
    if static is not None and not wants_last:
        return Rows(token_layout(feeds, sources, static, query).query, 0, static)
    probe = _probe(engine, feeds, layers)
    queries, past = _queries_and_past(probe, layers, method)
    if wants_last:
        positions = last_positions(feeds, mask_inputs(engine.model), len(text[0]), queries)
        if probe.causal(int(positions[0])):
            return Rows(_same_position(positions), past, queries, last=True)
    if past and token_layout(feeds, sources, queries, query).query is None:
        raise InputError(f"{method} with cached keys reads one query row: query='mean' would "
                         "average rows that see different prefixes; name a query token")
    return Rows(token_layout(feeds, sources, queries, query).query, past, queries)


def _static_tokens(model, layers: Sequence[AttentionLayer]) -> int | None:
    """The token count when shape inference fixed every map to one square [S, S]."""
    shapes = [model.infos[layer.probabilities].shape if layer.probabilities in model.infos
              else None for layer in layers]
    if all(s and len(s) == 4 and isinstance(s[2], int) and s[2] == s[3] == shapes[0][2]
           for s in shapes):
        return shapes[0][2]
    return None


def _probe(engine, feeds: Mapping[str, np.ndarray], layers: Sequence[AttentionLayer]
           ) -> _Probe:
    """Run once per model and input shapes for each layer (kept with the model's derived
    facts, so that every method and layer selection reuses it)."""
    key = tuple((name, np.shape(value)[1:]) for name, value in sorted(feeds.items()))
    known = engine.model.derived.setdefault("attention_probes", {}).setdefault(key, {})
    names = probabilities(layers)
    missing = [name for name in names if name not in known]
    if missing:
        row = {name: value[:1] for name, value in feeds.items()}
        values = engine.forward(row, taps=missing)
        for name in missing:
            value = np.asarray(values[name], dtype=np.float64)
            known[name] = (tuple(value.shape), _spill(value))
    return _Probe(tuple(known[name][0] for name in names), known[names[-1]][1])


def map_sizes(engine, feeds: Mapping[str, np.ndarray], layers: Sequence[AttentionLayer]
              ) -> list[tuple[int, ...]]:
    """Each layer's map shape on the first row (one probe per model and input shapes)."""
    return list(_probe(engine, feeds, layers).sizes)


def _spill(maps: np.ndarray) -> tuple[float, ...]:
    """For each query row i of [1, H, Tq, P + Tq] maps: the largest weight on keys after
    P + i (later tokens)."""
    if maps.ndim != 4 or maps.shape[3] < maps.shape[2]:
        return ()
    queries, past = maps.shape[2], maps.shape[3] - maps.shape[2]
    later = np.triu(np.abs(maps[0, :, :, past:]), 1).max(axis=(0, 2))
    return tuple(float(v) for v in later[:queries])


def _queries_and_past(probe: _Probe, layers: Sequence[AttentionLayer], method: str
                      ) -> tuple[int, int]:
    """(queries, cached keys) shared by every layer; InputError naming the layers whose maps
    are neither square nor a causal model's [Tq, past + Tq]."""
    cached = probe.causal(len(probe.spill) - 1) if probe.spill else False
    odd = [f"{layer.index} ('{layer.probabilities}', {size[2]} queries x {size[3]} keys)"
           for layer, size in zip(layers, probe.sizes, strict=True)
           if len(size) == 4 and size[2] != size[3] and not (cached and size[3] > size[2])]
    if odd:
        raise InputError(f"{method} reads self-attention maps (tokens x tokens of one "
                         f"sequence, or a causal model's new tokens x cached + new keys), and "
                         f"the maps of layers {', '.join(odd)} are not (keys pooled or from "
                         "another sequence): name self-attention layers with attention=...")
    if any(len(size) != 4 for size in probe.sizes):
        bad = next(n for n, s in zip(probabilities(layers), probe.sizes, strict=True)
                   if len(s) != 4)
        raise InputError(f"attention tensor '{bad}' is not [batch, heads, queries, keys]")
    if len({size[2:] for size in probe.sizes}) != 1:
        raise InputError("the attention layers have different token counts; chained methods "
                         "need one sequence (name the layers with attention=...)")
    queries, keys = probe.sizes[0][2:]
    return queries, keys - queries


def _same_position(positions: np.ndarray) -> int:
    if np.any(positions != positions[0]):
        rows = rows_text(range(len(positions)))
        raise InputError(f"the rows end at different positions ({rows}: "
                         f"{', '.join(str(p) for p in positions[:8])}), and attention "
                         "methods read one query row per run: pad on the left, or explain "
                         "rows of the same length together")
    return int(positions[0])


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
    one of them is shaped [batch, at least tokens]: its last S columns (a KV cache's mask
    covers the cached tokens, then these), as export.tokens reads them."""
    mask = np.ones((rows, tokens), dtype=bool)
    names = {name for layer in layers for name in layer.mask_inputs}
    for name in sorted(names):
        value = feeds.get(name)
        if value is not None and value.ndim == 2 and value.shape[0] == rows \
                and value.shape[1] >= tokens:
            mask &= value[:, value.shape[1] - tokens:] != 0
    return mask


def layer_index(start_layer, count: int) -> int:
    """A 0-based layer index (negative counts from the last), checked against `count`."""
    try:
        start = int(start_layer)
    except (TypeError, ValueError):
        raise InputError(f"start_layer must be a layer index, got '{start_layer}'") from None
    if not -count <= start < count:
        raise InputError(f"start_layer {start} is out of range for {count} attention layers")
    return start % count


def cached_inputs(model) -> tuple[str, ...]:
    """Float graph inputs [batch, heads, past, head size] that a layer's keys or values are
    computed from but not its queries: a KV cache (past_key_values), whatever its names."""
    if "cached_inputs" not in model.derived:
        model.derived["cached_inputs"] = _cached_inputs(model)
    return model.derived["cached_inputs"]


def _cached_inputs(model) -> tuple[str, ...]:
    from ..errors import OnnxplainError
    from ..graph.attention import find_attention

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


def _inputs_behind(model, starts: Sequence[str], inputs: set[str], depth: int | None
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
