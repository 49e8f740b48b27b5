"""Gradients of the opset 23-28 ops against finite differences in float64: the rules
(RMSNormalization, CumProd) and the ops canonicalised on load into older ones (Swish,
SwiGLU, RotaryEmbedding, TensorScatter), differentiated through their rewrite."""

from __future__ import annotations

import numpy as np
import onnx
import pytest

from onnxplain.autodiff import differentiate
from onnxplain.graph.canonical import canonicalise
from onnxplain.graph.canonical.newer_ops import lower_to_runtime_opset
from onnxplain.graph.load import set_runtime_ir_version

from . import gradcheck
from .cases import Const, OpCase, pos, r
from .gradcheck import check_case


def _rotary_caches(batch: int, seq: int, half: int, positions: bool = False):
    """cos/sin of angles position · frequency, as exporters compute them."""
    count = 16 if positions else seq
    angles = np.arange(count)[:, None] * (10000.0 ** (-np.arange(half) / half))[None, :]
    if not positions:
        angles = np.broadcast_to(angles, (batch, seq, half))
    return Const(np.cos(angles)), Const(np.sin(angles))


def _with_zeros(*shape: int) -> np.ndarray:
    """Values with some exact zeros, where y / x would divide by zero."""
    x = r(*shape)
    x.reshape(-1)[::5] = 0.0
    return x


RULE_CASES = [
    OpCase("rms-last-axis", "RMSNormalization", [r(2, 3, 8), r(8)], opset=23),
    OpCase("rms-axis1", "RMSNormalization", [r(2, 3, 4), r(3, 4)], {"axis": 1,
           "epsilon": 1e-3}, opset=23),
    OpCase("rms-broadcast-scale", "RMSNormalization", [r(2, 3, 4), r(1, 4)],
           {"axis": -2}, opset=24),
    OpCase("rms-constant-scale", "RMSNormalization", [r(4, 6), Const(pos(6))], opset=23),
    OpCase("cumprod", "CumProd", [r(3, 5), Const(np.array(1))], opset=26),
    OpCase("cumprod-axis0-exclusive", "CumProd", [r(4, 3), Const(np.array(0))],
           {"exclusive": 1}, opset=26),
    OpCase("cumprod-reverse", "CumProd", [r(2, 4, 3), Const(np.array(-2))],
           {"reverse": 1}, opset=26),
    OpCase("cumprod-reverse-exclusive-zeros", "CumProd", [_with_zeros(2, 6),
           Const(np.array(1))], {"reverse": 1, "exclusive": 1}, opset=26),
    OpCase("cumprod-zeros", "CumProd", [_with_zeros(3, 7), Const(np.array(1, np.int32))],
           opset=26),
]

cos4, sin4 = _rotary_caches(2, 3, 4)
cos_pos, sin_pos = _rotary_caches(2, 3, 2, positions=True)
POSITIONS = Const(np.array([[0, 5, 9], [3, 3, 15]]))

REWRITE_CASES = [
    OpCase("swish", "Swish", [r(3, 4)], opset=24),
    OpCase("swish-alpha", "Swish", [r(2, 5)], {"alpha": 1.7}, opset=25),
    OpCase("swiglu", "SwiGLU", [r(3, 4), r(3, 4)], opset=28),
    OpCase("swiglu-alpha", "SwiGLU", [r(2, 6), r(2, 6)], {"alpha": 0.5}, opset=28),
    OpCase("rotary-4d", "RotaryEmbedding", [r(2, 2, 3, 8), cos4, sin4], opset=23),
    OpCase("rotary-4d-interleaved", "RotaryEmbedding", [r(2, 2, 3, 8), cos4, sin4],
           {"interleaved": 1}, opset=23),
    OpCase("rotary-3d-partial-positions", "RotaryEmbedding",
           [r(2, 3, 12), cos_pos, sin_pos, POSITIONS],
           {"num_heads": 2, "rotary_embedding_dim": 4}, opset=23),
    OpCase("rotary-4d-partial-interleaved-positions", "RotaryEmbedding",
           [r(2, 2, 3, 6), cos_pos, sin_pos, POSITIONS],
           {"rotary_embedding_dim": 4, "interleaved": 1}, opset=24),
    OpCase("tensor-scatter", "TensorScatter", [r(2, 2, 5, 3), r(2, 2, 2, 3)], opset=24),
    OpCase("tensor-scatter-indices", "TensorScatter",
           [r(2, 5, 3), r(2, 2, 3), Const(np.array([1, 3]))], {"axis": 1}, opset=24),
    OpCase("tensor-scatter-circular", "TensorScatter",
           [r(2, 2, 4, 3), r(2, 2, 3, 3), Const(np.array([2, 3]))], {"mode": "circular"},
           opset=26),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", RULE_CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def _canonicalised_differentiate(model: onnx.ModelProto, *args, **kwargs):
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    rewritten = lower_to_runtime_opset(canonicalise(copy))
    set_runtime_ir_version(rewritten)
    assert {n.op_type for n in rewritten.graph.node}.isdisjoint(
        {"Swish", "SwiGLU", "RotaryEmbedding", "TensorScatter"})
    return differentiate(rewritten, *args, **kwargs)


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", REWRITE_CASES, ids=repr)
def test_rewrite_gradient_matches_finite_differences(case, symbolic, monkeypatch):
    """The rewritten graph's gradient (the older ops' rules) against finite differences of
    the original op (onnx's reference implementation)."""
    monkeypatch.setattr(gradcheck, "differentiate", _canonicalised_differentiate)
    check_case(case, symbolic)


def test_cumprod_over_a_computed_axis_is_refused():
    from onnxplain.errors import UnsupportedOpError

    case = OpCase("cumprod-runtime-axis", "CumProd", [r(3, 4), np.array(1)], opset=26,
                  wrt=(0,))
    model, _ = gradcheck.build_model(case, np.float32, symbolic=False)
    with pytest.raises(UnsupportedOpError, match="CumProd over a computed axis"):
        differentiate(model, ["in0"])
