"""Blur Integrated Gradients (Xu, Venugopalan, Sundararajan, Sturmfels 2020), with PAIR
saliency's BlurIG semantics."""

from __future__ import annotations

from ..export.methods import BASELINE_SCORE, SCORE
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import ConvergenceWarning, completeness_delta, input_sources
from ._graph import graph_run
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import delta_tolerance, flag, integer, number


def blur_ig(engine, feeds, target, sources, *, max_sigma: float = 50.0, steps: int = 100,
            grad_step: float = 0.01, sqrt: bool = False, internal_batch_size: int = 0,
            delta_tolerance: float = 0.05):
    """BlurIG_i = integral over sigma from max_sigma to 0 of
    d S(B(x, sigma)) / d x_i * d B(x, sigma)_i / d sigma, where B(x, sigma) is x blurred by a
    Gaussian of `sigma` pixels along height and width: the path from a fully blurred image,
    which holds no information at scale below sigma, to the input (Xu et al., CVPR 2020,
    arXiv:2004.03383). As PAIR's saliency.core.BlurIG computes it: sigma_s = s max_sigma /
    steps (`sqrt`: its square root) for s = 0 .. steps, and
    BlurIG = -sum_{s < steps} (sigma_{s+1} - sigma_s) (B(x, sigma_s + grad_step) -
    B(x, sigma_s)) / grad_step * grad S(B(x, sigma_s)), with B scipy's gaussian_filter
    (truncated at 4 sigma, zeros past the border; export.blur_ig builds it in ONNX). Each
    step is weighed by its own sigma_{s+1} - sigma_s, as PAIR with its default batch_size=1
    (a larger batch_size there weighs a batch's steps by its last one's: uneven with sqrt).
    The steps run in the ONNX Loop that `export` saves (export.blur_ig: the same program),
    about `internal_batch_size` rows per iteration (0: as the memory budget allows). Image
    inputs only ([N, C, H, W] or [N, H, W, C]); each row is blurred on its own, so a row's
    attribution is the same alone or in a batch.
    The sum is a left Riemann sum of d S(B(x, sigma)) / d sigma over [0, sigma_steps], so
    sum(BlurIG) ~= S_c(x) - S_c(B(x, sigma_steps)) (the path's start: max_sigma, or its
    square root with `sqrt`); extras["convergence_delta"] holds, per row, sum(BlurIG) -
    (S_c(x) - S_c(B(x, sigma_steps))), and a ConvergenceWarning is issued where it exceeds
    `delta_tolerance` times |S_c(x) - S_c(B(x, sigma_steps))|, as for Integrated Gradients.
    """

    moved = input_sources(sources, feeds, "blur_ig")
    options = {"max_sigma": float(max_sigma), "steps": int(steps),
               "grad_step": float(grad_step), "sqrt": bool(sqrt),
               "internal_batch_size": internal_batch_size}
    # The Loop runs every step in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, int(steps), "blur ig", "step") as bar:
        run = graph_run(engine, "blur_ig", feeds, target, moved, options,
                        read=(SCORE, BASELINE_SCORE), specialise=False)
        bar.update(int(steps))
    notes = [f"blur_ig: {steps} steps from sigma {max_sigma} to 0"
             f"{' (square-root spacing)' if sqrt else ''}, grad_step {grad_step}"]
    values = dict(run.grads)
    delta = completeness_delta(values, run.post[SCORE], run.post[BASELINE_SCORE],
                               delta_tolerance, ConvergenceWarning, "blur integrated gradients",
                               "the attributions miss the output difference from the most "
                               "blurred image", "use more steps (PAIR's blur path converges "
                               "slowly: its first step, at sigma ~0, adds nothing; 400 steps "
                               "bring the zoo models under 6%)")
    return MethodOutput(run, values, extras={"convergence_delta": delta}, notes=notes)


def blur_work(options, feeds) -> Work:
    """`steps` gradient runs per row; held: the Loop's sum per input, shaped like the rows."""
    steps = count_of(options, "steps")
    rows, row_bytes = rows_and_bytes(feeds)
    return Work("steps", steps, steps, rows * row_bytes, "gradient runs")


register(MethodSpec(
    name="blur_ig",
    run=blur_ig,
    summary="integrated gradients along a path of Gaussian blurs, from a fully blurred "
            "image to the input (PAIR saliency's BlurIG; completeness delta in extras)",
    reference="Xu, Venugopalan, Sundararajan, Sturmfels 2020, arXiv:2004.03383",
    family="gradient",
    options=(number("max_sigma", 50.0, "the Gaussian sigma in pixels where the path starts "
                    "(sqrt: at sqrt(max_sigma), as PAIR)",
                    low=0, open_low=True),
             integer("steps", 100, "blur levels between the fully blurred image and the "
                     "input", low=1),
             number("grad_step", 0.01, "sigma step of the finite difference d blur / d sigma",
                    low=0, open_low=True),
             flag("sqrt", False, "PAIR's sqrt schedule: sigma_s = sqrt(s max_sigma / steps)"),
             INTERNAL_BATCH_SIZE, delta_tolerance(0.05)),
    work=blur_work,
))
