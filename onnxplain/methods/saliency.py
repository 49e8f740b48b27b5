"""Saliency (Simonyan et al. 2014): the gradient of the target score w.r.t. the input."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from .options import flag


def saliency(engine, feeds, target, sources, *, abs: bool = True):  # noqa: A002 - Captum's name
    """Attribution_i = |d S_c / d x_i| (or the signed gradient with abs=False).

    S_c is the target class score, by default the predicted class. One forward and one
    backward run for the whole batch, in the graph export.methods.saliency emits (the same
    program `export` saves). For token ids the gradient is taken at the embedding output
    and each token gets the L2 norm of its gradient vector.

    Reference: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", ICLR workshop 2014.
    """
    run = graph_run(engine, "saliency", feeds, target, sources, {"abs": abs})
    return MethodOutput(run, dict(run.grads), signed=not abs)


register(MethodSpec(
    name="saliency",
    run=saliency,
    summary="gradient of the target score w.r.t. the input (absolute value by default)",
    reference="Simonyan, Vedaldi, Zisserman 2014, arXiv:1312.6034",
    family="gradient",
    options=(flag("abs", True, "absolute value of the gradient (False keeps the sign)"),),
    token_reduction="norm",
))
