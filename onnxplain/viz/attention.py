"""An attention (or any [query, key]) matrix as a picture with labelled axes, drawn with Pillow."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from ..errors import InputError
from .heatmap import colorize

_MAX_LABEL = 14  # characters; longer tokens are cut with "~"
_PAD = 4


def attention_matrix(matrix: np.ndarray, tokens: Sequence[str] | None = None,
                     cell: int | None = None, title: str | None = None) -> Image.Image:
    """A [Q, K] map (rows: queries, columns: keys) with token labels on both axes.

    Negative values switch to the diverging colormap (blue below zero, red above); `cell` is
    the side of one square in pixels (default: fits about 480 pixels, 4 to 32). Labels that
    would overlap are thinned to every n-th; without `tokens` the axes show indices.
    """
    values = np.asarray(matrix, dtype=np.float64)
    if values.ndim != 2 or 0 in values.shape:
        raise InputError(f"attention_matrix needs a 2-D [query, key] matrix, got shape "
                         f"{values.shape}")
    rows, cols = values.shape
    labels = [str(i) for i in range(max(rows, cols))] if tokens is None else list(tokens)
    if len(labels) < max(rows, cols):
        raise InputError(f"{len(labels)} tokens for a matrix of shape {values.shape}")
    cell = cell or int(np.clip(480 // max(rows, cols), 4, 32))
    font = ImageFont.load_default()
    names = [_short(label) for label in labels]
    text_h = _text_size(font, "Ag")[1]
    every = max(1, -(-(text_h + 1) // cell))  # show every n-th label when cells are small
    left = max(_text_size(font, n)[0] for n in names[:rows]) + 2 * _PAD
    top = max(_text_size(font, n)[0] for n in names[:cols]) + 2 * _PAD
    top += text_h + _PAD if title else 0
    heat = Image.fromarray(colorize(values, signed=bool((values < 0).any())))
    heat = heat.resize((cols * cell, rows * cell), Image.NEAREST)
    canvas = Image.new("RGB", (left + heat.width + _PAD, top + heat.height + _PAD), "white")
    canvas.paste(heat, (left, top))
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((_PAD, _PAD), title, fill="black", font=font)
    for i in range(0, rows, every):  # query labels, right-aligned left of their row
        width, _ = _text_size(font, names[i])
        draw.text((left - _PAD - width, top + i * cell + (cell - text_h) // 2), names[i],
                  fill="black", font=font)
    for j in range(0, cols, every):  # key labels, rotated to read bottom-up above their column
        label = _vertical(names[j], font, text_h)
        canvas.paste(label, (left + j * cell + (cell - label.width) // 2,
                             top - _PAD - label.height))
    return canvas


def _vertical(text: str, font: ImageFont.ImageFont, height: int) -> Image.Image:
    width, _ = _text_size(font, text)
    strip = Image.new("RGB", (max(width, 1), height + 2), "white")
    ImageDraw.Draw(strip).text((0, 0), text, fill="black", font=font)
    return strip.rotate(90, expand=True)


def _text_size(font: ImageFont.ImageFont, text: str) -> tuple[int, int]:
    left, top, right, bottom = font.getbbox(text or " ")
    return int(right - min(left, 0)), int(bottom - min(top, 0))


def _short(text: str) -> str:
    return text if len(text) <= _MAX_LABEL else text[:_MAX_LABEL - 1] + "~"
