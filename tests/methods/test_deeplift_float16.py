"""DeepLIFT on float16 models: the Rescale rule's threshold ε (1e-10 by default) rounded to 0
in float16, so every multiplier where Δx = 0 was 0 / 0 and the whole map came back NaN
(also under SmoothGrad over DeepLIFT). Oracle: the float32 model the float16 one was
converted from."""

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


def test_nan_or_infinite_attributions_are_reported_naming_the_rows():
    """Sqrt's derivative is infinite at 0: row 1's saliency holds inf; a warning names it,
    row 0 (inputs away from 0) stays silent."""
    from onnx import TensorProto, helper, numpy_helper

    from onnxplain.errors import AttributionWarning

    weights = numpy_helper.from_array(np.ones((3, 2), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "sqrt", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = np.array([[1, 2, 3], [0, 1, 4]], np.float32)
    with pytest.warns(AttributionWarning, match=r"NaN or infinite in row 1\b"):
        result = Explainer(model, "cpu", progress=False).explain(x, method="saliency")
    assert np.isinf(result["x"][1, 0]) and np.isfinite(result["x"][0]).all()
