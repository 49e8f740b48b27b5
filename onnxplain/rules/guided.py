"""Guided Backprop and Deconvnet: modified ReLU backward passes.

At a ReLU with forward input x and backward signal g:
- the gradient passes g where x > 0;
- Guided Backprop (Springenberg et al. 2015) also zeros it where g < 0: relu(g) * [x > 0];
- Deconvnet (Zeiler and Fergus 2014) keeps only the sign rule: relu(g).
"""

from __future__ import annotations

from ..autodiff import GRADIENT


def _guided_relu(c, gy):
    g, b, y = gy[0], c.b, c.y()
    return [b.op("Relu", b.keep(g, b.op("Greater", y, b.scalar(0.0, y))))]


def _deconvnet_relu(c, gy):
    return [c.b.op("Relu", gy[0])]


GUIDED_BACKPROP = GRADIENT.override("guided_backprop", {"Relu": _guided_relu})
DECONVNET = GRADIENT.override("deconvnet", {"Relu": _deconvnet_relu})
