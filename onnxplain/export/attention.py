"""The attention methods as one graph each: the program `export` saves and the in-process
methods run (methods.attention_flow through methods._graph). The per-layer chain of
methods/_attention_graph.py, then, as ONNX ops: the query row (an index, the mean of all rows,
or each row's last real token), padded tokens and the query's own entry zeroed, the P cached
positions of a KV cache summed as one block, and for vision transformers the patch grid
resized over the image. What is read (methods._tokens.Reading) is resolved before building:
in process from the inputs, here from the static shapes when `export` builds it."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..engine import DenseObjective
from ..errors import InputError
from ..graph.attention import token_layout_of
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..methods import attention_flow as flow
from ..methods._attention_graph import (
    ROW,
    attention_mean,
    chain_post,
    gradient_times_attention,
    gradient_times_relevance,
    head_mean,
    wide,
)
from ..methods._layer import image_inputs
from ..methods._tokens import (
    LAST_REAL,
    Reading,
    attention_layers,
    cached_inputs,
    is_auto_query,
    layer_index,
    probabilities,
    query_index,
)
from ..objective import NEXT_TOKEN, mask_inputs
from ..rules.chefer import CHEFER
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
ATTENTION_OUTPUTS = (TOKENS, PATCHES, CACHED_BLOCK, HEAD_RELEVANCE)


def static_reading(eg: ExplainerGraph, layers, query) -> Reading:
    """The Reading `export` bakes in: token-id inputs, or the patch grid of an image input
    (static shapes only); "auto" reads the class token, or each row's last real token in a
    causal language model (next-token logits, or a KV cache)."""
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
    elif text and (cached or eg.dense == NEXT_TOKEN):
        row = LAST_REAL
    else:
        row = 0 if (text or prefix) else None
    if cached and row is None:
        raise InputError("attention methods with cached keys read one query row: "
                         "query='mean' would average rows that see different prefixes; name "
                         "a query token")
    return Reading(row, prefix, grid, text, cached)


def _setup(eg: ExplainerGraph, options) -> tuple[list, Reading, str | int | None]:
    """(the layers, the Reading, the query as the chain takes it: an index, None, or the
    int64 [N] tensor of each row's last real token)."""
    layers = attention_layers(eg.model, options["attention"])
    reading = options.get(READING) or static_reading(eg, layers, options["query"])
    query = reading.query
    if query == LAST_REAL:
        query = _last_real(eg, layers)
    return layers, reading, query


def _masks(eg: ExplainerGraph, names) -> list[str]:
    """The [N, >= tokens] graph inputs among `names` (mask inputs)."""
    inputs = {spec.name for spec in eg.model.inputs}
    return [name for name in sorted(set(names))
            if name in inputs and eg.b.info(name).rank == 2]


def _real(eg: ExplainerGraph, masks: list[str], width: str) -> str | None:
    """bool [N, width]: no mask of `masks` is 0 in its last `width` columns (a KV cache's
    mask covers the cached tokens, then the new ones), None without one."""
    b, real = eg.b, None
    for name in masks:
        last = b.slice(name, b.op("Neg", width), [np.iinfo(np.int64).max], [1])
        here = b.op("Not", b.equal(last, b.scalar(0, name)))
        real = here if real is None else b.op("And", real, here)
    return real


def _last_real(eg: ExplainerGraph, layers) -> str:
    """int64 [N]: each row's last real token among the maps' queries, read from the masks
    the objective reads (the explained position, objective.last_positions)."""
    b = eg.b
    queries = b.dim(layers[-1].probabilities, 2)
    count = b.op("Add", _positions(eg, queries), b.ints([1]))
    real = _real(eg, _masks(eg, mask_inputs(eg.model)), queries)
    if real is not None:
        count = b.op("Mul", b.unsqueeze(count, [0]), b.op("Cast", real, to=TensorProto.INT64))
    return b.op("Sub", b.reduce("ReduceMax", count, [-1], keepdims=False), b.ints([1]))


def _positions(eg: ExplainerGraph, count: str) -> str:
    b = eg.b
    return b.range(b.const(np.array(0, np.int64)), b.squeeze(count, [0]),
                   b.const(np.array(1, np.int64)))


def _finish(eg: ExplainerGraph, scores: str, layers, reading: Reading, query, upsample: str
            ) -> None:
    """[N, P + T] scores: padded tokens zeroed, the P cached ones summed as CACHED_BLOCK, the
    query's own entry zeroed; declare TOKENS, each token input's scores, the PATCHES grid
    and its resizing to each image input."""
    b = eg.b
    if b.dtype(scores) != TensorProto.FLOAT:
        scores = b.op("Cast", scores, to=TensorProto.FLOAT)
    zero = b.scalar(0.0, scores)
    # Padding: the masks the attention layers read (methods._tokens.padding_mask).
    real = _real(eg, _masks(eg, (n for layer in layers for n in layer.mask_inputs)),
                 b.dim(scores, 1))
    if real is not None:
        scores = b.where(real, scores, zero)
    if reading.cached:
        past = b.op("Sub", b.dim(scores, 1), b.dim(layers[-1].probabilities, 2))
        block = b.reduce("ReduceSum", b.slice(scores, [0], past, [1]), [1], keepdims=False)
        eg.declare(block, CACHED_BLOCK, "float [N]: summed scores of the cached positions",
                   TensorInfo(TensorProto.FLOAT, ("N",)))
        scores = b.slice(scores, past, [np.iinfo(np.int64).max], [1])
    if query is not None:
        steps = b.unsqueeze(_positions(eg, b.dim(scores, 1)), [0])
        at = b.ints([query]) if isinstance(query, int) else b.unsqueeze(query, [1])
        scores = b.where(b.op("Equal", steps, at), zero, scores)
    info = TensorInfo(TensorProto.FLOAT, ("N", None))
    eg.declare(scores, TOKENS, "float [N, tokens]: one score per token", info)
    for name in reading.text:
        eg.declare(scores, ATTRIBUTION + name, f"float [N, tokens]: score of each token of "
                   f"'{name}'", info)
    if reading.grid is not None:
        rows, cols = reading.grid
        patches = b.slice(scores, [reading.prefix], [np.iinfo(np.int64).max], [1])
        grid = b.reshape(patches, [0, 1, rows, cols])
        eg.declare(grid, PATCHES, "float [N, 1, rows, cols]: patch scores on the grid",
                   TensorInfo(TensorProto.FLOAT, ("N", 1, rows, cols)))
        declare_maps(eg, resized_maps(eg, grid, upsample), "patch scores")


def _targeted(eg: ExplainerGraph, options):
    """The explained-row copy (methods/_explained_row) under a next-token objective."""
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
        passes = [flow.relevance_pass(maps, _active(eg, options))] if reads == "relevance" \
            else []
        pre = flow.explained_row(_targeted(eg, options), maps[-1])
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
    pre = flow.explained_row(_targeted(eg, options), last)
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
