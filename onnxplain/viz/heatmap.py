"""Heatmap images of attributions, with small built-in colormaps (no plotting library)."""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from ..files import atomic_write

# Anchor colours of a perceptually ordered dark-to-bright map (close to 'inferno').
_SEQUENTIAL = np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
                        [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
                       dtype=np.float64)
# Blue (negative) to white (zero) to red (positive).
_DIVERGING = np.array([[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77],
                       [103, 0, 31]], dtype=np.float64)


def image_layout(shape: tuple[int, ...]) -> str | None:
    """'NCHW' or 'NHWC' when a tensor shape looks like a batch of images, else None."""
    if len(shape) != 4:
        return None
    if shape[1] in (1, 3, 4) and shape[2] > 1 and shape[3] > 1:
        return "NCHW"
    if shape[3] in (1, 3, 4) and shape[1] > 1 and shape[2] > 1:
        return "NHWC"
    return None


def spatial_map(attribution: np.ndarray, layout: str, signed: bool = False) -> np.ndarray:
    """One row's [C, H, W] or [H, W, C] attribution reduced over channels to [H, W].

    Unsigned maps sum absolute values (Captum's 'absolute_value'); signed maps sum values.
    """
    axis = 0 if layout == "NCHW" else -1
    values = attribution if signed else np.abs(attribution)
    return values.sum(axis=axis)


def colour_scale(values: np.ndarray, clip_percentile: float = 99.5) -> float:
    """The |value| drawn at full colour: a high percentile, so outliers don't wash out."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    scale = float(np.percentile(np.abs(values), clip_percentile)) if values.size else 0.0
    return scale if scale > 0 else float(np.abs(values).max() if values.size else 0.0) or 1.0


def colorize(values: np.ndarray, signed: bool = False, clip_percentile: float = 99.5,
             scale: float | None = None) -> np.ndarray:
    """[H, W] floats to [H, W, 3] uint8, divided by `scale` (default: colour_scale(values)).

    Pass one `scale` to draw several maps (the parts of a signed map) comparably.
    """
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    if scale is None or not scale > 0:
        scale = colour_scale(values, clip_percentile)
    if signed:
        position = (np.clip(values / scale, -1, 1) + 1) / 2
        anchors = _DIVERGING
    else:
        position = np.clip(np.abs(values) / scale, 0, 1)
        anchors = _SEQUENTIAL
    grid = np.linspace(0, 1, len(anchors))
    channels = [np.interp(position, grid, anchors[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def heatmap_image(values: np.ndarray, signed: bool = False, min_size: int = 224) -> Image.Image:
    """A PIL image of an [H, W] map, enlarged (nearest neighbour) to at least `min_size`."""
    image = Image.fromarray(colorize(values, signed))
    factor = max(1, -(-min_size // max(image.size)))
    if factor > 1:
        image = image.resize((image.width * factor, image.height * factor), Image.NEAREST)
    return image


def save_png(image: Image.Image, path: str | os.PathLike) -> None:
    atomic_write(path, lambda stream: image.save(stream, format="PNG"))
