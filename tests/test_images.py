"""Image files as inputs: preprocessing as defined (crop position, scaling, normalisation,
channel order, layout), defaults from the input's shape, and presets saved next to the model."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from PIL import Image

from onnxplain.errors import InputError
from onnxplain.graph.model import TensorSpec
from onnxplain.graph.shapes import TensorInfo
from onnxplain.images import ImagePreprocessing, default_preprocessing, load_image, load_images
from onnxplain_cli.main import main


def _columns_image(path, height=6, width=10):
    """Red = column index * 10, green = row index * 10, blue = 200."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, :, 0] = np.arange(width)[None, :] * 10
    pixels[:, :, 1] = np.arange(height)[:, None] * 10
    pixels[:, :, 2] = 200
    Image.fromarray(pixels).save(path)
    return pixels


def test_centre_crop_scale_and_normalisation(tmp_path):
    pixels = _columns_image(tmp_path / "a.png")
    prep = ImagePreprocessing(crop=(2, 4), mean=(0.1, 0.2, 0.3), std=(0.5, 0.5, 0.25))
    row = load_image(tmp_path / "a.png", prep)
    assert row.shape == (3, 2, 4) and row.dtype == np.float32
    expected = pixels[2:4, 3:7].astype(np.float32) / 255  # the centre 2 x 4
    expected = (expected - np.array([0.1, 0.2, 0.3])) / np.array([0.5, 0.5, 0.25])
    np.testing.assert_allclose(row, expected.transpose(2, 0, 1), rtol=1e-6)


def test_channel_order_layout_and_grey(tmp_path):
    pixels = _columns_image(tmp_path / "a.png")
    bgr = load_image(tmp_path / "a.png", ImagePreprocessing(channels="BGR", layout="NHWC"))
    np.testing.assert_allclose(bgr, pixels[:, :, ::-1] / 255, rtol=1e-6)
    grey = load_image(tmp_path / "a.png", ImagePreprocessing(channels="L", scale=1.0))
    expected = np.asarray(Image.open(tmp_path / "a.png").convert("L"), np.float32)
    np.testing.assert_array_equal(grey, expected[None])


def test_resize_keeps_the_aspect_ratio_of_the_shorter_side(tmp_path):
    _columns_image(tmp_path / "a.png", 6, 10)
    row = load_image(tmp_path / "a.png", ImagePreprocessing(resize=3))
    assert row.shape == (3, 3, 5)
    constant = tmp_path / "c.png"
    Image.fromarray(np.full((9, 13, 3), 51, np.uint8)).save(constant)
    np.testing.assert_allclose(load_image(constant, ImagePreprocessing(resize=4, crop=(4, 4))),
                               0.2, rtol=1e-6)


def test_defaults_follow_the_input_shape():
    nchw = TensorSpec("x", TensorInfo(onnx.TensorProto.FLOAT, ("N", 1, 8, 8)))
    assert default_preprocessing(nchw) == ImagePreprocessing(resize=8, crop=(8, 8),
                                                             channels="L", layout="NCHW")
    nhwc = TensorSpec("x", TensorInfo(onnx.TensorProto.FLOAT, ("N", 224, 200, 3)))
    assert default_preprocessing(nhwc) == ImagePreprocessing(resize=224, crop=(224, 200),
                                                             layout="NHWC")
    dynamic = TensorSpec("x", TensorInfo(onnx.TensorProto.FLOAT, ("N", 3, "h", "w")))
    assert default_preprocessing(dynamic).crop is None


def test_images_of_different_sizes_need_a_crop(tmp_path):
    _columns_image(tmp_path / "a.png", 6, 10)
    _columns_image(tmp_path / "b.png", 7, 10)
    with pytest.raises(InputError, match="different shapes"):
        load_images([tmp_path / "a.png", tmp_path / "b.png"], ImagePreprocessing())
    assert load_images([tmp_path / "a.png", tmp_path / "b.png"],
                       ImagePreprocessing(crop=(5, 5))).shape == (2, 3, 5, 5)


@pytest.mark.parametrize("kwargs,message", [
    ({"layout": "CHW"}, "unknown layout"), ({"channels": "RGBA"}, "unknown channel order"),
    ({"mean": (0.1, 0.2)}, "mean needs 1 or 3 values"), ({"std": (0.0,)}, "must not be 0"),
    ({"crop": (0, 3)}, "crop must be"), ({"scale": 0.0}, "scale must be positive"),
])
def test_bad_settings_are_input_errors(kwargs, message):
    with pytest.raises(InputError, match=message):
        ImagePreprocessing(**kwargs)


def test_cli_explains_images_and_reuses_a_saved_preset(tmp_path, digits_path):
    model = tmp_path / "digits.onnx"
    model.write_bytes(digits_path.read_bytes())
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 3)).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "digit.png")
    run = CliRunner().invoke
    first = run(main, ["explain", str(model), "-i", str(tmp_path / "digit.png"), "--std", "0.5",
                       "--save-preset", "mine", "-o", str(tmp_path / "one"), "-q"])
    assert first.exit_code == 0, first.stderr
    config = json.loads((tmp_path / "digits.onnxplain.json").read_text())
    assert config["default"] == "mine" and config["presets"]["mine"]["std"] == [0.5]
    again = run(main, ["explain", str(model), "-i", str(tmp_path / "digit.png"),
                       "-o", str(tmp_path / "two"), "-q"])
    assert again.exit_code == 0, again.stderr
    np.testing.assert_array_equal(np.load(tmp_path / "one" / "attribution.npy"),
                                  np.load(tmp_path / "two" / "attribution.npy"))
    grey = np.asarray(Image.fromarray(pixels).convert("L").resize((12, 8), Image.BILINEAR))
    expected = (grey[:, 2:10] / 255 - 0) / 0.5  # resize 8 (shorter side), centre 8 x 8
    from onnxplain import Explainer

    direct = Explainer(str(model), "cpu").explain(expected[None, None].astype(np.float32))
    np.testing.assert_allclose(np.load(tmp_path / "one" / "attribution.npy"),
                               direct["image"], rtol=1e-5, atol=1e-7)
    before = model.read_bytes()
    for args, message in [(["--mean", "x"], "is not a comma-separated list"),
                          (["--preset", "theirs"], "no preset named 'theirs'"),
                          (["--crop", "99"], "smaller than the 99x99 crop")]:
        bad = run(main, ["explain", str(model), "-i", str(tmp_path / "digit.png"), *args,
                         "-o", str(tmp_path / "three")])
        assert bad.exit_code == 2 and message in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1
    assert model.read_bytes() == before
