"""SmoothGrad, SmoothGrad-squared and VarGrad: a gradient method averaged over noisy copies.

Smilkov et al. 2017 (SmoothGrad), Adebayo et al. 2018 (VarGrad, the variance).

The copies run in the ONNX Loop that `export` saves (the same program, the same numbers):
over saliency, input x gradient, guided backprop and deconvnet its body is the model with
its gradient (export.noise); over DeepLIFT, LRP and integrated gradients it is the base
method's own program (export.noise_program), run with the base's defaults. The noise is
export.random's generator keyed by (seed, sample, element), each row's seed a digest of the
option seed and the row's bytes (export.noise.row_seeds): rows draw independent noise, and a
row draws the same alone or in any batch (a model whose batch axis is fixed runs the Loop
too, one copy of its rows per iteration).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..export.graph import FED
from ..export.noise import BASES, SEED, row_seeds
from ..export.noise_program import PROGRAM_BASES
from ..export.random import WORD
from ..inputs import rows_axis
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from . import METHODS, MethodOutput, MethodSpec, register
from ._common import input_sources
from ._graph import graph_run
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import choice, integer, number

NOISE_METHODS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _noise_tunnel(kind: str, engine, feeds, target, sources, *, base: str,
                  noise_level: float, n_samples: int, seed: int, internal_batch_size: int = 0):
    """The export.noise program, its seed fed (one per row) so a new seed is no new
    program."""
    from .export_options import with_base_options  # it imports the registry

    if n_samples < 1 or noise_level < 0:
        raise InputError(f"{kind} needs n_samples >= 1 and noise_level >= 0")
    moved = input_sources(sources, feeds, kind)
    notes = [f"{kind} over {base}: {n_samples} samples, noise {noise_level} x input range, "
             f"seed {seed}"]
    options = with_base_options({"base": base, "noise_level": float(noise_level),
                                 "n_samples": int(n_samples), "seed": FED,
                                 "internal_batch_size": internal_batch_size})
    # The Loop runs every sample in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        run = graph_run(engine, kind, feeds, target, moved, options,
                        fed={SEED: seeds_of(engine, feeds, seed)}, specialise=False)
        bar.update(n_samples)
    signed = kind == "smoothgrad" and base != "saliency"  # saliency's default: |gradient|
    return MethodOutput(run, dict(run.grads), signed=signed, notes=notes)


def seeds_of(engine, feeds: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The noise seed of every row (int64 [N]): export.noise.row_seeds over the rows of all
    the per-row inputs."""
    axes = engine.model.batch.of_inputs
    rows = [np.moveaxis(feeds[name], axis, 0) for name in sorted(feeds)
            if (axis := rows_axis(axes, name, feeds[name])) is not None]
    return row_seeds(rows, seed)


def smoothgrad(engine, feeds, target, sources, *, base: str = "saliency",
               noise_level: float = 0.15, n_samples: int = 25, seed: int = 0,
               internal_batch_size: int = 0):
    """Mean of `base` attributions over n_samples copies of x + N(0, sigma^2), sigma =
    noise_level * (max(x) - min(x)) per row."""
    return _noise_tunnel("smoothgrad", engine, feeds, target, sources, base=base,
                         noise_level=noise_level, n_samples=n_samples, seed=seed,
                         internal_batch_size=internal_batch_size)


def smoothgrad_sq(engine, feeds, target, sources, *, base: str = "saliency",
                  noise_level: float = 0.15, n_samples: int = 25, seed: int = 0,
                  internal_batch_size: int = 0):
    """Mean of the squared `base` attributions over noisy copies (SmoothGrad-squared)."""
    return _noise_tunnel("smoothgrad_sq", engine, feeds, target, sources, base=base,
                         noise_level=noise_level, n_samples=n_samples, seed=seed,
                         internal_batch_size=internal_batch_size)


def vargrad(engine, feeds, target, sources, *, base: str = "saliency",
            noise_level: float = 0.15, n_samples: int = 25, seed: int = 0,
            internal_batch_size: int = 0):
    """Variance of the `base` attributions over noisy copies (VarGrad)."""
    return _noise_tunnel("vargrad", engine, feeds, target, sources, base=base,
                         noise_level=noise_level, n_samples=n_samples, seed=seed,
                         internal_batch_size=internal_batch_size)


def noise_work(options, feeds) -> Work:
    """n_samples runs of the base method per row (each its own runs: IG's n_steps), one more
    over a base's own program (its clean run: export.noise_program); held: the Loop's two
    sums per input (of the attributions and of their squares, shaped like the rows),
    whatever n_samples: an iteration's noisy copies are as many as the rows per iteration,
    which the memory budget sizes (RunPolicy.loop_rows)."""
    samples = count_of(options, "n_samples")
    rows, row_bytes = rows_and_bytes(feeds)
    name = str(options.get("base"))
    base = METHODS.get(name)
    each = 1 if base is None or base.work is None else max(
        base.work(base.defaults, feeds).runs, 1)
    runs = (samples + (name in PROGRAM_BASES)) * each
    return Work("n_samples", samples, runs, 2 * rows * row_bytes,
                "noisy copies" if each == 1 else f"gradient runs ({each:,} per noisy copy)")


# The gradient methods but layer IG, which attributes token ids (noise moves float values).
_OPTIONS = (
    choice("base", "saliency", sorted([*BASES, *PROGRAM_BASES]),
           "gradient method over the noisy copies (deeplift, lrp and integrated_gradients with "
           "their defaults)"),
    number("noise_level", 0.15, "noise standard deviation as a share of each row's value range",
           low=0),
    integer("n_samples", 25, "noisy copies per row", low=1),
    integer("seed", 0, "seed of the noise (with each row's bytes: rows draw independent noise, "
            "the same alone or in any batch)", low=0, high=WORD - 1),
    INTERNAL_BATCH_SIZE,
)
register(MethodSpec("smoothgrad", smoothgrad,
                    "mean of a gradient method over noisy copies of the input",
                    "Smilkov, Thorat, Kim, Viegas, Wattenberg 2017, arXiv:1706.03825",
                    "noise", _OPTIONS, work=noise_work))
register(MethodSpec("smoothgrad_sq", smoothgrad_sq,
                    "mean of the squared attributions over noisy copies",
                    "Hooker, Erhan, Kindermans, Kim 2019, arXiv:1806.10758", "noise",
                    _OPTIONS, work=noise_work))
register(MethodSpec("vargrad", vargrad,
                    "variance of the attributions over noisy copies",
                    "Adebayo, Gilmer, Goodfellow, Kim 2018, arXiv:1810.03307", "noise",
                    _OPTIONS, work=noise_work))
