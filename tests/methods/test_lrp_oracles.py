"""LRP against Captum's LRP on the same torch models, and where Captum cannot follow.

Captum's LRP hooks nn.Module leaves of the types it knows (Linear, Conv2d, BatchNorm2d, pools,
ReLU, Tanh, Dropout) and raises on any other leaf module; functional operations between
modules (torch.flatten, tensor.mean, x + y) get their plain gradient instead of a relevance
rule. So Captum is an oracle only for models built from those modules alone:
- the zoo MLP (nn.Sequential of Linear and ReLU), with Captum's default rules and with a
  larger epsilon;
- a small CNN built here from Conv2d, BatchNorm2d, ReLU, MaxPool2d, AdaptiveAvgPool2d and
  Linear (flatten is a reshape, whose gradient moves relevance unchanged), exported with its
  batch norms kept, under epsilon rules and, without biases, Captum's GammaRule and
  Alpha1_Beta0_Rule (equal to our gamma and z+ where biases are absent and inputs are >= 0).
Captum is not an oracle for the zoo CNNs (their global average pool is a functional .mean,
which Captum differentiates instead of propagating relevance through it) nor for ResNet-18
(residual additions are functional, and the HF model has leaf modules Captum rejects). There
the checks are: LRP-0 (the epsilon composite with epsilon -> 0) equals Gradient x Input on
ReLU networks (Ancona et al. 2018, ICLR; by induction, every rule then maps y * dS/dy to
x * dS/dx), checked against Captum's InputXGradient; and conservation at every residual block
of a bias-free ResNet-18 under the image composites.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import onnxplain
from onnxplain.methods.lrp import initial_relevance
from onnxplain.rules.lrp import LrpParams, lrp_rules
from onnxplain.runtime.engine import OutputSeed

from ..conftest import require
from .test_captum_oracles import Case, max_relative_error

TARGETS = np.array([0, 1, 2, 1, 0, 2])


def tiny_cnn(bias: bool):
    """Conv-BN-ReLU-MaxPool, Conv-BN-ReLU, AdaptiveAvgPool, flatten, Linear-ReLU-Linear, with
    random batch-norm statistics so that the normalisation's shift matters."""
    torch = require("torch")
    nn = torch.nn

    class TinyCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(2, 4, 3, padding=1, bias=bias), nn.BatchNorm2d(4)
            self.relu1, self.pool = nn.ReLU(), nn.MaxPool2d(2)
            self.conv2, self.bn2 = nn.Conv2d(4, 6, 3, padding=1, bias=bias), nn.BatchNorm2d(6)
            self.relu2, self.avg = nn.ReLU(), nn.AdaptiveAvgPool2d(1)
            self.fc1, self.relu3 = nn.Linear(6, 8, bias=bias), nn.ReLU()
            self.fc2 = nn.Linear(8, 3, bias=bias)

        def forward(self, image):
            h = self.pool(self.relu1(self.bn1(self.conv1(image))))
            h = self.avg(self.relu2(self.bn2(self.conv2(h))))
            return self.fc2(self.relu3(self.fc1(torch.flatten(h, 1))))

    torch.manual_seed(4)
    model = TinyCNN()
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.3, 0.3)
    return model.eval()


def export(module, x: np.ndarray) -> onnxplain.Explainer:
    torch = require("torch")
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and keeps BN
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(module, (torch.from_numpy(x),), buffer, input_names=["image"],
                          output_names=["logits"], opset_version=17, dynamo=False,
                          dynamic_axes={"image": {0: "n"}, "logits": {0: "n"}},
                          do_constant_folding=False)
    explainer = onnxplain.Explainer(buffer.getvalue(), providers="cpu")
    ops = {node.op_type for node in explainer.model.proto.graph.node}
    assert {"BatchNormalization", "MaxPool", "GlobalAveragePool"} <= ops
    return explainer


