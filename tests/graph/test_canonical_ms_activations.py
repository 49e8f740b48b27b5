"""com.microsoft activations become standard ops with the fused kernels' outputs (1e-5).

Oracle: ONNX Runtime's CPU kernel; BiasAdd and BiasSplitGelu have CUDA kernels only, so
their oracle is the formula of their schema written in numpy (math.erf, float64)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from .ms_oracle import assert_matches, canonical, fused_model, run

RNG = np.random.default_rng(0)
X = (RNG.standard_normal((2, 3, 8)) * 2).astype(np.float32)
BIAS = RNG.standard_normal(8).astype(np.float32)

CASES = {
    "gelu": ("Gelu", [("x", X)], {}),
    "bias_gelu": ("BiasGelu", [("x", X), ("b", BIAS, "const")], {}),
    "bias_gelu_computed_bias": ("BiasGelu", [("x", X), ("b", BIAS)], {}),
    "fast_gelu": ("FastGelu", [("x", X)], {}),
    "fast_gelu_bias": ("FastGelu", [("x", X), ("b", BIAS, "const")], {}),
    "quick_gelu": ("QuickGelu", [("x", X)], {}),
    "quick_gelu_alpha": ("QuickGelu", [("x", X)], {"alpha": 1.3}),
}


@pytest.mark.parametrize("case", CASES)
def test_activation_matches_kernel(case):
    op, inputs, attrs = CASES[case]
    assert_matches(*fused_model(op, inputs, ["y"], attrs))


@pytest.mark.parametrize("opset", [13, 20])
def test_opset_forms(opset):
    assert_matches(*fused_model("BiasGelu", [("x", X), ("b", BIAS, "const")], ["y"],
                                opset=opset))


def _gelu(u):
    return 0.5 * u * (1 + np.vectorize(math.erf)(u / math.sqrt(2)))


def test_bias_add_formula():
    skip = RNG.standard_normal(X.shape).astype(np.float32)
    model, feeds = fused_model("BiasAdd", [("x", X), ("b", BIAS, "const"), ("s", skip)], ["y"],
                               shapes={"y": (X.shape, np.float32)})
    (y,) = run(canonical(model), feeds)
    np.testing.assert_allclose(y, X.astype(np.float64) + BIAS + skip, rtol=1e-6, atol=1e-6)


def test_bias_split_gelu_formula():
    model, feeds = fused_model("BiasSplitGelu", [("x", X), ("b", BIAS, "const")], ["y"],
                               shapes={"y": ((2, 3, 4), np.float32)})
    (y,) = run(canonical(model), feeds)
    u = X.astype(np.float64) + BIAS
    want = u[..., :4] * _gelu(u[..., 4:])
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
