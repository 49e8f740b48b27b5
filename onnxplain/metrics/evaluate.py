"""evaluate(): every metric of one attribution in one call, each beside the same metric of
random attributions, as a plain JSON-ready dict.

A score alone cannot be read (is a deletion AUC of 0.4 good?); the same score for random
attributions (Gaussian noise with each row's root mean square, seeded, averaged over
`random_draws` draws) tells whether the attribution ranks features better than chance.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..attribution import Attribution
from ..errors import InputError
from ..inputs import Inputs, prepare_inputs
from ._common import attributed_input, draw_rng, jsonable, nanmean, random_like, row_values
from ._common import spearman as rank_correlation
from .completeness import completeness
from .curves import CurveSettings, perturbation_curves, resolve_features
from .randomisation import parameter_randomisation

METRICS = ("deletion", "insertion", "morf", "lerf", "completeness", "randomization")
ALIASES = {"randomisation": "randomization", "pixel_flipping": "morf"}
BETTER = {"deletion": "lower", "insertion": "higher", "morf": "higher", "lerf": "lower",
          "completeness": "lower", "randomization": "lower"}
LABELS = {"deletion": "deletion AUC", "insertion": "insertion AUC", "morf": "MoRF AOPC",
          "lerf": "LeRF AOPC", "completeness": "completeness |error|",
          "randomization": "randomisation Spearman"}


def evaluate(explainer, inputs: Inputs, attribution: Attribution,
             metrics: Sequence[str] = METRICS, *, steps: int = 20,
             baseline_value: float = 0.0, features: str | np.ndarray = "auto", cell: int = 0,
             input: str | None = None, probability: bool = False, random_draws: int = 3,
             seed: int = 0, layers: int | Sequence[str] | None = None,
             order: str = "cascading", output_seed=None, batch_size: int | None = None
             ) -> dict:
    """Scores of `attribution` (explained by `explainer` on `inputs`) for `metrics`.

    Returns {"method", "output", "explained" (the objective's sentence: every metric scores
    the objective the attribution explains, at its place), "rows", "input", "settings",
    "metrics": {name: entry}},
    each entry with "label", "better" ("lower"/"higher"), "mean", "random" (the same
    score for random attributions), "per_row" and "random_per_row"; curves add
    "fractions", "curve" and "random_curve" (means over rows), completeness adds
    "relative" (the same keys for |error| / |Delta|), randomization adds "layers" (one
    entry per randomised layer, top first) and "last". NaN becomes None.
    Settings: see metrics.curves (steps ... batch_size) and metrics.randomisation
    (layers, order); random attributions are drawn from `seed`.
    """
    chosen = resolve_metrics(metrics)
    explainer.policy.derive(batch_size=batch_size)  # a bad batch_size fails before any run
    if not isinstance(random_draws, int | np.integer) or random_draws < 0:
        raise InputError(f"random_draws must be an integer >= 0, got {random_draws!r}")
    feeds = prepare_inputs(explainer.model, inputs)
    name, values = attributed_input(attribution, feeds, input)
    kind = resolve_features(feeds[name], features)
    settings = CurveSettings(steps, baseline_value, features, cell, name, probability,
                             batch_size)
    result: dict = {"method": attribution.method, "output": attribution.output,
                    "explained": attribution.explained,  # the objective every metric scores
                    "rows": int(feeds[name].shape[0]), "input": name,
                    "settings": {"steps": steps, "baseline_value": baseline_value,
                                 "features": kind if isinstance(kind, str) else "mask",
                                 "cell": cell, "probability": probability,
                                 "random_draws": int(random_draws), "seed": seed,
                                 "order": order},
                    "metrics": {}}
    kinds = [m for m in chosen if m in ("deletion", "insertion", "morf", "lerf")]
    if kinds:
        maps = [random_like(values, draw_rng(seed, d)) for d in range(random_draws)]
        curves = perturbation_curves(explainer, feeds, attribution, kinds, settings,
                                     maps=maps, output_seed=output_seed)
        for kind in kinds:
            result["metrics"][kind] = _curve_entry(kind, curves[kind])
    if "completeness" in chosen:
        result["metrics"]["completeness"] = _completeness_entry(
            attribution, output_seed, random_draws, seed)
    if "randomization" in chosen:
        found = parameter_randomisation(explainer, feeds, attribution, layers=layers,
                                        seed=seed, order=order, output_seed=output_seed,
                                        batch_size=batch_size)
        result["metrics"]["randomization"] = _randomisation_entry(
            found, row_values(attribution, feeds), random_draws, seed)
    return jsonable(result)


def resolve_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Metric names in canonical spelling, checked, without repeats."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    out = []
    for raw in names:
        name = ALIASES.get(str(raw).strip().lower(), str(raw).strip().lower())
        if name not in METRICS:
            raise InputError(f"unknown metric '{raw}' (choose from {', '.join(METRICS)})")
        if name not in out:
            out.append(name)
    if not out:
        raise InputError(f"no metric chosen (choose from {', '.join(METRICS)})")
    return out


def _entry(kind: str, per_row, random_per_row) -> dict:
    entry = {"label": LABELS[kind], "better": BETTER[kind], "mean": nanmean(per_row),
             "random": None, "per_row": per_row, "random_per_row": random_per_row}
    if random_per_row is not None:
        entry["random"] = nanmean(random_per_row)
    return entry


def _curve_entry(kind: str, curves) -> dict:
    """AUC (deletion, insertion) or AOPC (MoRF, LeRF) of the attribution and of the
    random attributions (mean over draws, per row)."""
    read = (lambda c: c.auc) if kind in ("deletion", "insertion") else (lambda c: c.aopc)
    real, noise = curves[0], curves[1:]
    random_rows = np.mean([read(c) for c in noise], axis=0) if noise else None
    entry = _entry(kind, read(real), random_rows)
    entry["fractions"] = real.fractions
    entry["curve"] = real.scores.mean(axis=0)
    entry["random_curve"] = (np.mean([c.scores.mean(axis=0) for c in noise], axis=0)
                             if noise else None)
    return entry


def _completeness_entry(attribution: Attribution, output_seed, draws: int, seed: int) -> dict:
    try:
        found = completeness(attribution, output_seed)
    except InputError as err:
        entry = _entry("completeness", None, None)
        entry.update(mean=None, available=False, reason=str(err))
        return entry
    absolute, relative = (found.random(draws, seed) if draws else (None, None))
    entry = _entry("completeness", found.absolute, absolute)
    entry.update(available=True, source=found.source, difference=found.difference,
                 relative=_entry("completeness", found.relative, relative))
    entry["relative"]["label"] = "completeness |error| / |Delta|"
    return entry


def _randomisation_entry(found, original: np.ndarray, draws: int, seed: int) -> dict:
    """Mean correlation over layers and rows; random attributions' correlation with the
    original attribution (`original`: its row_values) as the chance level."""
    random_rows = None
    if draws:
        random_rows = np.mean([rank_correlation(original, random_like(original,
                                                                      draw_rng(seed, d)))
                               for d in range(draws)], axis=0)
    entry = _entry("randomization", nanmean(found.spearman, axis=0), random_rows)
    entry["order"] = found.order
    entry["last"] = nanmean(found.spearman[-1])
    entry["layers"] = [{"node": layer.node, "op_type": layer.op_type,
                        "mean": nanmean(rho), "mean_abs": nanmean(rho_abs), "per_row": rho}
                       for layer, rho, rho_abs in zip(found.layers, found.spearman,
                                                      found.spearman_abs, strict=True)]
    return entry
