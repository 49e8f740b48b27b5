"""Guided Backprop (Springenberg et al. 2015): the gradient with a modified ReLU backward."""

from __future__ import annotations

from ..rules import GUIDED_BACKPROP
from . import MethodOutput, MethodSpec, register


def guided_backprop(engine, feeds, target, sources):
    """The gradient of the target score where every ReLU passes only positive signals at
    positive inputs: dx = relu(g) * [x > 0] (other ops keep their usual backward)."""
    run = engine.gradients(feeds, target, [s.tensor for s in sources], rules=GUIDED_BACKPROP)
    return MethodOutput(run, dict(run.grads))


register(MethodSpec(
    name="guided_backprop",
    run=guided_backprop,
    summary="gradient where ReLUs pass only positive signals at positive inputs",
    reference="Springenberg, Dosovitskiy, Brox, Riedmiller 2015, arXiv:1412.6806",
    family="gradient",
    token_reduction="norm",
))
