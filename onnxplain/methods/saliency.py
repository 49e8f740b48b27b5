"""Saliency (Simonyan et al. 2014): the gradient of the target score w.r.t. the input."""

from __future__ import annotations

import numpy as np

from . import MethodOutput, MethodSpec, register
from .options import flag


def saliency(engine, feeds, target, sources, *, abs: bool = True):  # noqa: A002 - Captum's name
    """Attribution_i = |d S_c / d x_i| (or the signed gradient with abs=False).

    S_c is the target class score, by default the predicted class. One forward and one
    backward run for the whole batch. For token ids the gradient is taken at the embedding
    output and each token gets the L2 norm of its gradient vector.

    Reference: K. Simonyan, A. Vedaldi, A. Zisserman, "Deep Inside Convolutional Networks:
    Visualising Image Classification Models and Saliency Maps", ICLR workshop 2014.
    """
    run = engine.gradients(feeds, target, [source.tensor for source in sources])
    return MethodOutput(run, {name: np.abs(grad) if abs else grad
                              for name, grad in run.grads.items()}, signed=not abs)


register(MethodSpec(
    name="saliency",
    run=saliency,
    summary="gradient of the target score w.r.t. the input (absolute value by default)",
    reference="Simonyan, Vedaldi, Zisserman 2014, arXiv:1312.6034",
    family="gradient",
    options=(flag("abs", True, "absolute value of the gradient (False keeps the sign)"),),
    token_reduction="norm",
))
