"""Shapley value sampling (Castro, Gomez and Tejada 2009; Strumbelj and Kononenko 2010):
each feature's mean score change where it joins the features before it, over random
permutations, an unbiased estimate of its Shapley value. The permutations are fixed by the
seed, so the coalitions scored are too: the program export.shapley emits scores them in a
Loop and averages the changes, in process and exported alike. Here: the input preparation
(feature masks, background rows) and the run budget."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..export.coalitions import ADDITIVITY, EXPECTED, MASK, SCORE, VALUES
from ..export.designs import coalition_baseline
from ..export.graph import FED
from ..export.methods import ATTRIBUTION
from ..export.perturb import perturbed_input
from ..export.random import WORD
from ..export.shapley import METHOD, check_plan, plan
from ..features import row_masks
from ..runtime.engine import Engine
from . import MethodOutput, MethodSpec, register
from ._perturb import perturbation_run, stitch, take_target
from .kernel_shap import background_rows, check_count, feature_groups, select_rows
from .options import (
    COALITION_BASELINE,
    MAX_RUNS_OPTION,
    feature_options,
    input_option,
    integer,
    seed_option,
)


def shapley_sampling(engine: Engine, feeds: Mapping[str, np.ndarray], target, sources, *,
                     features: str | np.ndarray, cell: int, n_segments: int, n_samples: int,
                     seed: int, baseline, input: str | None, max_runs: int) -> MethodOutput:
    """phi_f = (1 / n) sum_{p=1..n} [v(P_p(f) + {f}) - v(P_p(f))],

    P_p(f) the features before f in permutation p of the F features, v(S) the target score
    with the features outside S set to `baseline` (Castro et al. 2009, Strumbelj and
    Kononenko 2010; Captum's ShapleyValueSampling, whose loop adds the features of each
    permutation one by one from the baseline). Over all F! permutations this is the
    Shapley value; each phi_f is unbiased, and every permutation telescopes, so sum(phi) =
    f(x) - v(empty) exactly (efficiency). The permutations are
    export.shapley.permutations(F, n_samples, seed), drawn from export.random's stream
    and shared by every row (a batch gives what its rows give one by one). `baseline` is
    a scalar, an array like one row, or background rows [B, *row]: then v averages over
    them. Features: see onnxplain.features.feature_mask (or pass an integer mask); image
    grid cells are `cell` pixels, 0 for an 8x8 grid over the image; superpixels (SLIC) aim
    at `n_segments` segments. Each distinct coalition is scored once per background row
    (at most n_samples (F - 1) + 1 of them, far fewer with few features); more than
    `max_runs` per row are refused. Extras: the values [N, F], expected_value v(empty),
    additivity_error, the feature masks and the coalitions scored.
    """
    check_count(METHOD, "n_samples", n_samples)
    check_count(METHOD, "n_segments", n_segments)
    name = perturbed_input(engine.model, input, {k: v.ndim for k, v in feeds.items()})
    x = feeds[name]
    background = background_rows(coalition_baseline(baseline, x), x)
    masks = row_masks(x, features, cell=cell, n_segments=n_segments)
    groups = feature_groups(masks)
    widths = [int(masks[group[0]].max()) + 1 for group in groups]
    for width in widths:
        check_plan(width, n_samples, len(background), max_runs, engine.memory_budget_mb,
                   len(x))
    runs = []
    for group, width in zip(groups, widths, strict=True):
        chosen = {"features": FED, "n_features": width, "n_samples": n_samples,
                  "seed": seed, "baseline": background, "input": name}
        count = len(plan(width, n_samples, seed).present) * len(background)
        runs.append(perturbation_run(
            engine, METHOD, feeds if len(groups) == 1 else select_rows(feeds, group),
            take_target(target, len(x), group), chosen,
            {MASK: np.stack([masks[i] for i in group])}, count, METHOD,
            (ATTRIBUTION + name, VALUES, EXPECTED, ADDITIVITY, SCORE)))
    run = runs[0] if len(runs) == 1 else stitch(runs, groups)
    post = run.post
    extras = {"values": post[VALUES], "expected_value": post[EXPECTED],
              "additivity_error": post[ADDITIVITY], "feature_mask": np.stack(masks),
              "coalitions": max(len(plan(w, n_samples, seed).present) for w in widths)}
    return MethodOutput(run, at_inputs={name: post[ATTRIBUTION + name]}, extras=extras)


register(MethodSpec(
    name=METHOD,
    run=shapley_sampling,
    summary="Shapley values of features estimated over random permutations of them",
    reference="Castro, Gomez and Tejada 2009, doi:10.1016/j.cor.2008.04.004; Strumbelj "
              "and Kononenko 2010",
    family="perturbation",
    options=(*feature_options(),
             integer("n_samples", 25, "random permutations of the features", low=1),
             seed_option("seed of the permutations", high=WORD - 1), COALITION_BASELINE,
             input_option(), MAX_RUNS_OPTION),
    needs_sources=False,
))
