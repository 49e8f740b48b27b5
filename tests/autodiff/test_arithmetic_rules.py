import numpy as np
import pytest

from onnxplain.errors import UnsupportedOpError

from .cases import Const, OpCase, apart, pos, r
from .gradcheck import check_case

CASES = [
    OpCase("add", "Add", [r(2, 3), r(2, 3)]),
    OpCase("add-broadcast", "Add", [r(2, 1, 4), r(3, 1)]),
    OpCase("add-bias", "Add", [r(2, 3, 4), r(4)]),
    OpCase("sub-broadcast", "Sub", [r(3, 1), r(2, 3, 4)]),
    OpCase("mul-broadcast", "Mul", [r(2, 3, 4), r(1, 3, 1)]),
    OpCase("mul-scalar", "Mul", [r(2, 3), r()]),
    OpCase("mul-const", "Mul", [r(2, 3), Const(r(3))]),
    OpCase("div", "Div", [r(2, 3), pos(2, 3)]),
    OpCase("div-broadcast", "Div", [r(2, 3, 4), pos(4)]),
    OpCase("pow", "Pow", [pos(2, 3), r(2, 3)]),
    OpCase("pow-square", "Pow", [r(2, 3), Const(np.array(2.0))]),
    OpCase("pow-cube", "Pow", [r(2, 3), Const(np.array(3.0))]),
    OpCase("pow-int-exponent", "Pow", [r(2, 3), Const(np.array(3, dtype=np.int64))]),
    OpCase("pow-broadcast", "Pow", [pos(2, 3), r(3)]),
    OpCase("sum", "Sum", [r(2, 3), r(3), r(1, 3)]),
    OpCase("mean", "Mean", [r(2, 3), r(2, 1)]),
    OpCase("max", "Max", [apart(2, 3), apart(2, 3) + 0.002]),
    OpCase("min-broadcast", "Min", [apart(2, 3), apart(3) + 0.004, apart(1, 3) - 0.003]),
    OpCase("where", "Where", [Const(np.array([[True, False, True]])), r(2, 3), r(2, 1)]),
    OpCase("neg", "Neg", [r(2, 3)]),
    OpCase("abs", "Abs", [apart(2, 3)]),
    OpCase("sqrt", "Sqrt", [pos(2, 3)]),
    OpCase("exp", "Exp", [r(2, 3)]),
    OpCase("log", "Log", [pos(2, 3)]),
    OpCase("reciprocal", "Reciprocal", [pos(2, 3)]),
    OpCase("erf", "Erf", [r(2, 3)]),
    OpCase("sin", "Sin", [r(2, 3)]),
    OpCase("cos", "Cos", [r(2, 3)]),
    OpCase("clip-attrs", "Clip", [apart(3, 4)], {"min": -0.2, "max": 0.3}, opset=9),
    OpCase("clip-inputs", "Clip", [apart(3, 4), Const(np.array(-0.2)), Const(np.array(0.3))]),
    OpCase("clip-bounds", "Clip", [apart(3, 4), np.array(-0.201), np.array(0.299)]),
    OpCase("clip-min-only", "Clip", [apart(3, 4), Const(np.array(-0.2))]),
    OpCase("cast", "Cast", [r(2, 3)], {"to": 1}, rtol=1e-3, eps=1e-2),
    OpCase("castlike", "CastLike", [r(2, 3), Const(np.zeros(1, np.float32), keep_dtype=True)],
           opset=15, rtol=1e-3, eps=1e-2),
    OpCase("identity", "Identity", [r(2, 3)]),
    OpCase("dropout", "Dropout", [r(2, 3)], n_outputs=1),
    OpCase("add-opset9", "Add", [r(2, 3, 4), r(4)], opset=9),
    OpCase("max-opset9", "Max", [apart(2, 3), apart(2, 3) + 0.002, apart(1, 3) - 0.001],
           opset=9),
    OpCase("min-opset10", "Min", [apart(2, 3), apart(3) + 0.004], opset=10),
    OpCase("mul-opset11", "Mul", [r(2, 3, 4), r(3, 1)], opset=11),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    if symbolic and case.opset < 10 and any(
            isinstance(v, np.ndarray) and v.ndim for v in case.inputs[1:]):
        # Opset 9 can neither reduce over run-time axes nor slice a run-time shape out.
        with pytest.raises(UnsupportedOpError, match="cannot tell statically which axes"):
            check_case(case, symbolic)
        return
    check_case(case, symbolic)
