"""The attention methods as one graph each: the program `export` saves and the in-process
methods run (methods.attention_flow through methods._graph). The per-layer chain of
export/attention_graph.py, then, as ONNX ops: the query row (an index, the mean of all rows,
or each row's last real token), padded tokens and the query's own entry zeroed, the P cached
positions of a KV cache summed as one block, and for vision transformers the patch grid
resized over the image. What is read (attention_graph.Reading) is resolved before building:
in process from the inputs, here from the static shapes when `export` builds it."""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from onnx import TensorProto

from ..errors import InputError
from ..graph.attention import (
    attention_layers,
    cached_inputs,
    is_auto_query,
    layer_index,
    probabilities,
    query_index,
    token_layout_of,
)
from ..graph.padding import real_positions_in_graph
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..images import image_inputs
from ..objective import NEXT_TOKEN, mask_inputs
from ..rules.chefer import CHEFER
from ..runtime.engine import DenseObjective
from . import explained_row as row_copy
from .attention_graph import (
    LAST_REAL,
    ROW,
    Reading,
    attention_mean,
    chain_post,
    gradient_times_attention,
    gradient_times_relevance,
    head_mean,
    relevance_pass,
    wide,
)
from .graph import ExplainerGraph
from .layer_maps import declare_maps, resized_maps
from .methods import ATTRIBUTION, register_export

# Outputs besides the attributions (in process read back with graph_run's `read`).
TOKENS = "tokens"
PATCHES = "patches"
CACHED_BLOCK = "cached_block"
HEAD_RELEVANCE = "head_relevance"
LAYER_MAP = "attention/"  # + the layer's index: raw_attention's maps, float32
# Options the in-process methods add, resolved from the inputs: the Reading, the source
# tensors relevance starts from, whether a next-token objective's tail is copied.
READING, ACTIVE, ROW_COPY = "reading", "active", "row_copy"
QUERY_ROW = "query_row"  # int64 [N]: the row read, where the graph decides it per row
ATTENTION_OUTPUTS = (TOKENS, PATCHES, CACHED_BLOCK, HEAD_RELEVANCE, QUERY_ROW)
# Reading.query of "auto" over token ids, decided in the graph for each row (_auto_row):
# the last real token where the model is causal, else token 0 (the class token).
AUTO_ROW = "auto_row"
# A map weight this small on a later token is none (a causal model's masked entries).
CAUSAL_SPILL = 1e-6


def static_reading(eg: ExplainerGraph, layers, query) -> Reading:
    """The Reading `export` bakes in: token-id inputs, or the patch grid of an image input
    (static shapes only); "auto" over token ids is AUTO_ROW, as in process (each row's
    last real token in a causal model, else the class token); the explained position
    when one is set (methods._tokens.query_is_position)."""
    cached = bool(cached_inputs(eg.model))
    sources, _ = find_sources(eg.model)
    text = tuple(s.input for s in sources if s.per_token)
    prefix, grid = 0, None
    if not text:
        static = token_layout_of(eg.model, layers)
        if not static or not static.get("patch_grid") or not image_inputs(eg.model):
            raise InputError("an exported attention method needs token-id inputs or an image "
                             "input with static height, width and token count")
        prefix, grid = static.get("class_tokens", 0), tuple(static["patch_grid"])
    if not is_auto_query(query):
        row = query_index(query, None)
    elif eg.dense == NEXT_TOKEN and eg.place.position is not None:
        row = query_index(eg.place.position, None)  # the explained position (query_is_position)
    elif auto_reads_text(eg, layers, query, text):
        row = AUTO_ROW
    else:
        row = 0 if (text or prefix) else None
    if cached and row is None:
        raise InputError("attention methods with cached keys read one query row: "
                         "query='mean' would average rows that see different prefixes; name "
                         "a query token")
    return Reading(row, prefix, grid, text, cached)


def _reads_text(eg: ExplainerGraph, layers, text: tuple[str, ...]) -> bool:
    """Whether the maps' queries are the token inputs' tokens, where the static shapes say
    (as in process, methods._tokens.token_layout; not a vision tower beside a text one)."""
    maps = eg.model.infos.get(layers[-1].probabilities)
    queries = maps.shape[2] if maps is not None and maps.shape and len(maps.shape) == 4 \
        else None
    lengths = {spec.dims[1] for spec in eg.model.inputs if spec.name in text and spec.dims}
    return not isinstance(queries, int) or not all(isinstance(n, int) for n in lengths) \
        or queries in lengths


