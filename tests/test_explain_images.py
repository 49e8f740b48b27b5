"""`onnxplain explain` on the 3-channel zoo model rgb_cnn: heatmaps and overlays with colour
bars whose range is the map's clipping percentile, --colormap, a rerun that removes the
previous run's files, permissions from the umask, where each row came from, and image sets
(`-i a.png b.png`, `-i folder/`)."""

from __future__ import annotations

import json
import os
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from onnxplain.viz.heatmap import COLOUR_BAR_WIDTH, ColourRange, colour_bar, paint

from .cli_helpers import run

SIZE = 224  # 32 x 32 maps enlarged 7 times


@pytest.fixture()
def rgb(zoo, tmp_path: Path) -> Path:
    """tmp_path with model.onnx (a copy of rgb_cnn, so presets land here), x.npy (4 rows) and
    imgs/im0.png ... im3.png (the same rows as pictures)."""
    shutil.copy(zoo.model_path("rgb_cnn"), tmp_path / "model.onnx")
    x = zoo.sample("rgb_cnn")["image"]
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "imgs").mkdir()
    for row, picture in enumerate(x):
        pixels = (picture.transpose(1, 2, 0) * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(tmp_path / "imgs" / f"im{row}.png")
    return tmp_path


def _explain(folder: Path, *args: str):
    result = run("explain", str(folder / "model.onnx"), *args)
    assert result.exit_code == 0, result.stderr
    return result


def _pixels(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def _one_line_error(result, fragment: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.stderr
    assert fragment in lines[0] and "Traceback" not in result.stderr, lines


def test_heatmap_and_overlay_with_a_colour_bar_at_the_99th_percentile(rgb):
    _explain(rgb, "-i", str(rgb / "x.npy"), "-o", str(rgb / "out"), "-q")
    out = rgb / "out"
    scores = np.load(out / "attribution.npy")
    x = np.load(rgb / "x.npy")
    for row in range(4):
        heat, over = _pixels(out / f"heatmap_image_{row}.png"), _pixels(
            out / f"overlay_image_{row}.png")
        assert heat.shape == over.shape == (SIZE, SIZE + COLOUR_BAR_WIDTH, 3)
        flat = np.abs(scores[row]).sum(axis=0)  # saliency is unsigned: sum of |value|
        top = np.percentile(flat, 99)
        expected = paint(np.clip(flat / top, 0, 1), "inferno").repeat(7, 0).repeat(7, 1)
        np.testing.assert_array_equal(heat[:, :SIZE], expected)
        oracle_bar = colour_bar(ColourRange(0.0, top, "0", "p99"), "inferno", SIZE)
        np.testing.assert_array_equal(heat[:, SIZE:], np.asarray(oracle_bar))
        np.testing.assert_array_equal(over[:, SIZE:], np.asarray(oracle_bar))
        text = Image.open(out / f"heatmap_image_{row}.png").text
        assert float(text["colour_high"]) == pytest.approx(top, rel=1e-12)
        lit = (x[row].max(axis=0) > 0.05).repeat(7, 0).repeat(7, 1)  # input not black
        differs = np.any(over[:, :SIZE] != heat[:, :SIZE], axis=-1)
        assert lit.any() and differs[lit].mean() > 0.95


def test_a_near_constant_rise_map_is_stretched_from_its_1st_percentile(rgb):
    _explain(rgb, "-i", str(rgb / "x.npy"), "-m", "rise", "-O", "n_masks=64",
             "-o", str(rgb / "out"), "-q")
    flat = np.abs(np.load(rgb / "out" / "attribution.npy")[0]).sum(axis=0)
    low, high = np.percentile(flat, 1), np.percentile(flat, 99)
    assert low > 0.25 * high  # RISE maps hover around the class score
    summary = json.loads((rgb / "out" / "summary.json").read_text())
    scale = summary["rows"][0]["heatmaps"]["image"]["colour_range"]
    assert scale == {"low": low, "high": high, "low_means": "p1", "high_means": "p99"}
    heat = _pixels(rgb / "out" / "heatmap_image_0.png")[:, :SIZE]
    ends = paint(np.array([0.0, 1.0]), "inferno")
    for end in ends:  # the map uses the whole colour range
        assert np.all(heat == end, axis=-1).any()


def test_colormap_and_clip_percentile_options(rgb):
    _explain(rgb, "-i", str(rgb / "x.npy"), "-o", str(rgb / "a"), "-q")
    _explain(rgb, "-i", str(rgb / "x.npy"), "-o", str(rgb / "b"), "-q", "--colormap", "viridis",
             "--clip-percentile", "90")
    a, b = _pixels(rgb / "a" / "heatmap_image_0.png"), _pixels(rgb / "b" / "heatmap_image_0.png")
    assert np.any(a != b, axis=-1).mean() > 0.5
    flat = np.abs(np.load(rgb / "b" / "attribution.npy")[0]).sum(axis=0)
    text = Image.open(rgb / "b" / "heatmap_image_0.png").text
    assert text["colormap"] == "viridis" and text["colour_high_means"] == "p90"
    assert float(text["colour_high"]) == pytest.approx(np.percentile(flat, 90), rel=1e-12)
    bad = run("explain", str(rgb / "model.onnx"), "-i", str(rgb / "x.npy"), "-o",
              str(rgb / "c"), "--colormap", "jet")
    _one_line_error(bad, "'jet' is not one of 'inferno', 'viridis', 'gray', 'rdbu'")


def test_a_rerun_with_fewer_rows_removes_the_previous_runs_files_only(rgb):
    out = rgb / "out"
    _explain(rgb, "-i", str(rgb / "x.npy"), "-o", str(out), "-q")
    assert len(list(out.glob("heatmap_image_*.png"))) == 4
    (out / "notes.txt").write_text("mine")
    (out / "heatmap_mine.png").write_bytes(b"also mine")
    np.save(rgb / "two.npy", np.load(rgb / "x.npy")[:2])
    result = _explain(rgb, "-i", str(rgb / "two.npy"), "-o", str(out), "--json")
    summary = json.loads((out / "summary.json").read_text())
    expected = {"attribution.npy", "attributions.npz", "summary.json",
                *[f"{kind}_image_{row}.png" for kind in ("heatmap", "overlay") for row in (0, 1)]}
    assert set(summary["files"]) == expected and len(summary["files"]) == len(expected)
    assert {p.name for p in out.iterdir()} == expected | {"notes.txt", "heatmap_mine.png"}
    assert (out / "notes.txt").read_text() == "mine"
    assert json.loads(result.stdout)["files"] == [str(out / name) for name in summary["files"]]


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o077, 0o600)])
def test_every_file_written_gets_the_umasks_mode(rgb, mask, mode):
    previous = os.umask(mask)
    try:
        _explain(rgb, "-i", str(rgb / "imgs" / "im0.png"), "-o", str(rgb / "out"), "-q",
                 "--save-preset", "mine")
    finally:
        os.umask(previous)
    written = [*(rgb / "out").iterdir(), rgb / "model.onnxplain.json"]
    assert len(written) == 6
    assert {p.name: stat.S_IMODE(p.stat().st_mode) for p in written} == \
        {p.name: mode for p in written}


