"""DeepLIFT (Rescale) against Captum's DeepLift on the same torch models, against slow numpy
references written from the paper, and its invariants: summation-to-delta, batch equals
singles under any chunking, the default gradient rules left untouched.

Captum 0.9 has two defects on the zoo CNNs that make its own result miss summation-to-delta
(its convergence delta is 1.8 on digits_bn_cnn with zero baselines, 6.1 with a random one,
0.32 on resnet18_64 with a random one), so the oracle runs Captum with both worked around:
- Hook order. A supported module whose output feeds another supported module directly (the
  ReLU before each MaxPool2d here) captures its output gradient in a tensor hook registered
  before the MaxPool2d's hook that replaces that gradient, so the ReLU rescales the ordinary
  max-pool gradient instead of the DeepLIFT one. A Clone module between them (a no-op in
  value) makes the ReLU see the replaced gradient.
- Overlapping windows. Captum scatters the max-pool contributions back with max_unpool2d,
  which keeps one value where two windows pick the same element (ResNet's 3x3 stride-2
  pool); the chain rule adds them. The oracle swaps in a scatter-add.
With both, Captum satisfies summation-to-delta (checked below) and agrees to ~1e-5.
"""

from __future__ import annotations

import warnings

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.autodiff import GRADIENT
from onnxplain.autodiff.ops import activations
from onnxplain.errors import InputError, UnsupportedOpError
from onnxplain.methods.baselines import make_baselines
from onnxplain.methods.deeplift import SummationWarning
from onnxplain.rules.deeplift import DEEPLIFT

from .. import tiny_models
from ..conftest import require
from .test_captum_oracles import Case, max_relative_error

MODELS = ["digits_bn_cnn", "resnet18_64", "digits_mlp"]
BASELINES = ["zeros", "uniform", "blur"]


# ---- Captum, with its two max-pool defects worked around ---------------------------------
def captum_deeplift(case: Case, reference: np.ndarray, monkeypatch) -> np.ndarray:
    """Captum's DeepLift on the torch original (pools separated from the ReLUs before them),
    with the scatter-add unpooling: it then satisfies summation-to-delta."""
    torch = case.torch
    import captum.attr._core.deep_lift as captum_deeplift_module
    from captum.attr import DeepLift

    def scatter_add_unpool(values, indices, kernel_size, stride, padding, output_size):
        n, c = values.shape[:2]
        out = values.new_zeros(n, c, output_size[-2] * output_size[-1])
        out.scatter_add_(2, indices.flatten(2), values.flatten(2))
        return out.view(n, c, *output_size[-2:])

    def maxpool2d(module, inputs, outputs, grad_input, grad_output, eps=1e-10):
        return captum_deeplift_module.maxpool(
            module, torch.nn.functional.max_pool2d, scatter_add_unpool, inputs, outputs,
            grad_input, grad_output, eps=eps)

    monkeypatch.setitem(captum_deeplift_module.SUPPORTED_NON_LINEAR, torch.nn.MaxPool2d,
                        maxpool2d)
    want, delta = DeepLift(case.module).attribute(
        case.tensor(), baselines=torch.from_numpy(reference), target=case.target_tensor(),
        return_convergence_delta=True)
    # The oracle itself must satisfy the property it is used to check.
    assert np.abs(delta.detach().numpy()).max() < 1e-4 * max(1.0, np.abs(want.sum().item()))
    return want.detach().numpy()


def separate_pools(case: Case):
    """The torch module with a Clone before every MaxPool2d (see the module docstring)."""
    torch = case.torch

    class Clone(torch.nn.Module):
        def forward(self, x):
            return x.clone()

    for parent in list(case.module.modules()):
        for key, child in list(parent.named_children()):
            if isinstance(child, torch.nn.MaxPool2d):
                setattr(parent, key, torch.nn.Sequential(Clone(), child))
    return case.module


def reference_for(case: Case, kind: str) -> np.ndarray:
    if kind == "uniform":  # a non-zero, non-constant reference: no ties in any max pool
        return np.random.default_rng(3).uniform(case.x.min(), case.x.max(), case.x.shape
                                                ).astype(np.float32)
    return make_baselines(case.sample, [case.input], kind, blur_sigma=1.0)[case.input]


@pytest.fixture(scope="module", params=MODELS)
def case(request, zoo):
    case = Case(zoo, request.param)
    separate_pools(case)
    return case