def _setup(eg: ExplainerGraph, options) -> tuple[list, Reading, str | int | None]:
    """(the layers, the Reading, the query as the chain takes it: an index, None, or the
    int64 [N] tensor of each row's last real token)."""
    layers = attention_layers(eg.model, options["attention"])
    reading = options.get(READING) or static_reading(eg, layers, options["query"])
    query = reading.query
    if query in (LAST_REAL, AUTO_ROW):
        query = query_rows(eg, layers, query)
    return layers, reading, query


def query_rows(eg: ExplainerGraph, layers, rule: str) -> str:
    """int64 [N], declared as QUERY_ROW: the query row of each row by `rule` (LAST_REAL,
    AUTO_ROW), for every token-scoring method (the attention methods, CAT)."""
    rows = _last_real(eg, layers) if rule == LAST_REAL else _auto_row(eg, layers)
    eg.declare(rows, QUERY_ROW, "int64 [N]: the query row read in each row",
               TensorInfo(TensorProto.INT64, ("N",)))
    return rows


def auto_reads_text(eg: ExplainerGraph, layers, query, text) -> bool:
    """Whether `query` is "auto" over token ids `text` that are the maps' queries (then
    AUTO_ROW decides the row in the graph)."""
    return is_auto_query(query) and bool(text) and _reads_text(eg, layers, tuple(text))


def real_tokens(eg: ExplainerGraph, names: Iterable[str], width: str) -> str | None:
    """bool [N, width], the padding mask of every token program (the attention methods,
    CAT, layer integrated gradients): true where no [N, >= width] graph input among `names`
    (the inputs the attention masks are computed from) is 0 in its last `width` columns (a
    KV cache's mask covers the cached tokens, then the new ones); None without such an
    input. In process: objective.last_positions, methods._tokens.padding_mask."""
    inputs = {spec.name for spec in eg.model.inputs}
    masks = [name for name in sorted(set(names)) if name in inputs and eg.b.info(name).rank == 2]
    return real_positions_in_graph(eg.b, masks, width)


def _last_real(eg: ExplainerGraph, layers) -> str:
    """int64 [N]: each row's last real token among the maps' queries, read from the masks
    the objective reads (the explained position, objective.last_positions). A row of
    padding alone reads row 0, and its scores are 0 (finish_scores zeroes padded tokens);
    in process such a row is refused (objective.last_positions)."""
    b = eg.b
    queries = b.dim(layers[-1].probabilities, 2)
    count = b.op("Add", _positions(eg, queries), b.ints([1]))
    real = real_tokens(eg, mask_inputs(eg.model), queries)
    if real is None:
        return b.op("Sub", b.reduce("ReduceMax", count, [-1], keepdims=False), b.ints([1]))
    count = b.op("Mul", b.unsqueeze(count, [0]), b.op("Cast", real, to=TensorProto.INT64))
    count = b.reduce("ReduceMax", count, [-1], keepdims=False)
    one = b.ints([1])
    # max(count, 1) - 1: row 0, not -1 (the last row, read silently), where none is real.
    return b.op("Sub", b.where(b.equal(count, b.ints([0])), one, count), one)


def _auto_row(eg: ExplainerGraph, layers) -> str:
    """int64 [N]: the "auto" query of token ids, one rule for export and in process: each
    row's last real token where the model is causal (the row's first real query puts no more
    than CAUSAL_SPILL on a later key in the last layer's map: a bidirectional model's first
    token sees the later ones), else 0 (the class token). One query row of the maps is
    read, not all of them (a pass over every map entry cost rollout a tenth of a forward)."""
    b = eg.b
    last = _last_real(eg, layers)
    a = layers[-1].probabilities
    queries, keys = b.dim(a, 2), b.dim(a, 3)
    real = real_tokens(eg, mask_inputs(eg.model), queries)
    first = b.op("Mul", last, b.ints([0])) if real is None else b.op(
        "ArgMax", b.op("Cast", real, to=TensorProto.INT32), axis=1, keepdims=0)
    sizes = b.concat([b.dims(a, 0, 2), b.ints([1]), keys], 0)
    row = b.op("GatherElements", a, b.op("Expand", b.reshape(first, [-1, 1, 1, 1]), sizes),
               axis=2)  # [N, H, 1, K]
    spill = b.reduce("ReduceMax", b.op("Abs", row), [1, 2], keepdims=False)  # [N, K]
    later = b.op("Greater", b.unsqueeze(_positions(eg, keys), [0]),
                 b.unsqueeze(b.op("Add", first, b.op("Sub", keys, queries)), [1]))  # [N, K]
    most = b.reduce("ReduceMax", b.where(later, spill, b.scalar(0.0, spill)), [1],
                    keepdims=False)
    causal = b.op("Not", b.op("Greater", most, b.scalar(CAUSAL_SPILL, spill)))
    return b.where(causal, last, b.op("Mul", last, b.ints([0])))


