"""The local head's defaults (issue 22): every fitting row a center under a budget, the
temperature-free nearest-distance output, layer="auto", and calibration on rows that are not
centers with its error reported. Real zoo models, ONNX Runtime, numpy oracles."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.graph.layers import conv_candidates
from onnxplain.graph.model import Model
from onnxplain.local import init
from onnxplain.local.head import _split, fit_local_head
from onnxplain.local.layer_choice import (
    ACCURACY_TOLERANCE,
    choose_layer,
    head_candidates,
    neighbour_agreement,
)
from onnxplain.local.layers import LocalLayer, stack_values
from onnxplain.local.report import evaluate_head
from onnxplain_cli.main import main
from tests.ops.epsilon_models import run


@pytest.fixture(scope="module")
def auto_head(digits_path, digits_split):
    x, y, _, _ = digits_split
    return fit_local_head(str(digits_path), "auto", x, y, providers="cpu", progress=False)


def _tapped(path, x, layer) -> np.ndarray:
    values = Explainer(str(path), "cpu").forward(x, taps=[layer])[layer]
    return values.reshape(len(x), -1).astype(np.float64)


def _distances(rows: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """[rows, centers] l2 distances by explicit differences, a row at a time (all at once
    would be gigabytes)."""
    return np.stack([np.sqrt(((centers - row) ** 2).sum(1)) for row in rows])


def test_every_fitting_row_is_a_center_and_calibration_rows_are_not(auto_head, digits_path,
                                                                    digits_split):
    x, y, _, _ = digits_split
    fit_rows, held_rows = _split(len(x), 0.2, 0)
    info = auto_head.info
    assert info["centers_from"] == "every fitting row" and info["centers"] == len(fit_rows)
    np.testing.assert_array_equal(np.sort(info["sources"]), fit_rows)
    assert not set(info["sources"]) & set(held_rows.tolist())
    # epsilon: minus the ceil(301 x 0.95) = 286th smallest of the 300 held-out rows'
    # nearest-center distances, by explicit differences
    features = _tapped(digits_path, x, info["layer"])
    centers = auto_head.layer.centers.astype(np.float64)
    nearest = _distances(features[held_rows], centers).min(1)
    assert np.isclose(info["epsilon"], -np.sort(nearest)[285], rtol=1e-5)
    assert info["calibrated_on"] == f"{len(held_rows)} held-out rows of the fitting data"


def test_above_the_budget_centers_are_an_equal_share_per_class(digits_path, digits_split,
                                                                monkeypatch):
    x, y, _, _ = digits_split
    layer = "/ReduceMean_output_0"  # 64 features
    monkeypatch.setattr(init, "MAX_CENTER_VALUES", 64 * 300)
    head = fit_local_head(str(digits_path), layer, x, y, providers="cpu", progress=False)
    assert head.info["centers"] == 300 == init.center_budget(64)
    assert head.info["centers_from"].startswith("300 of 1200 fitting rows")
    assert np.bincount(y[head.layer.sources]).tolist() == [30] * 10
    monkeypatch.setattr(init, "MAX_CENTERS", 120)
    assert init.center_budget(64) == 120
    with pytest.raises(InputError, match="per_class must be at least 1"):
        fit_local_head(str(digits_path), layer, x, y, per_class=0)


def test_nearest_distance_output_equals_numpy_nearest_distance(auto_head, digits_path,
                                                               digits_split):
    _, _, x_test, _ = digits_split
    names = [o.name for o in auto_head.model.graph.output]
    got = dict(zip(names, run(auto_head.model, {"image": x_test}), strict=True))
    features = _tapped(digits_path, x_test, auto_head.info["layer"])
    centers = auto_head.layer.centers.astype(np.float64)
    nearest = _distances(features, centers).min(1)
    np.testing.assert_allclose(got["local/nearest_distance"], nearest, rtol=1e-5, atol=1e-4)
    # the head rejects exactly where the nearest distance exceeds -epsilon
    rejected = got["local/epsilon"] > got["local/prototype_activations"][:, 0]
    np.testing.assert_array_equal(rejected, nearest > -auto_head.layer.epsilon)


def test_nearest_distance_with_cosine_is_one_minus_the_best_cosine(digits_path, digits_split):
    x, y, x_test, _ = digits_split
    layer = "/ReduceMean_output_0"
    head = fit_local_head(str(digits_path), layer, x, y, per_class=10, distance="cosine",
                          providers="cpu", progress=False)
    got = Explainer(head.model, "cpu").forward(x_test[:50])["local/nearest_distance"]
    f = _tapped(digits_path, x_test[:50], layer)
    c = head.layer.centers.astype(np.float64)
    cosines = (f @ c.T) / np.linalg.norm(f, axis=1)[:, None] / np.linalg.norm(c, axis=1)[None]
    np.testing.assert_allclose(got, 1 - cosines.max(1), atol=1e-6)


def test_candidates_are_inspects_conv_blocks_and_the_dense_inputs(digits_path, zoo):
    cnn = Model.load(str(digits_path))
    conv = [entry["tensor"] for entry in conv_candidates(cnn)]
    assert conv == ["/features/features.6/Relu_output_0", "/features/features.5/Conv_output_0",
                    "/features/features.3/Relu_output_0"]
    # the last block's convolution only feeds its ReLU: the same layer, its output kept
    assert head_candidates(cnn) == ["/features/features.3/Relu_output_0",
                                    "/features/features.6/Relu_output_0",
                                    "/ReduceMean_output_0"]
    bn = Model.load(str(zoo.model_path("digits_bn_cnn")))
    assert head_candidates(bn) == ["/features/features.9/Relu_output_0", "/ReduceMean_output_0"]
    mlp = Model.load(str(zoo.model_path("digits_mlp")))
    assert head_candidates(mlp) == ["/1/Relu_output_0", "/3/Relu_output_0"]


def test_auto_layer_records_its_choice_and_scores(auto_head, digits_path, digits_split):
    x, y, _, _ = digits_split
    choice = auto_head.info["layer_choice"]
    candidates = {entry["layer"]: entry["agreement"] for entry in choice["candidates"]}
    assert list(candidates) == head_candidates(Model.load(str(digits_path)))
    assert auto_head.info["layer"] == choice["chosen"] in candidates
    # the agreement by an independent oracle: nearest other row by explicit differences
    fit_rows, _ = _split(len(x), 0.2, 0)
    f = _tapped(digits_path, x[fit_rows], choice["chosen"])
    d = _distances(f, f)
    np.fill_diagonal(d, np.inf)
    expected = np.mean(y[fit_rows][d.argmin(1)] == y[fit_rows])
    assert candidates[choice["chosen"]] == pytest.approx(expected, abs=1e-4)
    best = max(candidates.values())
    earlier = list(candidates)[:list(candidates).index(choice["chosen"])]
    assert candidates[choice["chosen"]] >= best - ACCURACY_TOLERANCE
    assert all(candidates[name] < best - ACCURACY_TOLERANCE for name in earlier)


def test_auto_layer_prefers_a_layer_that_groups_the_classes():
    """Constructed layers: 'noise' (earliest) does not group the classes, 'classes' does, and
    'classes too' does as well but comes later."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 50)
    noise = rng.normal(size=(200, 8))
    grouped = np.eye(4)[labels] * 10 + rng.normal(size=(200, 4))
    layers = {"noise": noise, "classes": grouped, "classes too": grouped * 3}
    chosen, record = choose_layer(layers, labels)
    assert chosen == "classes"
    scores = {entry["layer"]: entry["agreement"] for entry in record["candidates"]}
    assert scores["noise"] < 0.5 and scores["classes"] == 1.0
    assert neighbour_agreement(noise, labels) == scores["noise"]
    # earliest within the tolerance, not the best: two rows of 800 whose nearest other row
    # has the other label (row 0 sits on row 799) agree 1 - 2/800, within 0.005 of 1.0
    labels = np.repeat(np.arange(4), 200)
    grouped = np.eye(4)[labels] * 10 + rng.normal(size=(800, 4))
    slipped = grouped.copy()
    slipped[0] = slipped[799] + 1e-3
    chosen, record = choose_layer({"slipped": slipped, "clean": grouped}, labels)
    assert [e["agreement"] for e in record["candidates"]] == [1 - 2 / 800, 1.0]
    assert chosen == "slipped"
    with pytest.raises(InputError, match="no candidate layer"):
        choose_layer({}, labels)