def captum_lrp(module, x: np.ndarray, rules: dict) -> np.ndarray:
    """Captum's LRP with `rules` (module type -> rule factory) set on each leaf module."""
    torch = require("torch")
    from captum.attr import LRP

    for layer in module.modules():
        make = rules.get(type(layer))
        if make is not None:
            layer.rule = make()
    inputs = torch.from_numpy(x).clone().requires_grad_(True)
    result = LRP(module).attribute(inputs, target=torch.from_numpy(TARGETS[:len(x)]))
    for layer in module.modules():
        if hasattr(layer, "rule"):
            del layer.rule
    return result.detach().numpy()


def test_mlp_with_captums_default_rules(zoo):
    from captum.attr import LRP

    case = Case(zoo, "digits_mlp")
    want = LRP(case.module).attribute(case.tensor(), target=case.target_tensor()).detach()
    got = case.explain("lrp", composite="epsilon", epsilon=1e-9, stabilizer=1e-9)
    assert max_relative_error(got[case.input], want) < 1e-4


def test_mlp_with_a_large_epsilon(zoo):
    from captum.attr._utils.lrp_rules import EpsilonRule

    torch = require("torch")
    case = Case(zoo, "digits_mlp")
    x = case.x[:6]
    want = captum_lrp(case.module, x, {torch.nn.Linear: lambda: EpsilonRule(0.5)})
    got = case.explainer.explain(x, "lrp", target=TARGETS, composite="epsilon", epsilon=0.5)
    assert max_relative_error(got[case.input], want) < 1e-4
    # Half a unit of epsilon absorbs much relevance: the comparison is not LRP-0 in disguise.
    assert np.all(got.extras["conservation"] < 0.95)


def test_cnn_with_batch_norm_and_max_pooling():
    """Captum's epsilon rule everywhere: 0.1 on Conv and Linear, 0.01 on BatchNorm and the
    average pool (our stabilizer), its default on MaxPool (winner-take-all for both)."""
    from captum.attr._utils.lrp_rules import EpsilonRule

    torch = require("torch")
    nn = torch.nn
    module = tiny_cnn(bias=True)
    x = np.random.default_rng(0).standard_normal((6, 2, 8, 8)).astype(np.float32)
    want = captum_lrp(module, x, {nn.Conv2d: lambda: EpsilonRule(0.1),
                                  nn.Linear: lambda: EpsilonRule(0.1),
                                  nn.BatchNorm2d: lambda: EpsilonRule(0.01),
                                  nn.AdaptiveAvgPool2d: lambda: EpsilonRule(0.01)})
    got = export(module, x).explain(x, "lrp", target=TARGETS, composite="epsilon",
                                    epsilon=0.1, stabilizer=0.01, merge_batch_norm=False)
    assert max_relative_error(got["image"], want) < 1e-4


@pytest.mark.parametrize("composite", ["gamma", "z-plus"])
def test_cnn_with_gamma_and_z_plus(composite):
    """Captum's GammaRule and Alpha1_Beta0_Rule modify weights only, ours the bias too (as
    the paper): equal without biases. Alpha1_Beta0 clamps weights, ours the products x w:
    equal for x >= 0, so the images are non-negative (the later layers read ReLU outputs)."""
    from captum.attr._utils.lrp_rules import Alpha1_Beta0_Rule, GammaRule

    torch = require("torch")
    nn = torch.nn
    module = tiny_cnn(bias=False)
    x = np.random.default_rng(1).uniform(0, 1, (6, 2, 8, 8)).astype(np.float32)
    rule = (lambda: GammaRule(0.25)) if composite == "gamma" else Alpha1_Beta0_Rule
    want = captum_lrp(module, x, {nn.Conv2d: rule, nn.Linear: rule})
    got = export(module, x).explain(x, "lrp", target=TARGETS, composite=composite,
                                    stabilizer=1e-9, merge_batch_norm=False)
    assert max_relative_error(got["image"], want) < 1e-4


