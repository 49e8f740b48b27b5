"""SmoothGrad, SmoothGrad-squared and VarGrad: any gradient method averaged over noisy copies.

Smilkov et al. 2017 (SmoothGrad), Adebayo et al. 2018 (VarGrad, the variance).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..runtime.progress import progress_bar
from . import METHODS, MethodOutput, MethodSpec, register
from ._budget import Work, count_of, rows_and_bytes
from ._common import clean_run, equal_runs, fixed_objective, input_sources
from .integrated_gradients import INTERNAL_BATCH_SIZE
from .options import choice, integer, number, seed_option

NOISE_METHODS = ("smoothgrad", "smoothgrad_sq", "vargrad")


def smoothgrad_noise(feeds: Mapping[str, np.ndarray], names: Sequence[str],
                     noise_level: float, n_samples: int, seed: int) -> dict[str, np.ndarray]:
    """Gaussian noise per input, [rows * n_samples, ...] with the samples of a row adjacent.

    Its standard deviation is `noise_level` times the row's value range (max - min), as in
    the SmoothGrad paper; a row with no range gets `noise_level` itself.
    """
    noise = {}
    for index, name in enumerate(names):
        x = feeds[name]
        # Drawn in single precision unless the input is double: 58 against 140 ms
        # for 25 samples at 224x224, and no copy to cast.
        dtype = np.float64 if x.dtype == np.float64 else np.float32
        draws = np.empty((x.shape[0], n_samples) + x.shape[1:], dtype=dtype)
        for row in range(x.shape[0]):
            _row_rng(seed, index, x[row]).standard_normal(draws.shape[1:], dtype=dtype,
                                                          out=draws[row])
            spread = float(x[row].max() - x[row].min())
            draws[row] *= dtype(noise_level * (spread if spread > 0 else 1.0))
        noise[name] = draws.reshape((-1,) + x.shape[1:]).astype(x.dtype, copy=False)
    return noise


def _row_rng(seed: int, input_index: int, row: np.ndarray) -> np.random.Generator:
    """A generator seeded by the seed and the row's own bytes: a row gets the same noise
    alone or in any batch, at any position (so a batch equals its rows run one by one)."""
    digest = zlib.crc32(np.ascontiguousarray(row).tobytes())
    return np.random.default_rng([int(seed), input_index, digest])


def _noise_tunnel(kind: str, engine, feeds, target, sources, *, base: str,
                  noise_level: float, n_samples: int, seed: int, internal_batch_size: int = 0):
    spec = METHODS.get(base)
    if spec is None or spec.family != "gradient" or base in NOISE_METHODS:
        gradient_methods = sorted(m.name for m in METHODS.values()
                                  if m.family == "gradient" and m.name not in NOISE_METHODS)
        raise InputError(f"{kind} runs over a gradient method; '{base}' is not one "
                         f"(choose from {', '.join(gradient_methods)})")
    if n_samples < 1 or noise_level < 0:
        raise InputError(f"{kind} needs n_samples >= 1 and noise_level >= 0")
    names = [source.tensor for source in input_sources(sources, feeds, kind)]
    objective, clean_outputs = fixed_objective(engine, feeds, target)
    noise = smoothgrad_noise(feeds, names, noise_level, n_samples, seed)
    rows = next(iter(feeds.values())).shape[0]
    sums: dict[str, np.ndarray] = {}
    squares: dict[str, np.ndarray] = {}
    rows_per_run = int(internal_batch_size) or engine.rows_per_run(feeds)
    per_run = equal_runs(n_samples, max(1, rows_per_run // max(rows, 1)))
    with progress_bar(engine.progress, n_samples, kind, "sample") as bar:
        for first in range(0, n_samples, per_run):
            count = min(per_run, n_samples - first)
            picked = _sample_rows(rows, n_samples, first, count)
            noisy = {k: np.repeat(v, count, axis=0) for k, v in feeds.items()}
            for name in names:
                noisy[name] = noisy[name] + noise[name][picked]
            output = spec.run(engine, noisy, objective.repeat(count).feed(), sources,
                              **spec.defaults)
            for tensor, value in output.at_sources.items():
                value = value.reshape((rows, count) + value.shape[1:]).astype(np.float64)
                sums[tensor] = sums.get(tensor, 0) + value.sum(axis=1)
                squares[tensor] = squares.get(tensor, 0) + np.square(value).sum(axis=1)
            bar.update(count)
    signed = kind == "smoothgrad" and output.signed
    values = {}
    for tensor, total in sums.items():
        mean, mean_square = total / n_samples, squares[tensor] / n_samples
        result = {"smoothgrad": mean, "smoothgrad_sq": mean_square,
                  # Rounding can leave E[g^2] - E[g]^2 just below 0; a variance is not.
                  "vargrad": np.maximum(mean_square - np.square(mean), 0)}[kind]
        values[tensor] = result.astype(feeds[tensor].dtype if tensor in feeds else np.float32)
    return MethodOutput(clean_run(clean_outputs, objective, engine), values, signed=signed,
                        notes=[f"{kind} over {base}: {n_samples} samples, noise "
                               f"{noise_level} x input range, seed {seed}"])


def _sample_rows(rows: int, n_samples: int, first: int, count: int) -> np.ndarray:
    """Indices into the [rows * n_samples] noise of samples first..first+count of each row."""
    return (np.arange(rows)[:, None] * n_samples + first + np.arange(count)[None, :]).reshape(-1)


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
    """n_samples runs of the base method per row; the noise of every sample of every row is
    drawn at once (smoothgrad_noise)."""
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
    seed_option("seed of the noise (with each row's bytes: a row gets the same noise in any "
                "batch)"),
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
