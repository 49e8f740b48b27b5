"""Integrated Gradients (Sundararajan, Taly, Yan 2017)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..export.graph import FED
from ..export.methods import BASELINE, BASELINE_SCORE, PATH_RULES, SCORE, path_points
from ..objective import Objective, OutputSeed
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import (
    clean_run,
    completeness_delta,
    equal_runs,
    fixed_objective,
    input_sources,
)
from ._graph import graph_run, loop_rows
from .baselines import make_baselines
from .options import (
    BASELINE_VALUE,
    BLUR_SIGMA,
    choice,
    delta_tolerance,
    integer,
    path_baseline,
    seed_option,
)


class ConvergenceWarning(UserWarning):
    """Integrated Gradients' completeness error is large: use more steps."""


def integrated_gradients(engine, feeds, target, sources, *, n_steps: int = 50,
                         rule: str = "gausslegendre", baseline="zeros",
                         baseline_value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0,
                         internal_batch_size: int = 0, delta_tolerance: float = 0.05):
    """IG_i = (x_i - x'_i) * integral over a in [0, 1] of d S_c(x' + a (x - x')) / d x_i.

    The integral uses the quadrature `rule` (PATH_RULES) with `n_steps` points, run in the
    ONNX Loop that `export` saves (export.methods.integrated_gradients: the same program),
    about `internal_batch_size` rows per iteration (0: as the memory budget allows), so
    memory does not grow with n_steps; baselines are its inputs, computed here (input
    preparation). The baseline x' is "zeros", "constant" (`baseline_value`), "blur"
    (Gaussian blur of image inputs, `blur_sigma` pixels), "uniform" (noise within each
    row's range, seeded) or an array (or dict of arrays).
    extras["convergence_delta"] holds, per row, sum(IG) - (S_c(x) - S_c(x')); a
    ConvergenceWarning is issued when it exceeds `delta_tolerance` times |S_c(x) - S_c(x')|.
    Where the input meets affine ops first (a convolution, normalisation: graph.stem), the
    path is walked at their output and the gradients go back through them once.
    """

    moved = input_sources(sources, feeds, "integrated_gradients")
    names = [source.tensor for source in moved]
    alphas, weights = path_points(int(n_steps), rule)
    baselines = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    per_run = loop_rows(engine, feeds, internal_batch_size)
    # A fixed batch axis cannot hold a Loop's points; below opset 12 (no int64 Min/Max) it
    # would run one point per iteration.
    if not engine.model.batch.symbolic or engine.model.opset < 12:
        return _folded(engine, feeds, target, names, baselines,
                       Quadrature(alphas, weights, 0), per_run, delta_tolerance, rule)
    options = {"n_steps": int(n_steps), "rule": rule, "baseline": FED,
               "baseline_value": 0.0, "internal_batch_size": per_run}
    # The Loop runs every step in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, len(alphas), "integrated gradients", "step") as bar:
        run = graph_run(engine, "integrated_gradients", feeds, target, moved, options,
                        fed={BASELINE + name: value for name, value in baselines.items()},
                        read=(SCORE, BASELINE_SCORE), specialise=False)
        bar.update(len(alphas))
    values = dict(run.grads)
    delta = _warned_delta(values, run.post[SCORE], run.post[BASELINE_SCORE], delta_tolerance,
                          rule)
    return MethodOutput(run, values, extras={"convergence_delta": delta})


