"""FusedConv, FusedGemm and FusedMatMul become standard ops with the fused kernels' outputs
(1e-5). Oracle: ONNX Runtime's CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import ModelError

from .ms_oracle import assert_matches, canonical, fused_model

RNG = np.random.default_rng(2)
IMAGE = RNG.standard_normal((2, 3, 6, 6)).astype(np.float32)
KERNEL = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
CONV_BIAS = RNG.standard_normal(4).astype(np.float32)

CONV = {
    "relu": {"activation": "Relu"},
    "leaky_relu": {"activation": "LeakyRelu", "activation_params": [0.2]},
    "clip": {"activation": "Clip", "activation_params": [-0.5, 0.7]},
    "hard_sigmoid": {"activation": "HardSigmoid", "activation_params": [0.3, 0.4]},
    "tanh_strided": {"activation": "Tanh", "strides": [2, 2], "pads": [1, 1, 1, 1]},
    "sigmoid": {"activation": "Sigmoid"},
}


@pytest.mark.parametrize("case", CONV)
def test_fused_conv(case):
    inputs = [("x", IMAGE), ("w", KERNEL, "const"), ("b", CONV_BIAS, "const")]
    assert_matches(*fused_model("FusedConv", inputs, ["y"], CONV[case]))


def test_fused_conv_with_sum():
    z = RNG.standard_normal((2, 4, 4, 4)).astype(np.float32)
    inputs = [("x", IMAGE), ("w", KERNEL, "const"), ("b", CONV_BIAS, "const"), ("z", z)]
    assert_matches(*fused_model("FusedConv", inputs, ["y"], {"activation": "Relu"}))


A = RNG.standard_normal((5, 4)).astype(np.float32)
B = RNG.standard_normal((4, 3)).astype(np.float32)
C = RNG.standard_normal(3).astype(np.float32)
GEMM = {
    "relu": {"activation": "Relu"},
    "leaky_relu": {"activation": "LeakyRelu", "activation_alpha": 0.3},
    "hard_sigmoid": {"activation": "HardSigmoid", "activation_alpha": 0.3,
                     "activation_beta": 0.4},
    "elu_scaled": {"activation": "Elu", "activation_alpha": 0.7, "alpha": 0.5, "beta": 2.0},
    "tanh": {"activation": "Tanh"},
}


@pytest.mark.parametrize("case", GEMM)
def test_fused_gemm(case):
    inputs = [("a", A), ("b", B, "const"), ("c", C, "const")]
    assert_matches(*fused_model("FusedGemm", inputs, ["y"], GEMM[case]))


def test_fused_gemm_transposed():
    inputs = [("a", A.T.copy()), ("b", B.T.copy(), "const"), ("c", C, "const")]
    assert_matches(*fused_model("FusedGemm", inputs, ["y"], {
        "activation": "Sigmoid", "transA": 1, "transB": 1}))


X3 = RNG.standard_normal((2, 5, 4)).astype(np.float32)
MATMUL = {
    "alpha": (X3, RNG.standard_normal((4, 3)), {"alpha": 0.125}),
    "trans_b": (X3, RNG.standard_normal((3, 4)), {"transB": 1}),
    "trans_a": (RNG.standard_normal((2, 4, 5)), RNG.standard_normal((4, 3)), {"transA": 1}),
    "batched_both": (X3, RNG.standard_normal((2, 3, 4)), {"transB": 1, "alpha": 2.0}),
    "trans_batch_a": (RNG.standard_normal((5, 2, 4)), RNG.standard_normal((2, 4, 3)),
                      {"transBatchA": 1}),
    "trans_batch_b_trans_b": (X3, RNG.standard_normal((3, 2, 4)),
                              {"transBatchB": 1, "transB": 1}),
    "trans_batch_a_trans_a": (RNG.standard_normal((4, 2, 5)), RNG.standard_normal((2, 4, 3)),
                              {"transBatchA": 1, "transA": 1}),
}


@pytest.mark.parametrize("case", MATMUL)
def test_fused_matmul(case):
    a, b, attrs = MATMUL[case]
    inputs = [("a", np.asarray(a, np.float32)), ("b", np.asarray(b, np.float32))]
    assert_matches(*fused_model("FusedMatMul", inputs, ["y"], attrs))


def test_unknown_activation_is_refused():
    model, _ = fused_model("FusedGemm", [("a", A), ("b", B, "const")], ["y"],
                           {"activation": "ScaledTanh"}, shapes={"y": ((5, 3), np.float32)})
    with pytest.raises(ModelError, match=r"FusedGemm node 'fused_FusedGemm' \(activation="
                       r"'ScaledTanh'\): activation 'ScaledTanh'"):
        canonical(model)
