"""Guided Grad-CAM (Selvaraju et al. 2017): Guided Backprop times the upsampled Grad-CAM."""

from __future__ import annotations

from ..engine import OutputSeed
from ..rules import GUIDED_BACKPROP
from . import MethodOutput, MethodSpec, register
from ._common import input_sources
from ._layer import maps_per_image_input
from .grad_cam import grad_cam_maps
from .options import layer_option, upsample_option


def guided_grad_cam(engine, feeds, target, sources, *, layer: str | None = None,
                    upsample: str = "nearest"):
    """Guided Backprop attributions of each image input times the Grad-CAM map resized to
    it (nearest neighbour by default, as Captum's GuidedGradCam does)."""
    names = [s.tensor for s in input_sources(sources, feeds, "guided_grad_cam")]
    tensor, maps, run = grad_cam_maps(engine, feeds, target, layer, relu=True)
    same = target if isinstance(target, OutputSeed) else run.target
    guided = engine.gradients(feeds, same, names, rules=GUIDED_BACKPROP)
    resized = maps_per_image_input(feeds, maps, upsample)
    values = {name: guided.grads[name] * resized[name] for name in names if name in resized}
    return MethodOutput(run, at_inputs=values, tensors={tensor: maps},
                        extras={"layer": tensor})


register(MethodSpec(
    name="guided_grad_cam",
    run=guided_grad_cam,
    summary="Guided Backprop times the Grad-CAM map resized to the input",
    reference="Selvaraju, Cogswell, Das, Vedantam, Parikh, Batra 2017, arXiv:1610.02391",
    family="layer",
    options=(layer_option(), upsample_option("nearest")),
))
