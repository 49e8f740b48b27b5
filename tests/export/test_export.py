"""Exported explainers compute what the in-process methods compute, for whole batches of any
size, with the original outputs untouched, and refuse what they cannot export."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxplain import Explainer
from onnxplain.errors import InputError
from onnxplain.export import EXPORTS
from onnxplain.exporter import export_explainer
from onnxplain_cli.main import main
from tests.ops.epsilon_models import run

CASES = [("saliency", {}), ("saliency", {"abs": False}), ("input_x_gradient", {}),
         ("guided_backprop", {}), ("deconvnet", {}),
         ("integrated_gradients", {"n_steps": 12, "rule": "riemann_trapezoid"}),
         ("integrated_gradients", {"n_steps": 8, "baseline": "constant", "baseline_value": 0.5}),
         ("grad_cam", {}), ("grad_cam", {"upsample": "nearest", "relu": False}),
         ("grad_cam_plus_plus", {}), ("guided_grad_cam", {}), ("cam", {}),
         ("activation_maps", {}),
         ("deeplift", {}), ("deeplift", {"baseline": "constant", "baseline_value": 0.3}),
         ("lrp", {}), ("lrp", {"composite": "epsilon-alpha2-beta1"})]
ATTENTION = ["raw_attention", "rollout", "generic_attention", "attgrad",
             "transformer_attribution", "partial_lrp"]
NOISE = ["smoothgrad", "smoothgrad_sq", "vargrad"]


@pytest.fixture(scope="module")
def digits(zoo):
    from model_zoo.digits import digits_data

    return digits_data()[2][:6]


def _run(model, feeds):
    names = [o.name for o in model.graph.output]
    return dict(zip(names, run(model, feeds), strict=True))


def assert_model_outputs(explainer, got, feeds) -> None:
    """The explainer's original outputs in `got` are the model's own on `feeds` (the same
    ONNX Runtime kernels on them)."""
    from onnxplain.runtime.session import Session

    plain = Session(explainer.model.proto, ["CPUExecutionProvider"],
                    weights=explainer.model.weights).run(None, feeds)
    for output, value in plain.items():
        np.testing.assert_allclose(got[output], value, rtol=1e-6, atol=1e-7)


def _close(got, expected, rtol=1e-5):
    scale = float(np.abs(expected).max()) or 1.0
    assert float(np.abs(got - expected).max()) <= rtol * scale


@pytest.mark.parametrize("method,options", CASES, ids=lambda v: str(v))
def test_exported_method_equals_the_in_process_method(method, options, digits_path, digits):
    exported = export_explainer(str(digits_path), method, **options)
    onnx.checker.check_model(exported, full_check=True)
    assert {n.domain for n in exported.graph.node} <= {""}
    explainer = Explainer(str(digits_path), "cpu")
    original = _run(onnx.load(str(digits_path)), {"image": digits})["logits"]
    for target in (None, [3, 1, 4, 1, 5, 9]):
        feeds = {"image": digits} if target is None else {
            "image": digits, "target": np.array(target, np.int64)}
        got = _run(exported, feeds)
        quiet = {"delta_tolerance": 1e9} if method in ("integrated_gradients",
                                                          "deeplift") else {}
        expected = explainer.explain(digits, method=method, target=target, **options, **quiet)
        _close(got["attribution/image"], expected.attributions["image"])
        np.testing.assert_array_equal(got["target_used"], expected.target)
        np.testing.assert_array_equal(got["logits"], original)
        if "convergence_delta" in expected.extras:
            np.testing.assert_allclose(got["convergence_delta"],
                                       expected.extras["convergence_delta"], atol=1e-5)


@pytest.mark.parametrize("method,options", [CASES[0], CASES[5], CASES[7]], ids=str)
def test_any_batch_size_gives_the_rows_it_would_give_alone(method, options, digits_path,
                                                          digits):
    exported = export_explainer(str(digits_path), method, **options)
    batch = _run(exported, {"image": digits})["attribution/image"]
    for i in (0, 5):
        alone = _run(exported, {"image": digits[i:i + 1]})["attribution/image"]
        _close(alone[0], batch[i])


def test_metadata_describes_the_method_and_the_added_tensors(digits_path):
    exported = export_explainer(str(digits_path), "integrated_gradients", n_steps="7")
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["onnxplain.method"] == "integrated_gradients"
    assert json.loads(props["onnxplain.options"])["n_steps"] == 7
    assert props["onnxplain.explained_output"] == "logits"
    added = json.loads(props["onnxplain.added"])
    assert set(added) == {"target", "target_used", "attribution/image", "convergence_delta",
                          "baseline/image", "score", "baseline_score", "rows_per_iteration"}
    assert [i.name for i in exported.graph.input] == ["image", "baseline/image",
                                                      "rows_per_iteration", "target"]
    assert props["onnxplain.rows_per_iteration"] == "16"  # export's default (LOOP_ROWS)


def test_every_exportable_method_is_covered_here():
    covered = {method for method, _ in CASES} | set(ATTENTION) | set(NOISE) | {
        "prototypes", "layer_integrated_gradients", "cat", "attncat"}  # test_same_program_cat
    covered |= {"kernel_shap", "lime"}  # test_same_program_shap_lime
    covered |= {"occlusion", "rise"}  # test_same_program_perturb
    covered |= {"shapley_sampling"}  # tests/methods/test_shapley_sampling
    covered |= {"feature_ablation"}  # tests/methods/test_feature_ablation
    covered |= {"gradient_shap"}  # tests/methods/test_gradient_shap
    covered |= {"blur_ig"}  # tests/methods/test_blur_ig
    covered |= {"guided_ig"}  # tests/methods/test_guided_ig
    covered |= {"layer_conductance", "neuron_conductance"}  # tests/methods/test_conductance
    covered |= {"attn_lrp"}  # tests/methods/test_attn_lrp
    assert covered == set(EXPORTS)


@pytest.fixture(scope="module")
def text_batch(zoo):
    """Token ids with a class token first and padded rows of different lengths."""
    rng = np.random.default_rng(0)
    lengths = np.array([24, 17, 9])
    mask = (np.arange(24)[None, :] < lengths[:, None]).astype(np.int64)
    ids = rng.integers(4, 20, (3, 24)) * mask
    ids[:, 0] = 2
    return {"input_ids": ids.astype(np.int64), "attention_mask": mask}


@pytest.mark.parametrize("token", [-1, 3], ids=["zero_embedding", "token_3"])
@pytest.mark.parametrize("model", ["sentiment_bert", "bert_small_attention23"])
def test_exported_layer_integrated_gradients_equals_the_in_process_method(model, token, zoo,
                                                                          text_batch):
    """The path over the token embeddings, from zeros or the embedding of token 3 (token 0
    is the padding row, itself zero); one score per token, 0 on padding."""
    path = str(zoo.model_path(model))
    explainer = Explainer(path, "cpu")
    names = {spec.name for spec in explainer.model.inputs}
    feeds = {**text_batch, "token_type_ids": np.zeros_like(text_batch["input_ids"])}
    feeds = {k: v for k, v in feeds.items() if k in names}
    got = _run(export_explainer(path, "layer_integrated_gradients", n_steps=8,
                                baseline_token=token), feeds)
    expected = explainer.explain(feeds, method="layer_integrated_gradients", n_steps=8,
                                 baseline_token=token, delta_tolerance=1e9)
    if token < 0:  # -1 is the zero embedding in-process too, as the default (None) is
        default = explainer.explain(feeds, method="layer_integrated_gradients", n_steps=8,
                                    delta_tolerance=1e9)
        np.testing.assert_array_equal(expected.attributions["input_ids"],
                                      default.attributions["input_ids"])
    _close(got["attribution/input_ids"], expected.attributions["input_ids"])
    np.testing.assert_allclose(got["convergence_delta"], expected.extras["convergence_delta"],
                               atol=1e-5)
    assert not got["attribution/input_ids"][text_batch["attention_mask"] == 0].any()
    np.testing.assert_array_equal(got["target_used"], expected.target)


def test_layer_integrated_gradients_needs_token_ids(digits_path):
    with pytest.raises(InputError, match="has none"):
        export_explainer(str(digits_path), "layer_integrated_gradients")


@pytest.mark.parametrize("method", ATTENTION)
@pytest.mark.parametrize("model", ["sentiment_bert", "vit_small"])
def test_exported_attention_method_equals_the_in_process_method(method, model, zoo,
                                                                text_batch):
    path = str(zoo.model_path(model))
    explainer = Explainer(path, "cpu")
    if model == "vit_small":
        spec = explainer.model.inputs[0]
        feeds = {spec.name: np.random.default_rng(1).random((2, *spec.dims[1:])).astype(
            np.float32)}
    else:
        names = {spec.name for spec in explainer.model.inputs}
        feeds = {k: v for k, v in text_batch.items() if k in names}
    exported = export_explainer(path, method)
    onnx.checker.check_model(exported, full_check=True)
    got = _run(exported, feeds)
    expected = explainer.explain(feeds, method=method)
    for name, value in expected.attributions.items():
        _close(got["attribution/" + name], value)
    np.testing.assert_array_equal(got["target_used"], expected.target)


@pytest.mark.parametrize("kind", NOISE)
def test_exported_noise_tunnels_agree_with_the_in_process_ones(kind, digits_path, digits):
    """The same program and generator: the exported result is the in-process one when fed
    its seeds (one per row, export.noise.row_seeds; export's rows per iteration, 16); two
    seeds differ by sampling error only."""
    from onnxplain.export.noise import SEED, row_seeds

    explainer = Explainer(str(digits_path), "cpu")
    options = {"n_samples": 200, "noise_level": 0.1, "internal_batch_size": 16}
    got = _run(export_explainer(str(digits_path), kind, seed=1, **options),
               {"image": digits, SEED: row_seeds([digits], 1)})["attribution/image"]
    first = explainer.explain(digits, method=kind, seed=1, **options)["image"]
    second = explainer.explain(digits, method=kind, seed=2, **options)["image"]
    np.testing.assert_array_equal(got, first)
    spread = np.linalg.norm(first - second)
    assert 0 < spread < 0.2 * np.linalg.norm(first)
    silent = export_explainer(str(digits_path), kind, n_samples=2, noise_level=0.0,
                              base="input_x_gradient")
    plain = explainer.explain(digits, method="input_x_gradient")["image"]
    expected = {"smoothgrad": plain, "smoothgrad_sq": plain ** 2, "vargrad": 0 * plain}[kind]
    np.testing.assert_allclose(_run(silent, {"image": digits})["attribution/image"], expected,
                               atol=1e-6)


def test_exported_prototypes_name_the_training_rows(digits_path, zoo, tmp_path):
    from model_zoo.digits import digits_data
    from onnxplain.local.head import fit_local_head
    from onnxplain.local.report import explain_prototypes

    x, y, x_test, _ = digits_data()
    head = fit_local_head(str(digits_path), "/features/features.6/Relu_output_0", x, y,
                          per_class=5)
    exported = export_explainer(head.model, "prototypes")
    got = _run(exported, {"image": x_test[:4]})
    rows = explain_prototypes(head.model, x_test[:4])
    for row, sources, labels, rejected in zip(rows, got["local/prototype_sources"],
                                              got["local/prototype_labels"],
                                              got["local/rejected"], strict=True):
        assert [p["source_row"] for p in row["prototypes"]] == sources.tolist()
        assert [p["label"] for p in row["prototypes"]] == labels.tolist()
        assert row["rejected"] == bool(rejected)
    with pytest.raises(Exception, match="has no local head"):
        export_explainer(str(digits_path), "prototypes")


@pytest.mark.parametrize("token", ["-1", "3"])
def test_cli_export_checks_text_integrated_gradients(token, tmp_path, zoo, text_batch):
    """--check runs the in-process method with the export's options, -1 included."""
    inputs = tmp_path / "text.npz"
    np.savez(inputs, **text_batch)
    result = CliRunner().invoke(main, [
        "export", str(zoo.model_path("sentiment_bert")), "-m", "layer_integrated_gradients",
        "-O", "n_steps=8", "-O", f"baseline_token={token}", "-o", str(tmp_path / "x.onnx"),
        "--check", "--input", str(inputs), "--json"])
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["check"]["max_rel_diff"] < 1e-5


@pytest.mark.parametrize("method,options,message", [
    ("lime", {"features": "superpixels"}, "superpixels depend on each image"),
    ("saliency", {"foo": 1}, "has no export option 'foo'"),
    ("integrated_gradients", {"baseline": {"image": 0.5}}, "a baseline dict cannot be exported"),
    ("integrated_gradients", {"baseline": "uniform", "seed": 2**32},
     "'seed' of method 'integrated_gradients' must be an integer from 0 to 4294967295"),
    ("integrated_gradients", {"n_steps": "many"}, "expects an int"),
    ("grad_cam", {"layer": "logits"}, "is not a \\[batch, channels, height, width\\]"),
    ("grad_cam", {"upsample": "cubic"}, "'upsample' of method 'grad_cam' expects one of"),
])
def test_what_cannot_be_exported_is_an_input_error(method, options, message, digits_path):
    with pytest.raises(InputError, match=message):
        export_explainer(str(digits_path), method, **options)


def test_cli_export_with_check(tmp_path, digits_path):
    out = tmp_path / "explainer.onnx"
    result = CliRunner().invoke(main, ["export", str(digits_path), "-m", "integrated_gradients",
                                       "-O", "n_steps=8", "-o", str(out), "--check", "--json"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["check"]["max_rel_diff"] < 1e-5 and summary["check"]["rows"] == 2
    assert onnx.load(str(out)).graph.output[-1].name == "convergence_delta"
    before = digits_path.read_bytes()
    for args, message in [(["-o", str(digits_path)], "refusing to overwrite"),
                          (["-m", "nope", "-o", str(tmp_path / "x.onnx")], "cannot be exported"),
                          (["-O", "abs", "-o", str(tmp_path / "x.onnx")], "is not KEY=VALUE")]:
        bad = CliRunner().invoke(main, ["export", str(digits_path), *args])
        assert bad.exit_code == 2 and message in bad.stderr, (args, bad.stderr)
        assert bad.stderr.count("\n") == 1
    assert digits_path.read_bytes() == before
    assert not (tmp_path / "x.onnx").exists()


def test_a_required_target_is_a_plain_input(digits_path, digits):
    exported = export_explainer(str(digits_path), "saliency", target_input="required")
    assert "target" not in {init.name for init in exported.graph.initializer}
    optional = export_explainer(str(digits_path), "saliency")
    feeds = {"image": digits, "target": np.array([-1, 2, -1, 4, 5, 6], np.int64)}
    np.testing.assert_array_equal(_run(exported, feeds)["attribution/image"],
                                  _run(optional, feeds)["attribution/image"])
    with pytest.raises(Exception, match="target"):
        _run(exported, {"image": digits})
    with pytest.raises(InputError, match="target_input must be one of optional, required"):
        export_explainer(str(digits_path), "saliency", target_input="maybe")


def test_inspect_describes_an_exported_explainer(tmp_path, digits_path):
    out = tmp_path / "explainer.onnx"
    onnx.save(export_explainer(str(digits_path), "integrated_gradients", n_steps=4), out)
    text = CliRunner().invoke(main, ["inspect", str(out)])
    assert text.exit_code == 0, text.stderr
    assert "exported explainer: integrated_gradients" in text.stdout
    assert "convergence_delta:" in text.stdout
    described = json.loads(CliRunner().invoke(main, ["inspect", str(out), "--json"]).stdout)
    assert described["onnxplain"]["options"]["n_steps"] == 4
    plain = json.loads(CliRunner().invoke(main, ["inspect", str(digits_path), "--json"]).stdout)
    assert plain["onnxplain"] == {}


def test_exported_integrated_gradients_runs_the_stem_on_two_blocks_only(digits_path):
    """The input convolution (the affine stem) reads [x; x'], not the path's copies."""
    exported = export_explainer(str(digits_path), "integrated_gradients", n_steps=8)
    producers = {o: n for n in exported.graph.node for o in n.output}
    first_conv = next(n for n in exported.graph.node if n.op_type == "Conv")
    stem_input = producers[first_conv.input[0]]
    assert stem_input.op_type == "Concat" and len(stem_input.input) == 2
    assert stem_input.input[0] == "image"


def test_exported_integrated_gradients_without_a_stem():
    """A model whose input meets a Relu first has no stem: the path is built at the input."""
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(
        np.random.default_rng(2).standard_normal((5, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("MatMul", ["r", "w"], ["y"])],
        "relu_first", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(3).standard_normal((4, 5)).astype(np.float32)
    exported = export_explainer(model, "integrated_gradients", n_steps=16)
    got = _run(exported, {"x": x})
    expected = Explainer(model, "cpu").explain(x, method="integrated_gradients", n_steps=16,
                                                delta_tolerance=1e9)
    _close(got["attribution/x"], expected.attributions["x"])


def test_an_explainer_past_protobufs_limit_is_one_line(tmp_path, digits_path, monkeypatch):
    """A model whose weights would take the explainer past protobuf's 2 GiB is refused
    before anything is embedded (the limit lowered to the digits CNN's size here)."""
    import onnxplain.export as export

    monkeypatch.setattr(export, "PROTOBUF_LIMIT", 1000)
    out = tmp_path / "explainer.onnx"
    result = CliRunner().invoke(main, ["export", str(digits_path), "-m", "saliency",
                                       "-o", str(out)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "over ONNX's 2 GiB limit" in result.stderr and not out.exists()


def test_a_loop_of_quantized_ops_names_the_optimizer_to_disable(zoo):
    """ONNX Runtime 1.31 aborts the process optimising a Loop body of Q/DQ pairs (in a child
    here); export warns, records the optimizer in the metadata, and with it disabled the
    explainer runs and equals the in-process method (the same program)."""
    import subprocess
    import sys

    from onnxplain.errors import ExportWarning
    from onnxplain.runtime.session import Session

    path = str(zoo.model_path("digits_cnn_qdq"))
    with pytest.warns(ExportWarning, match="QDQPropagationTransformer"):
        exported = export_explainer(path, "integrated_gradients", n_steps=4)
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["onnxplain.disable_optimizers"] == "QDQPropagationTransformer"
    feeds = {k: v[:2] for k, v in zoo.sample("digits_cnn_qdq").items()}
    got = Session(exported, ["CPUExecutionProvider"],
                  disabled=[props["onnxplain.disable_optimizers"]]).run(None, feeds)
    expected = Explainer(path, "cpu", progress=False).explain(
        feeds, method="integrated_gradients", n_steps=4, delta_tolerance=1e9)
    (key, _), = feeds.items()
    np.testing.assert_array_equal(got["attribution/" + key], expected[key])
    crash = subprocess.run([sys.executable, "-c", (
        "import sys, onnxruntime as ort; ort.InferenceSession(sys.stdin.buffer.read(), "
        "providers=['CPUExecutionProvider'])")], input=exported.SerializeToString(),
        capture_output=True, timeout=120)
    # If a later ONNX Runtime loads it, the warning can go: this test says when.
    assert crash.returncode != 0
