import numpy as np
import pytest

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError

from .cases import Const, OpCase, apart, ints, r
from .gradcheck import build_model, check_case


def idx(values) -> Const:
    return Const(np.array(values, dtype=np.int64))


def runtime(values) -> np.ndarray:
    """Indices fed as an int64 graph input, unknown when the gradient graph is built."""
    return np.array(values, dtype=np.int64)


TWO_BATCH = [[[[1], [3]], [[0], [0]], [[2], [-2]]]] * 2

CASES = [
    # Gather: scatter-add from opset 16, one-hot product before.
    OpCase("gather-rows-repeated", "Gather", [r(5, 3), idx([4, -1, 0, 4, 2])], opset=16),
    OpCase("gather-rows-one-hot", "Gather", [r(5, 3), idx([4, -1, 0, 4, 2])], opset=13),
    OpCase("gather-axis1-matrix", "Gather", [r(2, 4, 3), idx([[1, 3], [-4, 1]])],
           {"axis": 1}, opset=18),
    OpCase("gather-axis1-matrix-one-hot", "Gather", [r(2, 4, 3), idx([[1, 3], [-4, 1]])],
           {"axis": 1}, opset=11),
    OpCase("gather-scalar-cls", "Gather", [r(2, 5, 3), idx(0)], {"axis": 1}, opset=17),
    OpCase("gather-scalar-opset9", "Gather", [r(2, 5, 3), idx(2)], {"axis": 1}, opset=9),
    OpCase("gather-last-axis-opset9", "Gather", [r(2, 3, 4), idx([3, 3, 0])], {"axis": -1},
           opset=9),
    OpCase("gather-first-axis-3d", "Gather", [r(4, 2, 3), idx([[0, 3, 3]])], opset=12),
    OpCase("gather-runtime-indices", "Gather", [r(3, 6), runtime([5, -6, 5])], {"axis": 1},
           opset=16),
    OpCase("gather-runtime-indices-one-hot", "Gather", [r(3, 6), runtime([5, -6, 5])],
           {"axis": 1}, opset=15),
    # GatherElements.
    OpCase("gather-elements", "GatherElements", [r(3, 4), idx([[0, 3, 3, -1], [2, 2, 0, 1]])],
           {"axis": 1}, opset=16),
    OpCase("gather-elements-one-hot", "GatherElements",
           [r(3, 4), idx([[0, 3, 3, -1], [2, 2, 0, 1]])], {"axis": 1}, opset=13),
    OpCase("gather-elements-axis0-smaller", "GatherElements",
           [r(3, 4, 2), idx([[[2], [0], [2]], [[-3], [1], [2]]])], opset=11),
    OpCase("gather-elements-axis0-smaller-scatter", "GatherElements",
           [r(3, 4, 2), idx([[[2], [0], [2]], [[-3], [1], [2]]])], opset=18),
    OpCase("gather-elements-runtime", "GatherElements", [r(2, 3), runtime([[2, 2], [1, 0]])],
           {"axis": -1}, opset=12),
    # GatherND, with and without batch dims.
    OpCase("gather-nd-rows", "GatherND", [r(4, 3), idx([[3], [-1], [0]])], opset=16),
    OpCase("gather-nd-rows-one-hot", "GatherND", [r(4, 3), idx([[3], [-1], [0]])], opset=11),
    OpCase("gather-nd-elements", "GatherND", [r(3, 4, 2), idx([[[0, 1], [2, -1]],
                                                                [[0, 1], [1, 0]]])], opset=18),
    OpCase("gather-nd-elements-one-hot", "GatherND",
           [r(3, 4, 2), idx([[[0, 1], [2, -1]], [[0, 1], [1, 0]]])], opset=13),
    OpCase("gather-nd-batch", "GatherND", [r(2, 3, 4), idx([[[1], [1]], [[0], [-1]]])],
           {"batch_dims": 1}, opset=18),
    OpCase("gather-nd-batch-one-hot", "GatherND", [r(2, 3, 4), idx([[[1], [1]], [[0], [-1]]])],
           {"batch_dims": 1}, opset=12),
    OpCase("gather-nd-batch2", "GatherND", [r(2, 3, 4, 2), idx([[[2, 3], [2, 3]],
                                                                 [[0, 0], [1, 2]]])],
           {"batch_dims": 1}, opset=16),
    OpCase("gather-nd-two-batch-dims", "GatherND", [r(2, 3, 4, 2), idx(TWO_BATCH)],
           {"batch_dims": 2}, opset=16),
    OpCase("gather-nd-two-batch-dims-one-hot", "GatherND", [r(2, 3, 4, 2), idx(TWO_BATCH)],
           {"batch_dims": 2}, opset=13),
    OpCase("gather-nd-runtime", "GatherND", [r(3, 2), runtime([[2], [2]])], opset=17),
    # TopK, CumSum, Trilu.
    OpCase("topk-opset9", "TopK", [apart(3, 5)], {"k": 2, "axis": 1}, opset=9, n_outputs=2,
           seeded=(0,)),
    OpCase("topk-smallest-axis0", "TopK", [apart(4, 3), ints(3)], {"axis": 0, "largest": 0},
           opset=11, n_outputs=2, seeded=(0,)),
    OpCase("topk-last-axis", "TopK", [apart(2, 2, 4), ints(2)], opset=18, n_outputs=2,
           seeded=(0,)),
    OpCase("cumsum", "CumSum", [r(3, 4), Const(np.array(1, dtype=np.int32))], opset=11),
    OpCase("cumsum-exclusive", "CumSum", [r(3, 4), Const(np.array(0))], {"exclusive": 1}, opset=14),
    OpCase("cumsum-reverse", "CumSum", [r(2, 5), Const(np.array(-1))], {"reverse": 1}),
    OpCase("cumsum-exclusive-reverse", "CumSum", [r(4, 2), Const(np.array(0))],
           {"exclusive": 1, "reverse": 1}),
    OpCase("trilu-upper", "Trilu", [r(2, 3, 4)], opset=14),
    OpCase("trilu-lower-k", "Trilu", [r(4, 3), Const(np.array(-1))], {"upper": 0}, opset=14),
    OpCase("trilu-upper-k", "Trilu", [r(3, 5), Const(np.array(2))], {"upper": 1}, opset=18),
    # Scatters, w.r.t. data and updates.
    OpCase("scatter-elements", "ScatterElements", [r(3, 4), idx([[1, 0, 3], [2, 3, -4]]),
                                                   r(2, 3)], {"axis": 1}, opset=11),
    OpCase("scatter-elements-add", "ScatterElements", [r(3, 4), idx([[1, 1, 3], [2, 2, 2]]),
                                                       r(2, 3)],
           {"axis": 1, "reduction": "add"}, opset=16),
    OpCase("scatter-elements-axis0", "ScatterElements", [r(4, 2), idx([[3, 0], [0, 3]]),
                                                         r(2, 2)], opset=18),
    OpCase("scatter-nd", "ScatterND", [r(4, 3), idx([[2], [0]]), r(2, 3)], opset=11),
    OpCase("scatter-nd-elements", "ScatterND", [r(3, 3), idx([[0, 2], [2, 1], [1, 1]]), r(3)],
           opset=13),
    OpCase("scatter-nd-add", "ScatterND", [r(4, 3), idx([[2], [0], [2]]), r(3, 3)],
           {"reduction": "add"}, opset=16),
    OpCase("scatter-opset9-data", "Scatter", [r(3, 3), idx([[2, 0, 1]]), r(1, 3)],
           opset=9, wrt=(0,)),
    OpCase("scatter-runtime-indices", "ScatterElements", [r(2, 5), runtime([[4, 0], [1, 2]]),
                                                          r(2, 2)], {"axis": -1}, opset=13),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def _rejection(case: OpCase, wrt: list[str]) -> str:
    model, _ = build_model(case, np.float32, False)
    with pytest.raises(UnsupportedOpError) as info:
        differentiate(model, wrt)
    return str(info.value)


def test_scatter_with_multiplying_reduction_is_rejected():
    case = OpCase("s", "ScatterElements", [r(3, 2), idx([[1, 0]]), r(1, 2)],
                  {"reduction": "mul"}, opset=16)
    assert "reduction='mul'" in _rejection(case, ["in0"])


def test_old_scatter_wrt_updates_is_rejected():
    case = OpCase("s", "Scatter", [r(3, 3), idx([[2, 0, 1]]), r(1, 3)], opset=10)
    assert "GatherElements" in _rejection(case, ["in2"])
