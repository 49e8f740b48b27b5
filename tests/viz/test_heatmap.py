"""Heatmap colours and colour bars: the scale's ends are the percentiles numpy computes, an
outlier does not darken the map, near-constant maps are stretched, the bar is drawn from
the scale it labels, and files come out with the umask's permissions."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
from PIL import Image

from onnxplain.errors import InputError
from onnxplain.files import save_bytes
from onnxplain.viz.heatmap import (
    CLIP_PERCENTILE,
    COLORMAPS,
    COLOUR_BAR_WIDTH,
    MIN_BAR_HEIGHT,
    ColourRange,
    colorize,
    colour_bar,
    colour_range,
    paint,
    with_colour_bar,
)


def test_the_scale_ends_are_numpy_percentiles():
    values = np.random.default_rng(0).random((16, 16))
    top = np.percentile(values, CLIP_PERCENTILE)
    assert CLIP_PERCENTILE == 99.0
    assert colour_range(values).as_dict() == {"low": 0.0, "high": top, "low_means": "0",
                                              "high_means": "p99"}
    signed = values - 0.5
    spread = np.percentile(np.abs(signed), 95)
    span = colour_range(signed, signed=True, clip_percentile=95)
    assert (span.low, span.high) == (-spread, spread)
    assert span.high_means == "p95 |value|"
    with pytest.raises(InputError, match=r"within \[50, 100\]"):
        colour_range(values, clip_percentile=20)


def test_one_outlier_does_not_darken_the_map():
    values = np.random.default_rng(1).uniform(0.5, 1.0, (32, 32))
    values[3, 4] = 1000.0
    position = np.clip(values / np.percentile(values, 99), 0, 1)
    np.testing.assert_array_equal(colorize(values), paint(position, "inferno"))
    dark = np.asarray(COLORMAPS["inferno"][0])
    typical = colorize(values)[10, 10].astype(float)
    assert np.abs(typical - dark).sum() > 100  # not the bottom colour, as max scaling gives


def test_near_constant_maps_are_stretched_and_sparse_maps_use_the_max():
    flat = 0.5 + 0.01 * np.random.default_rng(2).random((20, 20))  # a RISE-like map
    stretched = colour_range(flat, stretch=True)
    assert stretched.low == np.percentile(flat, 1) and stretched.low_means == "p1"
    assert stretched.high == np.percentile(flat, 99)
    pixels = colorize(flat, span=stretched)
    assert pixels.min(axis=(0, 1)).tolist() == COLORMAPS["inferno"][0].tolist()
    assert colour_range(flat).low == 0.0  # without a colour bar to say so: from 0
    saliency = np.random.default_rng(3).random((20, 20)) ** 4
    assert colour_range(saliency, stretch=True).low == 0.0  # low end near 0: left at 0
    sparse = np.zeros((20, 20))
    sparse[1, 1] = 3.0
    assert colour_range(sparse).as_dict() == {"low": 0.0, "high": 3.0, "low_means": "0",
                                              "high_means": "max"}


def test_colour_bar_runs_from_low_to_high_and_shows_its_labels():
    image = Image.new("RGB", (40, 30), "black")
    span = ColourRange(-2.0, 2.0, "-p99 |value|", "p99 |value|")
    framed = with_colour_bar(image, span, "rdbu")
    assert framed.size == (40 + COLOUR_BAR_WIDTH, MIN_BAR_HEIGHT)
    pixels = np.asarray(framed)
    column = pixels[:, 40 + 8]  # inside the ramp
    assert column[0].tolist() == paint(np.array(1.0), "rdbu").tolist()
    assert column[-1].tolist() == paint(np.array(0.0), "rdbu").tolist()
    other = np.asarray(colour_bar(ColourRange(-3.0, 3.0, "-p99 |value|", "p99 |value|"),
                                  "rdbu", MIN_BAR_HEIGHT))
    assert not np.array_equal(pixels[:, 40:], other)  # the numbers are drawn


def test_unknown_colormap_lists_the_choices():
    with pytest.raises(InputError, match="unknown colormap 'jet' .choose inferno, viridis"):
        paint(np.zeros(3), "jet")


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_atomic_writer_respects_the_umask(tmp_path, mask, mode):
    previous = os.umask(mask)
    try:
        save_bytes(tmp_path / "a.bin", b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == mode
    assert os.listdir(tmp_path) == ["a.bin"]
