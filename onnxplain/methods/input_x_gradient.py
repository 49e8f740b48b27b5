"""Input x Gradient (Shrikumar et al. 2016): the gradient times the input, element by element."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._graph import graph_run


def input_x_gradient(engine, feeds, target, sources):
    """Attribution_i = x_i * d S_c / d x_i.

    For token ids, x is the embedding vector and each token gets the sum over the embedding
    axis (the dot product of embedding and gradient). The graph is
    export.methods.input_x_gradient's.
    """
    run = graph_run(engine, "input_x_gradient", feeds, target, sources, {})
    return MethodOutput(run, dict(run.grads))


register(MethodSpec(
    name="input_x_gradient",
    run=input_x_gradient,
    summary="input times the gradient of the target score",
    reference="Shrikumar, Greenside, Shcherbina, Kundaje 2016, arXiv:1605.01713",
    family="gradient",
))
