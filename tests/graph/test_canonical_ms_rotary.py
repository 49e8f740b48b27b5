"""com.microsoft::RotaryEmbedding becomes standard ops with the kernel's outputs (1e-5):
halves and interleaved pairs, 3-D and 4-D inputs, partial rotary dims, position ids given
per token or as a first position. Oracle: ONNX Runtime's CPU kernel."""

from __future__ import annotations

import numpy as np
import pytest

from .ms_oracle import assert_matches, fused_model

RNG = np.random.default_rng(3)
B, S, N, H, MAX = 2, 5, 2, 8, 16


def _caches(rotary: int):
    angles = RNG.uniform(0, 6.28, (MAX, rotary // 2))
    return [("cos", np.cos(angles).astype(np.float32), "const"),
            ("sin", np.sin(angles).astype(np.float32), "const")]


POSITIONS = RNG.integers(0, MAX, (B, S)).astype(np.int64)
CASES = {
    "3d_halves": ((B, S, N * H), POSITIONS, H, {"num_heads": N}),
    "3d_interleaved": ((B, S, N * H), POSITIONS, H, {"num_heads": N, "interleaved": 1}),
    "3d_no_num_heads": ((B, S, N * H), POSITIONS, H, {}),
    "4d_halves": ((B, N, S, H), POSITIONS, H, {}),
    "4d_interleaved": ((B, N, S, H), POSITIONS, H, {"interleaved": 1}),
    "3d_partial": ((B, S, N * H), POSITIONS, 4, {"num_heads": N, "rotary_embedding_dim": 4}),
    "3d_partial_interleaved": ((B, S, N * H), POSITIONS, 4, {
        "num_heads": N, "rotary_embedding_dim": 4, "interleaved": 1}),
    "first_position": ((B, S, N * H), np.array([3], np.int64), H, {"num_heads": N}),
}


@pytest.mark.parametrize("case", CASES)
def test_rotary_embedding(case):
    shape, positions, rotary, attrs = CASES[case]
    x = RNG.standard_normal(shape).astype(np.float32)
    inputs = [("x", x), ("positions", positions), *_caches(rotary)]
    assert_matches(*fused_model("RotaryEmbedding", inputs, ["y"], attrs))
