"""Grad-CAM (Selvaraju et al. 2017): layer activations weighted by their mean gradients."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._layer import layer_graph_run
from .options import flag, layer_option, upsample_option


def grad_cam(engine, feeds, target, sources, *, layer: str | None = None, relu: bool = True,
             upsample: str = "bilinear"):
    """L_c = ReLU(sum_k alpha_k A_k), alpha_k = mean over (i, j) of d S_c / d A_k(i, j).

    The layer defaults to the last spatial conv block (`onnxplain inspect` lists the
    candidates); the map is resized to each image input ("bilinear", "nearest" or "none").
    One program, export.layer_maps.grad_cam's (the one `export` saves).
    """
    options = {"layer": layer, "relu": relu, "upsample": upsample}
    run, tensor, maps = layer_graph_run(engine, "grad_cam", feeds, target, options)
    return MethodOutput(run, at_inputs=dict(run.grads), tensors={tensor: maps},
                        extras={"layer": tensor}, signed=not relu)


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
