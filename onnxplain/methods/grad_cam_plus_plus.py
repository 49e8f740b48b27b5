"""Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weights from higher-order terms."""

from __future__ import annotations

import numpy as np

from . import MethodOutput, MethodSpec, register
from ._layer import maps_per_image_input, spatial_layer
from .options import layer_option, upsample_option


def grad_cam_plus_plus(engine, feeds, target, sources, *, layer: str | None = None,
                       upsample: str = "bilinear"):
    """L_c = ReLU(sum_k w_k A_k) with w_k = sum_ij a_kij relu(g_kij) and
    a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3): the paper's closed form for an exponential of
    the score, written with first-order gradients g = d S_c / d A (as its reference code)."""
    tensor = spatial_layer(engine, layer)
    run = engine.gradients(feeds, target, [tensor], taps=[tensor])
    activations = run.taps[tensor].astype(np.float64)
    grads = run.grads[tensor].astype(np.float64)
    square, cube = grads ** 2, grads ** 3
    mass = activations.sum(axis=(2, 3), keepdims=True)
    denominator = 2 * square + mass * cube
    alpha = np.divide(square, denominator, out=np.zeros_like(square),
                      where=denominator != 0)
    weights = (alpha * np.maximum(grads, 0)).sum(axis=(2, 3), keepdims=True)
    maps = np.maximum((weights * activations).sum(axis=1, keepdims=True), 0)
    maps = maps.astype(run.taps[tensor].dtype)
    return MethodOutput(run, at_inputs=maps_per_image_input(feeds, maps, upsample),
                        tensors={tensor: maps}, extras={"layer": tensor}, signed=False)


register(MethodSpec(
    name="grad_cam_plus_plus",
    run=grad_cam_plus_plus,
    summary="Grad-CAM with pixel-wise gradient weights (better for several instances)",
    reference="Chattopadhay, Sarkar, Howlader, Balasubramanian 2018, arXiv:1710.11063",
    family="layer",
    options=(layer_option(), upsample_option()),
))
