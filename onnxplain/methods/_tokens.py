"""What the attention methods share: the attention layers of the model, which token row they
read, padding, and where the scores go (token ids keep one score per token; images get the
patch grid resized over them, in the graph: export.attention), resolved from the inputs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph.attention import AttentionLayer, is_auto_query, patch_grid, probabilities, query_index
from ..graph.padding import real_positions
from ..images import image_layout
from ..objective import Place, last_positions, make_place, mask_inputs


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
    last: bool = False  # "auto" over token ids: the graph decides each row's (AUTO_ROW)


@dataclass(frozen=True)
class _Probe:
    """One forward run of the first row: each layer's map size, and for each query row of the
    last layer its largest weight on a later token (0 in a causal model: a KV cache)."""

    sizes: tuple[tuple[int, ...], ...]
    spill: tuple[float, ...]

    def causal(self, last: int) -> bool:
        return len(self.spill) > last and max(self.spill[:last + 1]) <= 1e-6


def resolve_query(engine, feeds: Mapping[str, np.ndarray], sources,
                  layers: Sequence[AttentionLayer], query, method: str) -> Rows:
    """The rows read, decided before running (in-graph methods need them): as token_layout
    decides, except "auto" over token ids, whose row the graph decides for each row as
    export does (`last`: export.attention's AUTO_ROW, the explained position, objective.
    last_positions, on a causal model; else the class token). Maps must be square, or
    [Tq, past + Tq] of a causal model (a KV cache): others are refused naming the layers."""
    static = _static_tokens(engine.model, layers)
    queries, past = (static, 0) if static is not None else \
        _queries_and_past(_probe(engine, feeds, layers), layers, method)
    layout = token_layout(feeds, sources, queries, query)
    if is_auto_query(query) and layout.text_inputs:
        # A row of padding alone has no last real token: refused here in one line (the
        # graph would read its row 0 and give zeros: export.attention._last_real).
        rows = len(feeds[layout.text_inputs[0]])
        last_positions(feeds, mask_inputs(engine.model), rows, queries)
        return Rows(0, past, queries, last=True)
    if past and layout.query is None:
        raise InputError(f"{method} with cached keys reads one query row: query='mean' would "
                         "average rows that see different prefixes; name a query token")
    return Rows(layout.query, past, queries)


def query_is_position(options: dict, place: Place, tokens: int | None) -> tuple[dict, Place]:
    """An attention method on a causal LM reads the row of the explained position: `query=P`
    and `position=P` name the same place (the next token after position P); refused when
    they name different rows. `tokens`: the token count, None where unknown (export: a
    negative query is then read from the end in the graph, the objective at its default
    place, the last position). One rule for Explainer.explain and export_explainer."""
    query = options["query"]
    if is_auto_query(query):
        if place.position is None:
            return options, place
        return {**options, "query": place.position}, place
    if tokens is None and place.position is None and isinstance(query, (int, np.integer)) \
            and query < 0:
        return options, place
    row = query_index(query, tokens)
    if row is None and place.position is not None:
        raise InputError(f"query 'mean' averages every row, and position {place.position} "
                         "names one: give one of them")
    if row is None:  # 'mean': no one row, no one place
        return options, place
    if place.position is not None and place.position != row:
        raise InputError(f"query {query} and position {place.position} name different rows; "
                         "on a causal language model an attention method reads the row of "
                         "the explained position: give one of them")
    return {**options, "query": row}, make_place(row, place.pixel, place.region)


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


def settled_auto_row(engine, feeds: Mapping[str, np.ndarray],
                     layers: Sequence[AttentionLayer], queries: int) -> int | str:
    """The row "auto" over token ids reads, settled here where the inputs decide it for every
    row as export.attention's AUTO_ROW decides it in the graph (a twentieth of a forward on
    BERT): LAST_REAL on a causal model (the probe's row has two real tokens or more and its
    first real query puts nothing on a later key), the class token 0 on a bidirectional one
    (that query does) unless a row's one real token lies elsewhere; else AUTO_ROW."""
    from ..export.attention import AUTO_ROW, CAUSAL_SPILL  # export imports us
    from ..export.attention_graph import LAST_REAL

    spill = _probe(engine, feeds, layers).spill
    rows = len(next(iter(feeds.values())))
    real = real_positions(feeds, mask_inputs(engine.model), rows, queries, cached=True)
    if len(spill) != queries or not real.any(axis=1).all():
        return AUTO_ROW
    first, count = np.argmax(real, axis=1), real.sum(axis=1)
    if spill[first[0]] > CAUSAL_SPILL:  # bidirectional: AUTO_ROW reads 0 but in one-token rows
        return AUTO_ROW if np.any((count == 1) & (first != 0)) else 0
    return LAST_REAL if count[0] >= 2 else AUTO_ROW


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


def padding_mask(feeds: Mapping[str, np.ndarray], layers: Sequence[AttentionLayer], rows: int,
                 tokens: int) -> np.ndarray:
    """[N, S], 1 for real tokens: from the inputs the attention masks are computed from, when
    one of them is shaped [batch, at least tokens]: its last S columns (a KV cache's mask
    covers the cached tokens, then these), as the programs read them
    (export.attention.real_tokens)."""
    names = sorted({name for layer in layers for name in layer.mask_inputs})
    return real_positions(feeds, names, rows, tokens, cached=True)
