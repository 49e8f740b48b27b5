"""GradientSHAP, or expected gradients (Lundberg and Lee 2017; Erion, Janizek, Sturmfels,
Lundberg, Lee 2021), with Captum's GradientShap semantics."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ..export.gradient_shap import background_sets
from ..export.graph import FED
from ..export.methods import BASELINE_SCORE, SCORE
from ..export.noise import SEED
from ..export.random import WORD
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import ConvergenceWarning, completeness_delta, input_sources
from ._graph import graph_run
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import Option, delta_tolerance, integer, number, seed_option
from .smoothgrad import seeds_of


def gradient_shap(engine, feeds, target, sources, *, n_samples: int = 25, stdevs: float = 0.0,
                  baselines="zeros", seed: int = 0, internal_batch_size: int = 0,
                  delta_tolerance: float = 0.25):
    """phi_i = E[(x~_i - b_i) d S_c(b + a (x~ - b)) / d x_i], the expectation over a
    background row b drawn uniformly from `baselines`, a ~ U(0, 1) and x~ = x + N(0,
    stdevs^2) (absolute noise, per element), estimated by the mean over `n_samples` draws
    per row, as Captum's GradientShap computes it: Integrated Gradients whose baseline is a
    distribution, one random point on each path.

    `baselines`: background rows [B, *row] (a dict of them by input for several inputs,
    which draw row j together), one row, a number, or "zeros" (the default: one row of
    zeros, which makes it a Monte Carlo Integrated Gradients from the zero baseline; Captum
    requires the background, onnxplain defaults it as its other path methods do, so the
    method runs with no data at hand; expected gradients proper takes training rows). The
    draws are export.random's generator (export.gradient_shap), keyed by each row's seed
    (`seed` and the row's bytes, export.noise.row_seeds): a row draws the same alone or in
    any batch, and the exported program draws the same numbers.
    extras["convergence_delta"] holds, per row, sum(phi) - (S_c(x) - E_b[S_c(b)]) over the
    whole background, zero in expectation for stdevs = 0 (completeness of expected
    gradients); with noise it also holds E[S_c(x~)] - S_c(x). A ConvergenceWarning is
    issued where it exceeds `delta_tolerance` times |S_c(x) - E_b[S_c(b)]|: the Monte Carlo
    error shrinks as 1 / sqrt(n_samples). extras["expected_value"] is E_b[S_c(b)]. That
    reference costs one run per background row, N rows to a point of the Loop (at most B +
    N - 1 runs beside the draws' n_samples N; B N where the model has inputs that are not
    drawn: n_samples + B runs per row).
    Unlike Captum, the inputs of a several-input model draw their background row together
    (Captum draws an index per input), so a background row stays one example.
    """

    moved = input_sources(sources, feeds, "gradient_shap")
    names = [source.tensor for source in moved]
    background = background_sets(baselines, names,
                                 {name: feeds[name].shape[1:] for name in names},
                                 {name: feeds[name].dtype for name in names})
    options = {"n_samples": int(n_samples), "stdevs": float(stdevs), "baselines": background,
               "seed": FED, "internal_batch_size": internal_batch_size}
    count = max(len(rows) for rows in background.values())
    # The Loop runs every draw in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, n_samples, "gradient shap", "sample") as bar:
        run = graph_run(engine, "gradient_shap", feeds, target, moved, options,
                        fed={SEED: seeds_of(engine, feeds, seed)},
                        read=(SCORE, BASELINE_SCORE), specialise=False)
        bar.update(n_samples)
    values = dict(run.grads)
    expected = run.post[BASELINE_SCORE]
    delta = completeness_delta(values, run.post[SCORE], expected, delta_tolerance,
                               ConvergenceWarning, "gradient_shap", "the attributions miss "
                               "the score's difference from the background's mean",
                               "use more n_samples")
    notes = [f"gradient_shap: {n_samples} draws per row over {count} background rows, noise "
             f"stdev {stdevs}, seed {seed}"]
    return MethodOutput(run, values, extras={"convergence_delta": delta,
                                             "expected_value": expected}, notes=notes)


def shap_work(options, feeds) -> Work:
    """n_samples gradient runs per row, and at most one per background row (its score:
    the reference of the convergence delta, N rows to a point where the model's inputs are
    all drawn); held: the Loop's sum per input, shaped like the rows, and the background
    rows."""
    samples = count_of(options, "n_samples")
    rows, row_bytes = rows_and_bytes(feeds)
    count = _background_count(options.get("baselines", "zeros"), feeds)
    return Work("n_samples", samples, samples + count, (rows + count) * row_bytes,
                "gradient runs")


def _background_count(baselines, feeds) -> int:
    """Background rows: an array with the feed's rank holds rows [B, *row]; one of lower
    rank is one row (a number or a row broadcast)."""
    def count(value, name: str) -> int:
        ndim = np.ndim(feeds[name]) if name in feeds else None
        return len(value) if ndim is not None and np.ndim(value) == ndim else 1

    if isinstance(baselines, Mapping):
        return max((count(value, name) for name, value in baselines.items()), default=1)
    if np.ndim(baselines) > 0 and len(feeds) == 1:
        return count(baselines, next(iter(feeds)))
    return 1


BASELINES = Option("baselines", "zeros", "background rows drawn from: [B, *row] (-O "
                   "baselines=@rows.npy), one row, a number or zeros; a dict by input",
                   ("choice", "float", "array", "mapping"), ("zeros",))


register(MethodSpec(
    name="gradient_shap",
    run=gradient_shap,
    summary="expected gradients: gradient x (input - baseline) at random points between "
            "the input (plus noise) and baselines drawn from background rows",
    reference="Lundberg and Lee 2017, arXiv:1705.07874; Erion et al. 2021, "
              "arXiv:1906.10670",
    family="gradient",
    options=(integer("n_samples", 25, "draws per row (background row, point on the path, "
                     "noise)", low=1),
             number("stdevs", 0.0, "standard deviation of the Gaussian noise added to the "
                    "input (absolute, as Captum's)", low=0),
             BASELINES,
             seed_option("seed of the draws (with each row's bytes: rows draw independently, "
                         "the same alone or in any batch)", high=WORD - 1),
             INTERNAL_BATCH_SIZE, delta_tolerance(0.25)),
    work=shap_work,
))
