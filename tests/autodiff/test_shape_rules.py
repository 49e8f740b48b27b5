import numpy as np
import pytest

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError

from .cases import Const, OpCase, ints, r
from .gradcheck import build_model, check_case


def i64(*values: int) -> np.ndarray:
    """An int64 graph input: the rule sees it only at run time."""
    return np.array(values, dtype=np.int64)


CASES = [
    # Pure reshapes.
    OpCase("reshape", "Reshape", [r(2, 3, 4), ints(6, -1)]),
    OpCase("reshape-opset9", "Reshape", [r(2, 3, 4), ints(4, 6)], opset=9),
    OpCase("reshape-runtime-shape", "Reshape", [r(2, 3, 4), i64(3, 8)], opset=19),
    OpCase("flatten", "Flatten", [r(2, 3, 4)], {"axis": 2}),
    OpCase("flatten-axis0-opset9", "Flatten", [r(2, 3, 4)], {"axis": 0}, opset=9),
    # Axis 0 and negative axes (the issue 18 fuzzer's onnx backend seeds).
    OpCase("flatten-axis0", "Flatten", [r(2, 3, 4, 5)], {"axis": 0}, opset=13),
    OpCase("flatten-axis3", "Flatten", [r(2, 3, 4, 5)], {"axis": 3}, opset=13),
    OpCase("flatten-negative-axis", "Flatten", [r(2, 3, 4, 5)], {"axis": -2}, opset=13),
    OpCase("flatten-negative-axis4", "Flatten", [r(2, 3, 4, 5)], {"axis": -4}, opset=13),
    OpCase("squeeze-opset9", "Squeeze", [r(2, 1, 3, 1)], {"axes": [1, 3]}, opset=9),
    OpCase("squeeze-input", "Squeeze", [r(2, 1, 3, 1), ints(-3)], opset=13),
    OpCase("unsqueeze-opset9", "Unsqueeze", [r(2, 3)], {"axes": [0, 3]}, opset=9),
    OpCase("unsqueeze-input", "Unsqueeze", [r(2, 3), ints(-1, 1)], opset=13),
    OpCase("transpose-default", "Transpose", [r(2, 3, 4)]),
    OpCase("transpose-perm", "Transpose", [r(2, 3, 4, 5)], {"perm": [2, 0, 3, 1]}),
    # Concat and Split.
    OpCase("concat", "Concat", [r(2, 3), r(2, 1), r(2, 4)], {"axis": 1}),
    OpCase("concat-negative-axis", "Concat", [r(2, 3, 2), r(2, 3, 1)], {"axis": -1}),
    OpCase("concat-const-between", "Concat", [r(1, 3), Const(np.full((1, 3), 1.5)), r(2, 3)],
           {"axis": 0}),
    OpCase("concat-opset9", "Concat", [r(2, 3), r(1, 3), r(3, 3)], {"axis": 0}, opset=9),
    OpCase("concat-opset11", "Concat", [r(2, 3), r(2, 2)], {"axis": 1}, opset=11),
    OpCase("split-attr-opset9", "Split", [r(2, 6)], {"axis": 1, "split": [1, 2, 3]},
           opset=9, n_outputs=3),
    OpCase("split-equal-opset11", "Split", [r(6, 2)], opset=11, n_outputs=3),
    OpCase("split-input", "Split", [r(2, 5), ints(3, 2)], {"axis": -1}, opset=13,
           n_outputs=2),
    OpCase("split-num-outputs", "Split", [r(3, 7)], {"axis": 1, "num_outputs": 3},
           opset=18, n_outputs=3),
    OpCase("split-unseeded-output", "Split", [r(4, 3)], opset=13, n_outputs=4, seeded=(0, 2)),
    # Expand and Tile.
    OpCase("expand", "Expand", [r(3, 1), ints(2, 3, 4)]),
    OpCase("expand-same-rank", "Expand", [r(1, 3, 1), ints(2, 1, 4)]),
    OpCase("expand-opset9", "Expand", [r(3, 1), ints(2, 1, 4)], opset=9),
    OpCase("tile", "Tile", [r(2, 3), ints(2, 3)]),
    OpCase("tile-opset9", "Tile", [r(2, 1, 3), ints(1, 3, 2)], opset=9),
    OpCase("tile-runtime-repeats", "Tile", [r(2, 3), i64(3, 1)]),
    OpCase("tile-precomputed", "Tile", [r(2, 3, 4, 5), ints(1, 2, 1, 3)], opset=13),
    # Slice.
    OpCase("slice-opset9", "Slice", [r(4, 5, 6)],
           {"starts": [1, -4], "ends": [3, 1000], "axes": [0, 2]}, opset=9),
    OpCase("slice-opset9-default-axes", "Slice", [r(4, 5)], {"starts": [-3, 0], "ends": [-1, 2]},
           opset=9),
    OpCase("slice-steps-opset10", "Slice", [r(7, 5), ints(1, -1), ints(7, -6), ints(0, 1),
                                            ints(2, -2)], opset=10),
    OpCase("slice-unit", "Slice", [r(3, 8), ints(2), ints(-1), ints(1)]),
    OpCase("slice-default-axes", "Slice", [r(4, 6), ints(1, 2), ints(3, 100)]),
    OpCase("slice-clamped", "Slice", [r(5, 6), ints(-100, 4), ints(100, 1000), ints(0, 1)]),
    OpCase("slice-step3", "Slice", [r(10, 3), ints(1), ints(9), ints(0), ints(3)]),
    OpCase("slice-step3-exact-end", "Slice", [r(7, 3), ints(0), ints(7), ints(0), ints(3)]),
    OpCase("slice-reverse", "Slice", [r(3, 5), ints(-1), ints(-100), ints(1), ints(-1)]),
    OpCase("slice-negative-step2", "Slice", [r(9, 2), ints(100), ints(0), ints(-2),
                                             ints(-2)], opset=18),
    OpCase("slice-negative-step3-start", "Slice", [r(8, 2), ints(6), ints(-100), ints(0),
                                                   ints(-3)]),
    OpCase("slice-empty", "Slice", [r(4, 3), ints(3), ints(1), ints(0)]),
    OpCase("slice-runtime-starts", "Slice", [r(5, 6), i64(1, -3), i64(4, 6), ints(0, 1),
                                             ints(1, 2)]),
    OpCase("slice-runtime-axes", "Slice", [r(5, 6), ints(-2), ints(1), i64(1), ints(-1)]),
    OpCase("slice-runtime-steps", "Slice", [r(6, 4), ints(0), ints(6), ints(0), i64(2)],
           opset=11),
    # Pad.
    OpCase("pad-opset9", "Pad", [r(3, 4)], {"pads": [1, 0, 2, 3], "value": 0.5}, opset=9),
    OpCase("pad-opset9-negative", "Pad", [r(4, 5)], {"pads": [-1, 2, 1, -2]}, opset=9),
    OpCase("pad-value-input", "Pad", [r(3, 4), ints(0, 2, 1, 1), r()], opset=11),
    OpCase("pad-negative-value", "Pad", [r(4, 5), ints(-1, 1, 2, -3), r()], opset=13),
    OpCase("pad-axes", "Pad", [r(2, 3, 4), ints(1, -1, 2, 0), None, ints(-1, 0)], opset=18),
    OpCase("pad-runtime", "Pad", [r(4, 5), i64(1, -2, -1, 3), r()], opset=13),
    OpCase("pad-runtime-axes", "Pad", [r(3, 4, 5), i64(2, -1, 0, 1), None, ints(2, 0)],
           opset=18),
    OpCase("pad-edge", "Pad", [r(3, 4), ints(2, 1, 1, 3)], {"mode": "edge"}, opset=11),
    OpCase("pad-edge-opset9", "Pad", [r(2, 3, 4)], {"mode": "edge", "pads": [0, 1, 2, 0, 2, 1]},
           opset=9),
    OpCase("pad-edge-length1", "Pad", [r(2, 1)], {"mode": "edge", "pads": [0, 2, 0, 3]},
           opset=9),
    OpCase("pad-reflect", "Pad", [r(4, 5), ints(3, 1, 2, 4)], {"mode": "reflect"}, opset=13),
    OpCase("pad-reflect-opset9", "Pad", [r(3, 4)], {"mode": "reflect", "pads": [2, 0, 1, 3]},
           opset=9),
    OpCase("pad-reflect-overlap", "Pad", [r(3, 2)], {"mode": "reflect", "pads": [2, 0, 2, 0]},
           opset=9),
    OpCase("pad-reflect-axes", "Pad", [r(2, 3, 5), ints(2, 1, 1, 4), None, ints(1, -1)],
           {"mode": "reflect"}, opset=18),
    OpCase("pad-wrap", "Pad", [r(3, 4), ints(1, 2, 2, 3)], {"mode": "wrap"}, opset=19),
    OpCase("pad-wrap-beyond-size", "Pad", [r(2, 3), ints(0, 7, 0, 4)], {"mode": "wrap"},
           opset=19),
]


