"""CAM (Zhou et al. 2016): class activation maps of global-average-pool + dense heads."""

from __future__ import annotations

import numpy as np

from ..engine import OutputSeed
from ..graph.heads import dense_head
from . import MethodOutput, MethodSpec, register
from ._common import clean_run, fixed_target
from ._layer import maps_per_image_input, spatial_layer
from .options import layer_option, upsample_option


def cam(engine, feeds, target, sources, *, layer: str | None = None,
        upsample: str = "bilinear"):
    """M_c(i, j) = sum_k w_ck A_k(i, j), with w the dense layer's weights for class c.

    Needs the layer to feed a global average pool and one dense layer that produces the
    explained output (the head is checked). No gradient is run.
    """
    tensor = spatial_layer(engine, layer)
    weights, _ = dense_head(engine.model, tensor, engine.output)
    target, outputs = fixed_target(engine, feeds, target)
    activations = engine.forward(feeds, taps=[tensor])[tensor]
    per_row = (target.values @ weights if isinstance(target, OutputSeed)
               else weights[np.asarray(target)])
    maps = np.einsum("nk,nkhw->nhw", per_row, activations)[:, None]
    maps = maps.astype(activations.dtype)
    return MethodOutput(clean_run(outputs, target, engine),
                        at_inputs=maps_per_image_input(feeds, maps, upsample),
                        tensors={tensor: maps}, extras={"layer": tensor})


register(MethodSpec(
    name="cam",
    run=cam,
    summary="class activation map: dense-layer weights times the last conv activations",
    reference="Zhou, Khosla, Lapedriza, Oliva, Torralba 2016, arXiv:1512.04150",
    family="layer",
    options=(layer_option(), upsample_option()),
))
