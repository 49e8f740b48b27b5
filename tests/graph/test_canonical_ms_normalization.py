"""com.microsoft normalisations become standard ops with the fused kernels' outputs (1e-5),
every optional output included. Oracle: ONNX Runtime's CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest

from .ms_oracle import assert_matches, fused_model

RNG = np.random.default_rng(1)
X = (RNG.standard_normal((2, 3, 8)) * 3 + 1).astype(np.float32)
SKIP = RNG.standard_normal((2, 3, 8)).astype(np.float32)
GAMMA, BETA, BIAS = (RNG.standard_normal(8).astype(np.float32) for _ in range(3))


def _skip_inputs(beta=True, bias=True, skip=SKIP):
    return [("x", X), ("skip", skip), ("gamma", GAMMA, "const"),
            ("beta", BETA, "const") if beta else None, ("bias", BIAS, "const") if bias else None]


SKIP_CASES = {
    "plain": (_skip_inputs(bias=False), ["y"]),
    "bias": (_skip_inputs(), ["y"]),
    "no_beta": (_skip_inputs(beta=False), ["y"]),
    "sum_output": (_skip_inputs(), ["y", "", "", "sum"]),
    "skip_broadcast_2d": (_skip_inputs(skip=SKIP[0]), ["y", "", "", "sum"]),
}


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("case", SKIP_CASES)
def test_skip_layer_norm(case, opset):
    inputs, outputs = SKIP_CASES[case]
    assert_matches(*fused_model("SkipLayerNormalization", inputs, outputs,
                                {"epsilon": 1e-5}, opset=opset))


@pytest.mark.parametrize("bias", [False, True])
def test_skip_simplified_layer_norm(bias):
    inputs = [("x", X), ("skip", SKIP), ("gamma", GAMMA, "const"),
              ("bias", BIAS, "const") if bias else None]
    assert_matches(*fused_model("SkipSimplifiedLayerNormalization", inputs,
                                ["y", "", "", "sum"], {"epsilon": 1e-6}))


@pytest.mark.parametrize("opset", [13, 18])
def test_simplified_layer_norm_default_domain(opset):
    """ONNX Runtime writes SimplifiedLayerNormalization in the ai.onnx domain."""
    assert_matches(*fused_model("SimplifiedLayerNormalization",
                                [("x", X), ("scale", GAMMA, "const")], ["y"],
                                {"epsilon": 1e-6, "axis": -1}, domain="", opset=opset))


IDS = RNG.integers(0, 20, (2, 5)).astype(np.int32)
SEGMENTS = RNG.integers(0, 2, (2, 5)).astype(np.int32)
TABLES = [("words", RNG.standard_normal((20, 8)).astype(np.float32), "const"),
          ("positions", RNG.standard_normal((10, 8)).astype(np.float32), "const")]
MASK = np.array([[1, 0, 1, 1, 0], [1, 1, 1, 0, 0]], np.int32)  # a hole: counted, not searched


@pytest.mark.parametrize("segments", [True, False])
@pytest.mark.parametrize("mask", [True, False])
@pytest.mark.parametrize("opset", [13, 17])
def test_embed_layer_norm(segments, mask, opset):
    inputs = [("ids", IDS), ("segments", SEGMENTS) if segments else None, *TABLES,
              ("segment_table", RNG.standard_normal((2, 8)).astype(np.float32), "const")
              if segments else None, ("gamma", GAMMA, "const"), ("beta", BETA, "const"),
              ("mask", MASK) if mask else None]
    assert_matches(*fused_model("EmbedLayerNormalization", inputs,
                                ["y", "mask_index", "embedding_sum"], {"epsilon": 1e-12},
                                opset=opset))


def test_embed_layer_norm_position_ids():
    positions = np.array([[3, 4, 5, 6, 7]], np.int32)
    inputs = [("ids", IDS), None, *TABLES, None, ("gamma", GAMMA, "const"),
              ("beta", BETA, "const"), None, ("position_ids", positions)]
    # ONNX Runtime's type inference insists on the mask_index output.
    assert_matches(*fused_model("EmbedLayerNormalization", inputs, ["y", "mask_index"]))
