"""Completeness: how far the attributions miss the output difference they should add up to.

Methods with a completeness axiom report their gap in `Attribution.extras`; this module
reads it and puts every method on one footing, per row:

    error    = sum_i A_i - Delta          (signed)
    absolute = |error|,   relative = |error| / |Delta|

- path methods (integrated_gradients, layer_integrated_gradients, layer_conductance,
  gradient_shap, blur_ig, whose x' is the most blurred image) and deeplift (Shrikumar et
  al. 2017): extras["convergence_delta"] = sum_i A_i - (S_c(x) - S_c(x')),
  so Delta = S_c(x) - S_c(x') = sum_i A_i - convergence_delta.
- lrp (Bach et al. 2015) and attn_lrp (Achtibat et al. 2024): the relevance put into the
  output, R_out = extras["output_relevance"], should reach the inputs, R_in =
  extras["input_relevance"]:
  Delta = R_out, error = R_in - R_out (extras["conservation"] = R_in / R_out).
- kernel_shap (Lundberg and Lee 2017): the Shapley values phi = extras["values"] (one per
  feature) should satisfy sum phi = f(x) - E[f], E[f] = extras["expected_value"]:
  Delta = f(x) - E[f] (extras["additivity_error"] = |error|).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..attribution import Attribution
from ..errors import InputError
from ..objective import Objective
from ._common import draw_rng, explained_target

SOURCES = ("convergence_delta", "conservation", "additivity_error")


@dataclass
class Completeness:
    """Per-row completeness of one attribution; `source` names the extras it came from."""

    source: str
    summands: np.ndarray  # [rows, n]: what should add up to `difference` (NaN: padding)
    difference: np.ndarray  # [rows]: Delta, the output difference
    error: np.ndarray  # [rows]: sum - Delta

    @property
    def absolute(self) -> np.ndarray:
        return np.abs(self.error)

    @property
    def relative(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.abs(self.error) / np.abs(self.difference)

    def random(self, draws: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """(absolute, relative) errors of random attributions, averaged over `draws`:
        zero-mean Gaussian noise with each row's root mean square in place of the summands,
        so the sum carries no information about Delta."""
        finite = np.isfinite(self.summands)
        values = np.where(finite, self.summands, 0.0)
        counts = np.maximum(finite.sum(axis=1), 1)
        rms = np.sqrt((values * values).sum(axis=1) / counts)
        absolute = np.zeros(len(values))
        for draw in range(draws):
            noise = draw_rng(seed, draw).standard_normal(values.shape) * rms[:, None]
            absolute += np.abs(np.where(finite, noise, 0.0).sum(axis=1) - self.difference)
        absolute /= max(draws, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            return absolute, absolute / np.abs(self.difference)


def completeness(attribution: Attribution, output_seed=None) -> Completeness:
    """The completeness error the method reported, per row (see the module docstring).
    Raises InputError for methods that report none (they promise no completeness)."""
    extras = attribution.extras
    if "convergence_delta" in extras:
        summands = _source_values(attribution)
        delta = np.asarray(extras["convergence_delta"], dtype=np.float64).reshape(-1)
        return Completeness("convergence_delta", summands, summands.sum(axis=1) - delta, delta)
    if "conservation" in extras and "output_relevance" in extras:
        given = np.asarray(extras["output_relevance"], dtype=np.float64).reshape(-1)
        found = np.asarray(extras["input_relevance"], dtype=np.float64).reshape(-1)
        return Completeness("conservation", _source_values(attribution), given, found - given)
    if "additivity_error" in extras and "values" in extras:
        values = np.asarray(extras["values"], dtype=np.float64)
        rows = values.shape[0]
        target = explained_target(attribution, rows, output_seed)
        logits = attribution.outputs[attribution.output]
        fx = Objective.given(target, logits).score(logits)
        difference = fx - np.asarray(extras["expected_value"], dtype=np.float64)
        return Completeness("additivity_error", values, difference,
                            np.nansum(values, axis=1) - difference)
    raise InputError(f"method '{attribution.method}' reports no completeness error (path "
                     "methods, DeepLIFT, LRP and KernelSHAP do: they promise completeness)")


def _source_values(attribution: Attribution) -> np.ndarray:
    """[rows, n]: the attributions where they were taken (the embedding for token ids,
    whose per-token values may be norms that no longer add up)."""
    parts = []
    for name, values in attribution.attributions.items():
        full = attribution.tensors.get(attribution.sources.get(name, name), values)
        parts.append(np.asarray(full, dtype=np.float64).reshape(full.shape[0], -1))
    if not parts:
        raise InputError("the attribution holds no values")
    return np.concatenate(parts, axis=1)
