"""Broadcasting ops before opset 13, with dims unknown until run time (converters such as
paddle2onnx write old opsets with dynamic dims): ReduceSum takes static axes there, so the
backward masks each axis that may be 1 at run time. Checked against finite differences in
float64 (gradcheck), with every dim symbolic."""

from __future__ import annotations

import numpy as np
import pytest

from .gradcheck import OpCase, check_case

RNG = np.random.default_rng(5)


def _a(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape)


CASES = [
    OpCase("mul_keepdims", "Mul", [_a(2, 3, 4, 5), _a(2, 3, 1, 1)]),
    OpCase("add_rows", "Add", [_a(3, 1), _a(1, 4)]),
    OpCase("sub_rank", "Sub", [_a(2, 3, 4), _a(4)]),
    OpCase("div_middle", "Div", [_a(2, 3, 4), np.abs(_a(2, 1, 4)) + 0.5]),
    OpCase("where_mixed", "Where", [RNG.random((2, 1, 4)) > 0.5, _a(2, 3, 1), _a(1, 3, 4)]),
    OpCase("max_same", "Max", [_a(2, 3), _a(2, 3) + 0.1]),
]


@pytest.mark.parametrize("opset", [10, 11, 12])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_broadcast_backward_with_run_time_dims(case, opset):
    check_case(OpCase(case.id, case.op, case.inputs, case.attrs, opset=opset), symbolic=True)