def _folded(engine, feeds, target, names, baselines, path: Quadrature, per_run: int,
            tolerance: float, rule: str) -> MethodOutput:
    """The path's points folded into the batch axis, a chunk per run: fixed-batch models
    (a Loop's blocks of points cannot pass their batch axis) and opsets below 12."""
    objective, clean_outputs = fixed_objective(engine, feeds, target)
    rows = next(iter(feeds.values())).shape[0]
    path = Quadrature(path.alphas, path.weights,
                      equal_runs(len(path.alphas), max(1, per_run // max(rows, 1))))
    stem = engine.stem(names[0]) if len(names) == 1 else None
    if stem is None:
        totals = _path_sums(engine, feeds, baselines, objective, path)
    else:
        totals = _path_sums_at_stem(stem, names[0], feeds, baselines, objective, path)
    values = {name: ((feeds[name] - baselines[name]) * totals[name]).astype(feeds[name].dtype)
              for name in names}
    base_outputs = engine.forward({**feeds, **baselines})
    delta = _warned_delta(values, objective.score(clean_outputs[engine.output]),
                          objective.score(base_outputs[engine.output]), tolerance, rule)
    return MethodOutput(clean_run(clean_outputs, objective, engine), values,
                        extras={"convergence_delta": delta})


@dataclass(frozen=True)
class Quadrature:
    """Quadrature points and weights along [0, 1], and how many points one run takes."""

    alphas: np.ndarray
    weights: np.ndarray
    steps_per_run: int


def _path_sums(engine, feeds, starts, objective: Objective, path: Quadrature
               ) -> dict[str, np.ndarray]:
    """sum_k w_k dS/dt(start + a_k (end - start)) for each tensor t of `starts`, whose end
    point is feeds[t]; the points are folded into the batch axis, a chunk per run."""
    totals = {name: np.zeros(feeds[name].shape, np.float64) for name in starts}
    # One buffer per tensor for every chunk's points: fresh arrays this size cost page faults.
    points = {name: np.empty((path.steps_per_run, *feeds[name].shape), feeds[name].dtype)
              for name in starts}
    with progress_bar(engine.progress, len(path.alphas), "integrated gradients",
                      "step") as bar:
        for first in range(0, len(path.alphas), path.steps_per_run):
            count = _path_chunk(engine, feeds, starts, objective, path, first, points,
                                totals)
            bar.update(count)
    return totals


def _path_chunk(engine, feeds, starts, objective: Objective, path: Quadrature, first: int,
                points, totals) -> int:
    """Adds the weighted gradients of the points from `first` on (one run) to `totals`."""
    chunk = slice(first, first + path.steps_per_run)
    count = len(path.alphas[chunk])
    batch = {k: np.concatenate([v] * count, axis=0) for k, v in feeds.items()
             if k not in starts}
    for name, start in starts.items():
        end, out = feeds[name], points[name][:count]
        # In the input's own precision, as frameworks interpolate: the same points.
        np.multiply.outer(path.alphas[chunk].astype(end.dtype), end - start, out=out)
        out += start
        batch[name] = out.reshape(-1, *end.shape[1:])
    run = engine.gradients(batch, objective.tile(count).feed(), list(starts))
    for name in starts:
        grads = run.grads[name].reshape(count, -1)
        # In the gradients' precision: a BLAS matrix-vector product, where float64
        # tensordot first copies them (141 ms of 2.4 s for 32 steps on ResNet-18).
        summed = path.weights[chunk].astype(grads.dtype) @ grads
        totals[name] += summed.reshape(feeds[name].shape)
    return count


def _path_sums_at_stem(stem, name, feeds, baselines, objective: Objective, path: Quadrature
                       ) -> dict[str, np.ndarray]:
    """_path_sums for input `name` through its affine stem L (graph.stem): the straight
    path runs between L(x') and L(x), and L's adjoint maps the summed gradient back once.
    On ResNet-18 this skips the input convolution and its transposed convolution at every
    path point."""
    rows = feeds[name].shape[0]
    both = stem.prefix.forward({name: np.concatenate([feeds[name], baselines[name]])})
    ends, starts = both[stem.frontier][:rows], both[stem.frontier][rows:]
    inner = {k: v for k, v in feeds.items() if k != name}
    inner[stem.frontier] = ends
    summed = _path_sums(stem.suffix, inner, {stem.frontier: starts}, objective, path)
    seed = OutputSeed(summed[stem.frontier].astype(ends.dtype))
    return {name: stem.prefix.gradients({name: feeds[name]}, seed, [name]).grads[name]}


def _warned_delta(values, clean: np.ndarray, base: np.ndarray, tolerance: float, rule: str
                  ) -> np.ndarray:
    """sum(IG) - (S(x) - S(x')) per row: 0 for an exact integral (completeness)."""
    advice = "use more n_steps" + ("" if rule == "gausslegendre" else
                                   " (or rule=gausslegendre)")
    return completeness_delta(values, clean, base, tolerance, ConvergenceWarning,
                              "integrated gradients", "the attributions miss the output "
                              "difference", advice)


def path_work(options, feeds) -> Work:
    """n_steps gradient runs per row; Gauss-Legendre's nodes come from an n_steps x n_steps
    eigenproblem (numpy's leggauss), held at once."""
    steps = count_of(options, "n_steps")
    rows, _ = rows_and_bytes(feeds)
    held = 8 * steps * (steps if options.get("rule") == "gausslegendre" else 2) + 8 * rows * steps
    return Work("n_steps", steps, steps, held, "gradient runs")


N_STEPS = integer("n_steps", 50, "points on the path from the baseline to the input", low=1)
RULE = choice("rule", "gausslegendre", PATH_RULES, "quadrature rule of the path integral")
INTERNAL_BATCH_SIZE = integer("internal_batch_size", 0, "rows per Loop iteration, the model's "
                              "points times input rows (0: as the memory budget allows; "
                              "exported: 16)", low=0)


register(MethodSpec(
    name="integrated_gradients",
    run=integrated_gradients,
    summary="path integral of gradients from a baseline to the input (completeness delta in "
            "extras)",
    reference="Sundararajan, Taly, Yan 2017, arXiv:1703.01365",
    family="gradient",
    options=(N_STEPS, RULE, path_baseline(), BASELINE_VALUE, BLUR_SIGMA,
             seed_option("seed of the uniform baseline"), INTERNAL_BATCH_SIZE,
             delta_tolerance(0.05)),
    work=path_work,
))
