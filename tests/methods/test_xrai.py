"""XRAI against PAIR saliency's XRAI on the zoo's RGB CNN (PAIR takes H x W x C images:
transposed). Fed our IG attribution as PAIR's base_attribution, PAIR's region logic
(segmentation, greedy and fast selection, ranks) must give our map; end to end, PAIR runs
its own IG on the torch original. Also a batch equal to its rows, export refused in one
line, and not listed as exportable."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import onnxplain
from onnxplain.errors import InputError
from onnxplain.export import EXPORTS
from onnxplain.exporter import export_explainer

STEPS = 16
ROWS = 3


class Case:
    """The zoo's RGB CNN (3 x 32 x 32): its ONNX explainer, torch original, rows, targets."""

    def __init__(self, zoo):
        self.torch = pytest.importorskip("torch")
        self.module = zoo.load_torch("rgb_cnn")
        self.x = zoo.sample("rgb_cnn")["image"][:ROWS]
        self.explainer = onnxplain.Explainer(zoo.model_path("rgb_cnn"), providers="cpu")
        self.targets = np.array([1, 4, 7])[:ROWS]


@pytest.fixture(scope="module")
def case(zoo):
    return Case(zoo)


def _explain(case: Case, x=None, target=None, **options):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # few steps: the convergence warning
        return case.explainer.explain(case.x if x is None else x, method="xrai",
                                      target=case.targets if target is None else target,
                                      **{"n_steps": STEPS, **options})


def _hwc(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.moveaxis(array, 0, -1))


def pair_xrai(case: Case, row: int, base_attribution=None, steps: int = STEPS, **parameters):
    """PAIR's XRAI().GetMaskWithDetails on row `row`, gradients from the torch original."""
    saliency = pytest.importorskip("saliency.core")
    torch, target = case.torch, int(case.targets[row])

    def call_model(batch, call_model_args=None, expected_keys=None):
        nchw = torch.tensor(np.moveaxis(np.asarray(batch, np.float32), -1, 1),
                            requires_grad=True)
        score = case.module(nchw)[:, target].sum()
        grad = torch.autograd.grad(score, nchw)[0].numpy()
        return {saliency.INPUT_OUTPUT_GRADIENTS: np.moveaxis(grad, 1, -1)}

    options = saliency.XRAIParameters(steps=steps, return_xrai_segments=True, **parameters)
    return saliency.XRAI().GetMaskWithDetails(
        _hwc(case.x[row]), call_model, base_attribution=base_attribution, batch_size=steps,
        extra_parameters=options)


@pytest.mark.parametrize("options", [{}, {"algorithm": "fast"}, {"area_threshold": 0.3}])
def test_region_logic_equals_pair_fed_our_ig(case, options):
    result = _explain(case, **options)
    ours, ig = result["image"], result.extras["ig_attribution"]
    assert ours.shape == (ROWS, 1, 32, 32)
    for row in range(ROWS):
        parameters = {k: v for k, v in options.items() if k != "algorithm"}
        pair = pair_xrai(case, row, _hwc(ig[row]), **parameters,
                         algorithm=options.get("algorithm", "full"))
        np.testing.assert_allclose(ours[row, 0], pair.attribution_mask, rtol=1e-5, atol=1e-7)
        np.testing.assert_array_equal(result.extras["segments"][row], pair.segments)


def test_end_to_end_against_pair_with_its_own_ig(case):
    """PAIR's IG averages the gradients at linspace(0, 1, n) (sum / n); ours with the
    trapezoid rule weighs the same n points 1 / (n - 1), the two ends half that. The weights
    differ by at most 1 / (2n) at the ends and 1 / (n (n - 1)) inside, so the IG maps agree
    to about 1/n of their largest value: 2/n is asked. At n = 128 no two regions of these
    images are that close in gain, so PAIR picks the same regions in the same order (equal
    ranks), and each region's gain, a mean of the IG over the same pixels, agrees to the
    same 2/n."""
    n = 128
    result = _explain(case, n_steps=n, rule="riemann_trapezoid")
    ours, ig = result["image"][:, 0], result.extras["ig_attribution"]
    for row in range(ROWS):
        pair = pair_xrai(case, row, steps=n, return_ig_attributions=True)
        pair_ig = np.mean(pair.ig_attribution, axis=0)
        tolerance = 2 / n * np.abs(pair_ig).max()
        np.testing.assert_allclose(_hwc(ig[row]), pair_ig, rtol=0, atol=tolerance)
        np.testing.assert_array_equal(result.extras["segments"][row], pair.segments)
        np.testing.assert_allclose(ours[row], pair.attribution_mask, rtol=0, atol=tolerance)


def test_batch_equals_rows_one_by_one(case):
    batch = _explain(case)
    for row in range(ROWS):
        single = _explain(case, case.x[row:row + 1], case.targets[row:row + 1])
        np.testing.assert_allclose(single["image"][0], batch["image"][row], rtol=1e-5,
                                   atol=1e-6 * np.abs(batch["image"]).max())
        np.testing.assert_array_equal(single.extras["segments"][0],
                                      batch.extras["segments"][row])


def test_pixels_keep_the_sum_of_the_ig_channel_maximum(case):
    """Each region's gain is a mean of the channel-max IG over its new pixels, and the
    regions partition the image: the map sums to what the channel maximum sums to."""
    result = _explain(case)
    density = result.extras["ig_attribution"].max(axis=1)
    np.testing.assert_allclose(result["image"].sum(axis=(1, 2, 3)), density.sum(axis=(1, 2)),
                               rtol=1e-4)


def test_export_refuses_in_one_line_and_is_not_listed(case):
    assert "xrai" not in EXPORTS
    refusal = "method 'xrai' runs in process only: it segments"
    with pytest.raises(InputError, match=refusal) as caught:
        export_explainer(case.explainer.model, "xrai")
    assert "\n" not in str(caught.value)


def test_inputs_that_are_not_images_are_refused(zoo):
    explainer = onnxplain.Explainer(zoo.model_path("digits_mlp"), providers="cpu")
    with pytest.raises(InputError, match="xrai explains image inputs"):
        explainer.explain(zoo.sample("digits_mlp")["features"][:1], method="xrai", n_steps=4)
