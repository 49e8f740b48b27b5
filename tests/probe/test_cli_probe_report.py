"""`onnxplain report --methods ...,probe --probe FILE`: the probe's reconstructions and error
maps per layer beside the attribution methods, its numbers in report.json equal to
explain_probe's; a probe asked without a file, or fitted on another model, is refused in one
line with nothing written."""

from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from PIL import Image

from onnxplain import Explainer
from onnxplain.probe.explain import explain_probe
from onnxplain.probe.model import probe_model
from tests.cli_helpers import run
from tests.probe.ridge_decoders import Fitted, ridge_decoder

LAYERS = ("/features/features.1/Relu_output_0", "/features/features.6/Relu_output_0")


@pytest.fixture(scope="module")
def files(tmp_path_factory, digits_path, digits_split):
    x, _, xt, _ = digits_split
    folder = tmp_path_factory.mktemp("probe_report")
    shutil.copy(digits_path, folder / "model.onnx")
    acts = Explainer(str(digits_path), "cpu").forward(x[:500], taps=list(LAYERS))
    decoders = [ridge_decoder(layer, "image", acts[layer], x[:500]) for layer in LAYERS]
    onnx.save(probe_model(str(digits_path), Fitted(decoders)), str(folder / "probe.onnx"))
    np.save(folder / "rows.npy", xt[:4])
    return folder


def test_report_shows_each_probed_layer_beside_the_methods(files, tmp_path):
    out = tmp_path / "report"
    result = run("report", str(files / "model.onnx"), "-i", str(files / "rows.npy"),
                 "--methods", "saliency,probe", "--probe", str(files / "probe.onnx"),
                 "-o", str(out), "--no-scores", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert list(report["methods"]) == ["saliency"]
    expected = explain_probe(str(files / "probe.onnx"), np.load(files / "rows.npy"), "cpu")
    assert [entry["heading"] for entry in report["probe"]] == \
        [f"probe {k}: {layer}" for k, layer in enumerate(LAYERS)]
    for entry, layer in zip(report["probe"], expected.layers, strict=True):
        np.testing.assert_allclose(entry["mean_error"], layer.row_error, rtol=1e-6)
        assert entry["predicted_class"] == layer.predicted_class.tolist()
        files_of_row = entry["files"][2]["image"]
        rebuilt = np.asarray(Image.open(out / files_of_row["reconstruction"]).convert("L"))
        assert rebuilt.shape == np.asarray(Image.open(out / "r2_input_image.png")).shape[:2]
        # Drawn in grey on the input row's scale: its darkest pixel black, its brightest white.
        step = rebuilt.shape[0] // 8
        image = expected.feeds["image"][2, 0]
        grey = (np.clip(layer.reconstruction[2, 0], image.min(), image.max()) - image.min()) \
            / (image.max() - image.min()) * 255
        np.testing.assert_allclose(rebuilt[::step, ::step], grey, atol=1.01)
        assert (out / files_of_row["error"]).is_file()
    page = (out / "index.html").read_text()
    assert f"probe 1: {LAYERS[1]}" in page and "mean error" in page
    assert page.count('alt="probe 0: ') == 2 * 4  # reconstruction and error, 4 rows


def test_probe_file_alone_adds_the_probe_to_the_default_methods(files, tmp_path):
    out = tmp_path / "report"
    result = run("report", str(files / "model.onnx"), "-i", str(files / "rows.npy"),
                 "--probe", str(files / "probe.onnx"), "-o", str(out), "--no-scores", "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert "saliency" in report["methods"] and len(report["probe"]) == len(LAYERS)


def test_probe_without_file_or_of_another_model_is_refused(files, tmp_path, zoo):
    other = str(zoo.model_path("digits_bn_cnn"))
    rows = str(files / "rows.npy")
    out = tmp_path / "report"
    for args, message in [
        ([str(files / "model.onnx"), "--methods", "saliency,probe"], "no --probe FILE.onnx"),
        ([other, "--probe", str(files / "probe.onnx")], "fitted on another model"),
        ([str(files / "model.onnx"), "--probe", str(files / "model.onnx")],
         "not a probe file"),
    ]:
        result = run("report", *args, "-i", rows, "-o", str(out), "--no-scores")
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr, result.stderr
        assert result.stderr.count("\n") == 1
        assert not out.exists()


def test_probe_alone_runs_no_attribution_method(files, tmp_path, session_rows):
    out = tmp_path / "report"
    result = run("report", str(files / "model.onnx"), "-i", str(files / "rows.npy"),
                 "--methods", "probe", "--probe", str(files / "probe.onnx"), "-o", str(out), "-q")
    assert result.exit_code == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["methods"] == {} and len(report["probe"]) == len(LAYERS)
    assert report["predictions"] and report["probabilities"]  # the batch's own numbers
    # One run of the model for the predictions and one of the probe file: no method's
    # gradient or perturbation runs, and no scores (they score methods).
    assert len(session_rows) == 2, session_rows
    page = (out / "index.html").read_text()
    assert "saliency" not in page and page.count('alt="probe 1: ') == 2 * 4
