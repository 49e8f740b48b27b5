"""Activation maps: what a layer computes, before and after its activation function.

The seed documents stress reading pre-activations (logits) as well as activations, and the
negative parts as well as the positive ones: a unit pushed far below zero (a 'not' in a
sentence) can decide a prediction as much as one that fires.
"""

from __future__ import annotations

from ..export.layer_maps import PARTS, POST, PRE
from ..graph.layers import pre_and_post, resolve_layer
from ..objective import Objective
from . import MethodOutput, MethodSpec, register
from ._common import clean_run
from ._graph import graph_run
from ._layer import image_sources
from .options import layer_option, upsample_option


def activation_maps(engine, feeds, target, sources, *, layer: str | None = None,
                    upsample: str = "bilinear"):
    """Pre- and post-activation values at `layer` (default: the last spatial conv block),
    each also split into its positive part and its negative part (tensors named
    'TENSOR:positive' and 'TENSOR:negative'). For image models the channel sum of the
    pre-activation, positive and negative regions alike, is resized to the input. One
    forward program, export.layer_maps.activation_maps's (the one `export` saves)."""
    resolved = resolve_layer(engine.model, layer)
    pre, post = pre_and_post(engine.model, resolved)
    roles = {PRE: pre, **({POST: post} if post else {})}
    read = [role + part for role in roles for part in PARTS]
    run = graph_run(engine, "activation_maps", feeds, None, image_sources(engine.model),
                    {"layer": layer, "upsample": upsample}, read=read)
    tensors = {roles[role] + part: run.post[role + part] for role in roles for part in PARTS}
    extras = {"layer": resolved, "pre_activation": pre,
              "post_activation": post}
    objective = Objective.resolve(target, run.outputs[engine.output])
    return MethodOutput(clean_run(run.outputs, objective, engine), at_inputs=dict(run.grads),
                        tensors=tensors, extras=extras)


register(MethodSpec(
    name="activation_maps",
    run=activation_maps,
    summary="pre- and post-activation values of a layer, positive and negative parts apart",
    reference="Bau, Zhou, Khosla, Oliva, Torralba 2017 (network dissection), "
              "arXiv:1704.05796",
    family="layer",
    options=(layer_option(), upsample_option()),
    uses_objective=False,
))