# Symbolic Expand at opset 9 is rejected (reduce axes must be static): tested below.
PAIRS = [(case, symbolic) for case in CASES for symbolic in (False, True)
         if not (symbolic and case.id == "expand-opset9")]


@pytest.mark.parametrize("case, symbolic", PAIRS,
                         ids=[f"{c.id}-{'symbolic' if s else 'static'}" for c, s in PAIRS])
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def _rejection(case: OpCase, symbolic: bool = False) -> str:
    model, _ = build_model(case, np.float32, symbolic)
    with pytest.raises(UnsupportedOpError) as info:
        differentiate(model, ["in0"])
    return str(info.value)


def test_expand_with_unknown_broadcast_axes_is_rejected_before_opset13():
    message = _rejection(OpCase("e", "Expand", [r(3, 1), ints(2, 1, 4)], opset=9), True)
    assert "Expand" in message and "broadcast" in message


def test_slice_with_runtime_axes_is_rejected_at_opset10():
    message = _rejection(OpCase("s", "Slice", [r(4, 3), ints(1), ints(3), i64(0)], opset=10))
    assert "Slice" in message and "opset 11" in message


@pytest.mark.parametrize("case, reason", [
    (OpCase("p", "Pad", [r(3, 4), i64(1, 1, 1, 1)], {"mode": "edge"}, opset=13),
     "static pads"),
    (OpCase("p", "Pad", [r(3, 4), ints(-1, 1, 1, 1)], {"mode": "reflect"}, opset=13),
     "negative pads"),
])
def test_pad_modes_that_cannot_be_folded_are_rejected(case, reason):
    message = _rejection(case)
    assert "Pad" in message and reason in message
