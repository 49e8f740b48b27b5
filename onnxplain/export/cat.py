"""CAT and AttnCAT as one graph each (methods/cat.py has the formulas): the gradients at the
hidden states, their products with them summed per head slice, AttnCAT's weighting by the
query row of each layer's attention, the mean over heads and the sum over layers, padding
and the query's own entry zeroed, and for vision transformers the patch grid resized over
the image. The program `export` saves and the in-process methods run (methods._graph)."""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import InputError
from ..graph.attention import (
    attention_layers,
    cached_inputs,
    is_auto_query,
    query_index,
    token_layout_of,
)
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..images import image_inputs
from .attention import AUTO_ROW, auto_reads_text, finish_scores, query_rows
from .attention_graph import Reading, wide
from .graph import ExplainerGraph
from .methods import register_export

TOKENS, PATCHES = "tokens", "patches"  # the programs' outputs besides the attributions
LAYER = "layer/"  # and each layer's share of the scores, "layer/<index>"


def hidden_states(layers) -> list[str]:
    missing = [layer.index for layer in layers if layer.hidden is None]
    if missing:
        raise InputError(f"the hidden state read by attention layer(s) {missing} was not "
                         "found (Q, K and V must be projected from one tensor)")
    return [layer.hidden for layer in layers]


def static_tokens(model, layers) -> int | None:
    layout = token_layout_of(model, layers)
    return None if layout is None else layout["tokens"]


def static_grid(model, layers) -> tuple[int, tuple[int, int]] | None:
    """(class tokens in front, patch grid) of an image model with static shapes."""
    layout = token_layout_of(model, layers)
    if not layout or not layout.get("patch_grid"):
        return None
    return layout.get("class_tokens", 0), tuple(layout["patch_grid"])


def query_row(query, class_token: bool, tokens: int | None) -> int | None:
    """The query row read: 'auto' is the class token (0) where there is one, else the mean
    of all rows (None), and over token ids the graph decides (export.attention.AUTO_ROW);
    a negative index counts from the end, in the graph where the token count is not
    static."""
    if is_auto_query(query):
        return 0 if class_token else None
    if tokens is None and _negative(query):
        return int(query)
    return query_index(query, tokens)


def _negative(query) -> bool:
    try:
        return int(query) < 0
    except (TypeError, ValueError):
        return False


def text_inputs(model, sources: Mapping[str, str] | None) -> list[str]:
    """The token-id inputs ([batch, tokens]) that take the scores as they are: in process
    the explainer's that methods.cat chose (`sources`, images aside), else the model's."""
    if sources is not None:
        return [name for name in sources if name not in image_inputs(model)]
    shaped = {spec.name for spec in model.inputs if spec.dims is not None
              and len(spec.dims) == 2}
    return [s.input for s in find_sources(model)[0] if s.per_token and s.input in shaped]


def _head_shares(eg: ExplainerGraph, layer, grad: str, hidden: str) -> str:
    """[N, S, D] gradient and activation -> [N, S, heads]: g * h summed per head slice."""
    b = eg.b
    info = b.info(hidden)
    if info.rank is not None and info.rank != 3:
        raise InputError(f"hidden state '{hidden}' has shape {info.shape}; CAT needs [batch, "
                         "tokens, features]")
    heads = layer.heads
    features = info.shape[-1] if info.shape else None
    if heads and isinstance(features, int) and features % heads:
        raise InputError(f"hidden state '{hidden}' has shape {info.shape}; CAT needs [batch, "
                         f"tokens, features] with features divisible by {heads} heads")
    count = b.ints([heads]) if heads else b.dim(layer.probabilities, 1)
    product = b.op("Mul", wide(b, grad), wide(b, hidden))
    split = b.op("Reshape", product, b.concat([b.ints([0, 0]), count, b.ints([-1])], 0))
    return b.reduce("ReduceSum", split, [-1], False)


def _query_weights(eg: ExplainerGraph, probabilities: str, query: int | str | None) -> str:
    """[N, S, heads]: the query row of the attention map (the mean of its rows for None,
    each row's own for an int64 [N] tensor)."""
    b = eg.b
    a = wide(b, probabilities)
    if query is None:
        row = b.reduce("ReduceMean", a, [2], False)
    elif isinstance(query, int):
        row = b.squeeze(b.op("Gather", a, b.ints([query]), axis=2), [2])
    else:
        sizes = b.concat([b.dim(a, 0), b.dim(a, 1), b.ints([1]), b.dim(a, 3)], 0)
        at = b.op("Expand", b.reshape(query, [-1, 1, 1, 1]), sizes)
        row = b.squeeze(b.op("GatherElements", a, at, axis=2), [2])
    return b.op("Transpose", row, perm=[0, 2, 1])


def _check_rows(eg: ExplainerGraph, layers, hidden: list[str], method: str) -> None:
    """Export only (in process, methods.cat skips such layers from their shapes on a row):
    refuse hidden states whose first axis is not the batch's (window attention)."""
    batch = eg.model.inputs[0].dims[0] if eg.model.inputs[0].dims else None
    for layer, name in zip(layers, hidden, strict=True):
        shape = eg.b.info(name).shape
        if batch is not None and shape and shape[0] != batch:
            raise InputError(f"{method} adds the layers' scores row by row, and layer "
                             f"{layer.index}'s hidden state '{name}' is not one row per input "
                             f"(first axis {str(shape[0])[:60]}, window attention?): name the "
                             "layers with attention=..., or explain in process, which skips "
                             "such layers")


def _build(eg: ExplainerGraph, options: dict, weighted: bool) -> None:
    b = eg.b
    layers = attention_layers(eg.model, options["attention"])
    hidden = hidden_states(layers)
    if eg.sources is None:
        _check_rows(eg, layers, hidden, "attncat" if weighted else "cat")
    if weighted and cached_inputs(eg.model):
        raise InputError(f"attncat reads each layer's query row over the explained tokens, and "
                         f"this model has a KV cache ({', '.join(cached_inputs(eg.model))}) "
                         "whose keys come before them: use cat")
    text = text_inputs(eg.model, eg.sources)
    grid = None if text else static_grid(eg.model, layers)
    query = query_row(options["query"], bool(text) or bool(grid and grid[0]),
                      static_tokens(eg.model, layers))
    if auto_reads_text(eg, layers, options["query"], text):  # as the attention methods
        query = query_rows(eg, layers, AUTO_ROW)
    grads = eg.gradients(list(dict.fromkeys(hidden)))
    total = None
    for layer, name in zip(layers, hidden, strict=True):
        shares = _head_shares(eg, layer, grads[name], name)
        if weighted:
            shares = b.op("Mul", shares, _query_weights(eg, layer.probabilities, query))
        score = b.reduce("ReduceMean", shares, [-1], False)
        eg.declare(score, f"{LAYER}{layer.index}", f"float [N, tokens]: layer {layer.index}'s "
                   "share of the scores", TensorInfo(b.dtype(score), ("N", None)))
        total = score if total is None else b.op("Add", total, score)
    reading = Reading(query, *(grid or (0, None)), tuple(text))
    finish_scores(eg, total, layers, reading, query, options["upsample"])


@register_export("cat")
def cat(eg, options):
    """sum_l E_h (sum_{d in head h} g_l[i, d] h_l[i, d]) per token i."""
    _build(eg, options, weighted=False)


@register_export("attncat")
def attncat(eg, options):
    """CAT with each head's share weighted by the query token's attention to token i."""
    _build(eg, options, weighted=True)
