"""Quantus on the torch original as the oracle: on the same attributions, onnxplain's
deletion curve and parameter-randomisation correlations equal Quantus' PixelFlipping and
MPRT.

Where the definitions differ, and how the comparison bridges it:
- PixelFlipping removes `features_in_step` elements per step in the order of argsort(-a)
  (its "patches" are runs of that flat order, not spatial patches) and records the score
  after every step, not before the first: its curve is ours at steps = F without the clean
  point, s_1..s_F, and its AUC is np.trapz(dx=1) over those points, where ours
  integrates s_0..s_K over the fraction k / K. Its default "black" baseline is each row's
  minimum; it is set to 0 here, our baseline_value.
- Quantus normalises attributions by their maximum |a| (normalise=True): a positive scale,
  which changes no ranking, so neither curve nor rank correlation.
- MPRT re-initialises torch modules with reset_parameters() under torch.manual_seed(seed+1)
  (top-down, cumulative), which numpy cannot reproduce; our default draws the same
  distribution (U(+-1/sqrt(fan_in))) from numpy. The test hands Quantus' randomised
  weights to our randomise hook, so both explain the same random models; the explanation
  there is saliency, by torch autograd for Quantus and by onnxplain for us.
- Quantus 0.6 calls np.trapz, which numpy 2.4 removed: the test puts np.trapezoid (the
  same function, renamed) in its place.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain import Explainer, metrics

from ..conftest import require

ROWS = 8


@pytest.fixture(scope="module")
def digits(digits_path, zoo):
    explainer = Explainer(digits_path, "cpu", progress=False)
    images = zoo.sample("digits_cnn")["image"][:ROWS]
    attribution = explainer.explain(images, method="saliency")
    return explainer, images, attribution, zoo.load_torch("digits_cnn")


@pytest.fixture()
def quantus(monkeypatch):
    module = require("quantus")
    if not hasattr(np, "trapz"):
        monkeypatch.setattr(np, "trapz", np.trapezoid, raising=False)
    return module


@pytest.mark.filterwarnings("ignore:The settings for perturbing input")
@pytest.mark.parametrize("probability", [False, True])
def test_deletion_auc_equals_pixel_flipping(digits, quantus, probability):
    explainer, images, attribution, net = digits
    values = attribution["image"]
    # Distinct values: the order, and so the curve, cannot depend on how ties are broken.
    assert all(len(np.unique(row)) == row.size for row in values.reshape(ROWS, -1))
    metric = quantus.PixelFlipping(features_in_step=1, perturb_baseline=0.0, abs=False,
                                   normalise=True, return_auc_per_sample=True,
                                   disable_warnings=True)
    expected = np.array(metric(model=net, x_batch=images, y_batch=attribution.target,
                               a_batch=values, softmax=probability, device="cpu",
                               channel_first=True))
    curve = metrics.deletion_curve(explainer, images, attribution, steps=64,
                                   features="pixels", probability=probability)
    ours = np.trapezoid(curve.scores[:, 1:], dx=1, axis=1)
    # float32 scores of two runtimes: ~1e-7 relative per point, summed over 63 trapezoids.
    np.testing.assert_allclose(ours, expected, rtol=1e-5, atol=1e-4)


def test_randomisation_correlations_equal_mprt(digits, quantus):
    import torch

    explainer, images, attribution, net = digits
    wrapped = quantus.helpers.model.pytorch_model.PyTorchModel(
        net, channel_first=True, softmax=False, device="cpu")
    # Quantus' cascade, top-down: the weights after each step, by torch module name.
    steps = [(name, {k: v.detach().numpy().copy() for k, v in model.state_dict().items()})
             for name, model in wrapped.get_random_layer_generator(order="top_down", seed=42)]
    assert [name for name, _ in steps] == ["classifier", "features.5", "features.2",
                                           "features.0"]

    def quantus_weights(layer, weights, rng):
        # ONNX initializer names are the torch state_dict keys of this export.
        module = next(name for name, _ in steps if layer.weights[0].startswith(name + "."))
        state = dict(steps)[module]
        return {name: state[name] for name in weights}

    def saliency(model, inputs, targets, **kwargs):
        x = torch.tensor(inputs, requires_grad=True)
        scores = model(x)[torch.arange(len(targets)), torch.as_tensor(targets)]
        scores.sum().backward()
        return x.grad.abs().numpy()

    found = metrics.parameter_randomisation(explainer, images, attribution,
                                            randomise=quantus_weights)
    mprt = quantus.MPRT(layer_order="top_down", seed=42, disable_warnings=True)
    expected = mprt(model=net, x_batch=images, y_batch=attribution.target,
                    a_batch=attribution["image"], explain_func=saliency, softmax=False,
                    device="cpu", channel_first=True)
    for step, (name, _) in enumerate(steps):
        np.testing.assert_allclose(found.spearman[step], expected[name], atol=1e-3)
    # Our own draws differ from torch's, but the verdict is the same: saliency decorrelates.
    own = metrics.parameter_randomisation(explainer, images, attribution, seed=0)
    assert own.spearman[-1].mean() < 0.5 and np.mean(expected["features.0"]) < 0.5
