"""Guided Integrated Gradients (Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi,
CVPR 2021)."""

from __future__ import annotations

from ..export.graph import FED
from ..export.methods import BASELINE, BASELINE_SCORE, SCORE
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import ConvergenceWarning, completeness_delta, input_sources
from ._graph import graph_run
from .baselines import make_baselines
from .options import (
    BASELINE_SEED,
    BASELINE_VALUE,
    BLUR_SIGMA,
    n_steps_option,
    number,
    path_baseline,
)


def guided_ig(engine, feeds, target, sources, *, n_steps: int = 200, fraction: float = 0.25,
              max_dist: float = 0.02, baseline="zeros", baseline_value: float = 0.0,
              blur_sigma: float = 5.0, seed: int = 0):
    """GIG_i = sum over the path's moves of (x_i^new - x_i^old) * d S_c(x^old_step) / d x_i.

    The path starts at the baseline x' and takes `n_steps` steps; step s (alpha = (s+1) /
    n_steps) reads the gradient g at the current point, then repeatedly moves the `fraction`
    of features with the smallest |g| toward the input until the L1 distance to x is
    (1 - alpha) of |x - x'|_1, every feature kept within alpha +- `max_dist` of the
    straight line (max_dist 0: Integrated Gradients, 1: unbounded). PAIR `saliency`'s
    GuidedIG semantics, with its (lower) quantile's ties selected together; the path is
    computed in double. One ONNX program (export.guided_ig: a Loop over the steps with the
    selection in a nested Loop), in-process and exported. extras["convergence_delta"]:
    sum(GIG) - (S_c(x) - S_c(x')) per row.
    """
    moved = input_sources(sources, feeds, "guided_ig")
    names = [source.tensor for source in moved]
    baselines = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    options = {"n_steps": int(n_steps), "fraction": float(fraction),
               "max_dist": float(max_dist), "baseline": FED, "baseline_value": 0.0}
    with progress_bar(engine.progress, int(n_steps), "guided integrated gradients",
                      "step") as bar:
        run = graph_run(engine, "guided_ig", feeds, target, moved, options,
                        fed={BASELINE + name: value for name, value in baselines.items()},
                        read=(SCORE, BASELINE_SCORE), specialise=False)
        bar.update(int(n_steps))
    values = dict(run.grads)
    # Warned above 5% of |S(x) - S(x')|, as Integrated Gradients' default.
    delta = completeness_delta(values, run.post[SCORE], run.post[BASELINE_SCORE], 0.05,
                               ConvergenceWarning, "guided integrated gradients",
                               "the attributions miss the output difference",
                               "use more n_steps")
    return MethodOutput(run, values, extras={"convergence_delta": delta})


def guided_ig_work(options, feeds) -> Work:
    """n_steps gradient runs per row; held: the path and the attribution in double."""
    steps = count_of(options, "n_steps")
    rows, row_bytes = rows_and_bytes(feeds)
    return Work("n_steps", steps, steps, 4 * rows * row_bytes, "gradient runs")


register(MethodSpec(
    name="guided_ig",
    run=guided_ig,
    summary="integrated gradients on an adaptive path that first moves the features with "
            "the smallest gradients (PAIR saliency's Guided IG)",
    reference="Kapishnikov, Venugopalan, Avci, Wedin, Terry, Bolukbasi 2021, "
              "arXiv:2106.09788",
    family="gradient",
    options=(n_steps_option(200, what="steps of the path from the baseline to the input"),
             number("fraction", 0.25, "share of the features (smallest |gradient|) moved "
                    "at each selection", low=0, high=1),
             number("max_dist", 0.02, "how far (share of the L1 distance) a feature may "
                    "run ahead of the straight line: 0 is IG, 1 unbounded", low=0, high=1),
             path_baseline(), BASELINE_VALUE, BLUR_SIGMA, BASELINE_SEED),
    work=guided_ig_work,
))