@pytest.mark.parametrize("kind", ["zeros", "uniform"])
def test_matches_captum(case, kind, monkeypatch):
    reference = reference_for(case, kind)
    want = captum_deeplift(case, reference, monkeypatch)
    options = {"baseline": reference} if kind != "zeros" else {}
    got = case.explain("deeplift", **options)[case.input]
    assert max_relative_error(got, want) < 1e-4


@pytest.mark.parametrize("kind", BASELINES)
def test_summation_to_delta(case, kind):
    """sum_i C_i = S(x) - S(x') per row, S read off the torch original (not our extras)."""
    if kind == "blur" and case.name == "digits_mlp":
        kind = "uniform"  # a flat input has no image to blur
    reference = reference_for(case, kind)
    options = {"baseline": reference} if kind != "zeros" else {}
    result = case.explain("deeplift", **options)
    contributions = result[case.input].reshape(len(case.x), -1).astype(np.float64)
    rows = np.arange(len(case.x))
    torch = case.torch
    with torch.no_grad():
        scores = [case.module(torch.from_numpy(v)).numpy()[rows, case.targets]
                  for v in (case.x, reference)]
    difference = scores[0].astype(np.float64) - scores[1]
    gap = contributions.sum(axis=1) - difference
    scale = np.abs(contributions).sum(axis=1) + np.abs(difference)
    assert np.all(np.abs(gap) < 1e-5 * scale), gap / scale
    assert np.all(np.abs(result.extras["convergence_delta"]) < 1e-5 * scale)
    assert np.abs(difference).min() > 1e-3  # the property is not vacuous


# ---- slow references written from the paper ----------------------------------------------
def rescale(z: np.ndarray, z_ref: np.ndarray, f, derivative, eps: float = 1e-10) -> np.ndarray:
    """Shrikumar et al. 2017, Rescale rule: m = Δy / Δx, the derivative where Δx ~ 0."""
    dz = z - z_ref
    safe = np.where(np.abs(dz) < eps, 1.0, dz)
    return np.where(np.abs(dz) < eps, derivative(z), (f(z) - f(z_ref)) / safe)


def relu(z: np.ndarray) -> np.ndarray:
    return np.maximum(z, 0)


def relu_derivative(z: np.ndarray) -> np.ndarray:
    return (z > 0).astype(np.float64)


def mlp_reference(layers, x: np.ndarray, reference: np.ndarray, target: int) -> np.ndarray:
    """Dense layers [(W, b), ...] with ReLUs between: multipliers by the chain rule
    m_Δx_iΔt = sum_j m_Δx_iΔy_j m_Δy_jΔt, backwards from m = 1 at the target logit."""
    a, a_ref, relus = x.astype(np.float64), reference.astype(np.float64), []
    for i, (w, b) in enumerate(layers):
        z, z_ref = w @ a + b, w @ a_ref + b
        if i == len(layers) - 1:
            break
        relus.append(rescale(z, z_ref, relu, relu_derivative))
        a, a_ref = relu(z), relu(z_ref)
    m = layers[-1][0][target]
    for (w, _), r in zip(reversed(layers[:-1]), reversed(relus), strict=True):
        m = (m * r) @ w
    return (x - reference) * m


def test_mlp_matches_the_paper(zoo):
    case = Case(zoo, "digits_mlp")
    layers = [(layer.weight.detach().numpy().astype(np.float64),
               layer.bias.detach().numpy().astype(np.float64))
              for layer in case.module if hasattr(layer, "weight")]
    reference = reference_for(case, "uniform")
    got = case.explain("deeplift", baseline=reference)[case.input]
    want = np.stack([mlp_reference(layers, case.x[i], reference[i], case.targets[i])
                     for i in range(len(case.x))])
    assert max_relative_error(got, want) < 1e-4


