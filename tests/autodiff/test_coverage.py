"""The registry covers every op the core issue lists, and every rule has finite-difference
cases in this folder."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnxplain.autodiff import GRADIENT
from onnxplain.autodiff.registry import NO_GRADIENT

DIFFERENTIABLE = """Add Sub Mul Div Neg Abs Pow Sqrt Exp Log Reciprocal Erf Tanh Sigmoid Relu
LeakyRelu PRelu Elu Selu Softplus HardSigmoid HardSwish Gelu Clip Min Max Sum Mean Where MatMul
Gemm Einsum Conv ConvTranspose MaxPool AveragePool GlobalAveragePool GlobalMaxPool
BatchNormalization LayerNormalization InstanceNormalization GroupNormalization LRN Softmax
LogSoftmax ReduceSum ReduceMean ReduceMax ReduceMin ReduceL2 ReduceLogSumExp Reshape Flatten
Transpose Squeeze Unsqueeze Concat Split Slice Gather GatherElements GatherND Expand Tile Pad
Resize Cast Identity Dropout TopK""".split()
NON_DIFFERENTIABLE = """Shape Size Equal Less Greater Not And Or Range ConstantOfShape ArgMax
NonZero""".split()


@pytest.mark.parametrize("op_type", DIFFERENTIABLE)
def test_listed_op_has_a_rule_at_the_newest_opset(op_type):
    assert GRADIENT.lookup("", op_type, 23) is not None, op_type


@pytest.mark.parametrize("op_type", NON_DIFFERENTIABLE)
def test_integer_and_shape_ops_carry_no_gradient(op_type):
    assert op_type in NO_GRADIENT


def test_every_registered_rule_is_exercised_by_a_case():
    sources = "\n".join(p.read_text() for p in Path(__file__).parent.glob("test_*_rules.py"))
    untested = sorted(op for (_, op) in GRADIENT._rules if f'"{op}"' not in sources)
    assert not untested, f"rules without finite-difference cases: {untested}"