@pytest.mark.parametrize("name, merge", [("digits_bn_cnn", True), ("digits_bn_cnn", False),
                                         ("resnet18_64", True)])
def test_lrp_zero_is_gradient_times_input(zoo, name, merge):
    from captum.attr import InputXGradient

    case = Case(zoo, name)
    want = InputXGradient(case.module).attribute(case.tensor(), target=case.target_tensor())
    got = case.explain("lrp", composite="epsilon", epsilon=1e-9, stabilizer=1e-9,
                       merge_batch_norm=merge)
    assert max_relative_error(got[case.input], want.detach()) < 1e-4


def bias_free_resnet(zoo) -> onnxplain.Explainer:
    """ResNet-18 (64x64) with the classifier bias zeroed; its convolutions, with the random
    initial batch norms folded in, have zero biases already."""
    proto = onnx.load(zoo.model_path("resnet18_64"))
    for init in proto.graph.initializer:
        value = numpy_helper.to_array(init)
        if value.ndim == 1:
            init.CopyFrom(numpy_helper.from_array(np.zeros_like(value), init.name))
    return onnxplain.Explainer(proto, providers="cpu")


def resnet_relevance(explainer, composite: str, tensors: list[str], x: np.ndarray
                     ) -> tuple[dict[str, np.ndarray], np.ndarray]:
    logits = explainer.forward(x)["logits"]
    seed = initial_relevance(logits, np.array([3, 7]))
    params = LrpParams(stabilizer=1e-9, low=np.asarray(x.min()), high=np.asarray(x.max()))
    rules = lrp_rules(explainer.model, ["pixel_values"], composite, params)
    run = explainer.engine.gradients({"pixel_values": x}, OutputSeed(seed), tensors,
                                     rules=rules)
    return run.grads, seed.sum(axis=1, dtype=np.float64)


def sums(values: np.ndarray) -> np.ndarray:
    return values.reshape(len(values), -1).sum(axis=1, dtype=np.float64)


@pytest.mark.parametrize("composite", ["epsilon-plus", "epsilon-alpha2-beta1"])
def test_resnet_conserves_relevance_at_every_block(zoo, composite):
    """Every block output (the ReLU after each residual Add) is a cut of the graph."""
    explainer = bias_free_resnet(zoo)
    graph = explainer.model.proto.graph
    adds = {node.output[0] for node in graph.node if node.op_type == "Add"}
    cuts = ["pixel_values"] + [node.output[0] for node in graph.node
                               if node.op_type in ("MaxPool", "GlobalAveragePool", "Flatten")
                               or (node.op_type == "Relu" and node.input[0] in adds)]
    assert len(cuts) == 12
    grads, total = resnet_relevance(explainer, composite, cuts,
                                    zoo.sample("resnet18_64")["pixel_values"])
    for cut in cuts:
        np.testing.assert_allclose(sums(grads[cut]), total, rtol=2e-4,
                                   err_msg=f"{composite} at {cut}")


def test_resnet_box_on_the_stem_conserves_relevance(zoo):
    """The box rule on the 7x7 stride-2 stem conv of epsilon-gamma-box. (Its gamma layers
    conserve only to ~1% here: in float32, z of the gamma-modified weights comes near zero
    where the output relevance, set by the unmodified forward at the residual Add, does not.)
    """
    explainer = bias_free_resnet(zoo)
    stem = next(node.output[0] for node in explainer.model.proto.graph.node
                if node.op_type == "Conv" and node.input[0] == "pixel_values")
    grads, _ = resnet_relevance(explainer, "epsilon-gamma-box", ["pixel_values", stem],
                                zoo.sample("resnet18_64")["pixel_values"])
    # Relevance of both signs cancels in the sums: compare to the mass that went through.
    mass = sums(np.abs(grads[stem]))
    assert np.all(np.abs(sums(grads["pixel_values"]) - sums(grads[stem])) < 1e-5 * mass)
