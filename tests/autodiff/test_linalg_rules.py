import pytest

from onnxplain.errors import UnsupportedOpError

from .cases import Const, OpCase, r
from .gradcheck import check_case

CASES = [
    OpCase("matmul-2d", "MatMul", [r(3, 4), r(4, 5)]),
    OpCase("matmul-batched", "MatMul", [r(2, 3, 4), r(2, 4, 5)]),
    OpCase("matmul-broadcast-weight", "MatMul", [r(2, 3, 4), r(4, 5)]),
    OpCase("matmul-broadcast-batch", "MatMul", [r(2, 1, 3, 4), r(1, 3, 4, 5)]),
    OpCase("matmul-const-weight", "MatMul", [r(2, 3, 4), Const(r(4, 5))]),
    OpCase("matmul-vector-left", "MatMul", [r(4), r(2, 4, 5)]),
    OpCase("matmul-vector-left-2d", "MatMul", [r(4), r(4, 5)]),
    OpCase("matmul-vector-right", "MatMul", [r(2, 3, 4), r(4)]),
    OpCase("matmul-vector-right-2d", "MatMul", [r(3, 4), r(4)]),
    OpCase("matmul-dot", "MatMul", [r(4), r(4)]),
    OpCase("matmul-opset9", "MatMul", [r(2, 3, 4), r(4, 5)], opset=9),
    OpCase("gemm", "Gemm", [r(3, 4), r(4, 5), r(5)]),
    OpCase("gemm-trans", "Gemm", [r(4, 3), r(5, 4), r(3, 5)],
           {"transA": 1, "transB": 1, "alpha": 0.5, "beta": 2.0}),
    OpCase("gemm-transA", "Gemm", [r(4, 3), r(4, 5), r(1, 5)], {"transA": 1}),
    OpCase("gemm-transB", "Gemm", [r(3, 4), r(5, 4), r()], {"transB": 1, "alpha": 1.5}),
    OpCase("gemm-no-bias", "Gemm", [r(3, 4), r(4, 5)], opset=13),
    OpCase("gemm-const-weights-opset9", "Gemm", [r(3, 4), Const(r(5, 4)), Const(r(5))],
           {"transB": 1}, opset=9),
    OpCase("einsum-matmul", "Einsum", [r(3, 4), r(4, 5)], {"equation": "ij,jk->ik"}),
    OpCase("einsum-attention", "Einsum", [r(2, 3, 4, 5), r(2, 3, 6, 5)],
           {"equation": "bhqd,bhkd->bhqk"}),
    OpCase("einsum-ellipsis", "Einsum", [r(2, 3, 4), r(4, 5)], {"equation": "...ij,jk->...ik"}),
    OpCase("einsum-ellipsis-broadcast", "Einsum", [r(2, 1, 3, 4), r(1, 3, 4, 5)],
           {"equation": "...ij,...jk->...ik"}),
    OpCase("einsum-sum-out", "Einsum", [r(3, 4), r(4)], {"equation": "ij,j->i"}),
    OpCase("einsum-dropped-index", "Einsum", [r(3, 4), r(5)], {"equation": "ij,k->ik"}),
    OpCase("einsum-implicit", "Einsum", [r(3, 4), r(4, 5)], {"equation": "ij,jk"}),
    OpCase("einsum-three", "Einsum", [r(3, 4), r(4, 5), r(5, 2)], {"equation": "ij,jk,kl->il"}),
    OpCase("einsum-outer", "Einsum", [r(3), r(4)], {"equation": "i,j->ij"}),
    OpCase("einsum-transpose", "Einsum", [r(3, 4, 2)], {"equation": "abc->cab"}),
    OpCase("einsum-reduce", "Einsum", [r(3, 4, 2)], {"equation": "abc->b"}),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def test_matmul_with_unknown_batch_broadcast_before_opset13():
    # [a, 3, 4] @ [b, 4, 5]: a or b may be 1 at run time. Opsets 10-12 mask the sum in at
    # run time; opset 9 cannot slice a run-time shape out and reports it.
    for opset in (10, 11, 12):
        case = OpCase(f"matmul-broadcast-opset{opset}", "MatMul", [r(1, 3, 4), r(2, 4, 5)],
                      opset=opset)
        check_case(case, symbolic=True)
        check_case(case, symbolic=False)
    case = OpCase("matmul-broadcast-opset9", "MatMul", [r(1, 3, 4), r(2, 4, 5)], opset=9)
    with pytest.raises(UnsupportedOpError, match="cannot tell statically which axes"):
        check_case(case, symbolic=True)


def test_einsum_diagonal_is_reported_not_guessed():
    case = OpCase("einsum-diagonal", "Einsum", [r(3, 3)], {"equation": "ii->i"})
    with pytest.raises(UnsupportedOpError, match="repeated index"):
        check_case(case, symbolic=False)
