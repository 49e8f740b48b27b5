"""Rewritten models keep the original outputs: taps leave them bit-identical, gradient
programs keep them, and every emitted model passes the full ONNX checker."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxplain
from onnxplain.autodiff.program import build_gradient_program
from onnxplain.errors import InputError
from onnxplain.graph.model import Model
from onnxplain.graph.taps import add_taps, resolve_taps
from onnxplain.graph.weights import standalone
from onnxplain.runtime.session import Session

from .tiny_models import mlp

ZOO_MODELS = ["digits_cnn", "resnet18", "vit_small", "bert_small"]


def _plain_outputs(model: Model, feeds: dict, optimization: str = "all") -> dict:
    session = Session(model.proto, ["CPUExecutionProvider"], optimization)
    return session.run(None, feeds)


TAPPED_OPS = ("Relu", "Add", "Softmax", "Conv", "LayerNormalization", "MatMul", "Erf")


@pytest.mark.parametrize("optimization", ["none", "basic", "extended", "all"])
@pytest.mark.parametrize("name", ZOO_MODELS)
def test_taps_leave_original_outputs_bit_identical(zoo, name, optimization):
    """Same session options, original model against tapped model.

    Without fusions ("none", "basic") the bits are identical: the rewrite never touches the
    nodes that compute the outputs. ONNX Runtime's fusions ("extended": GELU, MatMul+Add,
    attention; "all": the CPU NCHWc Conv+Add+Relu layout) only fire while the intermediate is
    not also a graph output, so tapping inside a fused pattern changes the rounding of what
    follows: bounded here at 1e-5.
    """
    model = Model.load(zoo.model_path(name))
    feeds = zoo.sample(name)
    ops = {node.op_type for node in model.proto.graph.node}
    tensors = resolve_taps(model.proto, [op for op in TAPPED_OPS if op in ops])
    tapped = add_taps(model.proto, model.infos, tensors)
    onnx.checker.check_model(standalone(tapped), full_check=True)
    got = Session(tapped, ["CPUExecutionProvider"], optimization).run(None, feeds)
    for output, value in _plain_outputs(model, feeds, optimization).items():
        if optimization in ("none", "basic"):
            assert np.array_equal(got[output], value), output
        else:
            np.testing.assert_allclose(got[output], value, rtol=1e-5, atol=1e-5)
    for tensor in tensors:
        assert got[tensor].shape[0] == next(iter(feeds.values())).shape[0]


def test_layer_output_taps_keep_bits_with_every_optimization(zoo):
    """The usual layer taps (block outputs after Relu and Add) block no fusion on ResNet."""
    model = Model.load(zoo.model_path("resnet18"))
    feeds = zoo.sample("resnet18")
    tapped = add_taps(model.proto, model.infos, resolve_taps(model.proto, ["Relu", "Add"]))
    got = Session(tapped, ["CPUExecutionProvider"], "all").run(["logits"], feeds)
    assert np.array_equal(got["logits"], _plain_outputs(model, feeds, "all")["logits"])


@pytest.mark.parametrize("name", ZOO_MODELS)
def test_gradient_programs_keep_outputs_and_pass_the_checker(zoo, name):
    model = Model.load(zoo.model_path(name))
    explainer = onnxplain.Explainer(model, providers="cpu")
    wrt = [source.tensor for source in explainer.sources]
    program = build_gradient_program(model, explainer.output, wrt)
    onnx.checker.check_model(standalone(program.model, program.weights), full_check=True)
    used = {node.domain for node in program.model.graph.node}
    assert used <= {"", "ai.onnx"}, used  # standard ops only
    feeds = zoo.sample(name)
    run = explainer.gradients(feeds)
    for name_, value in _plain_outputs(model, feeds).items():
        np.testing.assert_allclose(run.outputs[name_], value, rtol=1e-5, atol=1e-6)


def test_tap_selectors_by_tensor_node_and_op_type():
    model = mlp()
    assert resolve_taps(model, ["h"]) == ["h"]
    assert resolve_taps(model, ["relu"]) == ["a"]
    assert resolve_taps(model, ["Gemm", "MatMul"]) == ["h", "logits"]
    with pytest.raises(InputError, match="no tensor, node or op type named 'nothing'"):
        resolve_taps(model, ["nothing"])


def test_forward_with_taps_returns_intermediates():
    explainer = onnxplain.Explainer(mlp(), providers="cpu")
    x = np.random.default_rng(0).standard_normal((5, 6)).astype(np.float32)
    out = explainer.forward({"x": x}, taps=["h", "a"])
    np.testing.assert_array_equal(out["a"], np.maximum(out["h"], 0))
    np.testing.assert_array_equal(out["logits"], explainer.forward({"x": x})["logits"])
