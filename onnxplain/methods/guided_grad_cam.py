"""Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop times the upsampled Grad-CAM."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._common import input_sources
from ._layer import layer_graph_run
from .options import layer_option, upsample_option


def guided_grad_cam(engine, feeds, target, sources, *, layer: str | None = None,
                    upsample: str = "nearest"):
    """Guided Backprop attributions of each image input times the Grad-CAM map resized to
    it (nearest neighbour by default, as Captum's GuidedGradCam does). One program,
    export.layer_maps.guided_grad_cam's (the one `export` saves)."""
    input_sources(sources, feeds, "guided_grad_cam")
    options = {"layer": layer, "upsample": upsample}
    run, tensor, maps = layer_graph_run(engine, "guided_grad_cam", feeds, target, options)
    return MethodOutput(run, at_inputs=dict(run.grads), tensors={tensor: maps},
                        extras={"layer": tensor})


register(MethodSpec(
    name="guided_grad_cam",
    run=guided_grad_cam,
    summary="Guided Backprop times the Grad-CAM map resized to the input",
    reference="Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra 2017, arXiv:1610.02391",
    family="layer",
    options=(layer_option(), upsample_option("nearest")),
))
