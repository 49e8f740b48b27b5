import numpy as np
import onnxruntime as ort
import pytest
import torch

from onnxplain.autodiff import differentiate

from .cases import Const, OpCase, apart, ints, pos, r
from .gradcheck import build_model, check_case


def with_zeros(*shape: int, at: tuple[tuple[int, ...], ...]) -> np.ndarray:
    """Random values with exact zeros at the given indices (ReduceProd's hard case)."""
    x = r(*shape)
    for index in at:
        x[index] = 0.0
    return x


def runtime_axes(*values: int) -> np.ndarray:
    """Axes fed as a graph input: the rule must read them at run time."""
    return np.array(values, dtype=np.int64)


NO_AXES = Const(np.zeros(0, dtype=np.int64))

CASES = [
    # ReduceSum: axes attribute before opset 13, input from 13 (constant, computed or absent).
    OpCase("sum-opset11-attr", "ReduceSum", [r(2, 3, 4)], {"axes": [1]}, opset=11),
    OpCase("sum-opset11-all-dropdims", "ReduceSum", [r(2, 3, 4)], {"keepdims": 0}, opset=11),
    OpCase("sum-opset9-negative", "ReduceSum", [r(2, 3, 4)], {"axes": [-1, 0], "keepdims": 0},
           opset=9),
    OpCase("sum-opset13-input", "ReduceSum", [r(2, 3, 4), ints(-1)], {"keepdims": 0},
           opset=13),
    OpCase("sum-opset13-runtime", "ReduceSum", [r(2, 3, 4), runtime_axes(0, -1)],
           {"keepdims": 0}, opset=13),
    OpCase("sum-opset13-runtime-keep", "ReduceSum", [r(2, 3, 4), runtime_axes(1)], opset=13),
    OpCase("sum-opset13-runtime-empty-all", "ReduceSum", [r(2, 3, 4), runtime_axes()],
           {"keepdims": 0}, opset=13),
    OpCase("sum-opset13-runtime-empty-noop", "ReduceSum", [r(2, 3, 4), runtime_axes()],
           {"keepdims": 0, "noop_with_empty_axes": 1}, opset=13),
    OpCase("sum-opset13-absent-all", "ReduceSum", [r(2, 3, 4)], {"keepdims": 0}, opset=13),
    OpCase("sum-opset13-absent-noop", "ReduceSum", [r(2, 3, 4)],
           {"noop_with_empty_axes": 1}, opset=13),
    OpCase("sum-opset13-empty-all", "ReduceSum", [r(2, 3, 4), NO_AXES], opset=13),
    # ReduceMean: attribute axes up to opset 17 (13 included), input from 18.
    OpCase("mean-opset11-attr", "ReduceMean", [r(2, 3, 4)], {"axes": [0, 2], "keepdims": 0},
           opset=11),
    OpCase("mean-opset13-attr", "ReduceMean", [r(2, 3, 4)], {"axes": [-1]}, opset=13),
    OpCase("mean-opset18-input", "ReduceMean", [r(2, 3, 4), ints(1)], {"keepdims": 0},
           opset=18),
    OpCase("mean-opset18-runtime", "ReduceMean", [r(2, 3, 4), runtime_axes(-2, 0)],
           {"keepdims": 0}, opset=18),
    OpCase("mean-opset18-all", "ReduceMean", [r(2, 3, 4)], opset=18),
    OpCase("mean-opset18-noop", "ReduceMean", [r(2, 3), NO_AXES],
           {"noop_with_empty_axes": 1}, opset=18),
    # Max/Min without ties (ties are checked against torch below).
    OpCase("max-opset11-attr", "ReduceMax", [apart(2, 3, 4)], {"axes": [1]}, opset=11),
    OpCase("max-opset18-input", "ReduceMax", [apart(2, 3, 4), ints(-1)], {"keepdims": 0},
           opset=18),
    OpCase("max-opset18-all", "ReduceMax", [apart(3, 4)], {"keepdims": 0}, opset=18),
    OpCase("min-opset11-all", "ReduceMin", [apart(2, 3, 4)], {"keepdims": 0}, opset=11),
    # Before opset 11 Equal takes no floats: the rules compare through Less and Greater.
    OpCase("max-opset9", "ReduceMax", [apart(2, 3, 4)], {"axes": [2]}, opset=9),
    OpCase("l2-opset10", "ReduceL2", [r(2, 3, 4)], {"axes": [0]}, opset=10),
    OpCase("prod-opset9-zeros", "ReduceProd", [with_zeros(2, 3, at=((0, 1),))], {"axes": [1]},
           opset=9),
    OpCase("min-opset18-runtime", "ReduceMin", [apart(2, 3, 4), runtime_axes(0, 2)],
           {"keepdims": 0}, opset=18),
    OpCase("min-opset20-noop", "ReduceMin", [apart(2, 3), NO_AXES],
           {"noop_with_empty_axes": 1}, opset=20),
    # Norms and sums of powers.
    OpCase("l1-opset11", "ReduceL1", [apart(2, 3, 4)], {"axes": [2], "keepdims": 0}, opset=11),
    OpCase("l1-opset18-runtime", "ReduceL1", [apart(2, 3, 4), runtime_axes(1)], opset=18),
    OpCase("l2-opset11", "ReduceL2", [r(2, 3, 4)], {"axes": [1, 2]}, opset=11),
    OpCase("l2-opset18-input", "ReduceL2", [r(2, 3, 4), ints(-1)], {"keepdims": 0}, opset=18),
    OpCase("sumsquare-opset11-all", "ReduceSumSquare", [r(2, 3, 4)], {"keepdims": 0},
           opset=11),
    OpCase("sumsquare-opset18-input", "ReduceSumSquare", [r(2, 3, 4), ints(0, 2)], opset=18),
    OpCase("sumsquare-opset18-noop", "ReduceSumSquare", [r(2, 3), NO_AXES],
           {"noop_with_empty_axes": 1}, opset=18),
    OpCase("logsum-opset11", "ReduceLogSum", [pos(2, 3, 4)], {"axes": [1], "keepdims": 0},
           opset=11),
    OpCase("logsum-opset18-runtime", "ReduceLogSum", [pos(2, 3, 4), runtime_axes(-1)],
           {"keepdims": 0}, opset=18),
    OpCase("logsumexp-opset11", "ReduceLogSumExp", [r(2, 3, 4)], {"axes": [2]}, opset=11),
    OpCase("logsumexp-opset18-all", "ReduceLogSumExp", [r(2, 3, 4)], {"keepdims": 0},
           opset=18),
    OpCase("logsumexp-opset18-noop", "ReduceLogSumExp", [r(2, 3), NO_AXES],
           {"noop_with_empty_axes": 1}, opset=18),
    # ReduceProd, also with one and with two exact zeros in a slice (it is multilinear, so
    # central differences stay exact there).
    OpCase("prod-opset11", "ReduceProd", [r(2, 3, 4)], {"axes": [1], "keepdims": 0}, opset=11),
    OpCase("prod-opset18-zeros", "ReduceProd",
           [with_zeros(2, 3, 4, at=((0, 1, 2), (1, 0, 0), (1, 2, 0))), ints(1)],
           {"keepdims": 0}, opset=18),
    OpCase("prod-opset18-runtime-zeros", "ReduceProd",
           [with_zeros(2, 3, 4, at=((0, 0, 1), (1, 1, 3))), runtime_axes(-1, 0)], opset=18),
    OpCase("prod-opset18-noop", "ReduceProd", [with_zeros(2, 3, at=((0, 1),)), NO_AXES],
           {"noop_with_empty_axes": 1}, opset=18),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", CASES, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def ort_gradient(case: OpCase, seed: np.ndarray) -> np.ndarray:
    """d(sum(seed * out0))/d(in0), by the gradient graph run in ONNX Runtime (float32)."""
    model, feeds = build_model(case, np.float32, symbolic=False)
    diff = differentiate(model, ["in0"], outputs=["out0"])
    session = ort.InferenceSession(diff.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    feeds[diff.seeds["out0"]] = seed.astype(np.float32)
    return session.run([diff.grads["in0"]], feeds)[0]


TIED = np.array([[[1.0, 3.0, 3.0, -2.0], [0.5, 0.5, 0.5, 0.5], [-4.0, 2.0, -4.0, 1.0]],
                 [[2.0, 2.0, 1.0, 2.0], [-1.0, -3.0, -3.0, -1.0], [7.0, 0.0, 7.0, 7.0]]])


@pytest.mark.parametrize("op, reduce", [("ReduceMax", torch.amax), ("ReduceMin", torch.amin)])
@pytest.mark.parametrize("axes", [[-1], [0, 2], None], ids=["last", "two", "all"])
def test_max_min_ties_split_evenly_as_torch(op, reduce, axes):
    attrs = {"keepdims": 0} if axes is None else {"keepdims": 0, "axes": axes}
    case = OpCase(f"{op}-ties", op, [TIED], attrs, opset=13)
    x = torch.tensor(TIED, requires_grad=True)
    y = reduce(x, dim=axes if axes is not None else list(range(3)))
    seed = np.random.default_rng(0).standard_normal(tuple(y.shape))
    (y * torch.tensor(seed)).sum().backward()
    expected = x.grad.numpy()
    assert np.count_nonzero(expected) > (6 if axes == [-1] else 1)  # ties really occur
    np.testing.assert_allclose(ort_gradient(case, seed), expected, rtol=1e-5, atol=1e-6)


def test_l2_of_a_zero_slice_has_zero_gradient_as_torch():
    data = r(3, 4)
    data[1] = 0.0
    case = OpCase("l2-zero-row", "ReduceL2", [data], {"axes": [1], "keepdims": 0}, opset=13)
    x = torch.tensor(data, requires_grad=True)
    seed = np.array([0.5, -1.5, 2.0])
    (torch.linalg.vector_norm(x, dim=1) * torch.tensor(seed)).sum().backward()
    got = ort_gradient(case, seed)
    assert np.all(np.isfinite(got)) and not got[1].any()
    np.testing.assert_allclose(got, x.grad.numpy(), rtol=1e-5, atol=1e-6)
