"""Reference inputs for path and difference methods (Integrated Gradients, DeepLIFT)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from ..errors import InputError
from ..images import image_layout

NAMED = ("zeros", "constant", "blur", "uniform")


def make_baselines(feeds: Mapping[str, np.ndarray], names: Sequence[str], baseline,
                   value: float = 0.0, blur_sigma: float = 5.0, seed: int = 0
                   ) -> dict[str, np.ndarray]:
    """One baseline per input in `names`, shaped and typed like the input.

    `baseline` is a name (see NAMED), a number (a constant baseline), an array broadcastable
    to the input (single-input models) or a dict of such arrays by input name.
    """
    if isinstance(baseline, Mapping):
        missing = [name for name in names if name not in baseline]
        if missing:
            raise InputError(f"the baseline dict has no entry for input '{missing[0]}'")
        return {name: _array_baseline(feeds[name], baseline[name], name) for name in names}
    if isinstance(baseline, np.ndarray):
        if len(names) != 1:
            raise InputError("pass one baseline array per input as a dict name -> array")
        return {names[0]: _array_baseline(feeds[names[0]], baseline, names[0])}
    rng = np.random.default_rng(seed)
    return {name: _named_baseline(feeds[name], baseline, value, blur_sigma, rng, name)
            for name in names}


def _array_baseline(x: np.ndarray, given, name: str) -> np.ndarray:
    array = np.asarray(given)
    try:
        return np.ascontiguousarray(np.broadcast_to(array, x.shape), dtype=x.dtype)
    except ValueError:
        raise InputError(f"baseline for '{name}' has shape {array.shape}, which does not "
                         f"broadcast to the input's {x.shape}") from None


def _named_baseline(x: np.ndarray, kind, value: float, blur_sigma: float,
                    rng: np.random.Generator, name: str) -> np.ndarray:
    if isinstance(kind, (int, float)) and not isinstance(kind, bool):
        return np.full_like(x, float(kind))
    text = str(kind).strip().lower()
    try:
        return np.full_like(x, float(text))
    except ValueError:
        pass
    if text == "zeros":
        return np.zeros_like(x)
    if text == "constant":
        return np.full_like(x, value)
    if text == "uniform":
        flat = x.reshape(x.shape[0], -1)
        low, high = flat.min(axis=1), flat.max(axis=1)
        shape = (-1,) + (1,) * (x.ndim - 1)
        noise = rng.uniform(size=x.shape)
        return (low.reshape(shape) + noise * (high - low).reshape(shape)).astype(x.dtype)
    if text == "blur":
        layout = image_layout(x.shape)
        if layout is None:
            raise InputError(f"a blurred baseline needs an image input; '{name}' has shape "
                             f"{x.shape}")
        axes = (2, 3) if layout == "NCHW" else (1, 2)
        return gaussian_blur(x, blur_sigma, axes).astype(x.dtype)
    raise InputError(f"unknown baseline '{kind}' (use {', '.join(NAMED)}, a number or an "
                     "array)")


def gaussian_blur(x: np.ndarray, sigma: float, axes: Sequence[int]) -> np.ndarray:
    """Separable Gaussian blur over `axes`, mirroring at the borders (no scipy needed)."""
    if sigma <= 0:
        return x.copy()
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        length = out.shape[axis]
        out = sum(weight * np.take(padded, np.arange(k, k + length), axis=axis)
                  for k, weight in enumerate(kernel))
    return out