def _positions(eg: ExplainerGraph, count: str) -> str:
    b = eg.b
    return b.range(b.const(np.array(0, np.int64)), b.squeeze(count, [0]),
                   b.const(np.array(1, np.int64)))


def _finish(eg: ExplainerGraph, scores: str, layers, reading: Reading, query, upsample: str
            ) -> None:
    """finish_scores with the scores as float32 (the attention methods' outputs)."""
    if eg.b.dtype(scores) != TensorProto.FLOAT:
        scores = eg.b.op("Cast", scores, to=TensorProto.FLOAT)
    finish_scores(eg, scores, layers, reading, query, upsample)


def finish_scores(eg: ExplainerGraph, scores: str, layers, reading: Reading, query,
                  upsample: str) -> None:
    """[N, P + T] scores of the token-scoring methods (the attention methods, CAT): padded
    tokens zeroed, the P cached ones summed as CACHED_BLOCK, the query's own entry zeroed
    (`query`: an index, negative from the end, an int64 [N] tensor, or None); declare
    TOKENS, each token input's scores, the PATCHES grid and its resizing to each image
    input. The outputs keep the scores' type."""
    b = eg.b
    dtype = b.dtype(scores)
    zero = b.scalar(0.0, scores)
    # Padding: the masks the attention layers read (methods._tokens.padding_mask).
    real = real_tokens(eg, (n for layer in layers for n in layer.mask_inputs),
                       b.dim(scores, 1))
    if real is not None:
        scores = b.where(real, scores, zero)
    if reading.cached:
        past = b.op("Sub", b.dim(scores, 1), b.dim(layers[-1].probabilities, 2))
        block = b.reduce("ReduceSum", b.slice(scores, [0], past, [1]), [1], keepdims=False)
        eg.declare(block, CACHED_BLOCK, "float [N]: summed scores of the cached positions",
                   TensorInfo(dtype, ("N",)))
        scores = b.slice(scores, past, [np.iinfo(np.int64).max], [1])
    if query is not None:
        steps = b.unsqueeze(_positions(eg, b.dim(scores, 1)), [0])
        if isinstance(query, int):
            at = b.ints([query]) if query >= 0 else b.op("Add", b.dim(scores, 1),
                                                         b.ints([query]))
        else:
            at = b.unsqueeze(query, [1])
        scores = b.where(b.op("Equal", steps, at), zero, scores)
    info = TensorInfo(dtype, ("N", None))
    eg.declare(scores, TOKENS, "float [N, tokens]: one score per token", info)
    for name in reading.text:
        eg.declare(scores, ATTRIBUTION + name, f"float [N, tokens]: score of each token of "
                   f"'{name}'", info)
    if reading.grid is not None:
        rows, cols = reading.grid
        patches = b.slice(scores, [reading.prefix], [np.iinfo(np.int64).max], [1])
        grid = b.reshape(patches, [0, 1, rows, cols])
        eg.declare(grid, PATCHES, "float [N, 1, rows, cols]: patch scores on the grid",
                   TensorInfo(dtype, ("N", 1, rows, cols)))
        if dtype == TensorProto.DOUBLE:  # ONNX Runtime's CPU Resize has no double kernel
            grid = b.op("Cast", grid, to=TensorProto.FLOAT)
        declare_maps(eg, resized_maps(eg, grid, upsample), "patch scores")


