"""Blurred and uniform baselines are ONNX ops (export.baselines): against a float64 numpy
blur written from the definition, and exported IG and DeepLIFT with them equal explain()."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from onnxplain import Explainer
from onnxplain.errors import AttributionWarning, InputError
from onnxplain.export_check import check_export
from onnxplain.exporter import export_explainer
from onnxplain.methods.baselines import make_baselines
from onnxplain.runtime.session import Session


def reference_blur(x: np.ndarray, sigma: float, axes) -> np.ndarray:
    """Separable Gaussian blur in float64, radius max(1, round(3 sigma)), mirrored at the
    borders (numpy's reflect; the edge value where a side is not longer than the radius)."""
    radius = max(1, int(round(3 * sigma)))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma) ** 2)
    kernel /= kernel.sum()
    out = x.astype(np.float64)
    for axis in axes:
        pad = [(0, 0)] * out.ndim
        pad[axis] = (radius, radius)
        padded = np.pad(out, pad, mode="reflect" if out.shape[axis] > radius else "edge")
        length = out.shape[axis]
        out = sum(weight * np.take(padded, np.arange(k, k + length), axis=axis)
                  for k, weight in enumerate(kernel))
    return out


@pytest.mark.parametrize("sigma", [0.5, 1.0, 5.0, 20.0])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_blur_is_the_gaussian_blur(sigma, layout):
    x = np.random.default_rng(0).normal(size=(2, 3, 17, 32)).astype(np.float32)
    axes = (2, 3)
    if layout == "NHWC":
        x, axes = np.ascontiguousarray(x.transpose(0, 2, 3, 1)), (1, 2)
    got = make_baselines({"x": x}, ["x"], "blur", blur_sigma=sigma)["x"]
    expected = reference_blur(x, sigma, axes)
    assert got.dtype == x.dtype and got.shape == x.shape
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * np.abs(x).max())


def test_uniform_draws_within_each_rows_range_independently_of_the_batch():
    rng = np.random.default_rng(1)
    x = (rng.normal(size=(3, 3, 16, 16)) * np.array([1, 5, 0.1])[:, None, None, None])
    x = x.astype(np.float32)
    got = make_baselines({"x": x}, ["x"], "uniform", seed=3)["x"]
    low, high = x.min(axis=(1, 2, 3)), x.max(axis=(1, 2, 3))
    unit = (got - low[:, None, None, None]) / (high - low)[:, None, None, None]
    assert (unit > -1e-6).all() and (unit < 1 + 1e-6).all()
    assert stats.kstest(unit[0].ravel(), "uniform").pvalue > 1e-3
    np.testing.assert_allclose(unit[1], unit[0], atol=1e-5)  # the same unit draws per row
    alone = make_baselines({"x": x[2:]}, ["x"], "uniform", seed=3)["x"]
    np.testing.assert_array_equal(alone, got[2:])
    other = make_baselines({"x": x}, ["x"], "uniform", seed=4)["x"]
    assert np.abs(other - got).max() > 0.1 * (high - low).min()


def test_blur_needs_an_image(zoo):
    explainer = Explainer(str(zoo.model_path("digits_mlp")), "cpu", progress=False)
    with pytest.raises(InputError, match="needs an image input"):
        export_explainer(explainer.model, "integrated_gradients", baseline="blur")


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
@pytest.mark.parametrize("baseline", ["blur", "uniform"])
def test_exported_computed_baselines_equal_explain(zoo, method, baseline):
    explainer = Explainer(str(zoo.model_path("rgb_cnn")), "cpu", progress=False)
    feeds = {"image": zoo.sample("rgb_cnn")["image"][:3]}
    options = {"baseline": baseline, "blur_sigma": 2.0, "seed": 11}
    if method == "integrated_gradients":
        options["n_steps"] = 8
    exported = export_explainer(explainer.model, method, **options)
    assert not [i for i in exported.graph.input if i.name.startswith("baseline/")]
    expected = explainer.explain(feeds, method=method, delta_tolerance=1e9, **options)
    session = Session(exported, ["CPUExecutionProvider"])
    got = session.run(None, {**feeds, "target": np.full(3, -1, np.int64)})
    np.testing.assert_allclose(got["attribution/image"], expected["image"], rtol=1e-5,
                               atol=1e-6 * np.abs(expected["image"]).max())
    check = check_export(explainer.model, exported, method, options, feeds)
    assert check["max_rel_diff"] < 1e-5


@pytest.mark.parametrize("method", ["integrated_gradients", "deeplift"])
@pytest.mark.parametrize("baseline", ["blur", "uniform"])
def test_a_flat_image_is_its_own_baseline_and_warned(zoo, method, baseline):
    """A flat row's blur and uniform baselines are the row itself: the attributions are
    exactly 0, and the all-zero warning says so (not rounding noise presented as a map)."""
    explainer = Explainer(str(zoo.model_path("rgb_cnn")), "cpu", progress=False)
    x = np.full((2, 3, 32, 32), 0.3, np.float32)
    assert np.array_equal(make_baselines({"x": x}, ["x"], baseline)["x"], x)
    with pytest.warns(AttributionWarning, match="every attribution is 0 in rows 0, 1"):
        result = explainer.explain(x, method=method, baseline=baseline, delta_tolerance=1e9)
    assert not result["image"].any()
