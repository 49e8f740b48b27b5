"""What the layer methods share: the layer tensor, and maps resized to each image input."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..errors import InputError
from ..graph.layers import resolve_layer
from ..maps import resize_maps
from ..viz.heatmap import image_layout


def spatial_layer(engine, layer: str | None) -> str:
    """The layer tensor, checked to be [batch, channels, height, width]."""
    tensor = resolve_layer(engine.model, layer)
    info = engine.model.infos.get(tensor)
    if info is None or info.rank != 4:
        rank = None if info is None else info.rank
        raise InputError(f"layer '{tensor}' has rank {rank}; this method needs a "
                         "[batch, channels, height, width] layer")
    return tensor


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
