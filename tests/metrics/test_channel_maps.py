"""Maps shared over an image's channels (Grad-CAM, RISE: [N, 1, H, W] for [N, 3, H, W]
inputs) are scored as the same map repeated over the channels, in every metric; the
closed-form deletion curve of an NHWC linear model; shapes that are neither still refused."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from onnxplain import Explainer, InputError, metrics

from ..cli_helpers import run
from .models import linear_image

ALL_BUT_COMPLETENESS = ("deletion", "insertion", "morf", "lerf", "randomization")


@pytest.fixture(scope="module")
def rgb(zoo):
    explainer = Explainer(zoo.model_path("rgb_cnn"), "cpu", progress=False)
    return explainer, zoo.sample("rgb_cnn")["image"][:2]


def repeated(attribution, channels: int = 3, axis: int = 1):
    """The attribution with its shared map written out on every channel."""
    values = {name: np.repeat(v, channels, axis=axis) for name, v in
              attribution.attributions.items()}
    return dataclasses.replace(attribution, attributions=values)


@pytest.mark.parametrize("method", ["grad_cam", "rise"])
def test_a_shared_map_scores_as_the_map_repeated_over_channels(rgb, method):
    explainer, x = rgb
    options = {"n_masks": 200} if method == "rise" else {}
    attribution = explainer.explain(x, method=method, **options)
    assert attribution["image"].shape == (2, 1, 32, 32)
    settings = {"steps": 8, "layers": 1, "random_draws": 2}
    shared = metrics.evaluate(explainer, x, attribution, ALL_BUT_COMPLETENESS, **settings)
    written_out = metrics.evaluate(explainer, x, repeated(attribution), ALL_BUT_COMPLETENESS,
                                   **settings)
    assert shared == written_out
    for name in ALL_BUT_COMPLETENESS:
        entry = shared["metrics"][name]
        assert all(np.isfinite(v) for v in entry["per_row"]), (name, entry)
        assert np.isfinite(entry["random"]), name
    # The curve starts at the unperturbed target score and ends at the all-zero image's.
    deletion = metrics.deletion_curve(explainer, x, attribution, steps=4)
    logits = explainer.forward(x)["scores"]
    rows = np.arange(2)
    np.testing.assert_allclose(deletion.scores[:, 0], logits[rows, attribution.target],
                               rtol=1e-5)
    zero = explainer.forward(np.zeros_like(x))["scores"]
    np.testing.assert_allclose(deletion.scores[:, -1], zero[rows, attribution.target],
                               rtol=1e-5, atol=1e-6)


def test_nhwc_shared_map_deletes_pixels_in_its_order():
    # 5x5 RGB image, channels last: removing a pixel takes away sum_c w_hwc x_hwc.
    rng = np.random.default_rng(5)
    weights = np.stack([rng.uniform(0.5, 2.0, 75), np.zeros(75)], axis=1)
    explainer = Explainer(linear_image(weights, channels=3, layout="NHWC"), "cpu",
                          progress=False)
    x = rng.uniform(0.5, 1.5, (1, 5, 5, 3)).astype(np.float32)
    contribution = (x[0] * weights[:, 0].reshape(5, 5, 3)).sum(axis=-1)  # [H, W]
    attribution = explainer.explain(x, method="input_x_gradient", target=0)
    # Rank pixels by a map unrelated to the model, shared over the channel axis (last).
    ranking = rng.permutation(25).reshape(1, 5, 5, 1).astype(np.float32)
    shared = dataclasses.replace(attribution, attributions={"image": ranking})
    curve = metrics.deletion_curve(explainer, x, shared, steps=25)
    order = np.argsort(-ranking.ravel())
    expected = contribution.sum() - np.concatenate([[0], np.cumsum(contribution.ravel()[order])])
    np.testing.assert_allclose(curve.scores[0], expected, rtol=1e-5, atol=1e-5)
    again = metrics.deletion_curve(explainer, x, repeated(shared, axis=3), steps=25)
    np.testing.assert_array_equal(again.scores, curve.scores)


def test_maps_of_other_shapes_are_still_refused(rgb):
    explainer, x = rgb
    attribution = explainer.explain(x, method="grad_cam")
    for wrong in (attribution["image"][:, :, :16], np.repeat(attribution["image"], 2, axis=1),
                  attribution["image"].transpose(0, 2, 3, 1)):
        bad = dataclasses.replace(attribution, attributions={"image": wrong})
        with pytest.raises(InputError, match="explain the same inputs"):
            metrics.evaluate(explainer, x, bad, ["deletion"])


@pytest.mark.parametrize("model, method", [("rgb_cnn", "grad_cam"), ("rgb_cnn", "rise"),
                                           ("rgb_squeezenet", "grad_cam")])
def test_evaluate_cli_scores_shared_maps(zoo, tmp_path, model, method):
    np.save(tmp_path / "x.npy", zoo.sample(model)["image"][:2])
    args = ["evaluate", str(zoo.model_path(model)), "-i", str(tmp_path / "x.npy"),
            "-m", method, "--provider", "cpu", "--steps", "5"]
    if method == "rise":
        args += ["-O", "n_masks=100"]
    table = run(*args, "--metrics", "deletion")
    assert table.exit_code == 0, table.stderr
    row = next(line for line in table.stdout.splitlines() if "deletion AUC" in line)
    score, random = row.split()[2:4]
    float(score), float(random)
    result = run(*args, "--metrics", "deletion,insertion,randomization", "--layers", "1",
                 "--json")
    assert result.exit_code == 0, result.stderr
    scores = json.loads(result.stdout)["metrics"]
    for name in ("deletion", "insertion"):
        assert len(scores[name]["per_row"]) == 2
        assert all(v is not None for v in scores[name]["per_row"] + [scores[name]["random"]])
