"""Integrated Gradients (Sundararajan, Taly, Yan 2017)."""

from __future__ import annotations

from ..errors import InputError
from ..export.graph import FED
from ..export.methods import BASELINE, BASELINE_SCORE, PATH_RULES, SCORE, path_points
from ..inputs import batch_size
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import (  # ConvergenceWarning: re-exported, where warning filters name it
    ConvergenceWarning,  # noqa: F401
    convergence_delta,
    input_sources,
)
from ._folded_path import Quadrature, folded_path, needs_folding
from ._graph import graph_run, loop_rows
from .baselines import make_baselines
from .ig_auto import AUTO, ORDERS, auto_steps, most_steps, take, tolerance_for
from .options import (
    BASELINE_SEED,
    BASELINE_VALUE,
    BLUR_SIGMA,
    Option,
    choice,
    integer,
    n_steps_option,
    path_baseline,
)


def integrated_gradients(engine, feeds, target, sources, *, n_steps: int | str = 50,
                         rule: str = "gausslegendre", baseline="zeros",
                         baseline_value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0,
                         internal_batch_size: int = 0, delta_tolerance: float | None = None):
    """IG_i = (x_i - x'_i) * integral over a in [0, 1] of d S_c(x' + a (x - x')) / d x_i.

    The integral uses the quadrature `rule` (PATH_RULES) with `n_steps` points, run in the
    ONNX Loop that `export` saves (export.methods.integrated_gradients: the same program),
    about `internal_batch_size` rows per iteration (0: as the memory budget allows), so
    memory does not grow with n_steps; baselines are its inputs, computed here (input
    preparation). The baseline x' is "zeros", "constant" (`baseline_value`), "blur"
    (Gaussian blur of image inputs, `blur_sigma` pixels), "uniform" (noise within each
    row's range, seeded; both computed by export.baselines' ONNX ops, as exported
    explainers compute them) or an array (or dict of arrays).
    extras["convergence_delta"] holds, per row, sum(IG) - (S_c(x) - S_c(x')); a
    ConvergenceWarning is issued when it exceeds `delta_tolerance` (default 5%) times
    |S_c(x) - S_c(x')|. n_steps="auto" (gausslegendre) raises the order per row until the
    delta is within `delta_tolerance` (default 1%), extras["n_steps"] the order each row
    took (methods.ig_auto).
    Where the input meets affine ops first (a convolution, normalisation: graph.stem), the
    path is walked at their output and the gradients go back through them once. Opset-9
    models and models whose ranks are known only at run time run the path folded into the
    batch axis instead (methods._folded_path).
    """

    moved = input_sources(sources, feeds, "integrated_gradients")
    names = [source.tensor for source in moved]
    baselines = make_baselines(feeds, names, baseline, baseline_value, blur_sigma, seed)
    tolerance = tolerance_for(n_steps, delta_tolerance)
    if n_steps != AUTO:
        return _at_order(engine, feeds, target, moved, baselines, int(n_steps), rule,
                         internal_batch_size, tolerance)
    check_auto_rule(rule, "integrated_gradients")
    axes = engine.model.batch.of_inputs

    def run(rows, chosen, order):
        # The baselines as computed for every row: a row's are the same alone or in a batch.
        return _at_order(engine, take(feeds, axes, rows), chosen, moved,
                         take(baselines, axes, rows), order, rule, internal_batch_size,
                         tolerance)

    return auto_steps(run, target, batch_size(feeds, axes), axes, tolerance,
                      "integrated gradients")


def _at_order(engine, feeds, target, moved, baselines, n_steps: int, rule: str,
              internal_batch_size: int, delta_tolerance: float) -> MethodOutput:
    """Integrated Gradients with `n_steps` points (see integrated_gradients)."""
    alphas, weights = path_points(n_steps, rule)
    names = [source.tensor for source in moved]
    per_run = loop_rows(engine, feeds, internal_batch_size)
    if needs_folding(engine.model):
        return folded_path(engine, feeds, target, names, baselines,
                           Quadrature(alphas, weights, 0), per_run, delta_tolerance, rule)
    options = {"n_steps": n_steps, "rule": rule, "baseline": FED,
               "baseline_value": 0.0, "internal_batch_size": per_run}
    # The Loop runs every step in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, len(alphas), "integrated gradients", "step") as bar:
        run = graph_run(engine, "integrated_gradients", feeds, target, moved, options,
                        fed={BASELINE + name: value for name, value in baselines.items()},
                        read=(SCORE, BASELINE_SCORE), specialise=False)
        bar.update(len(alphas))
    values = dict(run.grads)
    delta = convergence_delta(values, run.post[SCORE], run.post[BASELINE_SCORE],
                              delta_tolerance, rule)
    return MethodOutput(run, values, extras={"convergence_delta": delta})


def path_work(options, feeds) -> Work:
    """n_steps gradient runs per row; Gauss-Legendre's nodes come from an n_steps x n_steps
    eigenproblem (numpy's leggauss), held at once."""
    auto = options.get("n_steps") == AUTO
    steps = most_steps(AUTO) if auto else count_of(options, "n_steps")
    points = ORDERS[-1] if auto else steps  # the most points one order holds
    rows, _ = rows_and_bytes(feeds)
    held = 8 * points * (points if options.get("rule") == "gausslegendre" else 2) \
        + 8 * rows * points
    return Work("n_steps", steps, steps, held, "gradient runs")


def check_auto_rule(rule: str, method: str) -> None:
    if rule != "gausslegendre":
        raise InputError(f"{method}: n_steps=auto raises the Gauss-Legendre order; use "
                         f"rule=gausslegendre (or a fixed n_steps with rule={rule})")


N_STEPS = n_steps_option(auto=AUTO)
RULE = choice("rule", "gausslegendre", PATH_RULES, "quadrature rule of the path integral")
INTERNAL_BATCH_SIZE = integer("internal_batch_size", 0, "rows per Loop iteration, the model's "
                              "points times input rows (0: as the memory budget allows; "
                              "exported: 16)", low=0)
DELTA_TOLERANCE = Option("delta_tolerance", None, "share of |S(x) - S(x')| the delta may "
                         "reach: warned above (None: 0.05), auto's target (None: 0.01)",
                         ("float",), low=0, none=True)


register(MethodSpec(
    name="integrated_gradients",
    run=integrated_gradients,
    summary="path integral of gradients from a baseline to the input (completeness delta in "
            "extras)",
    reference="Sundararajan, Taly, Yan 2017, arXiv:1703.01365",
    family="gradient",
    options=(N_STEPS, RULE, path_baseline(), BASELINE_VALUE, BLUR_SIGMA, BASELINE_SEED,
             INTERNAL_BATCH_SIZE, DELTA_TOLERANCE),
    work=path_work,
))
