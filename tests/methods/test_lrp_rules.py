"""Every LRP rule, one layer at a time, against a slow numpy implementation of the paper.

The references write each rule as Montavon et al. 2019 ("Layer-wise relevance propagation: an
overview") and Montavon et al. 2017 (Deep Taylor decomposition; w^2 and z^B) state it, from the
explicit contributions x_j w_jk of a dense matrix, never through a gradient. Convolutions are
lowered to that dense matrix by a loop-based numpy convolution applied to unit vectors (checked
against the ONNX forward). Dense layers run in float64, convolutions in float32 (ONNX Runtime
has no float64 Conv); both must agree to 1e-5 of the largest relevance.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.rules.lrp import LrpParams, lrp_rules
from onnxplain.runtime.engine import OutputSeed

EPS, GAMMA, STAB = 0.05, 0.3, 1e-6
RULES = ["epsilon", "gamma", "z-plus", "alpha-beta", "flat", "w-square", "box"]
# The composite that puts each rule on a one-layer model (box goes on the first layer).
COMPOSITE = {rule: rule for rule in RULES} | {"box": "epsilon-gamma-box"}


# ---- the references ------------------------------------------------------------------------
def stab(z: np.ndarray, eps: float) -> np.ndarray:
    return z + eps * np.where(z < 0, -1.0, 1.0)


def reference(rule: str, x: np.ndarray, w: np.ndarray, bias: np.ndarray, relevance: np.ndarray,
              mask: np.ndarray, low: np.ndarray, high: np.ndarray, alpha: float = 2.0,
              beta: float = 1.0) -> np.ndarray:
    """R_j for one sample: x [J], w [J, K] (w_jk), bias [K], R [K]; mask[j, k] = 1 where
    input j is in the receptive field of output k (the flat rule's structure)."""
    pos, neg = np.maximum, np.minimum
    if rule == "epsilon":
        contributions = x[:, None] * w
        share = contributions / stab(contributions.sum(0) + bias, EPS)
    elif rule == "gamma":
        contributions = x[:, None] * (w + GAMMA * pos(w, 0))
        share = contributions / stab(contributions.sum(0) + bias + GAMMA * pos(bias, 0), STAB)
    elif rule in ("z-plus", "alpha-beta"):
        if rule == "z-plus":
            alpha, beta = 1.0, 0.0
        z = x[:, None] * w
        plus = pos(z, 0) / stab(pos(z, 0).sum(0) + pos(bias, 0), STAB)
        minus = neg(z, 0) / stab(neg(z, 0).sum(0) + neg(bias, 0), STAB)
        share = alpha * plus - beta * minus
    elif rule == "flat":
        share = mask / stab(mask.sum(0), STAB)
    elif rule == "w-square":
        share = w ** 2 / stab((w ** 2).sum(0), STAB)
    elif rule == "box":
        contributions = x[:, None] * w - low[:, None] * pos(w, 0) - high[:, None] * neg(w, 0)
        share = contributions / stab(contributions.sum(0), STAB)
    else:
        raise AssertionError(rule)
    return share @ relevance


def references(rule: str, x: np.ndarray, dense: np.ndarray, bias: np.ndarray,
               relevance: np.ndarray, mask: np.ndarray, low: float, high: float) -> np.ndarray:
    """The rule for each row of a batch; x and relevance keep their layer shapes."""
    rows = []
    for n in range(len(x)):
        flat_x = x[n].reshape(-1).astype(np.float64)
        bounds = np.full_like(flat_x, low), np.full_like(flat_x, high)
        rows.append(reference(rule, flat_x, dense, bias, relevance[n].reshape(-1), mask,
                              *bounds))
    return np.stack(rows).reshape(x.shape)


def conv2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int, group: int = 1) -> np.ndarray:
    """Cross-correlation of x [N, C, H, W] with w [M, C/g, kh, kw]: every output is the sum
    over its window of input times weight, windows taken stride apart from the padded input."""
    maps, per_group, kh, kw = w.shape
    padded = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    windows = sliding_window_view(padded, (kh, kw), axis=(2, 3))[:, :, ::stride, ::stride]
    per_map = maps // group
    return np.concatenate([
        np.einsum("ncijab,mcab->nmij", windows[:, g * per_group:(g + 1) * per_group],
                  w[g * per_map:(g + 1) * per_map]) for g in range(group)], axis=1)


def conv_transpose2d(x: np.ndarray, w: np.ndarray, stride: int, pad: int) -> np.ndarray:
    """y[n, m, i s + a - pad, j s + b - pad] += x[n, c, i, j] w[c, m, a, b], in loops."""
    rows, channels, height, width = x.shape
    _, maps, kh, kw = w.shape
    full = np.zeros((rows, maps, (height - 1) * stride + kh, (width - 1) * stride + kw))
    for i in range(height):
        for j in range(width):
            full[:, :, i * stride:i * stride + kh, j * stride:j * stride + kw] += np.einsum(
                "nc,cmab->nmab", x[:, :, i, j], w)
    return full[:, :, pad:full.shape[2] - pad, pad:full.shape[3] - pad]


