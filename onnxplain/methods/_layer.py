"""What the layer methods share: the layer tensor, and maps resized to each image input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..engine import GradientRun
from ..errors import InputError
from ..graph.layers import resolve_layer
from ..graph.op_kinds import ACTIVATIONS
from ..graph.sources import Source
from ..images import image_layout
from ..maps import resize_maps
from ._graph import graph_run

LAYER_MAP = "layer_map"  # the program's output: the map at the layer's resolution
PRE, POST = "pre_activation", "post_activation"  # activation_maps' outputs, with PARTS
PARTS = ("", ":positive", ":negative")


def spatial_layer(model, layer: str | None) -> str:
    """The layer tensor, checked to be [batch, channels, height, width]."""
    tensor = resolve_layer(model, layer)
    info = model.infos.get(tensor)
    if info is None or info.rank != 4:
        rank = None if info is None else info.rank
        raise InputError(f"layer '{tensor}' has rank {rank} and is not a [batch, channels, "
                         "height, width] tensor, which this method needs")
    return tensor


def pre_and_post(model, tensor: str) -> tuple[str, str | None]:
    """(pre-activation, post-activation) around `tensor`: it is either the output of an
    activation (then its input is the pre-activation) or the input of one."""
    producer = model.node_by_output.get(tensor)
    if producer is not None and producer.op_type in ACTIVATIONS:
        return producer.input[0], tensor
    users = [n for n in model.consumers.get(tensor, []) if n.op_type in ACTIVATIONS]
    return tensor, (users[0].output[0] if len(users) == 1 else None)


def image_inputs(model) -> dict[str, str]:
    """Float inputs declared as images -> 'NCHW' or 'NHWC' (viz.heatmap.image_layout on the
    declared dims, a symbolic size read as more than one pixel; a symbolic channel axis
    reads as NCHW), what layer maps are resized to, in-process and exported alike."""
    from ._tokens import cached_inputs  # _tokens reads maps_per_image_input from here

    cached = cached_inputs(model)  # a KV cache [batch, heads, past, size] is no image
    found = {}
    for spec in model.inputs:
        dims = spec.dims
        if not spec.is_float or spec.name in cached or dims is None or len(dims) != 4:
            continue
        known = tuple(d if isinstance(d, int) else 2 for d in dims)
        layout = image_layout(known) or ("NCHW" if not isinstance(dims[1], int) else None)
        if layout is not None:
            found[spec.name] = layout
    return found


def image_sources(model) -> list[Source]:
    """The image inputs as sources: where a layer method's resized maps come back."""
    return [Source(name, name) for name in image_inputs(model)]


def maps_per_image_input(feeds: Mapping[str, np.ndarray], maps: np.ndarray, mode: str
                         ) -> dict[str, np.ndarray]:
    """[N, 1, h, w] maps resized to every image input: [N, 1, H, W] (NCHW inputs) or
    [N, H, W, 1] (NHWC inputs)."""
    out = {}
    for name, value in feeds.items():
        layout = image_layout(value.shape) if value.dtype.kind == "f" else None
        if layout is None:
            continue
        size = value.shape[2:] if layout == "NCHW" else value.shape[1:3]
        resized = resize_maps(maps, tuple(size), mode).astype(value.dtype)
        out[name] = resized if layout == "NCHW" else resized.transpose(0, 2, 3, 1)
    if not out:
        raise InputError("layer maps are resized to image inputs, and the model has none "
                         "(inputs shaped [batch, channels, height, width])")
    return out


def layer_graph_run(engine, method: str, feeds: Mapping[str, np.ndarray], target,
                    options: Mapping) -> tuple[GradientRun, str, np.ndarray]:
    """Run a layer-map method's one graph (export.layer_maps): (the run, whose grads are the
    maps resized to each image input; the layer tensor; its map at the layer's resolution)."""
    tensor = spatial_layer(engine.model, options["layer"])
    run = graph_run(engine, method, feeds, target, image_sources(engine.model), options,
                    read=(LAYER_MAP,))
    return run, tensor, run.post[LAYER_MAP]
