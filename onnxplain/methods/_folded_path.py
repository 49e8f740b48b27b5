"""Integrated Gradients without a Loop, for the models whose Loop program cannot be built:
opset 9 (the Loop's chunks need a computed Slice, opset 10) and models whose ranks are known
only at run time (a Reshape to a computed shape: the Loop body's gradient needs static
ranks, and in-process runs specialise a program to each run's shapes instead). The path's
points are folded into the batch axis, a chunk of them per engine run, and the weighted
gradients summed here; through an input's affine stem (graph.stem) the path runs between
L(x') and L(x) and L's adjoint maps the sum back once."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..objective import Objective, OutputSeed
from ..runtime.progress import progress_bar
from . import MethodOutput
from ._common import clean_run, convergence_delta, equal_runs, fixed_objective


def needs_folding(model) -> bool:
    """Whether IG runs folded on `model` (see the module); once per model (a walk of every
    node)."""
    from ..graph.shape_fold import unknown_ranks

    if "ig_folds" not in model.derived:
        model.derived["ig_folds"] = model.opset < 10 or bool(unknown_ranks(model))
    return model.derived["ig_folds"]


def folded_path(engine, feeds, target, names, baselines, path: Quadrature, per_run: int,
                tolerance: float, rule: str) -> MethodOutput:
    """The path's points folded into the batch axis, a chunk per run (see the module)."""
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
    delta = convergence_delta(values, objective.score(clean_outputs[engine.output]),
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
