"""What the layer methods share: the image inputs their maps come back at, and the run of
their one graph (export.layer_maps, which resizes the maps to each image input)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..export.layer_maps import LAYER_MAP
from ..graph.layers import spatial_layer
from ..graph.sources import Source
from ..images import image_inputs
from ..runtime.engine import GradientRun
from ._graph import graph_run


def image_sources(model) -> list[Source]:
    """The image inputs as sources: where a layer method's resized maps come back."""
    return [Source(name, name) for name in image_inputs(model)]


def layer_graph_run(engine, method: str, feeds: Mapping[str, np.ndarray], target,
                    options: Mapping) -> tuple[GradientRun, str, np.ndarray]:
    """Run a layer-map method's one graph (export.layer_maps): (the run, whose grads are the
    maps resized to each image input; the layer tensor; its map at the layer's resolution)."""
    tensor = spatial_layer(engine.model, options["layer"])
    run = graph_run(engine, method, feeds, target, image_sources(engine.model), options,
                    read=(LAYER_MAP,))
    return run, tensor, run.post[LAYER_MAP]