def lowered(linear, shape: tuple[int, ...]) -> np.ndarray:
    """The dense matrix w[j, k] of a linear map from inputs of `shape`: row j is its image
    of the unit vector e_j (all unit vectors go through as one batch)."""
    size = int(np.prod(shape))
    return linear(np.eye(size).reshape(size, *shape)).reshape(size, -1)


# ---- one-layer ONNX models -------------------------------------------------------------------
def one_layer(nodes: list, x_shape: list, y_shape: list, inits: list, dtype: int,
              ) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "one_layer", [helper.make_tensor_value_info("x", dtype, ["n", *x_shape])],
        [helper.make_tensor_value_info("y", dtype, ["n", *y_shape])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def run_rule(model: onnx.ModelProto, rule: str, x: np.ndarray, relevance: np.ndarray,
             low: float = -3.0, high: float = 3.0) -> np.ndarray:
    """R at x, given R at y, under the composite that puts `rule` on the layer."""
    explainer = onnxplain.Explainer(model, providers="cpu")
    params = LrpParams(epsilon=EPS, gamma=GAMMA, stabilizer=STAB, low=np.asarray(low),
                       high=np.asarray(high))
    rules = lrp_rules(explainer.model, ["x"], COMPOSITE[rule], params)
    run = explainer.engine.gradients({"x": x}, OutputSeed(relevance), ["x"], rules=rules)
    return run.grads["x"]


def relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max() / np.abs(want).max())


class Dense:
    """y = 0.7 x W^T + 1.3 b (Gemm, transB=1), float64, and its dense matrix."""

    def __init__(self, rng: np.random.Generator):
        self.w = rng.standard_normal((5, 7))
        self.b = rng.standard_normal(5)
        # Gemm's alpha and beta are float32 attributes.
        self.dense = float(np.float32(0.7)) * self.w.T
        self.bias = float(np.float32(1.3)) * self.b
        self.model = one_layer(
            [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.7, beta=1.3)],
            [7], [5], [numpy_helper.from_array(self.w, "w"), numpy_helper.from_array(self.b, "b")],
            TensorProto.DOUBLE)
        self.mask = np.ones_like(self.dense)
        self.x_shape, self.dtype = (3, 7), np.float64


class ComputedDense(Dense):
    """The same Gemm with its weight computed by a Transpose node: the rules modify the
    weight (alpha folded in) with graph ops instead of numpy."""

    def __init__(self, rng: np.random.Generator):
        super().__init__(rng)
        self.model = one_layer(
            [helper.make_node("Transpose", ["w0"], ["w"], perm=[1, 0]),
             helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1, alpha=0.7, beta=1.3)],
            [7], [5], [numpy_helper.from_array(self.w.T.copy(), "w0"),
                       numpy_helper.from_array(self.b, "b")], TensorProto.DOUBLE)


class Conv:
    """A strided, padded, grouped Conv with bias behind an Identity (as torch exports shared
    weights), float32."""

    def __init__(self, rng: np.random.Generator):
        self.w = rng.standard_normal((4, 2, 3, 3)).astype(np.float32)
        self.b = rng.standard_normal(4).astype(np.float32)
        self.model = one_layer(
            [helper.make_node("Identity", ["w0"], ["w"]),
             helper.make_node("Conv", ["x", "w", "b"], ["y"], strides=[2, 2], pads=[1] * 4,
                              group=2)],
            [4, 5, 5], [4, 3, 3],
            [numpy_helper.from_array(self.w, "w0"), numpy_helper.from_array(self.b, "b")],
            TensorProto.FLOAT)
        weights = self.w.astype(np.float64)
        self.dense = lowered(lambda e: conv2d(e, weights, 2, 1, 2), (4, 5, 5))
        self.mask = lowered(lambda e: conv2d(e, np.ones_like(weights), 2, 1, 2), (4, 5, 5))
        self.bias = np.repeat(self.b.astype(np.float64), 9)
        self.x_shape, self.dtype = (2, 4, 5, 5), np.float32