def conv_pool_model(rng: np.random.Generator) -> tuple[onnx.ModelProto, dict]:
    """x [N, 1, 7, 7] -> Conv 3x3 (3 channels, pad 1) -> Relu -> MaxPool 3x3 stride 2 pad 1
    (overlapping windows) -> Flatten -> MatMul -> logits [N, 4]."""
    weights = {"w": rng.standard_normal((3, 1, 3, 3)), "b": rng.standard_normal(3) * 0.5,
               "dense": rng.standard_normal((48, 4))}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["z"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["z"], ["a"]),
             helper.make_node("MaxPool", ["a"], ["p"], kernel_shape=[3, 3], strides=[2, 2],
                              pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["p"], ["f"]),
             helper.make_node("MatMul", ["f", "dense"], ["logits"])]
    graph = helper.make_graph(
        nodes, "conv_pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                           ["batch", 1, 7, 7])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(v.astype(np.float32), k) for k, v in weights.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, {k: v.astype(np.float32).astype(np.float64) for k, v in weights.items()}


def conv(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    """3x3 convolution with zero padding 1, by loops over output positions."""
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.empty((w.shape[0],) + x.shape[1:])
    for i, j in np.ndindex(*x.shape[1:]):
        out[:, i, j] = np.einsum("ckl,ockl->o", padded[:, i:i + 3, j:j + 3], w) + b
    return out


def pool_windows(size: int = 7):
    """(output position, [input positions]) of MaxPool 3x3, stride 2, pad 1."""
    for oi, oj in np.ndindex(4, 4):
        yield (oi, oj), [(i, j) for i in range(2 * oi - 1, 2 * oi + 2)
                         for j in range(2 * oj - 1, 2 * oj + 2)
                         if 0 <= i < size and 0 <= j < size]


def conv_pool_reference(weights: dict, x: np.ndarray, reference: np.ndarray, target: int,
                        eps: float = 1e-10) -> np.ndarray:
    """Rescale at the ReLU; at the max pool, Δy = Δy⁺ + Δy⁻ with Δy⁺ = max(y, y') - y' sent
    to the element x picked and Δy⁻ = y - max(y, y') to the element x' picked, divided by Δx
    there (the gradient where |Δx| < eps); linear layers pass multipliers through."""
    z, z_ref = conv(x, weights["w"], weights["b"]), conv(reference, weights["w"], weights["b"])
    a, a_ref = relu(z), relu(z_ref)
    m_pool = weights["dense"][:, target].reshape(3, 4, 4)
    numerator, gradient = np.zeros_like(a), np.zeros_like(a)
    for c in range(3):
        for (oi, oj), cells in pool_windows():
            pick = max(cells, key=lambda cell: a[c][cell])
            pick_ref = max(cells, key=lambda cell: a_ref[c][cell])
            y, y_ref = a[c][pick], a_ref[c][pick_ref]
            top, g = max(y, y_ref), m_pool[c, oi, oj]
            numerator[c][pick] += g * (top - y_ref)
            numerator[c][pick_ref] += g * (y - top)
            gradient[c][pick] += g
    dx = a - a_ref
    small = np.abs(dx) < eps
    m_relu_out = np.where(small, gradient, numerator / np.where(small, 1.0, dx))
    m_z = m_relu_out * rescale(z, z_ref, relu, relu_derivative)
    m_x = np.zeros((1, 9, 9))
    for i, j in np.ndindex(7, 7):
        m_x[:, i:i + 3, j:j + 3] += np.einsum("o,ockl->ckl", m_z[:, i, j], weights["w"])
    return (x - reference) * m_x[:, 1:-1, 1:-1]


def test_conv_relu_overlapping_maxpool_matches_the_reference():
    rng = np.random.default_rng(11)
    model, weights = conv_pool_model(rng)
    x = rng.standard_normal((3, 1, 7, 7)).astype(np.float32)
    reference = (0.3 * rng.standard_normal((3, 1, 7, 7))).astype(np.float32)
    target = np.array([0, 3, 1])
    explainer = onnxplain.Explainer(model, providers="cpu")
    result = explainer.explain(x, method="deeplift", target=target, baseline=reference)
    want = np.stack([conv_pool_reference(weights, x[i], reference[i], target[i])
                     for i in range(len(x))])
    assert max_relative_error(result["x"], want) < 1e-4
    logits = [explainer.forward(v)["logits"][np.arange(3), target] for v in (x, reference)]
    np.testing.assert_allclose(want.reshape(3, -1).sum(axis=1), logits[0] - logits[1],
                               rtol=1e-5, atol=1e-5)


# ---- every rule against Captum on small torch models ------------------------------------
def small_model(torch, activations: list, softmax: bool = False):
    """Linear layers around each activation (Captum misses the second of two hooked modules
    in a row: see the module docstring), optionally ending in a Softmax."""
    nn = torch.nn
    torch.manual_seed(5)
    layers = [nn.Linear(6, 8)]
    for activation in activations:
        layers += [activation, nn.Linear(8, 8)]
    layers[-1] = nn.Linear(8, 5)
    return nn.Sequential(*layers, *([nn.Softmax(dim=1)] if softmax else [])).eval()


def exported(torch, module, x: np.ndarray, path) -> onnxplain.Explainer:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, (torch.from_numpy(x),), str(path), input_names=["x"],
                          output_names=["out"], dynamic_axes={"x": {0: "batch"}},
                          opset_version=17, dynamo=False)
    return onnxplain.Explainer(str(path), providers="cpu")


def small_case(torch, activations: list, softmax: bool, dtype, path):
    module = small_model(torch, activations, softmax).to(getattr(torch, np.dtype(dtype).name))
    rng = np.random.default_rng(2)
    x = rng.standard_normal((5, 6)).astype(dtype)
    reference = (0.5 * rng.standard_normal((5, 6))).astype(dtype)
    explainer = exported(torch, module, x, path)
    return module, explainer, x, reference


def captum_rows(module, x, reference, target, one_by_one: bool) -> np.ndarray:
    torch = require("torch")
    from captum.attr import DeepLift

    groups = [slice(i, i + 1) for i in range(len(x))] if one_by_one else [slice(None)]
    return np.concatenate([DeepLift(module).attribute(
        torch.from_numpy(x[rows]).requires_grad_(True),
        baselines=torch.from_numpy(reference[rows]),
        target=torch.from_numpy(target[rows])).detach().numpy() for rows in groups])


@pytest.mark.parametrize("softmax", [False, True])
def test_sigmoid_tanh_leaky_relu_softmax_match_captum(tmp_path, softmax):
    """In float64 (ONNX Runtime has double kernels for these ops), agreeing to ~1e-14. Not in
    float32, because a smooth activation's
    multiplier Δy / Δx amplifies the rounding of x and x' by |x| / |Δx|, which compounds over
    this saturating stack (to ~1e4), so float32 runs of Captum and of onnxplain each land
    1e-4 to 1e-3 from the exact values. Captum centres the softmax rule over the whole batch,
    onnxplain per row: with a softmax, Captum runs one row at a time, and onnxplain's batch
    must equal those rows."""
    torch = require("torch")
    nn = torch.nn
    # A slope exact in float32: ONNX attributes are float32, so 0.2 would differ by 3e-9.
    module, explainer, x, reference = small_case(
        torch, [nn.LeakyReLU(0.25), nn.Sigmoid(), nn.Tanh()], softmax, np.float64,
        tmp_path / "smooth.onnx")
    ops = {node.op_type for node in onnx.load(tmp_path / "smooth.onnx").graph.node}
    assert {"LeakyRelu", "Sigmoid", "Tanh"} | ({"Softmax"} if softmax else set()) <= ops
    target = np.arange(5)
    want = captum_rows(module, x, reference, target, one_by_one=softmax)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = explainer.explain(x, method="deeplift", target=target, baseline=reference)
    assert result["x"].dtype == np.float64
    assert max_relative_error(result["x"], want) < 1e-12
    # The softmax rule's centring adds mean(m) * sum(Δx) over the logits, so the gap is
    # reported (and warned about) there; elsewhere summation-to-delta holds to rounding.
    warned = any(issubclass(w.category, SummationWarning) for w in caught)
    assert warned == softmax
    if not softmax:
        assert np.abs(result.extras["convergence_delta"]).max() < 1e-12


def test_elu_softplus_match_captum(tmp_path):
    """Float32 (ONNX Runtime's Elu and Softplus take float only) on a shallow model."""
    torch = require("torch")
    module, explainer, x, reference = small_case(
        torch, [torch.nn.ELU(), torch.nn.Softplus()], False, np.float32,
        tmp_path / "elu.onnx")
    ops = {node.op_type for node in onnx.load(tmp_path / "elu.onnx").graph.node}
    assert {"Elu", "Softplus"} <= ops
    target = np.arange(5)
    want = captum_rows(module, x, reference, target, one_by_one=False)
    result = explainer.explain(x, method="deeplift", target=target, baseline=reference)
    assert max_relative_error(result["x"], want) < 1e-4
    assert np.abs(result.extras["convergence_delta"]).max() < 1e-5


# ---- invariants ----------------------------------------------------------------------------
@pytest.mark.parametrize("batch_size", [None, 1, 5])
def test_batch_equals_rows_one_by_one(zoo, batch_size):
    """Every row runs in the same batch as its reference however the rows are chunked."""
    case = Case(zoo, "digits_bn_cnn")
    reference = reference_for(case, "uniform")
    batch = case.explainer.explain(case.x, method="deeplift", target=case.targets,
                                   baseline=reference, batch_size=batch_size)[case.input]
    for row in (0, 5, 11, 15):
        rows = slice(row, row + 1)
        single = case.explainer.explain(case.x[rows], method="deeplift",
                                        target=case.targets[rows], baseline=reference[rows])
        np.testing.assert_allclose(single[case.input][0], batch[row], rtol=1e-5, atol=1e-7)


def test_fixed_batch_axis_runs_padded_pairs():
    model = tiny_models.mlp(batch=2)  # two rows per run: one pair
    explainer = onnxplain.Explainer(model, providers="cpu")
    rng = np.random.default_rng(8)
    x = rng.standard_normal((3, 6)).astype(np.float32)
    with pytest.warns(UserWarning, match="fixed to 2"):  # forward runs of the clean input
        got = explainer.explain(x, method="deeplift", target=[0, 1, 3])["x"]
    symbolic = onnxplain.Explainer(tiny_models.mlp(), providers="cpu")
    want = symbolic.explain(x, method="deeplift", target=[0, 1, 3])["x"]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    odd = onnxplain.Explainer(tiny_models.mlp(batch=3), providers="cpu")
    with pytest.raises(InputError, match="batch axis is fixed to 3"):
        odd.explain(x, method="deeplift", target=[0, 1, 3])


def test_output_seed_of_one_hot_equals_the_class_target(zoo):
    case = Case(zoo, "digits_mlp")
    seed = np.eye(10, dtype=np.float32)[case.targets]
    by_seed = case.explainer.explain(case.x, method="deeplift", output_seed=seed)
    by_class = case.explain("deeplift")
    np.testing.assert_allclose(by_seed[case.input], by_class[case.input], rtol=1e-6)
    np.testing.assert_allclose(by_seed.extras["convergence_delta"],
                               by_class.extras["convergence_delta"], atol=1e-5)


def test_default_rules_are_untouched(zoo):
    """The override is a child rule set: the gradient registry keeps its ReLU rule, and
    saliency after DeepLIFT in the same Explainer is still torch's gradient."""
    assert GRADIENT.lookup("", "Relu", 17).rule is activations.relu
    assert DEEPLIFT.lookup("", "Relu", 17).rule is not activations.relu
    assert DEEPLIFT.lookup("", "Conv", 17) is GRADIENT.lookup("", "Conv", 17)
    case = Case(zoo, "digits_bn_cnn")
    case.explain("deeplift")
    x = case.tensor()
    logits = case.module(x)
    logits[np.arange(len(case.x)), case.target_tensor()].sum().backward()
    assert max_relative_error(case.explain("saliency")[case.input], np.abs(x.grad.numpy())) < 1e-4


def test_eps_falls_back_to_the_gradient(zoo):
    """With eps above every |Δx| the multipliers are the gradient: input x gradient when
    the reference is zero."""
    case = Case(zoo, "digits_mlp")
    with pytest.warns(SummationWarning, match="miss the output difference"):
        got = case.explain("deeplift", eps=1e9)[case.input]
    want = case.explain("input_x_gradient")[case.input]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


def test_opset_9_names_the_nodes_and_why():
    explainer = onnxplain.Explainer(tiny_models.mlp(opset=9), providers="cpu")
    x = np.ones((2, 6), np.float32)
    with pytest.raises(UnsupportedOpError, match="'relu' .*needs a computed Slice"):
        explainer.explain(x, method="deeplift", target=0)


def test_bad_inputs_are_input_errors(zoo):
    case = Case(zoo, "digits_mlp")
    with pytest.raises(InputError, match="'baseline' of method 'deeplift' expects .*got 'moon'"):
        case.explain("deeplift", baseline="moon")
    with pytest.raises(InputError, match="does not broadcast"):
        case.explain("deeplift", baseline=np.zeros(3, np.float32))
    with pytest.raises(InputError, match="'eps' of method 'deeplift' must be a finite number >= 0"):
        case.explain("deeplift", eps=-1.0)
    with pytest.raises(InputError, match="target has 2 entries for 16 input rows"):
        case.explainer.explain(case.x, method="deeplift", target=[1, 2])
    bert = onnxplain.Explainer(zoo.model_path("bert_small"), providers="cpu")
    with pytest.raises(InputError, match="deeplift moves the input values"):
        bert.explain(zoo.sample("bert_small"), method="deeplift")