def test_the_threshold_rejects_at_most_the_asked_share_of_new_rows():
    """Split conformal: with n = 50 exchangeable rows, a new row is rejected with
    probability (51 - ceil(51 x 0.95)) / 51 = 2/51, between 0.05 - 1/51 and 0.05."""
    draws = np.random.default_rng(0).normal(size=(4000, 51))
    rejected = [row[50] > init.rejection_threshold(row[:50], 0.05) for row in draws]
    assert np.mean(rejected) == pytest.approx(2 / 51, abs=0.01)
    assert init.rejection_threshold(np.arange(1.0, 100.0), 0.05) == 95.0
    assert init.rejection_threshold(np.arange(1.0, 11.0), 0.05) == 10.0  # too few: the largest
    with pytest.raises(InputError, match="rejection rate must be in"):
        init.rejection_threshold(np.arange(3.0), 1.0)


def test_calibration_check_leaves_each_fold_out():
    """One center at 0 and rows at 1..100: calibrated to reject nothing on four folds, a
    fold rejects only rows beyond the others' maximum, so only the overall maximum, once."""
    layer = LocalLayer("classifier", np.zeros((1, 1)), stack_values(np.eye(1)))
    rows = np.arange(1, 101, dtype=np.float64)[:, None]
    check = init.calibration_check(layer, rows, reject_rate=0.0, folds=5)
    assert check["rejected"] == pytest.approx(1 / 20 / 5)
    assert check["error"] == pytest.approx(check["rejected"] - 0.0)
    even = init.calibration_check(layer, rows, reject_rate=0.2, folds=5)
    assert abs(even["error"]) <= 0.05 and even["rows"] == 100
    assert init.calibration_check(layer, rows[:6], folds=5)["rejected"] is None