def test_summary_records_each_rows_source_preprocessing_and_score(rgb):
    np.savez(rgb / "batch.npz", image=np.load(rgb / "x.npy")[1:3])
    _explain(rgb, "-i", str(rgb / "batch.npz"), "-o", str(rgb / "npz"), "-q")
    summary = json.loads((rgb / "npz" / "summary.json").read_text())
    assert [r["sources"] for r in summary["rows"]] == [
        {"image": {"file": str(rgb / "batch.npz"), "key": "image", "row": row}}
        for row in (0, 1)]
    assert [r["target_score"] for r in summary["rows"]] == summary["target_score"]
    assert [r["target"] for r in summary["rows"]] == summary["target"]
    assert summary["preprocessing"] == {}

    pictures = [str(rgb / "imgs" / f"im{row}.png") for row in (2, 0)]
    _explain(rgb, "-i", *pictures, "--mean", "0.5", "--save-preset", "half",
             "-o", str(rgb / "first"), "-q")
    again = _explain(rgb, *pictures, "-o", str(rgb / "again"))
    preset_file = str(rgb / "model.onnxplain.json")
    assert again.stderr.splitlines()[0] == f"using preset half from {preset_file}"
    summary = json.loads((rgb / "again" / "summary.json").read_text())
    assert summary["preprocessing"]["image"] == {
        "resize": 32, "crop": [32, 32], "scale": 255.0, "mean": [0.5], "std": [1.0],
        "channels": "RGB", "layout": "NCHW", "preset": "half", "preset_file": preset_file}
    assert [r["sources"]["image"] for r in summary["rows"]] == [
        {"file": path, "row": 0} for path in pictures]
    rows = np.stack([np.asarray(Image.open(path), np.float32).transpose(2, 0, 1) / 255 - 0.5
                     for path in pictures])
    np.save(rgb / "rows.npy", rows.astype(np.float32))  # the preprocessing, done by hand
    _explain(rgb, "-i", str(rgb / "rows.npy"), "-o", str(rgb / "by_hand"), "-q")
    np.testing.assert_allclose(np.load(rgb / "again" / "attribution.npy"),
                               np.load(rgb / "by_hand" / "attribution.npy"), rtol=1e-5,
                               atol=1e-7)
    quiet = _explain(rgb, *pictures, "-o", str(rgb / "quiet"), "-q")
    assert quiet.stdout == ""
    for command in (["report", "--methods", "saliency", "--no-scores", "-o",
                     str(rgb / "report")],
                    ["evaluate", "-m", "saliency", "--metrics", "deletion"]):
        said = run(command[0], str(rgb / "model.onnx"), *pictures, *command[1:])
        assert said.exit_code == 0, said.stderr
        assert f"using preset half from {preset_file}" in said.stderr.splitlines()


