"""SmoothGrad, SmoothGrad-squared and VarGrad: any gradient method averaged over noisy copies.

Smilkov et al. 2017 (SmoothGrad), Adebayo et al. 2018 (VarGrad, the variance).

Over saliency, input x gradient, guided backprop and deconvnet the copies run in the ONNX
Loop that `export` saves (export.noise: the same program, the same numbers); the noise is
export.random's generator keyed by (seed, sample, element), so a row draws the same noise
alone or in any batch. Other bases (DeepLIFT, LRP, integrated gradients), models with a fixed
batch axis and opsets below 12 run the base method on chunks of copies here, with the same
generator's draws (its numpy reference).
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..inputs import batch_size
from ..runtime.progress import progress_bar
from . import METHODS, MethodOutput, MethodSpec, register
from ._budget import Work, count_of, rows_and_bytes
from ._common import clean_run, equal_runs, fixed_objective, input_sources
from ._graph import graph_run
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import choice, integer, number, seed_option

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
    model = engine.model
    if base not in BASES or not model.batch.symbolic or model.opset < 12:
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
    from ..export.random import seed_key

    options = {"base": base, "noise_level": float(noise_level), "n_samples": int(n_samples),
               "seed": FED, "internal_batch_size": internal_batch_size}
    rows = batch_size(feeds, engine.model.batch.of_inputs)
    # The Loop runs every sample in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        run = graph_run(engine, kind, feeds, target, moved, options,
                        fed={SEED: np.full(rows, seed_key(seed), np.int64)}, specialise=False)
        bar.update(n_samples)
    signed = kind == "smoothgrad" and base != "saliency"  # saliency's default: |gradient|
    return MethodOutput(run, dict(run.grads), signed=signed, notes=notes)


def _chunked(kind: str, engine, feeds, target, sources, names, spec, *, noise_level: float,
             n_samples: int, seed: int, internal_batch_size: int, notes: list[str]
             ) -> MethodOutput:
    """Bases without a Loop program, fixed batch axes, old opsets: the base method on chunks
    of copies (the samples of a row adjacent), with the generator's draws."""
    from ..export.noise import STREAM

    objective, clean_outputs = fixed_objective(engine, feeds, target)
    rows = next(iter(feeds.values())).shape[0]
    order = [spec.name for spec in engine.model.inputs]
    sigmas = {name: noise_scale(feeds[name], noise_level) for name in names}
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    rows_per_run = int(internal_batch_size) or engine.rows_per_run(feeds)
    per_run = equal_runs(n_samples, max(1, rows_per_run // max(rows, 1)))
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        for first in range(0, n_samples, per_run):
            count = min(per_run, n_samples - first)
            noisy = {k: np.repeat(v, count, axis=0) for k, v in feeds.items()}
            for name in names:
                noisy[name] = noisy_copies(feeds[name], sigmas[name], seed,
                                           first + order.index(name) * STREAM, count)
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


def noise_scale(x: np.ndarray, noise_level: float) -> np.ndarray:
    """sigma per row [N, 1, ...] in x's type: noise_level * (max - min), noise_level for a
    row with no range (as export.noise._sigma computes it)."""
    axes = tuple(range(1, x.ndim))
    spread = x.max(axis=axes, keepdims=True) - x.min(axis=axes, keepdims=True)
    spread = np.where(spread == 0, spread + 1, spread)
    return spread * np.asarray(noise_level, x.dtype)


def noisy_copies(x: np.ndarray, sigma: np.ndarray, seed: int, first: int, count: int
                 ) -> np.ndarray:
    """x + sigma z for samples first..first+count-1 of every row, [N * count, ...] with the
    samples of a row adjacent; z is export.random's normal stream of (seed, sample) (model
    input i: samples from i * export.noise.STREAM)."""
    from ..export.random import reference_normal, seed_key

    row = x.shape[1:]
    z = reference_normal([seed_key(seed)], np.arange(first, first + count),
                         int(np.prod(row, dtype=np.int64)), x.dtype)
    z = z.reshape((1, count) + row).astype(x.dtype)
    return (x[:, None] + z * sigma[:, None]).reshape((-1,) + row)


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
    """n_samples runs of the base method per row; held: every noisy copy (the chunked
    path's bound; the Loop holds one iteration's)."""
    samples = count_of(options, "n_samples")
    rows, row_bytes = rows_and_bytes(feeds)
    return Work("n_samples", samples, samples, rows * samples * row_bytes, "noisy copies")


# Every gradient method registered before this module (the noise family is apart).
_OPTIONS = (
    choice("base", "saliency", sorted(m.name for m in METHODS.values() if m.family == "gradient"),
           "gradient method averaged over the noisy copies"),
    number("noise_level", 0.15, "noise standard deviation as a share of each row's value range",
           low=0),
    integer("n_samples", 25, "noisy copies per row", low=1),
    seed_option("seed of the noise (a row gets the same noise alone or in any batch)"),
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
