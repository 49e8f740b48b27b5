"""Deconvnet (Zeiler and Fergus 2014): the gradient with ReLUs that ignore the forward sign."""

from __future__ import annotations

from ..rules import DECONVNET
from . import MethodOutput, MethodSpec, register


def deconvnet(engine, feeds, target, sources):
    """The backward signal through every ReLU is relu(g), whatever the forward input was."""
    run = engine.gradients(feeds, target, [s.tensor for s in sources], rules=DECONVNET)
    return MethodOutput(run, dict(run.grads))


register(MethodSpec(
    name="deconvnet",
    run=deconvnet,
    summary="gradient where ReLUs pass relu(backward signal), ignoring the forward input",
    reference="Zeiler, Fergus 2014, arXiv:1311.2901",
    family="gradient",
    token_reduction="norm",
))
