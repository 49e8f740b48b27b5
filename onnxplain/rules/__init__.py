"""Modified backward rules: rule sets that override entries of the gradient registry.

Guided Backprop and Deconvnet change only the ReLU backward; DeepLIFT's Rescale rule changes
every elementwise nonlinearity, max pooling and softmax. A rule set is chosen per call
(Engine.gradients(..., rules=...)); the autodiff driver is the same for all of them.
"""

from .deeplift import DEEPLIFT, deeplift_rules
from .guided import DECONVNET, GUIDED_BACKPROP

__all__ = ["DECONVNET", "DEEPLIFT", "GUIDED_BACKPROP", "deeplift_rules"]
