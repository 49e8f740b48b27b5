"""RISE: the estimator against a numpy computation over the same masks, masks against torch's
bilinear resize, seeds and batch sizes, a region model whose evidence is known, fixed batch
axes and the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper, numpy_helper

import onnxplain
import onnxplain.methods.rise  # noqa: F401 - registers the method
from onnxplain.errors import InputError
from onnxplain.export.rise import rise_masks, rise_plan
from onnxplain.runtime.engine import BatchNotice
from onnxplain_cli.main import main

from ..conftest import require

# The region the region model reads: channel 0, rows 8-15, columns 16-23.
ROWS, COLS = slice(8, 16), slice(16, 24)


def region_model(batch="batch", nhwc: bool = False, rows: slice = ROWS, cols: slice = COLS
                 ) -> onnx.ModelProto:
    """x [batch, 3, 32, 32] (or [batch, 32, 32, 3]) -> [batch, 2] logits: logit 1 is the mean
    of x over the region (channel 0, `rows`, `cols`), logit 0 its negative."""
    consts = [numpy_helper.from_array(np.array(v, dtype=np.int64), n) for n, v in
              [("starts", [0, rows.start, cols.start]), ("ends", [1, rows.stop, cols.stop]),
               ("axes", [1, 2, 3])]]
    nodes = [helper.make_node("Transpose", ["x"], ["nchw"], perm=[0, 3, 1, 2])] if nhwc else []
    nodes += [helper.make_node("Slice", ["nchw" if nhwc else "x", "starts", "ends", "axes"],
                               ["region"]),
              helper.make_node("ReduceMean", ["region"], ["mean"], axes=[1, 2, 3], keepdims=1),
              helper.make_node("Flatten", ["mean"], ["up"], axis=1),
              helper.make_node("Neg", ["up"], ["down"]),
              helper.make_node("Concat", ["down", "up"], ["logits"], axis=1)]
    dims = [batch, 32, 32, 3] if nhwc else [batch, 3, 32, 32]
    graph = helper.make_graph(nodes, "region",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                                             [batch, 2])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def linear_model(weights: np.ndarray, bias: np.ndarray) -> onnx.ModelProto:
    """x [batch, features] -> x @ weights + bias."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["xw"]),
         helper.make_node("Add", ["xw", "b"], ["logits"])], "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", weights.shape[0]])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT,
                                       ["batch", weights.shape[1]])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def token_model(table: np.ndarray) -> onnx.ModelProto:
    """ids [batch, 5] int64 -> [batch, 2]: column k sums table[ids, k] over the tokens."""
    graph = helper.make_graph(
        [helper.make_node("Gather", ["table", "ids"], ["vectors"], axis=0),
         helper.make_node("ReduceSum", ["vectors", "axis"], ["logits"], keepdims=0)], "bag",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", 5])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 2])],
        [numpy_helper.from_array(table, "table"),
         numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def positive_images(rows: int = 1, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (0.5 + rng.random((rows, 3, 32, 32))).astype(np.float32)


def region_estimate(x: np.ndarray, masks: np.ndarray, keep: float, baseline: float
                    ) -> np.ndarray:
    """RISE written out for the region model: score_i = mean over the region of the masked
    input's channel 0; S = sum_i score_i M_i / (N keep)."""
    perturbed = masks * x[0] + (1 - masks) * baseline                      # [n, H, W]
    scores = perturbed[:, ROWS, COLS].astype(np.float64).mean(axis=(1, 2))
    return np.einsum("n,nhw->hw", scores, masks.astype(np.float64)) / (len(masks) * keep)


@pytest.fixture(scope="module")
def region() -> onnxplain.Explainer:
    return onnxplain.Explainer(region_model(), providers="cpu", progress=False)


def test_image_masks_are_torch_bilinear_upsamplings_cropped_at_their_shift():
    torch = require("torch")
    plan = rise_plan((30, 26), 12, 4, 0.5, seed=3)
    masks = rise_masks(plan, 0, 12)
    up = (5 * 8, 5 * 7)  # (grid + 1) * ceil(30 / 4), (grid + 1) * ceil(26 / 4)
    grids = torch.from_numpy(plan.kept.astype(np.float64))[:, None]
    upsampled = torch.nn.functional.interpolate(grids, size=up, mode="bilinear",
                                                align_corners=False)[:, 0].numpy()
    assert plan.shifts[:, 0].max() < 8 and plan.shifts[:, 1].max() < 7
    for i, (dy, dx) in enumerate(plan.shifts):
        np.testing.assert_allclose(masks[i], upsampled[i, dy:dy + 30, dx:dx + 26], atol=1e-6)
    # Not all masks alike: the shifts and cells really vary.
    assert len({tuple(s) for s in plan.shifts}) > 1 and np.ptp(masks.mean(axis=(1, 2))) > 0.05


def test_masks_do_not_depend_on_how_they_are_chunked_and_average_to_keep():
    plan = rise_plan((32, 32), 500, 7, 0.3, seed=1)
    whole = rise_masks(plan, 0, 500)
    pieces = np.concatenate([rise_masks(plan, a, min(a + 37, 500)) for a in range(0, 500, 37)])
    np.testing.assert_array_equal(whole, pieces)
    assert whole.min() >= 0 and whole.max() <= 1
    assert abs(whole.mean() - 0.3) < 0.03  # E[M] = keep, the estimator's normaliser


def test_tabular_estimator_equals_numpy_over_the_same_masks():
    rng = np.random.default_rng(5)
    weights = rng.standard_normal((6, 3)).astype(np.float32)
    bias = rng.standard_normal(3).astype(np.float32)
    explainer = onnxplain.Explainer(linear_model(weights, bias), providers="cpu")
    x = rng.standard_normal((2, 6)).astype(np.float32)
    target = np.array([2, 0])
    result = explainer.explain(x, "rise", target=target, n_masks=300, keep=0.4, seed=11,
                               baseline=0.5)
    masks = rise_masks(rise_plan((6,), 300, None, 0.4, 11), 0, 300).astype(np.float64)
    assert set(np.unique(masks)) == {0.0, 1.0}
    for row in range(2):
        perturbed = masks * x[row] + (1 - masks) * 0.5
        scores = perturbed @ weights[:, target[row]].astype(np.float64) + bias[target[row]]
        expected = scores @ masks / (300 * 0.4)
        np.testing.assert_allclose(result.attributions["x"][row], expected, rtol=1e-6,
                                   atol=1e-6)
    assert result.extras == {"n_masks": 300, "grid": None, "keep": 0.4}
    assert not result.signed


def test_image_estimator_equals_numpy_and_nhwc_matches_nchw(region):
    x = positive_images()
    result = region.explain(x, "rise", target=1, n_masks=96, grid=5, keep=0.6, seed=2,
                            baseline=0.25)
    saliency = result.attributions["x"]
    assert saliency.shape == (1, 1, 32, 32) and saliency.dtype == np.float32
    masks = rise_masks(rise_plan((32, 32), 96, 5, 0.6, 2), 0, 96)
    expected = region_estimate(x[0], masks, 0.6, 0.25)
    np.testing.assert_allclose(saliency[0, 0], expected, rtol=1e-5, atol=1e-6)
    nhwc = onnxplain.Explainer(region_model(nhwc=True), providers="cpu", progress=False)
    other = nhwc.explain(x.transpose(0, 2, 3, 1), "rise", target=1, n_masks=96, grid=5,
                         keep=0.6, seed=2, baseline=0.25).attributions["x"]
    assert other.shape == (1, 32, 32, 1)
    np.testing.assert_allclose(other[..., 0], saliency[:, 0], rtol=1e-5, atol=1e-7)


def test_token_ids_are_masked_to_the_baseline_id():
    rng = np.random.default_rng(9)
    table = rng.standard_normal((10, 2)).astype(np.float32)
    explainer = onnxplain.Explainer(token_model(table), providers="cpu")
    ids = np.array([[3, 7, 1, 9, 4]], dtype=np.int64)
    result = explainer.explain(ids, "rise", target=1, n_masks=200, keep=0.5, seed=4,
                               baseline=2)
    masks = rise_masks(rise_plan((5,), 200, None, 0.5, 4), 0, 200).astype(bool)
    scores = table[np.where(masks, ids[0], 2), 1].astype(np.float64).sum(axis=1)
    expected = scores @ masks / (200 * 0.5)
    np.testing.assert_allclose(result.attributions["ids"][0], expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(InputError, match="integer id"):
        explainer.explain(ids, "rise", n_masks=8, baseline=0.5)


def test_seeded_runs_repeat_and_do_not_depend_on_the_batch_size(region):
    x = positive_images(rows=2, seed=1)
    a = region.explain(x, "rise", target=1, n_masks=150, seed=3, batch_size=7)
    b = region.explain(x, "rise", target=1, n_masks=150, seed=3, batch_size=7)
    c = region.explain(x, "rise", target=1, n_masks=150, seed=3, batch_size=64)
    d = region.explain(x, "rise", target=1, n_masks=150, seed=4, batch_size=64)
    np.testing.assert_array_equal(a.attributions["x"], b.attributions["x"])
    np.testing.assert_allclose(a.attributions["x"], c.attributions["x"], rtol=0, atol=1e-6)
    assert np.abs(c.attributions["x"] - d.attributions["x"]).max() > 1e-3


def test_saliency_peaks_on_the_region_the_model_reads(region):
    # The region is 64 of the 1024 pixels (6.25%), so the top decile (102 pixels) cannot
    # lie 90% inside it; the top 5% (51 pixels) can, and must.
    share, peak_inside = _top_share_inside(region, ROWS, COLS, 51)
    assert share >= 0.9
    assert peak_inside


def test_top_decile_lies_in_a_region_larger_than_a_tenth_of_the_image():
    """The issue's oracle as stated: a region of 16x16 of the 32x32 pixels (25%), so the top
    decile (102 pixels) can lie inside it, and at least 90% of it must."""
    rows, cols = slice(4, 20), slice(12, 28)
    explainer = onnxplain.Explainer(region_model(rows=rows, cols=cols), providers="cpu",
                                    progress=False)
    share, _ = _top_share_inside(explainer, rows, cols, 102)
    assert share >= 0.9


def _top_share_inside(explainer, rows: slice, cols: slice, count: int) -> tuple[float, bool]:
    """RISE with 2000 masks: the share of the `count` highest pixels inside rows x cols, and
    whether the highest one is."""
    saliency = explainer.explain(positive_images(), "rise", target=1, n_masks=2000,
                                 seed=0).attributions["x"][0, 0]
    inside = np.zeros((32, 32), dtype=bool)
    inside[rows, cols] = True
    top = np.argsort(saliency.ravel())[-count:]
    return float(inside.ravel()[top].mean()), bool(inside.ravel()[saliency.argmax()])


def test_fixed_batch_axis_gives_the_symbolic_result(region):
    fixed = onnxplain.Explainer(region_model(batch=1), providers="cpu", progress=False)
    x = positive_images()
    with pytest.warns(BatchNotice):
        got = fixed.explain(x, "rise", target=1, n_masks=40, grid=4, batch_size=16)
    want = region.explain(x, "rise", target=1, n_masks=40, grid=4, batch_size=16)
    np.testing.assert_allclose(got.attributions["x"], want.attributions["x"], rtol=1e-6,
                               atol=1e-7)


@pytest.mark.parametrize("options, message", [
    ({"keep": 0.0}, "keep"), ({"keep": 1.5}, "keep"), ({"grid": 0}, "grid"),
    ({"n_masks": 0}, "n_masks")])
def test_bad_options_are_input_errors(region, options, message):
    with pytest.raises(InputError, match=message):
        region.explain(positive_images(), "rise", **options)


def test_batch_size_is_the_explainers_not_an_option():
    with pytest.raises(InputError, match="no option 'batch_size'"):
        onnxplain.METHODS["rise"].resolve_options({"batch_size": "4"})


def test_cli_writes_a_heatmap_for_an_image_input(tmp_path: Path):
    onnx.save(region_model(), tmp_path / "region.onnx")
    np.save(tmp_path / "x.npy", positive_images())
    result = CliRunner().invoke(main, [
        "explain", str(tmp_path / "region.onnx"), "-i", str(tmp_path / "x.npy"), "-m", "rise",
        "-O", "n_masks=64", "-O", "grid=4", "-o", str(tmp_path / "out"), "--json"],
        catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["method"] == "rise"
    assert summary["options"]["n_masks"] == 64 and summary["options"]["grid"] == 4
    assert summary["target"] == [1]
    assert np.load(tmp_path / "out" / "attribution.npy").shape == (1, 1, 32, 32)
    assert list((tmp_path / "out").glob("heatmap_*.png"))
