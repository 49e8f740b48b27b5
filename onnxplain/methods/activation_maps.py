"""Activation maps: what a layer computes, before and after its activation function.

The seed documents stress reading pre-activations (logits) as well as activations, and the
negative parts as well as the positive ones: a unit pushed far below zero (a 'not' in a
sentence) can decide a prediction as much as one that fires.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.layers import resolve_layer
from ..graph.op_kinds import ACTIVATIONS
from . import MethodOutput, MethodSpec, register
from ._common import clean_run, fixed_target
from ._layer import maps_per_image_input
from .options import layer_option, upsample_option


def pre_and_post(model, tensor: str) -> tuple[str, str | None]:
    """(pre-activation, post-activation) around `tensor`: it is either the output of an
    activation (then its input is the pre-activation) or the input of one."""
    producer = model.node_by_output.get(tensor)
    if producer is not None and producer.op_type in ACTIVATIONS:
        return producer.input[0], tensor
    users = [n for n in model.consumers.get(tensor, []) if n.op_type in ACTIVATIONS]
    return tensor, (users[0].output[0] if len(users) == 1 else None)


def activation_maps(engine, feeds, target, sources, *, layer: str | None = None,
                    upsample: str = "bilinear"):
    """Pre- and post-activation values at `layer` (default: the last spatial conv block),
    each also split into its positive part and its negative part (tensors named
    'TENSOR:positive' and 'TENSOR:negative'). For image models the channel sum of the
    pre-activation, positive and negative regions alike, is resized to the input."""
    tensor = resolve_layer(engine.model, layer)
    pre, post = pre_and_post(engine.model, tensor)
    names = [pre] + ([post] if post else [])
    target, outputs = fixed_target(engine, feeds, target)
    values = engine.forward(feeds, taps=names)
    tensors: dict[str, np.ndarray] = {}
    for name in names:
        value = values[name]
        if value.dtype.kind != "f":
            raise InputError(f"layer '{name}' is not a float tensor")
        tensors[name] = value
        tensors[f"{name}:positive"] = np.maximum(value, 0)
        tensors[f"{name}:negative"] = np.minimum(value, 0)
    at_inputs = {}
    if values[pre].ndim == 4:
        maps = values[pre].sum(axis=1, keepdims=True)
        at_inputs = maps_per_image_input(feeds, maps, upsample)
    extras = {"layer": tensor, "pre_activation": pre, "post_activation": post}
    return MethodOutput(clean_run(outputs, target, engine), at_inputs=at_inputs,
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
