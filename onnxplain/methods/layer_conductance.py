"""Layer conductance (Dhamdhere, Sundararajan, Yan 2018, "How important is a neuron?";
Shrikumar, Su, Kundaje 2018 give the same quantity a cheaper form)."""

from __future__ import annotations

from ..export.conductance import LAYER_ATTRIBUTION, spatial_maps
from ..export.graph import FED
from ..export.methods import BASELINE, BASELINE_SCORE, SCORE
from ..graph.layers import resolve_layer
from . import MethodOutput, MethodSpec, register
from ._common import ConvergenceWarning, completeness_delta, input_sources
from ._graph import graph_run
from ._layer import image_sources
from .baselines import make_baselines
from .integrated_gradients import INTERNAL_BATCH_SIZE, RULE, path_work
from .options import (
    BASELINE_SEED,
    BASELINE_VALUE,
    BLUR_SIGMA,
    delta_tolerance,
    layer_option,
    n_steps_option,
    path_baseline,
    upsample_option,
)

# Without integrated_gradients' "auto": conductance sums over a fixed set of points.
N_STEPS = n_steps_option()  # no auto: IG's orders are chosen by IG's own delta


def layer_conductance(engine, feeds, target, sources, *, layer: str | None = None,
                      n_steps: int = 50, rule: str = "gausslegendre", baseline="zeros",
                      baseline_value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0,
                      internal_batch_size: int = 0, delta_tolerance: float = 0.05,
                      upsample: str = "bilinear"):
    """Cond_j = integral over a in [0, 1] of dS_c/dy_j * dy_j/da, y_j(a) unit j of `layer`
    at x' + a (x - x'), discretised as Captum's LayerConductance does:
    sum_{s<n} dS_c/dy_j(a_s) (y_j(a_{s+1}) - y_j(a_s)) over the n_steps + 1 points a_s of
    the quadrature `rule`. The units' sum approaches S_c(x) - S_c(x') (completeness;
    extras["convergence_delta"] per row, a ConvergenceWarning beyond `delta_tolerance`).
    One program, export.conductance's (the one `export` saves): the path runs in IG's
    Loop; baselines as integrated_gradients takes them. The layer is a tensor or node name
    (default: the last spatial conv block) computed from the float inputs alone. The
    conductance comes back at the layer (Attribution.tensors); a [N, C, H, W] layer's,
    summed over channels, also as maps at the image inputs, resized as Grad-CAM's
    ("bilinear", "nearest" or "none").
    """
    moved = input_sources(sources, feeds, "layer_conductance")
    names = [source.tensor for source in moved]
    baselines = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    tensor = resolve_layer(engine.model, layer)
    options = {"layer": tensor, "n_steps": int(n_steps), "rule": rule, "baseline": FED,
               "baseline_value": 0.0, "internal_batch_size": internal_batch_size,
               "upsample": upsample}
    maps = image_sources(engine.model) if spatial_maps(engine.model, tensor) else []
    run = graph_run(engine, "layer_conductance", feeds, target, maps, options,
                    fed={BASELINE + name: value for name, value in baselines.items()},
                    read=(LAYER_ATTRIBUTION, SCORE, BASELINE_SCORE), specialise=False)
    values = run.post[LAYER_ATTRIBUTION]
    delta = completeness_delta({tensor: values}, run.post[SCORE], run.post[BASELINE_SCORE],
                               delta_tolerance, ConvergenceWarning, "layer conductance",
                               "the layer's units miss the output difference",
                               "use more n_steps")
    return MethodOutput(run, at_inputs=dict(run.grads), tensors={tensor: values},
                        extras={"layer": tensor, "convergence_delta": delta})


register(MethodSpec(
    name="layer_conductance",
    run=layer_conductance,
    summary="conductance of each unit of a layer: the path integral of the score's flow "
            "through it (completeness delta in extras)",
    reference="Dhamdhere, Sundararajan, Yan 2018, arXiv:1805.12233; Shrikumar, Su, Kundaje "
              "2018, arXiv:1807.09946",
    family="layer",
    options=(layer_option(), N_STEPS, RULE, path_baseline(), BASELINE_VALUE, BLUR_SIGMA,
             BASELINE_SEED, INTERNAL_BATCH_SIZE, delta_tolerance(0.05), upsample_option()),
    work=path_work,
))
