"""Local heads on a real exported CNN (model-zoo digits_cnn): the original outputs are
untouched, the head equals the numpy local layer on the tapped features, epsilon is
calibrated to the asked rejection rate, noise is rejected, prototypes name real training rows,
and gradient methods explain the head's outputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxplain import Explainer
from onnxplain.errors import InputError, ModelError
from onnxplain.local.head import METADATA_KEY, fit_local_head, head_info
from onnxplain.local.report import evaluate_head, explain_prototypes
from onnxplain_cli.main import main
from tests.ops.epsilon_models import run

LAYER = "/features/features.6/Relu_output_0"


@pytest.fixture(scope="module")
def head(digits_path, digits_split):
    x, y, _, _ = digits_split
    return fit_local_head(str(digits_path), LAYER, x, y, per_class=20, providers="cpu")


def _outputs(model, x):
    names = [o.name for o in model.graph.output]
    return dict(zip(names, run(model, {"image": x}), strict=True))


def test_the_original_outputs_are_unchanged(head, digits_path, digits_split):
    _, _, x, _ = digits_split
    original = onnx.load(str(digits_path))
    expected = run(original, {"image": x})[0]
    np.testing.assert_array_equal(_outputs(head.model, x)["logits"], expected)
    onnx.checker.check_model(head.model, full_check=True)


def test_head_equals_the_numpy_layer_on_the_tapped_features(head, digits_path, digits_split):
    _, _, x, _ = digits_split
    features = Explainer(str(digits_path), "cpu").forward(x, taps=[LAYER])[LAYER]
    features = features.reshape(len(x), -1)
    outputs = _outputs(head.model, x)
    np.testing.assert_allclose(outputs["local/probabilities"], head.layer.forward(features),
                               atol=1e-5)
    a, e = head.layer.activations(features)
    np.testing.assert_allclose(outputs["local/epsilon"], e, atol=1e-5)
    nearest = head.layer.distances(features).argmin(1)
    np.testing.assert_array_equal(outputs["local/prototypes"][:, 0], nearest)
    np.testing.assert_allclose(outputs["local/prototype_activations"][:, 0], a.max(1), atol=1e-5)


def test_metadata_records_where_every_center_came_from(head, digits_split):
    x, y, _, _ = digits_split
    info = head_info(head.model)
    assert info["layer"] == LAYER and info["centers"] == 200 and info["classes"] == 10
    assert info["labels_from"] == "data"
    sources = np.array(info["sources"])
    np.testing.assert_array_equal(np.array(info["labels"]), y[sources])
    assert np.bincount(y[sources]).tolist() == [20] * 10
    assert info["epsilon"] == pytest.approx(head.layer.epsilon)


def test_epsilon_is_calibrated_and_rejects_noise(head, digits_split):
    _, _, x_test, y_test = digits_split
    clean = evaluate_head(head.model, x_test, y_test, providers="cpu")
    assert 0.0 < clean["rejection_rate"] < 0.15  # calibrated to 5% of held-out training rows
    assert clean["local_accuracy"] > 0.9
    # Rejected rows are where the model errs more often.
    assert clean["rejection_rate_when_model_wrong"] >= clean["rejection_rate"]
    counts = clean["accepted"] | {"r" + k: v for k, v in clean["rejected"].items()}
    assert sum(counts.values()) == len(x_test)
    noise = np.random.default_rng(0).uniform(0, 1, (200, 1, 8, 8)).astype(np.float32)
    assert evaluate_head(head.model, noise, providers="cpu")["rejection_rate"] >= 0.9


def test_epsilon_calibrates_on_rows_the_model_did_not_train_on(digits_path, digits_split):
    """With calibration rows every training row may be a center's source (no holdout), and
    epsilon is minus the ceil(151 x 0.95) = 144th smallest of those 150 rows' nearest-center
    distances (local.init.rejection_threshold), computed here from the tapped features by
    explicit differences; 6 of the 150 rows lie above it."""
    x, y, x_test, _ = digits_split
    calibration = x_test[:150]
    head = fit_local_head(str(digits_path), LAYER, x, y, per_class=20, providers="cpu",
                          calibration=calibration)
    assert head.info["calibrated_on"] == "150 calibration rows"
    features = Explainer(str(digits_path), "cpu").forward(calibration, taps=[LAYER])[LAYER]
    features = features.reshape(len(calibration), -1).astype(np.float64)
    centers = head.layer.centers.astype(np.float64)
    nearest = np.sqrt(((features[:, None] - centers[None]) ** 2).sum(-1)).min(1)
    assert np.isclose(head.layer.epsilon, -np.sort(nearest)[143], rtol=1e-5)
    rejected = evaluate_head(head.model, calibration, providers="cpu")["rejection_rate"]
    assert abs(rejected - 6 / 150) <= 1 / 150 + 1e-9  # the row at the threshold: float32 epsilon
    with pytest.raises(InputError, match="nothing to calibrate"):
        fit_local_head(str(digits_path), LAYER, x, y, epsilon=-1.0, calibration=calibration)


def test_prototypes_are_the_nearest_training_rows(head, digits_path, digits_split):
    x, y, x_test, _ = digits_split
    rows = explain_prototypes(head.model, x_test[:5], providers="cpu")
    explainer = Explainer(str(digits_path), "cpu")
    train_features = explainer.forward(x, taps=[LAYER])[LAYER].reshape(len(x), -1)
    test_features = explainer.forward(x_test[:5], taps=[LAYER])[LAYER].reshape(5, -1)
    for row, feature in zip(rows, test_features, strict=True):
        first = row["prototypes"][0]
        assert first["label"] == y[first["source_row"]]
        distances = np.linalg.norm(train_features[head.layer.sources] - feature, axis=1)
        assert head.layer.sources[distances.argmin()] == first["source_row"]
        strengths = [p["activation"] for p in row["prototypes"]]
        assert strengths == sorted(strengths, reverse=True) and len(strengths) == 5


def test_gradient_methods_explain_the_head(head, digits_split):
    _, _, x_test, _ = digits_split
    x = x_test[:3]
    explainer = Explainer(head.model, "cpu", output="local/probabilities")
    result = explainer.explain(x, method="saliency", target=[1, 2, 3], abs=False)
    step, rng = 1e-2, np.random.default_rng(0)
    for i in range(3):
        direction = rng.normal(size=x[i].shape).astype(np.float32)
        plus = _outputs(head.model, (x[i] + step * direction)[None])["local/probabilities"]
        minus = _outputs(head.model, (x[i] - step * direction)[None])["local/probabilities"]
        numeric = (plus[0, i + 1] - minus[0, i + 1]) / (2 * step)
        analytic = float((result["image"][i] * direction).sum())
        assert abs(numeric - analytic) <= 0.05 * max(abs(numeric), 1e-3), (numeric, analytic)
    # Completeness through the head: attributions sum to the change of the class share.
    ig = explainer.explain(x, method="integrated_gradients", n_steps=128)
    assert np.abs(ig.extras["convergence_delta"]).max() < 0.01


def test_bad_requests_are_typed_errors(digits_path, digits_split, head):
    x, y, _, _ = digits_split
    with pytest.raises(InputError, match="no tensor, node or op type named 'nope'"):
        fit_local_head(str(digits_path), "nope", x, y)
    with pytest.raises(InputError, match="labels must be 100 non-negative class indices"):
        fit_local_head(str(digits_path), LAYER, x[:100], y[:50])
    with pytest.raises(ModelError, match="has no local head"):
        head_info(onnx.load(str(digits_path)))
    from onnxplain.graph.model import Model
    from onnxplain.local.head import attach

    with pytest.raises(ModelError, match="already has outputs local/probabilities"):
        attach(Model.load(head.model), LAYER, head.layer, head.info)


def test_cli_fit_evaluate_explain(tmp_path, digits_path, digits_split):
    x, y, x_test, y_test = digits_split
    np.savez(tmp_path / "train.npz", image=x, y=y)
    np.savez(tmp_path / "test.npz", image=x_test[:60], y=y_test[:60])
    np.save(tmp_path / "rows.npy", x_test[:2])
    out = tmp_path / "head.onnx"
    invoke = CliRunner().invoke
    fitted = invoke(main, ["local-head", "fit", str(digits_path), "--layer", LAYER, "--data",
                           str(tmp_path / "train.npz"), "-o", str(out), "--per-class", "10",
                           "--json", "--provider", "cpu"])
    assert fitted.exit_code == 0, fitted.stderr
    summary = json.loads(fitted.stdout)
    assert summary["centers"] == 100 and summary["reject_rate"] == 0.05
    assert summary["calibrated_on"] == f"{round(len(x) * 0.2)} held-out rows of the fitting data"
    calibrated = invoke(main, ["local-head", "fit", str(digits_path), "--layer", LAYER, "--data",
                               str(tmp_path / "train.npz"), "-o", str(tmp_path / "c.onnx"),
                               "--calibration-data", str(tmp_path / "test.npz"),
                               "--per-class", "10", "--provider", "cpu"])
    assert calibrated.exit_code == 0, calibrated.stderr
    assert "calibrated on 60 calibration rows" in calibrated.stdout
    assert METADATA_KEY in {p.key for p in onnx.load(str(out)).metadata_props}
    evaluated = invoke(main, ["local-head", "evaluate", str(out), "--data",
                              str(tmp_path / "test.npz"), "--json"])
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["rows"] == 60
    text = invoke(main, ["local-head", "evaluate", str(out), "--data",
                         str(tmp_path / "test.npz")])
    assert "rejected:" in text.stdout and "confusion" in text.stdout
    explained = invoke(main, ["local-head", "explain", str(out), "-i", str(tmp_path / "rows.npy"),
                              "--json"])
    rows = json.loads(explained.stdout)
    assert len(rows) == 2 and rows[0]["prototypes"][0]["label"] == y[
        rows[0]["prototypes"][0]["source_row"]]
    before = digits_path.read_bytes()
    for args, message in [
        (["fit", str(digits_path), "--layer", LAYER, "--data", str(tmp_path / "train.npz"),
          "-o", str(digits_path)], "refusing to overwrite"),
        (["fit", str(digits_path), "--layer", LAYER, "--data", str(tmp_path / "rows.npy"),
          "-o", str(tmp_path / "h.onnx")], "expected an .npz file"),
        (["fit", str(digits_path), "--layer", LAYER, "--data", str(tmp_path / "train.npz"),
          "-o", str(tmp_path / "h.onnx"), "--epsilon", "big"], "neither 'auto' nor a number"),
        (["fit", str(digits_path), "--layer", LAYER, "--data", str(tmp_path / "train.npz"),
          "-o", str(tmp_path / "h.onnx"), "--epsilon", "-1", "--calibration-data",
          str(tmp_path / "test.npz")], "nothing to calibrate"),
        (["evaluate", str(digits_path), "--data", str(tmp_path / "test.npz")],
         "has no local head"),
    ]:
        result = invoke(main, ["local-head", *args])
        assert result.exit_code == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("error: ") and message in result.stderr
        assert result.stderr.count("\n") == 1
    assert digits_path.read_bytes() == before
    assert not (tmp_path / "h.onnx").exists()
