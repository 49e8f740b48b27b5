"""Modified backward rules: rule sets that override entries of the gradient registry.

Guided Backprop and Deconvnet change only the ReLU backward. A rule set is chosen per call
(Engine.gradients(..., rules=...)); the autodiff driver is the same for all of them.
"""

from .guided import DECONVNET, GUIDED_BACKPROP

__all__ = ["DECONVNET", "GUIDED_BACKPROP"]