def test_calibration_error_on_test_data_is_measured_rate_minus_asked(auto_head, digits_split):
    _, _, x_test, y_test = digits_split
    result = evaluate_head(auto_head.model, x_test, y_test, providers="cpu")
    nearest = Explainer(auto_head.model, "cpu").forward(x_test)["local/nearest_distance"]
    rate = float(np.mean(nearest > -auto_head.layer.epsilon))
    assert result["rejection_rate"] == pytest.approx(rate, abs=1 / len(x_test))
    assert result["asked_rejection_rate"] == 0.05
    assert result["calibration_error"] == pytest.approx(result["rejection_rate"] - 0.05)
    check = auto_head.info["calibration"]
    assert check["asked"] == 0.05 and check["rows"] == 300
    assert check["error"] == pytest.approx(check["rejected"] - 0.05)


def test_cli_fit_auto_layer_reports_choice_and_calibration(tmp_path, digits_path, digits_split):
    x, y, x_test, y_test = digits_split
    np.savez(tmp_path / "train.npz", image=x, y=y)
    np.savez(tmp_path / "test.npz", image=x_test, y=y_test)
    out = tmp_path / "head.onnx"
    invoke = CliRunner().invoke
    fitted = invoke(main, ["local-head", "fit", str(digits_path), "--data",
                           str(tmp_path / "train.npz"), "-o", str(out), "--provider", "cpu"])
    assert fitted.exit_code == 0, fitted.stderr
    chosen = fitted.stdout.split("chose '")[1].split("'")[0]
    assert chosen in head_candidates(Model.load(str(digits_path)))
    assert f"fitted a local head on '{chosen}': 1200 centers (every fitting row" in fitted.stdout
    assert "calibration, cross-validated on those rows: asked 5.0%" in fitted.stdout
    evaluated = invoke(main, ["local-head", "evaluate", str(out), "--data",
                              str(tmp_path / "test.npz")])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert "(calibrated to 5.0%: " in evaluated.stdout
    assert "that is the calibration error)" in evaluated.stdout
    as_json = invoke(main, ["local-head", "evaluate", str(out), "--data",
                            str(tmp_path / "test.npz"), "--json"])
    result = json.loads(as_json.stdout)
    assert result["calibration_error"] == pytest.approx(result["rejection_rate"] - 0.05)
