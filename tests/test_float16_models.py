"""float16 models: gradient programs run wherever the forward runs, and agree with the
float computation within half precision.

Tolerances. float16 has a 2^-11 ≈ 4.9e-4 unit roundoff; a gradient through a few layers
accumulates a few of those. Against the same weights rounded to float16 and run by torch in
float64 (which isolates the half-precision forward and backward) the relative L2 error must
stay below 2e-3. Against the float32 model (the user's oracle, whose weights differ by their
rounding) below 3e-2 with cosine above 0.999: the rounding alone moves the digits CNN's
gradient by 1.0e-2 in L2.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import onnxplain
from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.canonical import canonicalise
from onnxplain.graph.canonical.newer_ops import lower_to_runtime_opset
from onnxplain.graph.load import set_runtime_ir_version

from .cli_helpers import run
from .conftest import require

DIGITS = ["digits_cnn_fp16", "digits_cnn_fp16_io32"]
BERTS = ["bert_small_fp16", "bert_small_ort_fp16"]


def relative_l2(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(np.linalg.norm(got - want) / np.linalg.norm(want))


def cosine(got: np.ndarray, want: np.ndarray) -> float:
    got, want = got.astype(np.float64).ravel(), want.astype(np.float64).ravel()
    return float(got @ want / np.linalg.norm(got) / np.linalg.norm(want))


def _feed(zoo, name: str) -> np.ndarray:
    """The sample in the model's input type (float16 unless keep_io_types)."""
    image = zoo.sample(name)["image"]
    declared = onnx.load(str(zoo.model_path(name))).graph.input[0].type.tensor_type.elem_type
    return image.astype(np.float16) if declared == onnx.TensorProto.FLOAT16 else image


def _torch_image_gradient(zoo, name: str, image: np.ndarray, targets: np.ndarray,
                          rounded: bool) -> np.ndarray:
    """d(sum_rows logit[row, target]) / d(image) in float64, the weights as trained or
    rounded to float16 (the input too)."""
    torch = require("torch")
    module = zoo.load_torch(name)
    if rounded:
        with torch.no_grad():
            for parameter in module.parameters():
                parameter.copy_(parameter.half().float())
        image = image.astype(np.float16)
    x = torch.from_numpy(image.astype(np.float64)).requires_grad_(True)
    module.double()(x)[torch.arange(len(targets)), torch.from_numpy(targets)].sum().backward()
    return x.grad.numpy()


@pytest.mark.parametrize("name", DIGITS)
def test_digits_saliency_within_half_precision(zoo, name):
    image = _feed(zoo, name)
    targets = np.arange(len(image)) % 10
    result = onnxplain.Explainer(zoo.model_path(name), "cpu").explain(
        image, target=targets, abs=False)
    got = result["image"]
    assert got.dtype == image.dtype and got.shape == image.shape
    rounded = _torch_image_gradient(zoo, name, image.astype(np.float32), targets, True)
    assert relative_l2(got, rounded) < 2e-3
    exact = _torch_image_gradient(zoo, name, image.astype(np.float32), targets, False)
    assert relative_l2(got, exact) < 3e-2 and cosine(got, exact) > 0.999


# 8 steps, on purpose.
@pytest.mark.filterwarnings("ignore::onnxplain.methods.integrated_gradients.ConvergenceWarning")
@pytest.mark.parametrize("name", DIGITS)
def test_digits_integrated_gradients_within_half_precision(zoo, name):
    """IG (zero baseline, Gauss-Legendre) against the same sum in torch float64."""
    image = _feed(zoo, name)
    targets = np.arange(len(image)) % 10
    steps = 8
    result = onnxplain.Explainer(zoo.model_path(name), "cpu").explain(
        image, method="integrated_gradients", target=targets, n_steps=steps)
    nodes, weights = np.polynomial.legendre.leggauss(steps)
    x = image.astype(np.float64)
    total = sum(w / 2 * _torch_image_gradient(zoo, name, (x * (t + 1) / 2), targets, False)
                for t, w in zip(nodes, weights, strict=True))
    want = x * total
    got = result["image"]
    assert relative_l2(got, want) < 3e-2 and cosine(got, want) > 0.999


