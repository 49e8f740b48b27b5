"""Feature ablation (Captum's FeatureAblation; the ablation studies of Zeiler and Fergus 2014,
arXiv:1311.2901, over arbitrary feature groups): set one feature group to a baseline at a
time and credit each of its elements with the drop of the score.

    A(x)_i = S_c(x) - S_c(x with every element of feature f(i) set to the baseline)

Features come from a feature mask (onnxplain.features, shared with Kernel SHAP and LIME):
by default every element is its own feature, as in Captum; grid cells, superpixels, tokens
or an integer mask group them. The ablated copies run in one ONNX program
(export.feature_ablation), the one `export` saves: forward runs only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np

from ..export.coalitions import MASK
from ..export.feature_ablation import DROPS, check_features
from ..export.graph import FED
from ..export.methods import ATTRIBUTION, BASELINE
from ..export.occlusion import baseline_like
from ..export.perturb import perturbed_input
from ..features import row_masks
from ..runtime.engine import Engine
from . import MethodOutput, MethodSpec, register
from ._perturb import perturbation_run
from .options import MAX_RUNS_OPTION, feature_options, input_option, perturbation_baseline


def feature_ablation(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
                     features: str | np.ndarray, cell: int, n_segments: int, baseline,
                     input: str | None, max_runs: int) -> MethodOutput:
    """Feature ablation maps of input `input` (default the first float or token-id input).
    `features`: a kind (columns, the default: every element alone; grid cells of `cell`
    pixels, 0 for an 8x8 grid; superpixels aiming at `n_segments`; tokens) or an integer
    mask like one row, or one mask per row [N, *row]; `baseline` a number or an array like
    one row (token ids: the id put in). One forward run per feature and row; more than
    `max_runs` features are refused. Extras: the drops per feature [N, F] and the masks."""
    name = perturbed_input(engine.model, input, {k: v.ndim for k, v in feeds.items()})
    x = feeds[name]
    masks = np.stack(row_masks(x, features, cell=cell, n_segments=n_segments))
    width = int(masks.max()) + 1
    check_features(width, max_runs, len(x), engine.memory_budget_mb)
    fill = np.broadcast_to(baseline_like(baseline, x), x.shape)
    # max_runs bounds the run, the program does not read it: no part of its key.
    options = {"features": FED, "n_features": width, "baseline": FED, "input": name,
               "row_shape": list(x.shape[1:])}
    run = perturbation_run(engine, "feature_ablation", feeds, target, options,
                           {MASK: masks, BASELINE + name: np.ascontiguousarray(fill)}, width,
                           "feature_ablation", (ATTRIBUTION + name, DROPS))
    extras = {"feature_drops": run.post[DROPS], "feature_mask": masks}
    return MethodOutput(run, at_inputs={name: run.post[ATTRIBUTION + name]}, extras=extras)


def _features_option():
    """Kernel SHAP's and LIME's `features`, defaulting to Captum's every element alone."""
    declared = feature_options()
    features = dataclasses.replace(
        declared[0], default="columns",
        help="feature kind (default columns: every element alone) or an integer mask like "
             "one row, or per row")
    return (features, *declared[1:])


register(MethodSpec(
    name="feature_ablation",
    run=feature_ablation,
    summary="score drop when each feature group is set to a baseline (forward runs only)",
    reference="Captum FeatureAblation; Zeiler, Fergus 2014, arXiv:1311.2901",
    family="perturbation",
    options=(*_features_option(), perturbation_baseline(), input_option(), MAX_RUNS_OPTION),
    needs_sources=False,
))