def _targeted(eg: ExplainerGraph, options):
    """The explained-row copy (export/explained_row) under a next-token objective."""
    if not options.get(ROW_COPY, True) or eg.dense != NEXT_TOKEN:
        return None
    return DenseObjective(eg.dense, eg.place)


def _active(eg: ExplainerGraph, options) -> tuple[str, ...]:
    return options.get(ACTIVE) or tuple(s.tensor for s in find_sources(eg.model)[0])


def _chain(eg, options, weighting, step: str, reads: str, start: int = 0) -> None:
    layers, reading, query = _setup(eg, options)
    maps = probabilities(layers)
    post = chain_post("export", maps, layer_index(start, len(layers)), weighting, step, query,
                      cached=reading.cached)
    if reads == "nothing":
        if eg.scores:
            eg.target()
        grads = {}
    else:
        passes = [relevance_pass(maps, _active(eg, options))] if reads == "relevance" \
            else []
        pre = row_copy.explained_row(_targeted(eg, options), maps[-1])
        grads = eg.gradient_passes(maps, passes=passes, pre=pre)
    _finish(eg, post.emit(eg.b, grads)[ROW], layers, reading, query, options["upsample"])


def _row(b, x: str, query) -> str:
    """[N, Tq, K] -> [N, K]: row `query` (as _finish takes it), or the mean of all rows."""
    if query is None:
        return b.reduce("ReduceMean", x, [1], keepdims=False)
    if isinstance(query, int):
        return b.squeeze(b.op("Gather", x, b.ints([query]), axis=1), [1])
    sizes = b.concat([b.dim(x, 0), b.ints([1]), b.dim(x, 2)], 0)
    at = b.op("Expand", b.reshape(query, [-1, 1, 1]), sizes)
    return b.squeeze(b.op("GatherElements", x, at, axis=1), [1])


@register_export("raw_attention", any_output=True)
def raw_attention(eg, options):
    """E_h A_L of the last layer, at the query row; every layer's maps as LAYER_MAP + index."""
    layers, reading, query = _setup(eg, options)
    if eg.scores:
        eg.target()
    b = eg.b
    for index, layer in enumerate(layers):
        value = layer.probabilities
        if b.dtype(value) != TensorProto.FLOAT:
            value = b.op("Cast", value, to=TensorProto.FLOAT)
        eg.declare(value, f"{LAYER_MAP}{index}", "float [N, heads, queries, keys]: the "
                   f"attention map of layer {layer.index}",
                   TensorInfo(TensorProto.FLOAT, ("N", None, None, None)))
    row = _row(b, head_mean(b, wide(b, layers[-1].probabilities)), query)
    _finish(eg, row, layers, reading, query, options["upsample"])


@register_export("partial_lrp")
def partial_lrp(eg, options):
    """E_h R_L at the query row, R_L the LRP relevance of the last layer's map (Chefer et
    al.'s rules); each head's total relevance as HEAD_RELEVANCE [N, heads]."""
    layers, reading, query = _setup(eg, options)
    last = layers[-1].probabilities
    pre = row_copy.explained_row(_targeted(eg, options), last)
    relevance = eg.gradient_passes([last], rules=CHEFER, active_from=_active(eg, options),
                                   pre=pre)[""][last]
    b = eg.b
    relevance = wide(b, relevance)
    eg.declare(b.reduce("ReduceSum", relevance, [2, 3], keepdims=False), HEAD_RELEVANCE,
               "float [N, heads]: each head's total relevance in the last layer "
               "(Voita et al.'s head ranking)", TensorInfo(b.dtype(relevance), ("N", None)))
    _finish(eg, _row(b, head_mean(b, relevance), query), layers, reading, query,
            options["upsample"])


@register_export("rollout", any_output=True)
def rollout(eg, options):
    _chain(eg, options, attention_mean, "rollout", "nothing", options["start_layer"])


@register_export("generic_attention")
def generic_attention(eg, options):
    _chain(eg, options, gradient_times_attention(positive=True), "accumulate", "gradients")


@register_export("attgrad")
def attgrad(eg, options):
    _chain(eg, options, gradient_times_attention(positive=False), "product", "gradients")


@register_export("transformer_attribution")
def transformer_attribution(eg, options):
    _chain(eg, options, gradient_times_relevance, "rollout", "relevance",
           options["start_layer"])
