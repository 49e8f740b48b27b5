"""Guided Backprop (Springenberg et al. 2015): the gradient with a modified ReLU backward."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._graph import graph_run


def guided_backprop(engine, feeds, target, sources):
    """The gradient of the target score where every ReLU passes only positive signals at
    positive inputs: dx = relu(g) * [x > 0] (other ops keep their usual backward)."""
    run = graph_run(engine, "guided_backprop", feeds, target, sources, {})
    return MethodOutput(run, dict(run.grads))


register(MethodSpec(
    name="guided_backprop",
    run=guided_backprop,
    summary="gradient where ReLUs pass only positive signals at positive inputs",
    reference="Springenberg, Dosovitskiy, Brox, Riedmiller 2015, arXiv:1412.6806",
    family="gradient",
    token_reduction="norm",
))
