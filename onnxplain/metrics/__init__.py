"""Faithfulness and sanity metrics for attributions, run on the explainer's own runtime.

    >>> from onnxplain import Explainer, metrics
    >>> explainer = Explainer("model.onnx")
    >>> attribution = explainer.explain(x, method="integrated_gradients")
    >>> scores = metrics.evaluate(explainer, x, attribution)   # plain dict, JSON-ready
    >>> scores["metrics"]["deletion"]["mean"], scores["metrics"]["deletion"]["random"]

- deletion_curve / insertion_curve (Petsiuk et al. 2018, RISE) and pixel_flipping
  (MoRF / LeRF, Samek et al. 2017): the score while features leave (or enter) the input
  in attribution order; `Curve.auc`, `Curve.aopc`.
- completeness: the completeness error IG, DeepLIFT, LRP and KernelSHAP report, absolute
  and relative to the output difference.
- parameter_randomisation (Adebayo et al. 2018): rank correlation with the explanations
  of models whose layers are randomised, top first, cascading.
- evaluate: all of them at once, each beside the same score for random attributions.
"""

from __future__ import annotations

from ._common import spearman
from .completeness import Completeness, completeness
from .curves import (
    Curve,
    CurveSettings,
    deletion_curve,
    feature_masks,
    insertion_curve,
    perturbation_curves,
    pixel_flipping,
)
from .evaluate import METRICS, evaluate, resolve_metrics
from .randomisation import (
    Layer,
    Randomisation,
    parameter_randomisation,
    randomised_models,
    reinitialise,
    weighted_layers,
)

__all__ = [
    "METRICS",
    "Completeness",
    "Curve",
    "CurveSettings",
    "Layer",
    "Randomisation",
    "completeness",
    "deletion_curve",
    "evaluate",
    "feature_masks",
    "insertion_curve",
    "parameter_randomisation",
    "perturbation_curves",
    "pixel_flipping",
    "randomised_models",
    "reinitialise",
    "resolve_metrics",
    "spearman",
    "weighted_layers",
]
