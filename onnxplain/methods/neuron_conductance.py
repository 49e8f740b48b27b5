"""Neuron conductance (Dhamdhere, Sundararajan, Yan 2018, "How important is a neuron?"):
each input's share of the flow through one unit of a layer."""

from __future__ import annotations

from ..export.graph import FED
from ..export.methods import BASELINE
from ..graph.layers import resolve_layer
from . import MethodOutput, MethodSpec, register
from ._common import input_sources
from ._graph import graph_run
from .baselines import make_baselines
from .integrated_gradients import INTERNAL_BATCH_SIZE, RULE, path_work
from .layer_conductance import N_STEPS
from .options import (
    BASELINE_SEED,
    BASELINE_VALUE,
    BLUR_SIGMA,
    integer,
    layer_option,
    path_baseline,
)


def neuron_conductance(engine, feeds, target, sources, *, neuron: int = 0,
                       layer: str | None = None, n_steps: int = 50,
                       rule: str = "gausslegendre", baseline="zeros",
                       baseline_value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0,
                       internal_batch_size: int = 0):
    """NC_i = (x_i - x'_i) integral over a in [0, 1] of dS_c/dy_j dy_j/dx_i at
    x' + a (x - x'), y_j unit `neuron` of `layer` (a flat index into one row of the layer,
    C order: numpy's ravel_multi_index of Captum's tuple selector), with the quadrature
    `rule` at n_steps points (Gauss-Legendre as integrated_gradients; Captum's trapezoid
    weights sum to (n-1)/n, the trapezoid rule's here to 1). The inputs' sum approaches
    unit j's layer conductance. One program, export.conductance's (the one `export`
    saves); baselines as integrated_gradients takes them.
    """
    moved = input_sources(sources, feeds, "neuron_conductance")
    names = [source.tensor for source in moved]
    baselines = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    tensor = resolve_layer(engine.model, layer)
    options = {"neuron": neuron, "layer": tensor, "n_steps": int(n_steps), "rule": rule,
               "baseline": FED, "baseline_value": 0.0,
               "internal_batch_size": internal_batch_size}
    run = graph_run(engine, "neuron_conductance", feeds, target, moved, options,
                    fed={BASELINE + name: value for name, value in baselines.items()},
                    specialise=False)
    return MethodOutput(run, dict(run.grads), extras={"layer": tensor, "neuron": neuron})


register(MethodSpec(
    name="neuron_conductance",
    run=neuron_conductance,
    summary="each input's share of the flow through one unit of a layer (path integral)",
    reference="Dhamdhere, Sundararajan, Yan 2018, arXiv:1805.12233",
    family="gradient",
    options=(integer("neuron", 0, "the unit: a flat index into one row of the layer (C "
                     "order)", low=0),
             layer_option(), N_STEPS, RULE, path_baseline(), BASELINE_VALUE, BLUR_SIGMA,
             BASELINE_SEED, INTERNAL_BATCH_SIZE),
    work=path_work,
))
