"""Heatmaps laid over the input image, and the positive and negative parts of signed maps."""

from __future__ import annotations

import numpy as np
from PIL import Image

from ..errors import InputError
from ..images import image_layout
from .heatmap import ColourRange, colorize, colour_range, enlarge, row_map

ImageLike = Image.Image | np.ndarray


def input_image(values: np.ndarray) -> Image.Image:
    """One image row ([C, H, W], [H, W, C] or [H, W], any value range) as an 8-bit picture.

    Values are stretched min-to-max: model inputs are often normalised, so their raw range
    says nothing about how they looked. Four channels are read as RGB plus a dropped alpha.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 3:
        array = np.moveaxis(array, 0, -1) if _channels_first(array.shape) else array
        array = array[..., 0] if array.shape[-1] == 1 else array[..., :3]
    if array.ndim != 2 and not (array.ndim == 3 and array.shape[-1] == 3):
        raise InputError(f"cannot draw an image of shape {tuple(np.shape(values))}")
    array = np.nan_to_num(array)
    low, high = float(array.min()), float(array.max())
    scaled = (array - low) / (high - low) if high > low else np.zeros_like(array)
    return Image.fromarray((scaled * 255).round().astype(np.uint8)).convert("RGB")


def heatmap_parts(values: np.ndarray, signed: bool, colormap: str | None = None,
                  span: ColourRange | None = None) -> dict[str, Image.Image]:
    """[H, W] map as images: 'both' (diverging), 'positive' and 'negative' for signed maps,
    all three on one colour scale (`span`, default colour_range) so that they compare;
    'magnitude' alone when unsigned."""
    values = np.nan_to_num(np.asarray(values, dtype=np.float64))
    span = span or colour_range(values, signed)
    if not signed:
        return {"magnitude": Image.fromarray(colorize(values, False, colormap=colormap,
                                                      span=span))}
    return {part: Image.fromarray(colorize(kept, True, colormap=colormap, span=span))
            for part, kept in (("both", values), ("positive", np.maximum(values, 0)),
                               ("negative", np.minimum(values, 0)))}


def overlay(image: ImageLike, attribution: np.ndarray, signed: bool = False,
            alpha: float = 0.5, part: str = "both", min_size: int = 224,
            colormap: str | None = None, span: ColourRange | None = None) -> Image.Image:
    """The attribution's heatmap blended over `image` with opacity `alpha` (0: image only).

    `image` is a PIL image or one row of an image input; `attribution` is an [H, W] map or
    one row shaped like the input (channels are summed: absolute values unless `signed`).
    Signed maps are drawn diverging by default; `part` picks 'both', 'positive' or 'negative'.
    `colormap` and `span` (the values at the scale's ends) default as in `colorize`.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be within [0, 1], got {alpha}")
    base = image.convert("RGB") if isinstance(image, Image.Image) else input_image(image)
    parts = heatmap_parts(_as_map(attribution, signed), signed, colormap, span)
    key = "magnitude" if not signed else part
    if key not in parts:
        raise InputError(f"part must be 'both', 'positive' or 'negative', got '{part}'")
    heat = parts[key]
    base = enlarge(base, min_size)
    resample = Image.NEAREST if base.width % heat.width == 0 else Image.BILINEAR
    heat = heat.resize(base.size, resample)
    return Image.blend(base, heat, alpha)


def _as_map(attribution: np.ndarray, signed: bool) -> np.ndarray:
    values = row_map(np.asarray(attribution), signed)
    if values.ndim != 2:
        raise InputError(f"an attribution of shape {np.shape(attribution)} is not an image "
                         "map: pass [H, W] or one row shaped like the image")
    return values


def _channels_first(shape: tuple[int, ...]) -> bool:
    return image_layout((1, *shape)) == "NCHW"