@pytest.mark.parametrize("name", BERTS)
def test_bert_token_saliency_within_half_precision(zoo, name):
    torch = require("torch")
    sample = zoo.sample(name)
    targets = np.array([1, 0, 1])
    result = onnxplain.Explainer(zoo.model_path(name), "cpu").explain(
        sample, target=targets, abs=False)
    module = zoo.load_torch(name).double()
    captured = {}

    def keep(_module, _inputs, output):
        output.retain_grad()
        captured["embedding"] = output

    handle = module.model.bert.embeddings.word_embeddings.register_forward_hook(keep)
    logits = module(*[torch.from_numpy(v) for v in sample.values()])
    logits[torch.arange(3), torch.from_numpy(targets)].sum().backward()
    handle.remove()
    want = captured["embedding"].grad.numpy()
    got = result.tensors[result.sources["input_ids"]]
    assert relative_l2(got, want) < 3e-2 and cosine(got, want) > 0.999


def test_cli_explains_a_float16_npy(zoo, tmp_path):
    """End to end from a float16 .npy: the saved map is saliency (as the Python API gives
    it), and the summary and heatmaps are written."""
    name = "digits_cnn_fp16"
    image = _feed(zoo, name)[:4]
    assert image.dtype == np.float16
    np.save(tmp_path / "image.npy", image)
    out = tmp_path / "out"
    result = run("explain", str(zoo.model_path(name)), "--input", str(tmp_path / "image.npy"),
                 "--method", "saliency", "--target", "3", "--out", str(out))
    assert result.exit_code == 0, result.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == [3, 3, 3, 3]
    saved = np.load(out / "attribution.npy")
    want = onnxplain.Explainer(zoo.model_path(name), "cpu").explain(image, target=3)["image"]
    np.testing.assert_allclose(saved.astype(np.float32), want.astype(np.float32), rtol=1e-3)
    assert np.abs(saved).max() > 0 and list(out.glob("heatmap_*.png"))


