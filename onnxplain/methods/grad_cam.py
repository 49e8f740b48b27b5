"""Grad-CAM (Selvaraju et al. 2017): layer activations weighted by their mean gradients."""

from __future__ import annotations

import numpy as np

from . import MethodOutput, MethodSpec, register
from ._layer import maps_per_image_input, spatial_layer
from .options import flag, layer_option, upsample_option


def grad_cam_maps(engine, feeds, target, layer: str | None, relu: bool):
    """(layer tensor, [N, 1, h, w] maps, the run): sum_k alpha_k A_k with alpha_k the spatial
    mean of d S_c / d A_k, then ReLU."""
    tensor = spatial_layer(engine, layer)
    run = engine.gradients(feeds, target, [tensor], taps=[tensor])
    activations, grads = run.taps[tensor], run.grads[tensor]
    weights = grads.mean(axis=(2, 3), keepdims=True, dtype=np.float64)
    maps = (weights * activations).sum(axis=1, keepdims=True)
    if relu:
        maps = np.maximum(maps, 0)
    return tensor, maps.astype(activations.dtype), run


def grad_cam(engine, feeds, target, sources, *, layer: str | None = None, relu: bool = True,
             upsample: str = "bilinear"):
    """L_c = ReLU(sum_k alpha_k A_k), alpha_k = mean over (i, j) of d S_c / d A_k(i, j).

    The layer defaults to the last spatial conv block (`onnxplain inspect` lists the
    candidates); the map is resized to each image input ("bilinear", "nearest" or "none").
    """
    tensor, maps, run = grad_cam_maps(engine, feeds, target, layer, relu)
    return MethodOutput(run, at_inputs=maps_per_image_input(feeds, maps, upsample),
                        tensors={tensor: maps}, extras={"layer": tensor}, signed=not relu)


register(MethodSpec(
    name="grad_cam",
    run=grad_cam,
    summary="layer activations weighted by their spatially averaged gradients, ReLU",
    reference="Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra 2017, arXiv:1610.02391",
    family="layer",
    options=(layer_option(), flag("relu", True, "ReLU of the weighted sum (False keeps "
                                                "negative evidence)"),
             upsample_option()),
))
