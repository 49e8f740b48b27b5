"""SmoothGrad, SmoothGrad-squared and VarGrad: any gradient method averaged over noisy copies.

Smilkov et al. 2017 (SmoothGrad), Adebayo et al. 2018 (VarGrad, the variance).

Over saliency, input x gradient, guided backprop and deconvnet the copies run in the ONNX
Loop that `export` saves (export.noise: the same program, the same numbers); the noise is
export.random's generator keyed by (seed, sample, element), each row's seed a digest of the
option seed and the row's bytes (export.noise.row_seeds): rows draw independent noise, and a
row draws the same alone or in any batch (a model whose batch axis is fixed runs the Loop
too, one copy of its rows per iteration). Other bases (DeepLIFT, LRP, integrated gradients)
run the base method on chunks of copies here, made by export.noise's copies program (the
Loop's sigma and draws, the same seeds).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ..errors import InputError
from ..inputs import rows_axis
from ..runtime.budget import Work, count_of, rows_and_bytes
from ..runtime.progress import progress_bar
from ..runtime.session import Session
from . import METHODS, MethodOutput, MethodSpec, register
from ._common import clean_run, equal_runs, fixed_objective, input_sources
from ._graph import graph_run
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import choice, integer, number

NOISE_METHODS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def _noise_tunnel(kind: str, engine, feeds, target, sources, *, base: str,
                  noise_level: float, n_samples: int, seed: int, internal_batch_size: int = 0):
    from ..export.noise import BASES  # export imports us

    spec = METHODS.get(base)
    if spec is None or spec.family != "gradient" or base in NOISE_METHODS:
        gradient_methods = sorted(m.name for m in METHODS.values()
                                  if m.family == "gradient" and m.name not in NOISE_METHODS)
        raise InputError(f"{kind} runs over a gradient method; '{base}' is not one "
                         f"(choose from {', '.join(gradient_methods)})")
    if n_samples < 1 or noise_level < 0:
        raise InputError(f"{kind} needs n_samples >= 1 and noise_level >= 0")
    moved = input_sources(sources, feeds, kind)
    notes = [f"{kind} over {base}: {n_samples} samples, noise {noise_level} x input range, "
             f"seed {seed}"]
    if base not in BASES:
        return _chunked(kind, engine, feeds, target, sources, [s.tensor for s in moved], spec,
                        noise_level=noise_level, n_samples=n_samples, seed=seed,
                        internal_batch_size=internal_batch_size, notes=notes)
    return _in_graph(kind, engine, feeds, target, moved, base, noise_level, n_samples, seed,
                     internal_batch_size, notes)


def _in_graph(kind: str, engine, feeds, target, moved, base: str, noise_level: float,
              n_samples: int, seed: int, internal_batch_size: int, notes: list[str]
              ) -> MethodOutput:
    """The export.noise program, its seed fed (one per row) so a new seed is no new
    program."""
    from ..export.graph import FED
    from ..export.noise import SEED

    options = {"base": base, "noise_level": float(noise_level), "n_samples": int(n_samples),
               "seed": FED, "internal_batch_size": internal_batch_size}
    # The Loop runs every sample in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        run = graph_run(engine, kind, feeds, target, moved, options,
                        fed={SEED: seeds_of(engine, feeds, seed)}, specialise=False)
        bar.update(n_samples)
    signed = kind == "smoothgrad" and base != "saliency"  # saliency's default: |gradient|
    return MethodOutput(run, dict(run.grads), signed=signed, notes=notes)


def _chunked(kind: str, engine, feeds, target, sources, names, spec, *, noise_level: float,
             n_samples: int, seed: int, internal_batch_size: int, notes: list[str]
             ) -> MethodOutput:
    """Bases without a Loop program: the base method on chunks of copies (the samples of a
    row adjacent), with the program's seeds and the generator's draws."""
    from ..export.noise import STREAM

    objective, clean_outputs = fixed_objective(engine, feeds, target)
    rows = next(iter(feeds.values())).shape[0]
    order = [spec.name for spec in engine.model.inputs]
    seeds = seeds_of(engine, feeds, seed)
    makers = {name: noisy_copies(feeds[name], noise_level, seeds) for name in names}
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    rows_per_run = int(internal_batch_size) or engine.rows_per_run(feeds)
    per_run = equal_runs(n_samples, max(1, rows_per_run // max(rows, 1)))
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        for first in range(0, n_samples, per_run):
            count = min(per_run, n_samples - first)
            noisy = {k: np.repeat(v, count, axis=0) for k, v in feeds.items()}
            for name in names:
                noisy[name] = makers[name](first + order.index(name) * STREAM, count)
            output = spec.run(engine, noisy, objective.repeat(count).feed(), sources,
                              **spec.defaults)
            for tensor, value in output.at_sources.items():
                value = value.reshape((rows, count) + value.shape[1:]).astype(np.float64)
                sums[tensor] = sums.get(tensor, 0) + value.sum(axis=1)
                squares[tensor] = squares.get(tensor, 0) + np.square(value).sum(axis=1)
            bar.update(count)
    values = {}
    for tensor, total in sums.items():
        mean, mean_square = total / n_samples, squares[tensor] / n_samples
        result = {"smoothgrad": mean, "smoothgrad_sq": mean_square,
                  # Rounding can leave E[g^2] - E[g]^2 just below 0; a variance is not.
                  "vargrad": np.maximum(mean_square - np.square(mean), 0)}[kind]
        values[tensor] = result.astype(feeds[tensor].dtype if tensor in feeds else np.float32)
    return MethodOutput(clean_run(clean_outputs, objective, engine), values,
                        signed=kind == "smoothgrad" and output.signed, notes=notes)


def seeds_of(engine, feeds: dict[str, np.ndarray], seed: int) -> np.ndarray:
    """The noise seed of every row (int64 [N]): export.noise.row_seeds over the rows of all
    the per-row inputs."""
    from ..export.noise import row_seeds

    axes = engine.model.batch.of_inputs
    rows = [np.moveaxis(feeds[name], axis, 0) for name in sorted(feeds)
            if (axis := rows_axis(axes, name, feeds[name])) is not None]
    return row_seeds(rows, seed)


def noisy_copies(x: np.ndarray, level: float, seeds: np.ndarray
                 ) -> Callable[[int, int], np.ndarray]:
    """copies(first, count): x + sigma z for samples first..first+count-1 of every row,
    [N * count, ...] with the samples of a row adjacent, from export.noise's copies program
    (the Loop's own definition of sigma and the draws; model input i: samples from
    i * export.noise.STREAM)."""
    from onnx import helper

    from ..export.noise import copies_program

    model = copies_program(helper.np_dtype_to_tensor_dtype(x.dtype), x.ndim, level)
    session = Session(model, ["CPUExecutionProvider"])

    def copies(first: int, count: int) -> np.ndarray:
        feeds = {"x": x, "seeds": seeds, "samples": np.arange(first, first + count)}
        made = next(iter(session.run(None, feeds).values()))  # [count * N, ...]
        return np.swapaxes(made.reshape((count,) + x.shape), 0, 1).reshape(made.shape)
    return copies


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
    """n_samples runs of the base method per row; held: the Loop's two sums per input (of
    the attributions and of their squares, shaped like the rows), whatever n_samples: an
    iteration's noisy copies are as many as the rows per iteration, which the memory budget
    sizes (RunPolicy.loop_rows)."""
    samples = count_of(options, "n_samples")
    rows, row_bytes = rows_and_bytes(feeds)
    return Work("n_samples", samples, samples, 2 * rows * row_bytes, "noisy copies")


# Every gradient method registered before this module (the noise family is apart).
_OPTIONS = (
    choice("base", "saliency", sorted(m.name for m in METHODS.values() if m.family == "gradient"),
           "gradient method over the noisy copies (one graph over saliency, input_x_gradient, "
           "guided_backprop, deconvnet)"),
    number("noise_level", 0.15, "noise standard deviation as a share of each row's value range",
           low=0),
    integer("n_samples", 25, "noisy copies per row", low=1),
    integer("seed", 0, "seed of the noise (with each row's bytes: rows draw independent noise, "
            "the same alone or in any batch)", low=0, high=2**32 - 1),
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
