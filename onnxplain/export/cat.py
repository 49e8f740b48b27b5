"""CAT and AttnCAT as one graph each (methods/cat.py has the formulas): the gradients at the
hidden states, their products with them summed per head slice, AttnCAT's weighting by the
query row of each layer's attention, the mean over heads and the sum over layers, padding
and the query's own entry zeroed, and for vision transformers the patch grid resized over
the image. The program `export` saves and the in-process methods run (methods._graph)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from onnx import TensorProto

from ..autodiff.ops.shape import iota
from ..errors import InputError
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..methods._attention_graph import wide
from ..methods._layer import image_inputs
from ..methods._tokens import attention_layers, cached_inputs
from ..methods.cat import (
    LAYER,
    PATCHES,
    TOKENS,
    hidden_states,
    query_row,
    static_grid,
    static_tokens,
)
from .graph import ExplainerGraph
from .layer_maps import declare_maps, resized_maps
from .methods import ATTRIBUTION, register_export


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


def _query_weights(eg: ExplainerGraph, probabilities: str, query: int | None) -> str:
    """[N, S, heads]: the query row of the attention map (the mean of its rows for None)."""
    b = eg.b
    a = wide(b, probabilities)
    row = (b.reduce("ReduceMean", a, [2], False) if query is None else
           b.squeeze(b.op("Gather", a, b.ints([query]), axis=2), [2]))
    return b.op("Transpose", row, perm=[0, 2, 1])


def _zero_padding_and_query(eg: ExplainerGraph, scores: str, layers, query: int | None
                            ) -> str:
    """Scores 0 on padded tokens (the last S columns of the [batch, length] inputs the
    attention masks are computed from, as methods._tokens.padding_mask) and at the query."""
    b = eg.b
    tokens = b.dim(scores, 1)
    for name in sorted({name for layer in layers for name in layer.mask_inputs}):
        if name not in {spec.name for spec in eg.model.inputs} or b.info(name).rank != 2:
            continue
        last = b.slice(name, b.op("Neg", tokens), [np.iinfo(np.int64).max], [1])
        zero = b.const(np.zeros((), b.np_dtype(name)))
        scores = b.keep(scores, b.op("Not", b.equal(last, zero)))
    if query is not None:
        at = b.ints([query]) if query >= 0 else b.op("Add", tokens, b.ints([query]))
        scores = b.keep(scores, b.op("Not", b.op("Equal", iota(b, tokens), at)))
    return scores


def _declare(eg: ExplainerGraph, scores: str, text: list[str], grid, upsample: str) -> None:
    b = eg.b
    dtype = b.dtype(scores)
    eg.declare(scores, TOKENS, "float [N, tokens]: one score per token",
               TensorInfo(dtype, ("N", None)))
    for name in text:
        eg.declare(scores, ATTRIBUTION + name, f"float [N, tokens]: score of each token of "
                   f"'{name}'", TensorInfo(dtype, ("N", None)))
    if grid is not None:
        prefix, (rows, cols) = grid
        patches = b.slice(scores, [prefix], [np.iinfo(np.int64).max], [1])
        patches = b.op("Reshape", patches, b.ints([0, 1, rows, cols]))
        eg.declare(patches, PATCHES, "float [N, 1, rows, cols]: patch scores on the grid",
                   TensorInfo(dtype, ("N", 1, rows, cols)))
        if dtype == TensorProto.DOUBLE:  # ONNX Runtime's CPU Resize has no double kernel
            patches = b.op("Cast", patches, to=TensorProto.FLOAT)
        declare_maps(eg, resized_maps(eg, patches, upsample), "the patch scores")


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
    scores = _zero_padding_and_query(eg, total, layers, query)
    _declare(eg, scores, text, grid, options["upsample"])


@register_export("cat")
def cat(eg, options):
    """sum_l E_h (sum_{d in head h} g_l[i, d] h_l[i, d]) per token i."""
    _build(eg, options, weighted=False)


@register_export("attncat")
def attncat(eg, options):
    """CAT with each head's share weighted by the query token's attention to token i."""
    _build(eg, options, weighted=True)