class ConvTranspose:
    """A strided, padded ConvTranspose without bias, float32."""

    def __init__(self, rng: np.random.Generator):
        self.w = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
        self.model = one_layer(
            [helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2],
                              pads=[1] * 4)],
            [3, 3, 3], [2, 5, 5], [numpy_helper.from_array(self.w, "w")], TensorProto.FLOAT)
        weights = self.w.astype(np.float64)
        self.dense = lowered(lambda e: conv_transpose2d(e, weights, 2, 1), (3, 3, 3))
        self.mask = lowered(lambda e: conv_transpose2d(e, np.ones_like(weights), 2, 1),
                            (3, 3, 3))
        self.bias = np.zeros(self.dense.shape[1])
        self.x_shape, self.dtype = (2, 3, 3, 3), np.float32


class WeightFirstMatMul:
    """y = A x (MatMul with the weight as the first operand, x [n, 6, 2]); A is computed by a
    Transpose node, so the rules modify it with graph ops instead of numpy. float64."""

    def __init__(self, rng: np.random.Generator):
        self.a = rng.standard_normal((6, 4))  # transposed to [4, 6]
        self.model = one_layer(
            [helper.make_node("Transpose", ["a0"], ["a"], perm=[1, 0]),
             helper.make_node("MatMul", ["a", "x"], ["y"])],
            [6, 2], [4, 2], [numpy_helper.from_array(self.a, "a0")], TensorProto.DOUBLE)
        # Inputs (j, p) -> outputs (k, p): y[k, p] = sum_j a0[j, k] x[j, p].
        self.dense = np.einsum("jk,pq->jpkq", self.a, np.eye(2)).reshape(12, 8)
        self.mask = np.einsum("jk,pq->jpkq", np.ones_like(self.a), np.eye(2)).reshape(12, 8)
        self.bias = np.zeros(8)
        self.x_shape, self.dtype = (3, 6, 2), np.float64


LAYERS = {"gemm": Dense, "gemm_computed_weight": ComputedDense, "conv": Conv,
          "conv_transpose": ConvTranspose, "matmul_weight_first": WeightFirstMatMul}


@pytest.fixture(scope="module", params=list(LAYERS))
def layer(request):
    return LAYERS[request.param](np.random.default_rng(11))


@pytest.mark.parametrize("rule", RULES)
def test_rule_matches_the_paper(layer, rule):
    rng = np.random.default_rng(5)
    x = rng.uniform(-2.5, 2.5, layer.x_shape).astype(layer.dtype)
    y_shape = onnxplain.Explainer(layer.model, providers="cpu").forward(x)["y"].shape
    relevance = rng.standard_normal(y_shape).astype(layer.dtype)
    got = run_rule(layer.model, rule, x, relevance)
    want = references(rule, x, layer.dense, layer.bias, relevance, layer.mask, -3.0, 3.0)
    assert relative_error(got, want) < 1e-5


def test_the_lowered_layers_are_the_onnx_layers(layer):
    """The references' dense matrices compute what the ONNX layers compute."""
    x = np.random.default_rng(2).standard_normal(layer.x_shape).astype(layer.dtype)
    y = onnxplain.Explainer(layer.model, providers="cpu").forward(x)["y"]
    want = x.reshape(len(x), -1) @ layer.dense + layer.bias
    assert relative_error(y.reshape(len(x), -1), want) < 1e-5


@pytest.mark.parametrize("rule", ["z-plus", "alpha-beta"])
def test_sign_split_rules_after_a_relu(rule):
    """After a ReLU the rules drop their x- terms (x >= 0 by construction): still the paper's
    rule on relu(x), and the relevance passes the ReLU unchanged."""
    rng = np.random.default_rng(3)
    dense = Dense(rng)
    model = dense.model
    model.graph.node.insert(0, helper.make_node("Relu", ["x"], ["r"]))
    model.graph.node[1].input[0] = "r"
    x = rng.standard_normal((4, 7))
    relevance = rng.standard_normal((4, 5))
    got = run_rule(model, rule, x, relevance)
    want = references(rule, np.maximum(x, 0), dense.dense, dense.bias, relevance, dense.mask,
                      0, 0)
    assert relative_error(got, want) < 1e-5


def test_box_bounds_may_be_arrays():
    """Per-channel bounds ([1, C, 1, 1]) broadcast against the first layer's input."""
    rng = np.random.default_rng(8)
    conv = Conv(rng)
    low = np.array([-1.0, -2.0, -3.0, -4.0]).reshape(1, 4, 1, 1)
    high = -low
    x = rng.uniform(-1, 1, conv.x_shape).astype(np.float32)
    relevance = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    got = run_rule(conv.model, "box", x, relevance, low=low, high=high)
    want = []
    for n in range(2):
        lows = np.broadcast_to(low[0], x.shape[1:]).reshape(-1)
        want.append(reference("box", x[n].reshape(-1).astype(np.float64), conv.dense, conv.bias,
                              relevance[n].reshape(-1), conv.mask, lows, -lows))
    assert relative_error(got, np.stack(want).reshape(x.shape)) < 1e-5