def _bfloat16_mlp() -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """y = relu(x·W) computed in bfloat16 between float32 edges (as a bf16 export is)."""
    from onnx import TensorProto, helper, numpy_helper

    weight = np.random.default_rng(1).standard_normal((4, 3)).astype(np.float32)
    nodes = [helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
             helper.make_node("Cast", ["w32"], ["w"], to=TensorProto.BFLOAT16),
             helper.make_node("MatMul", ["xb", "w"], ["h"]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Cast", ["r"], ["y"], to=TensorProto.FLOAT)]
    graph = helper.make_graph(nodes, "bf16", [
        helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])], [
        helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 3])],
        [numpy_helper.from_array(weight, "w32")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    set_runtime_ir_version(model)
    x = np.random.default_rng(2).standard_normal((2, 4)).astype(np.float32)
    return model, x, weight


def test_bfloat16_runs_where_the_forward_runs_else_says_why():
    """ONNX Runtime 1.31's CPU provider has no bfloat16 MatMul, Add or Relu kernel: then the
    explainer stops with ONNX Runtime's error, never a map. Where the forward runs (a newer
    runtime), the gradient must match float32 within bfloat16's 2^-8 roundoff."""
    model, x, weight = _bfloat16_mlp()
    try:
        _session(model)
    except Exception:  # noqa: BLE001 - no bfloat16 kernel in this runtime
        with pytest.raises(onnxplain.OnnxplainError, match="Could not find an implementation"):
            onnxplain.Explainer(model, "cpu").explain(x, target=0)
        return
    got = onnxplain.Explainer(model, "cpu").explain(x, target=0, abs=False)["x"]
    want = weight[:, 0][None, :] * ((x @ weight)[:, :1] > 0)
    np.testing.assert_allclose(got, want, rtol=2e-2, atol=2e-2 * np.abs(want).max())


# ---- every backward rule in float16 ------------------------------------------------------
def _all_rule_cases():
    """The op cases of tests/autodiff/test_*_rules.py."""
    from .autodiff import gradcheck

    package = importlib.import_module("tests.autodiff")
    cases = {}
    for info in pkgutil.iter_modules(package.__path__):
        if not info.name.startswith("test_"):
            continue
        module = importlib.import_module(f"tests.autodiff.{info.name}")
        for value in vars(module).values():
            if isinstance(value, (list, tuple)):
                for item in value:
                    item = getattr(item, "values", [item])[0] if hasattr(item, "values") \
                        else item
                    if isinstance(item, gradcheck.OpCase):
                        cases.setdefault(item.id, item)
    return list(cases.values())


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.log_severity_level = 4
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def test_every_rule_runs_in_float16_and_agrees_with_float32():
    """Each rule case's model converted to float16: where ONNX Runtime runs its forward,
    the gradient program runs too (no missing half kernel: scatter-add, the one-hot
    contraction) and matches the float32 program on the same float16-representable inputs
    within 1e-2 of the gradient's largest value."""
    float16 = require("onnxconverter_common.float16")
    from .autodiff import gradcheck
    from .autodiff.reference_fixes import corrected_reference

    failures, checked = [], 0
    with corrected_reference(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for case in _all_rule_cases():
            wrt = [f"in{i}" for i in gradcheck._wrt(case)]
            model, feeds = gradcheck.build_model(case, np.float32, symbolic=False)
            model = lower_to_runtime_opset(canonicalise(model))  # the newest ops
            set_runtime_ir_version(model)
            feeds = {k: v.astype(np.float16).astype(np.float32) if v.dtype == np.float32
                     else v for k, v in feeds.items()}
            half = float16.convert_float_to_float16(model, keep_io_types=False)
            half_feeds = {k: v.astype(np.float16) if v.dtype == np.float32 else v
                          for k, v in feeds.items()}
            try:
                outputs = _session(half).run(None, half_feeds)
            except Exception:  # noqa: BLE001 - the forward itself has no half kernel
                continue
            seeded = [f"out{k}" for k, o in enumerate(outputs) if o.dtype == np.float16
                      and (case.seeded is None or k in case.seeded)]
            if not seeded or not wrt:
                continue
            seeds = {o: np.random.default_rng(0).uniform(-1, 1, outputs[int(o[3:])].shape)
                     for o in seeded}
            try:
                want = _gradients(model, wrt, seeded, feeds, seeds, np.float32)
            except UnsupportedOpError:
                continue  # a case that tests a refusal
            try:
                got = _gradients(half, wrt, seeded, half_feeds, seeds, np.float16)
            except Exception as err:  # noqa: BLE001 - reported below, all at once
                failures.append(f"{case.id}: {str(err).splitlines()[0][:160]}")
                continue
            checked += 1
            for name, g16, g32 in zip(wrt, got, want, strict=True):
                scale = max(float(np.abs(g32).max()), 1e-3)
                if np.abs(g16.astype(np.float32) - g32).max() > 1e-2 * scale:
                    failures.append(f"{case.id} d/d{name}: off by "
                                    f"{np.abs(g16 - g32).max() / scale:.2e} of the maximum")
    assert checked > 200
    assert not failures, "\n".join(failures)


def _gradients(model, wrt, seeded, feeds, seeds, dtype):
    diff = differentiate(model, wrt, outputs=seeded)
    run_feeds = dict(feeds)
    run_feeds.update({diff.seeds[o]: s.astype(dtype) for o, s in seeds.items()})
    return _session(diff.model).run([diff.grads[w] for w in wrt], run_feeds)
