"""Attention methods baked into the explainer graph: the per-layer chain of
methods/_attention_graph.py, then padding and the query token zeroed, and for vision
transformers the patch grid resized over the image, all as ONNX ops."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.attention import token_layout_of
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..methods._attention_graph import (
    ROW,
    attention_mean,
    chain_post,
    gradient_times_attention,
    gradient_times_relevance,
    head_mean,
)
from ..methods._tokens import (
    attention_layers,
    cached_inputs,
    is_auto_query,
    layer_index,
    probabilities,
    query_index,
)
from ..methods.attention_flow import relevance_pass
from .graph import ExplainerGraph
from .methods import ATTRIBUTION, register_export, resize_like_torch


def _layout(eg: ExplainerGraph, layers, query) -> dict:
    """Where the scores go: token-id inputs, or the patch grid of an image input (static
    shapes only), and the query row (None: the mean of all rows)."""
    cached = cached_inputs(eg.model)
    if cached:  # the in-process methods square [Tq, P + Tq] maps; the export does not
        raise InputError(f"exported attention methods read square maps, and this model has a "
                         f"KV cache ({', '.join(cached)}): explain it in process")
    sources, _ = find_sources(eg.model)
    text = [s.input for s in sources if s.per_token]
    layout = {"text": text, "image": None, "prefix": 0, "grid": None}
    if not text:
        static = token_layout_of(eg.model, layers)
        images = [spec.name for spec in eg.model.inputs if spec.is_float and spec.dims and
                  len(spec.dims) == 4]
        if not static or not static.get("patch_grid") or not images:
            raise InputError("an exported attention method needs token-id inputs or an image "
                             "input with static height, width and token count")
        layout.update(image=images[0], prefix=static.get("class_tokens", 0),
                      grid=tuple(static["patch_grid"]))
    layout["query"] = ((0 if (text or layout["prefix"]) else None) if is_auto_query(query)
                       else query_index(query, None))
    return layout


def _finish(eg: ExplainerGraph, scores: str, layers, layout: dict, upsample: str) -> None:
    """Zero padded tokens and the query's own entry; declare the outputs."""
    b = eg.b
    masks = sorted({name for layer in layers for name in layer.mask_inputs})
    for name in masks:
        info = b.info(name)
        if info.rank == 2:
            real = b.op("Not", b.equal(name, b.scalar(0, name)))
            scores = b.op("Mul", scores, b.op("Cast", real, to=b.dtype(scores)))
    if layout["query"] is not None:
        positions = b.range(b.const(np.array(0, np.int64)),
                            b.squeeze(b.dim(scores, 1), [0]), b.const(np.array(1, np.int64)))
        own = b.op("Equal", positions, b.const(np.array(layout["query"], np.int64)))
        scores = b.op("Mul", scores, b.op("Cast", b.op("Not", own), to=b.dtype(scores)))
    dtype = b.dtype(scores)
    eg.declare(scores, "tokens", "float [N, tokens]: one score per token",
               TensorInfo(dtype, ("N", None)))
    for name in layout["text"]:
        eg.declare(scores, ATTRIBUTION + name, f"float [N, tokens]: score of each token of "
                   f"'{name}'", TensorInfo(dtype, ("N", None)))
    if layout["image"] is not None:
        rows, cols = layout["grid"]
        patches = b.slice(scores, [layout["prefix"]], [np.iinfo(np.int64).max], [1])
        grid = b.op("Reshape", patches, b.ints([0, 1, rows, cols]))
        eg.declare(grid, "patches", "float [N, 1, rows, cols]: patch scores on the grid",
                   TensorInfo(dtype, ("N", 1, rows, cols)))
        if upsample != "none":
            image = layout["image"]
            size = b.concat([b.dims(grid, 0, 2), b.dims(image, 2, 4)], axis=0)
            eg.declare(resize_like_torch(b, grid, size, upsample), ATTRIBUTION + image,
                       f"patch scores resized to input '{image}'",
                       TensorInfo(dtype, ("N", 1, None, None)))


def _chain(eg, options, weighting, step: str, reads: str, start: int = 0) -> None:
    layers = attention_layers(eg.model, options["attention"])
    layout = _layout(eg, layers, options["query"])
    maps = probabilities(layers)
    first = layer_index(start, len(layers))
    post = chain_post("export", maps, first, weighting, step, layout["query"])
    if reads == "nothing":
        eg.target()
        grads = {}
    elif reads == "gradients":
        grads = eg.gradient_passes(maps)
    else:
        sources, _ = find_sources(eg.model)
        grads = eg.gradient_passes(maps, passes=[relevance_pass(layers, sources)])
    scores = post.emit(eg.b, grads)[ROW]
    _finish(eg, scores, layers, layout, options["upsample"])


@register_export("raw_attention")
def raw_attention(eg, options):
    """E_h A_L of the last layer, at the query row."""
    layers = attention_layers(eg.model, options["attention"])
    layout = _layout(eg, layers, options["query"])
    eg.target()
    mean = head_mean(eg.b, layers[-1].probabilities)
    b = eg.b
    row = (b.reduce("ReduceMean", mean, [1], False) if layout["query"] is None else
           b.squeeze(b.op("Gather", mean, b.ints([layout["query"]]), axis=1), [1]))
    _finish(eg, row, layers, layout, options["upsample"])


@register_export("rollout")
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

