"""Feature ablation against Captum's FeatureAblation: on the torch originals of zoo models (an
image CNN with a coarse feature mask, an MLP over 64 columns with every column its own
feature, an LSTM over token ids), and, exactly, with Captum driving the ONNX model's own
forward; a batch explains as its rows one by one; the exported program gives what explain()
gives, bit for bit; per-row masks and superpixels; bad masks and budgets refused."""

from __future__ import annotations

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import InputError
from onnxplain.exporter import export_explainer

from ..conftest import require
from ..export.test_export import _run
from .test_captum_oracles import Case, max_relative_error

# 2x2-pixel cells over the 8x8 digits: 16 features.
CELLS = (np.arange(8)[:, None] // 2) * 4 + np.arange(8)[None] // 2


def _captum(case: Case, forward, **options):
    captum = require("captum.attr")
    torch = case.torch
    found = captum.FeatureAblation(forward).attribute(
        torch.from_numpy(case.x), target=case.target_tensor(),
        **{k: torch.from_numpy(v) if isinstance(v, np.ndarray) else v
           for k, v in options.items()})
    return found.detach().numpy()


@pytest.mark.parametrize("name, ours, theirs", [
    ("digits_bn_cnn", {"features": CELLS[None], "baseline": 0.25},
     {"feature_mask": CELLS[None, None], "baselines": 0.25}),
    ("digits_mlp", {"baseline": -0.5}, {"baselines": -0.5}),
    ("lstm_tokens_tiny", {"baseline": 0}, {"baselines": 0})])
def test_matches_captum_on_the_torch_model(zoo, name, ours, theirs):
    """torch and ONNX Runtime round the forward differently (1e-6 of the logits): the maps
    agree to 1e-5 of their largest value."""
    case = Case(zoo, name)
    got = case.explain("feature_ablation", **ours)
    want = _captum(case, case.module, **theirs)
    assert got[case.input].shape == want.shape
    assert max_relative_error(got[case.input], want) < 1e-5
    np.testing.assert_array_equal(got.target, case.targets)


def test_equals_captum_on_the_onnx_forward(zoo):
    """Captum ablating the ONNX model itself: the same scores, so the same maps (float32
    differences of float32 scores, correctly rounded both ways), with a mask per row."""
    case = Case(zoo, "digits_bn_cnn")
    torch = case.torch
    masks = np.stack([CELLS, CELLS.T, CELLS // 2, CELLS // 8]
                     * 4)[:, None].astype(np.int64)  # 16, 16, 8 and 2 features

    def forward(x):
        return torch.from_numpy(case.explainer.forward(x.numpy())["logits"])

    got = case.explain("feature_ablation", features=masks, baseline=0.25)
    want = _captum(case, forward, feature_mask=masks, baselines=0.25)
    np.testing.assert_allclose(got["image"], want, rtol=1e-5, atol=0)
    drops = got.extras["feature_drops"]
    assert drops.shape == (16, 16) and np.all(drops[2::4, 8:] == 0)
    assert np.all(drops[3::4, 2:] == 0) and np.all(drops[:, :2] != 0)


def test_batch_equals_singles(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:4]
    whole = explainer.explain(x, "feature_ablation", target=[0, 3, 5, 9])
    for row, target in enumerate([0, 3, 5, 9]):
        alone = explainer.explain(x[row:row + 1], "feature_ablation", target=target)
        np.testing.assert_allclose(whole["image"][row], alone["image"][0], rtol=1e-6,
                                   atol=1e-6 * np.abs(alone["image"]).max())


@pytest.mark.parametrize("options", [{}, {"features": "grid", "cell": 2, "baseline": 0.5}])
def test_exported_equals_in_process_bit_for_bit(zoo, options):
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    feeds = {"image": zoo.sample("digits_cnn")["image"][:3]}
    got = _run(export_explainer(explainer.model, "feature_ablation", **options), feeds)
    expected = explainer.explain(feeds, "feature_ablation", **options)
    np.testing.assert_array_equal(got["attribution/image"], expected["image"])
    np.testing.assert_array_equal(got["feature_drops"], expected.extras["feature_drops"])
    np.testing.assert_array_equal(got["target_used"], expected.target)


def test_superpixels_are_per_row_masks(zoo):
    """features=superpixels (Kernel SHAP's segments) gives what its masks give fed back."""
    require("skimage")
    explainer = onnxplain.Explainer(zoo.model_path("rgb_cnn"), providers="cpu")
    x = zoo.sample("rgb_cnn")["image"][:2]
    found = explainer.explain(x, "feature_ablation", features="superpixels", n_segments=12)
    masks = found.extras["feature_mask"]
    assert masks.shape == x.shape and masks.max() > 1
    again = explainer.explain(x, "feature_ablation", features=masks)
    (name,) = found.attributions
    np.testing.assert_array_equal(found[name], again[name])
    drops = found.extras["feature_drops"]
    for row in range(2):  # every element carries its segment's drop
        np.testing.assert_array_equal(found[name][row],
                                      drops[row][masks[row]].astype(np.float32))


def test_bad_masks_and_budgets_are_refused(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu")
    x = zoo.sample("digits_cnn")["image"][:3]
    with pytest.raises(InputError, match=r"a feature mask per row needs one row per input "
                                         r"row \(3\)"):
        explainer.explain(x, "feature_ablation", features=np.zeros((2, 1, 8, 8), np.int64))
    with pytest.raises(InputError, match="does not broadcast"):
        explainer.explain(x, "feature_ablation", features=np.zeros((5,), np.int64))
    with pytest.raises(InputError, match="64 features.*max_runs=10"):
        explainer.explain(x, "feature_ablation", max_runs=10)
    with pytest.raises(InputError, match="superpixels depend on each image"):
        export_explainer(explainer.model, "feature_ablation", features="superpixels")
    with pytest.raises(InputError, match="one mask for every row.*feature_mask input"):
        export_explainer(explainer.model, "feature_ablation",
                         features=np.zeros((2, 1, 8, 8), np.int64))
