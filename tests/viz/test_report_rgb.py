"""`onnxplain report` on 3-channel models: maps shared over the channels (Grad-CAM, RISE)
are drawn and scored, the colour bar gives the pictures' own scale, --output-seed explains
and scores the seeded objective, the image options of `explain` apply, and counts read
"1 row", not "1 rows"."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from PIL import Image

from onnxplain import Explainer, metrics
from onnxplain.viz import spatial_map
from onnxplain.viz.heatmap import ColourRange, colorize, colour_range

from ..cli_helpers import run
from ..tiny_models import mlp
from .test_report import Page

SCORED = ("deletion", "insertion")


def _report(*args: str) -> dict:
    result = run("report", *args, "--provider", "cpu", "-q")
    assert result.exit_code == 0, result.stderr
    out = Path(args[args.index("-o") + 1])
    return json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def rgb(zoo, tmp_path_factory):
    folder = tmp_path_factory.mktemp("rgb")
    x = zoo.sample("rgb_cnn")["image"][:2]
    np.save(folder / "x.npy", x)
    return zoo.model_path("rgb_cnn"), x, folder


def test_colour_bar_values_are_the_scale_the_pictures_are_drawn_with(rgb):
    model, x, folder = rgb
    out = folder / "scale"
    data = _report(str(model), "-i", str(folder / "x.npy"), "--methods",
                   "integrated_gradients,grad_cam", "-o", str(out), "--no-scores")
    explainer = Explainer(model, "cpu", progress=False)
    for method in ("integrated_gradients", "grad_cam"):
        entry = data["methods"][method]
        attribution = explainer.explain(x, method=method)
        for row in range(2):
            span = ColourRange(**entry["colour_ranges"][row]["image"])
            flat = spatial_map(attribution["image"][row], "NCHW", attribution.signed)
            part = "both" if attribution.signed else "magnitude"
            png = np.asarray(Image.open(out / entry["files"][row]["image"][part]))
            # Input pixels are enlarged 7 times (32 -> 224): read one per input pixel.
            drawn = png[::7, ::7, :3].astype(int)
            expected = colorize(flat, attribution.signed, span=span).astype(int)
            assert np.abs(drawn - expected).max() <= 1, method  # one unit of rounding
            # Where the map saturates: a high percentile of |map|, as `explain` draws it.
            assert span == colour_range(flat, attribution.signed, stretch=True)
            assert 0 < span.high <= np.abs(flat).max() * (1 + 1e-6)
            assert span.low == (-span.high if attribution.signed else span.low)
        html = (out / "index.html").read_text()
        assert html.count('class="cbar"') == 2 * 2


def test_shared_maps_get_pictures_and_scores_on_squeezenet(zoo, tmp_path):
    # [N, 1000, 1, 1] softmax output; grad_cam and rise give [N, 1, 64, 64] maps.
    np.save(tmp_path / "x.npy", zoo.sample("rgb_squeezenet")["image"][:1])
    data = _report(str(zoo.model_path("rgb_squeezenet")), "-i", str(tmp_path / "x.npy"),
                   "--methods", "saliency,grad_cam,rise", "-O", "rise.n_masks=200",
                   "-o", str(tmp_path / "out"))
    for method, entry in data["methods"].items():
        assert entry["status"] == "ok", (method, entry["note"])
        assert entry["files"][0]["image"], method
        for name in ("deletion AUC", "insertion AUC"):
            assert entry["scores"][name]["per_row"][0] is not None, (method, entry["scores"])
    assert len(data["predictions"][0]["top_k"]) == 5


def test_output_seed_is_explained_and_scored(rgb):
    model, x, folder = rgb
    seed = np.random.default_rng(2).standard_normal((2, 10)).astype(np.float32)
    np.save(folder / "seed.npy", seed)
    out = folder / "seeded"
    data = _report(str(model), "-i", str(folder / "x.npy"), "--methods", "saliency,grad_cam",
                   "--output-seed", str(folder / "seed.npy"), "-o", str(out))
    explainer = Explainer(model, "cpu", progress=False)
    for method in ("saliency", "grad_cam"):
        entry = data["methods"][method]
        assert entry["objective"] == "output_seed"
        attribution = explainer.explain(x, method=method, output_seed=seed)
        expected = metrics.evaluate(explainer, x, attribution, SCORED, output_seed=seed)
        for found in expected["metrics"].values():
            np.testing.assert_allclose(entry["scores"][found["label"]]["per_row"],
                                       found["per_row"], rtol=1e-6)
        # The pictures are of the seeded attribution, not of the predicted class's.
        classed = explainer.explain(x, method=method)
        tops = [r["image"]["high"] for r in entry["colour_ranges"]]
        np.testing.assert_allclose(tops, [_top(attribution, r) for r in range(2)], rtol=1e-6)
        assert not np.allclose(tops, [_top(classed, r) for r in range(2)], rtol=1e-3)
    assert "explained: the output seed" in (out / "index.html").read_text()


def _top(attribution, row: int) -> float:
    """The top of the colour scale a report draws this row's map with."""
    flat = spatial_map(attribution["image"][row], "NCHW", attribution.signed)
    return colour_range(flat, attribution.signed, stretch=True).high


