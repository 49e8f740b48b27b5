"""CAM (Zhou et al. 2016): class activation maps of global-average-pool + dense heads."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._layer import layer_graph_run
from .options import layer_option, upsample_option


def cam(engine, feeds, target, sources, *, layer: str | None = None,
        upsample: str = "bilinear"):
    """M_c(i, j) = sum_k w_ck A_k(i, j), with w the dense layer's weights for class c.

    Needs the layer to feed a global average pool and one dense layer that produces the
    explained output (the head is checked). No gradient is run: one forward program,
    export.layer_maps.cam's (the one `export` saves).
    """
    options = {"layer": layer, "upsample": upsample}
    run, tensor, maps = layer_graph_run(engine, "cam", feeds, target, options)
    return MethodOutput(run, at_inputs=dict(run.grads), tensors={tensor: maps},
                        extras={"layer": tensor})


register(MethodSpec(
    name="cam",
    run=cam,
    summary="class activation map: dense-layer weights times the last conv activations",
    reference="Zhou, Khosla, Lapedriza, Oliva, Torralba 2016, arXiv:1512.04150",
    family="layer",
    options=(layer_option(), upsample_option()),
))