def test_image_sets_equal_repeated_inputs(rgb):
    names = [str(rgb / "imgs" / f"im{row}.png") for row in range(4)]
    repeated = [part for name in names for part in ("-i", name)]
    _explain(rgb, *repeated, "-o", str(rgb / "repeated"), "-q")
    _explain(rgb, "-i", *names, "-o", str(rgb / "listed"), "-q")
    _explain(rgb, "-i", str(rgb / "imgs"), "-o", str(rgb / "folder"), "-q")
    reference = np.load(rgb / "repeated" / "attribution.npy")
    assert reference.shape == (4, 3, 32, 32)
    for other in ("listed", "folder"):
        np.testing.assert_array_equal(np.load(rgb / other / "attribution.npy"), reference)
    summary = json.loads((rgb / "folder" / "summary.json").read_text())
    assert [r["sources"]["image"]["file"] for r in summary["rows"]] == names
    (rgb / "empty").mkdir()
    (rgb / "empty" / "readme.txt").write_text("no pictures")
    _one_line_error(run("explain", str(rgb / "model.onnx"), "-i", str(rgb / "empty"),
                        "-o", str(rgb / "none")), "no image files in folder")
    _one_line_error(run("explain", str(rgb / "model.onnx")), "no inputs")


def test_report_and_evaluate_take_the_same_image_sets(rgb):
    names = [str(rgb / "imgs" / f"im{row}.png") for row in range(4)]
    for extra in (["-i", *names], ["-i", str(rgb / "imgs")]):
        report = run("report", str(rgb / "model.onnx"), *extra, "-m", "saliency",
                     "--no-scores", "-o", str(rgb / "report"), "--json")
        assert report.exit_code == 0, report.stderr
        assert json.loads(report.stdout)["inputs"] == {"image": [4, 3, 32, 32]}
        scores = run("evaluate", str(rgb / "model.onnx"), *extra, "--metrics", "deletion",
                     "--steps", "2", "--json")
        assert scores.exit_code == 0, scores.stderr
        assert json.loads(scores.stdout)["rows"] == 4
