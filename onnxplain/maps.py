"""Resizing layer maps to the input's size, in numpy, as torch.nn.functional.interpolate does
(so maps compare with Captum's LayerAttribution.interpolate)."""

from __future__ import annotations

import numpy as np

from .errors import InputError

MODES = ("bilinear", "nearest", "none")


def resize_maps(maps: np.ndarray, size: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    """Resize [N, C, h, w] maps to [N, C, H, W].

    "bilinear" follows interpolate(mode="bilinear", align_corners=False); "nearest" follows
    interpolate(mode="nearest") (source index floor(dst * h / H)); "none" returns the maps.
    """
    if mode not in MODES:
        raise InputError(f"unknown upsample mode '{mode}' (choose from {', '.join(MODES)})")
    if mode == "none" or maps.shape[2:] == tuple(size):
        return maps
    if mode == "nearest":
        rows = _nearest(maps.shape[2], size[0])
        cols = _nearest(maps.shape[3], size[1])
        return maps[:, :, rows][:, :, :, cols]
    out = _linear_axis(maps, size[0], axis=2)
    return _linear_axis(out, size[1], axis=3)


def _nearest(n_in: int, n_out: int) -> np.ndarray:
    return np.minimum(np.floor(np.arange(n_out) * (n_in / n_out)).astype(np.int64), n_in - 1)


def _linear_axis(values: np.ndarray, n_out: int, axis: int) -> np.ndarray:
    n_in = values.shape[axis]
    source = (np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5
    source = np.clip(source, 0, n_in - 1)
    low = np.floor(source).astype(np.int64)
    high = np.minimum(low + 1, n_in - 1)
    weight = (source - low).astype(values.dtype)
    shape = [1] * values.ndim
    shape[axis] = n_out
    weight = weight.reshape(shape)
    below, above = np.take(values, low, axis=axis), np.take(values, high, axis=axis)
    return below * (1 - weight) + above * weight
