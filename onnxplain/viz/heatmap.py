"""Heatmap images of attributions, with small built-in colormaps and a labelled colour bar
(no plotting library)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from PIL.PngImagePlugin import PngInfo

from ..errors import InputError
from ..files import atomic_write
from ..images import image_layout

# The value drawn at full colour is this percentile of |value|, so that a few outlier pixels
# don't darken the rest (Captum clips at the 98th, the PAIR saliency library at the 99.9th).
CLIP_PERCENTILE = 99.0
# An unsigned map whose low percentile is above this fraction of its top (RISE, a flat
# Grad-CAM) is stretched from that low percentile instead of from 0, else it is one colour.
STRETCH_ABOVE = 0.25

COLORMAPS: dict[str, np.ndarray] = {
    # Anchor colours, dark to bright; inferno and viridis are perceptually ordered.
    "inferno": np.array([[0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
                         [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164]],
                        dtype=np.float64),
    "viridis": np.array([[68, 1, 84], [70, 50, 127], [54, 92, 141], [39, 127, 142],
                         [31, 161, 135], [74, 194, 109], [159, 218, 58], [253, 231, 37]],
                        dtype=np.float64),
    "gray": np.array([[0, 0, 0], [255, 255, 255]], dtype=np.float64),
    # Diverging: blue (negative) to white (zero) to red (positive), for signed maps.
    "rdbu": np.array([[5, 48, 97], [67, 147, 195], [247, 247, 247], [214, 96, 77],
                      [103, 0, 31]], dtype=np.float64),
}
COLOUR_BAR_WIDTH = 112  # pixels added right of a map by `with_colour_bar`
MIN_BAR_HEIGHT = 96  # a flat map gets a taller canvas, so the bar's labels fit
_BAR, _PAD = 16, 6


@dataclass(frozen=True)
class ColourRange:
    """The values drawn at the bottom and the top of the colour scale (values beyond are
    clipped to the end colours), and what each end is, e.g. '0' and 'p99'."""

    low: float
    high: float
    low_means: str
    high_means: str

    def position(self, values: np.ndarray) -> np.ndarray:
        """Where each value falls on the scale, 0 (low) to 1 (high)."""
        return np.clip((values - self.low) / (self.high - self.low), 0.0, 1.0)

    def as_dict(self) -> dict:
        return {"low": self.low, "high": self.high, "low_means": self.low_means,
                "high_means": self.high_means}


def default_colormap(signed: bool) -> str:
    return "rdbu" if signed else "inferno"


def check_colormap(name: str) -> str:
    if name not in COLORMAPS:
        raise InputError(f"unknown colormap '{name}' (choose {', '.join(COLORMAPS)})")
    return name


def spatial_map(attribution: np.ndarray, layout: str, signed: bool = False,
                dtype=None) -> np.ndarray:
    """One row's [C, H, W] or [H, W, C] attribution reduced over channels to [H, W] (rows
    [N, C, H, W] or [N, H, W, C] to [N, H, W] alike), summed in `dtype` (default: its own).

    Unsigned maps sum absolute values (Captum's 'absolute_value'); signed maps sum values.
    """
    axis = -3 if layout == "NCHW" else -1
    values = attribution if signed else np.abs(attribution)
    return values.sum(axis=axis, dtype=dtype)


def row_maps(rows: np.ndarray, signed: bool, dtype=None) -> np.ndarray:
    """Rows [N, *shape] of attributions as the heatmaps draw them: image rows ([C, H, W] or
    [H, W, C], images.image_layout) summed over channels by spatial_map, anything else (a
    map already, token scores, an embedding) as it is; in `dtype` (default: their own)."""
    layout = image_layout((1, *rows.shape[1:]))
    if layout is None:
        return rows if dtype is None else rows.astype(dtype, copy=False)
    return spatial_map(rows, layout, signed, dtype)


def row_map(attribution: np.ndarray, signed: bool) -> np.ndarray:
    """One row's map (row_maps): [H, W] for an image row, anything else as it is."""
    return row_maps(attribution[None], signed)[0]


def colour_range(values: np.ndarray, signed: bool = False,
                 clip_percentile: float = CLIP_PERCENTILE, stretch: bool = False
                 ) -> ColourRange:
    """Signed maps: ±(`clip_percentile` of |value|), zero in the middle. Unsigned maps: 0 to
    that percentile; with `stretch`, a map whose (100 - `clip_percentile`) percentile is
    above STRETCH_ABOVE of the top starts there instead (say so beside the picture)."""
    if not 50.0 <= clip_percentile <= 100.0:
        raise InputError(f"clip percentile must be within [50, 100], got {clip_percentile}")
    magnitude = np.abs(_finite(values))
    high, means = _top(magnitude, clip_percentile)
    if signed:
        return ColourRange(-high, high, f"-{means} |value|", f"{means} |value|")
    if stretch and magnitude.size:
        floor = 100.0 - clip_percentile
        low = float(np.percentile(magnitude, floor))
        if STRETCH_ABOVE * high < low < high:
            return ColourRange(low, high, f"p{floor:g}", means)
    return ColourRange(0.0, high, "0", means)


def colorize(values: np.ndarray, signed: bool = False, colormap: str | None = None,
             span: ColourRange | None = None) -> np.ndarray:
    """[H, W] floats to [H, W, 3] uint8 on `span` (default: colour_range(values, signed));
    unsigned maps are drawn by |value|.

    Pass one `span` to draw several maps (the parts of a signed map) comparably.
    """
    values = _finite(values)
    span = span or colour_range(values, signed)
    if not signed:
        values = np.abs(values)
    return paint(span.position(values), colormap or default_colormap(signed))


def paint(position: np.ndarray, colormap: str) -> np.ndarray:
    """Positions in [0, 1] to uint8 RGB colours of the named colormap."""
    anchors = COLORMAPS[check_colormap(colormap)]
    grid = np.linspace(0, 1, len(anchors))
    channels = [np.interp(position, grid, anchors[:, k]) for k in range(3)]
    return np.stack(channels, axis=-1).round().astype(np.uint8)


def enlarge(image: Image.Image, min_size: int = 224) -> Image.Image:
    """Blow small images up by a whole factor with nearest neighbour, so pixels stay sharp."""
    factor = max(1, -(-min_size // max(image.size)))
    if factor == 1:
        return image
    return image.resize((image.width * factor, image.height * factor), Image.NEAREST)


def heatmap_image(values: np.ndarray, signed: bool = False, min_size: int = 224,
                  colormap: str | None = None, span: ColourRange | None = None
                  ) -> Image.Image:
    """A PIL image of an [H, W] map, enlarged (nearest neighbour) to at least `min_size`."""
    return enlarge(Image.fromarray(colorize(values, signed, colormap=colormap, span=span)),
                   min_size)


def with_colour_bar(image: Image.Image, span: ColourRange, colormap: str) -> Image.Image:
    """`image` with a vertical colour bar on its right, its ends labelled with their values
    and what they are (e.g. 'p99'); COLOUR_BAR_WIDTH pixels wider."""
    height = max(image.height, MIN_BAR_HEIGHT)
    canvas = Image.new("RGB", (image.width + COLOUR_BAR_WIDTH, height), "white")
    canvas.paste(image.convert("RGB"), (0, 0))
    canvas.paste(colour_bar(span, colormap, height), (image.width, 0))
    return canvas


def colour_bar(span: ColourRange, colormap: str, height: int) -> Image.Image:
    """The bar alone: top row the colour of span.high, bottom row that of span.low."""
    panel = Image.new("RGB", (COLOUR_BAR_WIDTH, height), "white")
    ramp = paint(np.repeat(np.linspace(1.0, 0.0, height)[:, None], _BAR, axis=1), colormap)
    panel.paste(Image.fromarray(ramp), (_PAD, 0))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    line = _line_height(font)
    left = 2 * _PAD + _BAR
    draw.text((left, 0), format_value(span.high), fill="black", font=font)
    draw.text((left, line), span.high_means, fill=(90, 90, 90), font=font)
    draw.text((left, height - 2 * line), format_value(span.low), fill="black", font=font)
    draw.text((left, height - line), span.low_means, fill=(90, 90, 90), font=font)
    if span.low < 0 < span.high and height >= 5 * line:  # mark zero on diverging scales
        middle = round((height - 1) * (1 - float(span.position(np.array(0.0)))))
        draw.text((left, middle - line // 2), "0", fill="black", font=font)
    return panel


def format_value(value: float) -> str:
    return "0" if value == 0 else f"{value:.3g}"


def colour_bar_text(span: ColourRange, colormap: str) -> dict[str, str]:
    """The colour bar as PNG text fields, so scripts can read a picture's scale."""
    return {"colormap": colormap, **{f"colour_{k}": str(v) for k, v in span.as_dict().items()}}


def save_png(image: Image.Image, path: str | os.PathLike,
             text: dict[str, str] | None = None) -> None:
    info = PngInfo()
    for key, value in (text or {}).items():
        info.add_text(key, value)
    atomic_write(path, lambda stream: image.save(stream, format="PNG", pnginfo=info))


def _top(magnitude: np.ndarray, clip_percentile: float) -> tuple[float, str]:
    """The top of the scale and its name; the maximum when the percentile is 0 (sparse
    maps), 1 when the map is all zeros."""
    if magnitude.size:
        top = float(np.percentile(magnitude, clip_percentile))
        if top > 0:
            return top, f"p{clip_percentile:g}"
        if magnitude.max() > 0:
            return float(magnitude.max()), "max"
    return 1.0, "map all 0"


def _finite(values: np.ndarray) -> np.ndarray:
    return np.nan_to_num(np.asarray(values, dtype=np.float64))


def _line_height(font) -> int:
    box = font.getbbox("Ag0")
    return int(box[3]) + 2
