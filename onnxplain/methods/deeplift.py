"""DeepLIFT with the Rescale rule (Shrikumar, Greenside, Kundaje 2017, arXiv:1704.02685)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..export.graph import FED
from ..export.methods import BASELINE, BASELINE_SCORE, SCORE
from ..objective import Objective
from ..rules.deeplift import DEFAULT_EPS, deeplift_rules
from ..runtime.engine import Engine
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import (
    clean_run,
    completeness_delta,
    fixed_objective,
    input_sources,
)
from ._graph import graph_run
from .baselines import make_baselines
from .options import (
    BASELINE_SEED,
    BASELINE_VALUE,
    BLUR_SIGMA,
    delta_tolerance,
    number,
    path_baseline,
)


class SummationWarning(UserWarning):
    """DeepLIFT's contributions do not sum to the output difference: the model has
    nonlinear ops without a DeepLIFT rule (they fall back to their gradient) or a Softmax
    (its rule centres the multipliers)."""


def deeplift(engine, feeds, target, sources, *, baseline="zeros", baseline_value: float = 0.0,
             blur_sigma: float = 5.0, seed: int = 0, eps: float = DEFAULT_EPS,
             delta_tolerance: float = 1e-3):
    """C_i = (x_i - x'_i) · m_i, with m the DeepLIFT multipliers of the target score S_c.

    Multipliers follow the chain rule backwards with m = Δy / Δx at every nonlinearity
    (Rescale; the derivative where |Δx| < `eps`), Captum's rules at MaxPool and Softmax, and
    the weights at linear ops (see onnxplain.rules.deeplift), so that summation-to-delta
    holds, sum_i C_i = S_c(x) - S_c(x'), wherever every nonlinearity on the path has a rule
    and no Softmax centres the multipliers. The reference x' is "zeros", "constant"
    (`baseline_value`), "blur" (`blur_sigma` pixels), "uniform" (seeded) or an array (or
    dict of arrays), as for Integrated Gradients. Each input row runs in one batch with its
    reference row (a batch size counts both), in the program export.methods.deeplift emits
    (the one `export` saves; the references are its inputs). extras["convergence_delta"] holds
    sum(C) - (S_c(x) - S_c(x')) per row; a SummationWarning is issued where it exceeds
    `delta_tolerance` times |S_c(x) - S_c(x')|.
    """

    moved = input_sources(sources, feeds, "deeplift")
    names = [source.tensor for source in moved]
    references = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    if not engine.model.batch.symbolic and engine.model.batch.size:
        return _fixed_batch(engine, feeds, target, names, references, eps, delta_tolerance)
    # The program export.methods.deeplift emits (export saves it too): the references are
    # its inputs, so a new baseline is a new feed, not a new program.
    options = {"baseline": FED, "baseline_value": 0.0, "eps": eps}
    rows = next(iter(feeds.values())).shape[0]
    with progress_bar(engine.progress, rows, "deeplift", "row") as bar:  # the engine's: none
        run = graph_run(engine, "deeplift", feeds, target, moved, options,
                        fed={BASELINE + name: value for name, value in references.items()},
                        read=(SCORE, BASELINE_SCORE))
        bar.update(rows)
    values = dict(run.grads)
    delta = _summation_delta(values, run.post[SCORE], run.post[BASELINE_SCORE],
                             delta_tolerance)
    return MethodOutput(run, values, extras={"convergence_delta": delta})


def _fixed_batch(engine, feeds, target, names, references, eps: float, tolerance: float
                 ) -> MethodOutput:
    """A fixed batch axis cannot hold [x; x'] of the program's rows: runs of padded pairs."""
    objective, clean_outputs = fixed_objective(engine, feeds, target)
    multipliers, (clean, base) = _paired_runs(engine, feeds, references, objective, names,
                                              eps)
    values = {name: ((feeds[name] - references[name]) * multipliers[name]).astype(
        feeds[name].dtype) for name in names}
    delta = _summation_delta(values, clean, base, tolerance)
    return MethodOutput(clean_run(clean_outputs, objective, engine), values,
                        extras={"convergence_delta": delta})


# ---- fixed batch axes: input and reference rows in one padded run -----------------------
def _paired_runs(engine: Engine, feeds: Mapping[str, np.ndarray],
                 references: Mapping[str, np.ndarray], objective: Objective,
                 names: Sequence[str], eps: float
                 ) -> tuple[dict[str, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Multipliers at the inputs and (S(x), S(x')) per row, from runs on [x; x'] batches
    that fill the model's fixed batch axis exactly.

    The rules find the reference of row i at row N + i of the run they are in, so a run
    must hold whole halves: the rows go in chunks of half the batch size, each run as
    [chunk; its references], the last row repeated to fill both halves."""
    rows, size = next(iter(feeds.values())).shape[0], engine.model.batch.size
    if size % 2:
        raise InputError("deeplift runs each input row with its reference row in one "
                         f"batch, but the model's batch axis is fixed to {size}; "
                         "export it with a symbolic (or even) batch size")
    pairs, rules = size // 2, deeplift_rules(eps)
    grads: dict[str, list[np.ndarray]] = {name: [] for name in names}
    cleans, bases = [], []
    engine = engine.with_policy(engine.policy.derive(batch_size=size))
    with progress_bar(engine.progress, rows, "deeplift", "row") as bar:
        for start in range(0, rows, pairs):
            part = np.arange(start, min(start + pairs, rows))
            taken = np.pad(part, (0, pairs - len(part)), mode="edge")
            batch = {k: np.concatenate([v[taken], (references[k] if k in references
                                                   else v)[taken]]) for k, v in feeds.items()}
            paired = objective.take(taken).tile(2)
            run = engine.gradients(batch, paired.feed(), names, rules=rules)
            count = len(part)
            for name in names:
                grads[name].append(run.grads[name][:count])
            scores = paired.score(run.outputs[engine.output])
            cleans.append(scores[:pairs][:count])
            bases.append(scores[pairs:][:count])
            bar.update(count)
    return ({name: np.concatenate(parts) for name, parts in grads.items()},
            (np.concatenate(cleans), np.concatenate(bases)))


def _summation_delta(values: Mapping[str, np.ndarray], clean: np.ndarray, base: np.ndarray,
                     tolerance: float) -> np.ndarray:
    """sum(C) - (S(x) - S(x')) per row: 0 up to rounding where every nonlinearity has a
    DeepLIFT rule."""
    return completeness_delta(values, clean, base, tolerance, SummationWarning, "deeplift",
                              "the contributions miss the output difference",
                              "the model has nonlinear ops without a DeepLIFT rule (they use "
                              "their gradient) or a Softmax (its rule centres the multipliers)")


register(MethodSpec(
    name="deeplift",
    run=deeplift,
    summary="differences from a reference times Rescale multipliers (summation-to-delta gap "
            "in extras)",
    reference="Shrikumar, Greenside, Kundaje 2017, arXiv:1704.02685",
    family="gradient",
    options=(path_baseline(), BASELINE_VALUE, BLUR_SIGMA,
             BASELINE_SEED,
             number("eps", DEFAULT_EPS, "below this |input difference| a nonlinearity takes "
                    "its derivative (float16: at least 6.1e-5, its smallest normal)", low=0),
             delta_tolerance(1e-3)),
))
