"""Deconvnet (Zeiler and Fergus 2014): the gradient with ReLUs that ignore the forward sign."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._graph import graph_run


def deconvnet(engine, feeds, target, sources):
    """The backward signal through every ReLU is relu(g), whatever the forward input was."""
    run = graph_run(engine, "deconvnet", feeds, target, sources, {})
    return MethodOutput(run, dict(run.grads))


register(MethodSpec(
    name="deconvnet",
    run=deconvnet,
    summary="gradient where ReLUs pass relu(backward signal), ignoring the forward input",
    reference="Zeiler, Fergus 2014, arXiv:1311.2901",
    family="gradient",
    token_reduction="norm",
))
