"""Grad-CAM++ (Chattopadhay et al. 2018): pixel-wise weights from higher-order terms."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._layer import layer_graph_run
from .options import layer_option, upsample_option


def grad_cam_plus_plus(engine, feeds, target, sources, *, layer: str | None = None,
                       upsample: str = "bilinear"):
    """L_c = ReLU(sum_k w_k A_k) with w_k = sum_ij a_kij relu(g_kij) and
    a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3): the paper's closed form for an exponential of
    the score, written with first-order gradients g = d S_c / d A (as its reference code).
    One program, export.layer_maps.grad_cam_plus_plus's (the one `export` saves)."""
    options = {"layer": layer, "upsample": upsample}
    run, tensor, maps = layer_graph_run(engine, "grad_cam_plus_plus", feeds, target, options)
    return MethodOutput(run, at_inputs=dict(run.grads), tensors={tensor: maps},
                        extras={"layer": tensor}, signed=False)


register(MethodSpec(
    name="grad_cam_plus_plus",
    run=grad_cam_plus_plus,
    summary="Grad-CAM with pixel-wise gradient weights (better for several instances)",
    reference="Chattopadhay, Sarkar, Howlader, Balasubramanian 2018, arXiv:1710.11063",
    family="layer",
    options=(layer_option(), upsample_option()),
))