def test_report_takes_explains_image_options(rgb, tmp_path):
    model, _, _ = rgb
    shutil.copy(model, tmp_path / "model.onnx")  # --save-preset writes beside the model
    pixels = np.random.default_rng(4).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "cat.png")
    options = ["--scale", "2", "--mean", "1,2,3", "--std", "4,5,6", "--channels", "BGR"]
    base = [str(tmp_path / "model.onnx"), "-i", str(tmp_path / "cat.png"), "--methods",
            "saliency", "--no-scores"]
    data = _report(*base, *options, "--save-preset", "odd", "-o", str(tmp_path / "a"))
    # By hand: BGR order, divided by 2, minus the mean, over the std, channels first.
    x = ((pixels[:, :, ::-1] / 2.0 - [1, 2, 3]) / [4, 5, 6]).transpose(2, 0, 1)[None]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": x.astype(np.float32)})[0]
    np.testing.assert_allclose(data["predictions"][0]["output"], logits[0], rtol=1e-5,
                               atol=1e-6)
    preset = _report(*base, "--preset", "odd", "-o", str(tmp_path / "b"))
    assert preset["predictions"] == data["predictions"]
    assert json.loads((tmp_path / "model.onnxplain.json").read_text())["default"] == "odd"
    plain = _report(*base, "--preset", "odd", "--scale", "255", "-o", str(tmp_path / "c"))
    assert plain["predictions"][0]["output"] != data["predictions"][0]["output"]
    # evaluate reads images the same way: its curve starts at the explained logit.
    scores = run("evaluate", str(tmp_path / "model.onnx"), "-i", str(tmp_path / "cat.png"),
                 *options, "--metrics", "deletion", "--steps", "2", "--json")
    assert scores.exit_code == 0, scores.stderr
    start = json.loads(scores.stdout)["metrics"]["deletion"]["curve"][0]
    assert start == pytest.approx(float(logits[0].max()), rel=1e-5)


def test_counts_read_one_row_not_one_rows(tmp_path):
    onnx.save(mlp(), tmp_path / "mlp.onnx")
    x = np.random.default_rng(3).standard_normal((65, 6)).astype(np.float32)
    np.save(tmp_path / "one.npy", x[:1])
    np.save(tmp_path / "many.npy", x)
    model = str(tmp_path / "mlp.onnx")
    _report(model, "-i", str(tmp_path / "one.npy"), "--methods", "saliency", "-o",
            str(tmp_path / "one"), "--no-scores")
    text = Page((tmp_path / "one" / "index.html").read_text()).text
    assert "1 row," in text and "1 rows" not in text
    _report(model, "-i", str(tmp_path / "many.npy"), "--methods", "saliency", "-o",
            str(tmp_path / "many"), "--no-scores")
    text = Page((tmp_path / "many" / "index.html").read_text()).text
    assert "65 rows," in text and "1 more row is in report.json only." in text
    targets = run("report", model, "-i", str(tmp_path / "one.npy"), "-t", "1,2",
                  "-o", str(tmp_path / "t"))
    assert targets.exit_code == 2 and "2 targets for 1 row;" in targets.stderr
    table = run("evaluate", model, "-i", str(tmp_path / "one.npy"), "--provider", "cpu",
                "--metrics", "deletion", "--steps", "1", "--draws", "1")
    assert table.exit_code == 0, table.stderr
    first = table.stdout.splitlines()[0]
    assert "1 row of 'x'" in first and "1 step," in first and "1 draw " in first, first
    assert "lower is better" in table.stdout
