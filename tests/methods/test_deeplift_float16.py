"""DeepLIFT on float16 models: the Rescale rule's threshold ε (1e-10 by default) rounded to 0
in float16, so every multiplier where Δx = 0 was 0 / 0 and the whole map came back NaN
(also under SmoothGrad over DeepLIFT). Oracle: the float32 model the float16 one was
converted from. (Such NaN maps now also warn: test_degenerate_cases.)"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from onnxplain import Explainer


@pytest.mark.parametrize("name", ["digits_cnn_fp16", "digits_cnn_fp16_io32"])
def test_deeplift_on_float16_matches_the_float32_model(zoo, name):
    feeds = {k: v[:4] for k, v in zoo.sample("digits_cnn").items()}
    reference = Explainer(str(zoo.model_path("digits_cnn")), "cpu", progress=False)
    half = Explainer(str(zoo.model_path(name)), "cpu", progress=False)
    wanted = reference.explain(feeds, method="deeplift")
    rows = {k: v.astype(np.float16) if name == "digits_cnn_fp16" else v
            for k, v in feeds.items()}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # float16 rounding misses summation by ~0.1%
        got = half.explain(rows, method="deeplift", target=wanted.target)
        noisy = half.explain(rows, method="smoothgrad", base="deeplift", n_samples=2)
    value = got["image"].astype(np.float64)
    assert np.isfinite(value).all() and np.isfinite(noisy["image"].astype(float)).all()
    scale = np.abs(wanted["image"]).max()
    np.testing.assert_allclose(value, wanted["image"], atol=2e-2 * scale)

