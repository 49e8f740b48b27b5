"""The report's pictures: each input image row and each part of each method's heatmap of it,
as PNG bytes with their file names and colour scales (written by report_files, shown by
report_html)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ..files import safe_name
from ..images import image_layout
from .heatmap import ColourRange, colour_range, enlarge, spatial_map
from .overlay import heatmap_parts, input_image
from .report import ReconstructionColumn, Report, input_kind

MAX_ROWS = 64  # rows drawn (pictures, HTML); report.json keeps the numbers of every row


@dataclass(frozen=True)
class Picture:
    """One PNG of the report: an input row, or one part of a method's heatmap."""

    row: int
    method: str  # "" for the input itself
    input: str
    part: str  # "input", "both", "positive", "negative" (signed maps) or "magnitude"; a
    # probe's layer: "reconstruction" and "error"
    file: str
    png: bytes
    span: ColourRange | None = None  # heatmaps: the values at the ends of the colour scale


PictureKey = tuple[int, str, str, str]


def render_pictures(report: Report) -> dict[PictureKey, Picture]:
    """Every picture, keyed (row, method, input, part); heatmaps have their input's size.
    Maps shared over the image's channels (one channel, as Grad-CAM and RISE give) are drawn
    like maps with a value per channel: summed over channels, to one value per pixel. Each
    map is drawn on its colour_range (as `explain` draws it), which its colour bar shows."""
    pictures: dict[PictureKey, Picture] = {}

    def add(row: int, method: str, name: str, part: str, image, span=None) -> None:
        stem = f"r{row}_{safe_name(method or 'input')}_{safe_name(name)}"
        suffix = "" if part in ("input", "both", "magnitude") else f"_{part}"
        pictures[row, method, name, part] = Picture(row, method, name, part,
                                                    f"{stem}{suffix}.png", _png(image), span)

    for name, values in report.feeds.items():
        if input_kind(values) != "image":
            continue
        layout = image_layout(values.shape)
        for row in range(min(report.rows, MAX_ROWS)):
            base = enlarge(input_image(values[row]))
            add(row, "", name, "input", base)
            pixels = spatial_map(values[row], layout).shape
            for result in report.results:
                flat = _pixel_map(result.attribution, name, values.shape, row, layout)
                if flat is None or flat.shape != pixels:
                    continue
                signed = result.attribution.signed
                span = colour_range(flat, signed, stretch=True)
                for part, heat in heatmap_parts(flat, signed, span=span).items():
                    add(row, result.method, name, part, heat.resize(base.size, Image.NEAREST),
                        span)
            probed = [column for column in report.reconstructions
                      if column.input == name and column.reconstruction is not None]
            # One colour scale for the row's error maps: the layers compare.
            errors = [spatial_map(column.error[row], layout) for column in probed]
            span = colour_range(np.concatenate([e.ravel() for e in errors])) if errors else None
            for column, error in zip(probed, errors, strict=True):
                add(row, column.heading, name, "reconstruction",
                    _rebuilt(column, values[row], row, layout).resize(base.size, Image.NEAREST))
                add(row, column.heading, name, "error", heatmap_parts(
                    error, False, span=span)["magnitude"].resize(base.size, Image.NEAREST), span)
    return pictures


def _rebuilt(column: ReconstructionColumn, image: np.ndarray, row: int, layout: str
             ) -> Image.Image:
    """A probe's reconstruction of one image row in grey on the input's own scale: drawn
    beside the input, then cut off it, so that input_image stretches both alike."""
    rebuilt = np.clip(column.reconstruction[row], float(image.min()), float(image.max()))
    both = input_image(np.concatenate([image, rebuilt], axis=2 if layout == "NCHW" else 1))
    return both.crop((both.width // 2, 0, both.width, both.height))


def _pixel_map(attribution, name: str, shape: tuple[int, ...], row: int, layout: str
               ) -> np.ndarray | None:
    """One row's attribution of image input `name` as an [H, W] map, or None when the
    attribution has no image of that batch there."""
    scores = None if attribution is None else attribution.attributions.get(name)
    if scores is None or scores.ndim != len(shape) or scores.shape[0] != shape[0]:
        return None
    return spatial_map(scores[row], layout, attribution.signed)


def _png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()


__all__ = ["MAX_ROWS", "Picture", "PictureKey", "render_pictures"]
