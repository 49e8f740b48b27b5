import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from onnxplain.autodiff import differentiate
from onnxplain.autodiff.ops.conv import Window, output_dims
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.load import set_runtime_ir_version

from .cases import OpCase, apart, pos, r
from .gradcheck import check_case, evaluator


def pool(op, id, x, opset=17, **attrs):
    return OpCase(id, op, [x], attrs, opset=opset)


def max_pool(id, x, opset=17, **attrs):
    return pool("MaxPool", id, x, opset, **attrs)


def avg_pool(id, x, opset=17, **attrs):
    return pool("AveragePool", id, x, opset, **attrs)


STEM = {"kernel_shape": [3, 3], "strides": [2, 2], "pads": [1, 1, 1, 1]}

MAX_POOL = [
    max_pool("stem", apart(2, 3, 7, 8), **STEM),
    max_pool("stem-opset12-classes", apart(2, 2, 7, 6), opset=12, **STEM),
    max_pool("stem-opset11-classes", apart(1, 2, 8, 7), opset=11, **STEM),
    max_pool("stem-opset10-scatter", apart(1, 2, 6, 7), opset=10, **STEM),
    max_pool("disjoint-opset9", apart(2, 2, 6, 6), opset=9, kernel_shape=[2, 2],
             strides=[2, 2]),
    max_pool("stride1-opset13", apart(1, 2, 5, 6), opset=13, kernel_shape=[3, 3],
             pads=[1, 1, 1, 1]),
    max_pool("stride1", apart(1, 2, 5, 6), kernel_shape=[3, 2], pads=[1, 0, 1, 1]),
    max_pool("dilated-ceil", apart(1, 2, 8, 9), kernel_shape=[2, 3], strides=[2, 2],
             dilations=[2, 1], pads=[1, 0, 0, 1], ceil_mode=1),
    max_pool("ceil-opset11", apart(1, 1, 8, 8), opset=11, kernel_shape=[3, 3],
             strides=[2, 2], ceil_mode=1),
    max_pool("storage-order", apart(2, 2, 6, 7), kernel_shape=[3, 2], strides=[2, 2],
             storage_order=1),
    max_pool("storage-order-3d", apart(1, 2, 4, 5, 3), kernel_shape=[2, 2, 2],
             strides=[2, 1, 2], storage_order=1),
    max_pool("1d", apart(2, 3, 9), kernel_shape=[3], strides=[2], pads=[1, 0]),
    max_pool("3d", apart(1, 2, 4, 3, 5), kernel_shape=[2, 2, 3], strides=[1, 2, 2],
             pads=[1, 0, 1, 0, 1, 1]),
    max_pool("3d-opset11", apart(1, 1, 4, 4, 4), opset=11, kernel_shape=[2, 2, 2],
             strides=[1, 1, 1]),
    max_pool("same-upper", apart(1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2],
             auto_pad="SAME_UPPER"),
    max_pool("opset22", apart(1, 2, 6, 6), opset=22, kernel_shape=[3, 3], strides=[2, 1],
             dilations=[1, 2]),
]

AVERAGE_POOL = [
    avg_pool("exclude-pad", r(2, 3, 7, 8), **STEM),
    avg_pool("include-pad", r(1, 2, 7, 6), count_include_pad=1, **STEM),
    avg_pool("no-pads", r(2, 2, 6, 6), kernel_shape=[2, 2], strides=[2, 2]),
    avg_pool("asymmetric-pads", r(1, 2, 6, 7), kernel_shape=[3, 2], strides=[1, 2],
             pads=[0, 1, 2, 0]),
    avg_pool("ceil-exclude", r(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2],
             pads=[1, 0, 0, 1], ceil_mode=1),
    avg_pool("ceil-include", r(1, 2, 8, 7), kernel_shape=[3, 2], strides=[2, 2],
             pads=[1, 0, 0, 1], ceil_mode=1, count_include_pad=1),
    avg_pool("ceil-no-pads", r(1, 2, 8, 7), kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1),
    avg_pool("stride1-asymmetric", r(1, 2, 6, 5), kernel_shape=[3, 2], pads=[2, 0, 0, 1]),
    avg_pool("stride1-include-pad", r(2, 2, 5, 6), kernel_shape=[2, 3], pads=[1, 0, 0, 2],
             count_include_pad=1),
    avg_pool("1d", r(2, 3, 9), kernel_shape=[3], strides=[2], pads=[1, 1]),
    avg_pool("3d", r(1, 2, 4, 5, 4), kernel_shape=[2, 3, 2], strides=[2, 1, 2],
             pads=[0, 1, 1, 1, 1, 0]),
    avg_pool("same-upper-exclude", r(1, 2, 7, 6), kernel_shape=[3, 3], strides=[2, 2],
             auto_pad="SAME_UPPER"),
    avg_pool("dilated-opset19", r(1, 2, 8, 7), opset=19, kernel_shape=[2, 2],
             strides=[2, 1], dilations=[2, 2], pads=[1, 1, 0, 1]),
    avg_pool("opset9", r(1, 2, 6, 7), opset=9, kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
    avg_pool("opset10-ceil", r(1, 2, 7, 7), opset=10, kernel_shape=[2, 2], strides=[2, 2],
             ceil_mode=1),
    avg_pool("opset11-strided", r(1, 2, 7, 8), opset=11, count_include_pad=1, **STEM),
]

OTHERS = [
    pool("GlobalAveragePool", "global-average", r(2, 3, 4, 5)),
    pool("GlobalAveragePool", "global-average-1d", r(2, 3, 6), opset=9),
    pool("GlobalMaxPool", "global-max", apart(2, 3, 4, 5)),
    pool("GlobalMaxPool", "global-max-opset9", apart(2, 2, 3, 2), opset=9),
    pool("GlobalMaxPool", "global-max-3d", apart(1, 2, 2, 3, 2), opset=13),
    pool("LRN", "lrn-odd", r(2, 5, 3, 4), size=3, alpha=0.5, beta=0.75, bias=1.5),
    pool("LRN", "lrn-defaults-opset9", r(1, 4, 5, 2), size=5),
    pool("LRN", "lrn-wide", r(1, 3, 2, 2), size=7, alpha=2.0, beta=1.2, bias=2.0, opset=13),
]

# Opset 9 has no strided Slice: overlapping windows work on static shapes only.
STATIC_ONLY = [
    max_pool("stem-opset9-classes", apart(1, 2, 7, 6), opset=9, **STEM),
    max_pool("stride1-opset9", apart(1, 1, 5, 4), opset=9, kernel_shape=[2, 2]),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", MAX_POOL + AVERAGE_POOL + OTHERS, ids=repr)
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


@pytest.mark.parametrize("case", STATIC_ONLY, ids=repr)
def test_static_shapes_match_finite_differences(case):
    check_case(case, symbolic=False)


def _model(op: str, x_dims: list, opset: int = 17, dtype: int = onnx.TensorProto.FLOAT,
           **attrs) -> onnx.ModelProto:
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info("x", dtype, x_dims)],
        [helper.make_tensor_value_info("y", dtype, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_runtime_ir_version(model)
    return model


def _ort_gradient(model: onnx.ModelProto, x: np.ndarray, seed: np.ndarray) -> np.ndarray:
    diff = differentiate(model, ["x"])
    session = ort.InferenceSession(diff.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run([diff.grads["x"]], {"x": x, diff.seeds["y"]: seed})[0]


def test_max_pool_ties_follow_torch():
    """After a ReLU most windows tie at zero: the gradient goes where torch sends it."""
    x = np.maximum(np.round(r(2, 3, 9, 8), 1), 0).astype(np.float32)
    model = _model("MaxPool", ["n", 3, "h", "w"], **STEM)
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    seed = r(*yt.shape).astype(np.float32)
    yt.backward(torch.tensor(seed))
    np.testing.assert_allclose(_ort_gradient(model, x, seed), xt.grad.numpy(), atol=1e-6)


def test_max_pool_same_lower_follows_torch():
    """SAME_LOWER (the reference evaluator pads it like SAME_UPPER): against torch on the
    input padded as ONNX Runtime does, 1 row/column before and 0 after."""
    x = apart(1, 2, 6, 5).astype(np.float32)
    model = _model("MaxPool", [1, 2, "h", "w"], kernel_shape=[2, 2], strides=[2, 2],
                   auto_pad="SAME_LOWER")
    xt = torch.tensor(x, requires_grad=True)
    padded = torch.nn.functional.pad(xt, (1, 0, 0, 0), value=-np.inf)
    yt = torch.nn.functional.max_pool2d(padded, 2, 2)
    seed = r(*yt.shape).astype(np.float32)
    yt.backward(torch.tensor(seed))
    np.testing.assert_allclose(_ort_gradient(model, x, seed), xt.grad.numpy(), atol=1e-6)


def _linear_oracle(model: onnx.ModelProto, x_shape: tuple, seed: np.ndarray) -> np.ndarray:
    """d(sum(seed * f(x)))/dx for a linear f, from ONNX Runtime's own forward on unit inputs."""
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    grad = np.zeros(int(np.prod(x_shape)), dtype=np.float32)
    for i in range(grad.size):
        unit = np.zeros_like(grad)
        unit[i] = 1.0
        grad[i] = np.sum(session.run(None, {"x": unit.reshape(x_shape)})[0] * seed)
    return grad.reshape(x_shape)


@pytest.mark.parametrize("dims", [[1, 2, 6, 5], [1, 2, "h", "w"]], ids=["static", "symbolic"])
def test_average_pool_same_lower_follows_onnxruntime(dims):
    """The reference evaluator pads SAME_LOWER like SAME_UPPER; ONNX Runtime's own forward
    on unit inputs is the oracle (the odd pad goes first: 1 column before, none after)."""
    model = _model("AveragePool", dims, kernel_shape=[2, 2], strides=[2, 2],
                   auto_pad="SAME_LOWER")
    x, seed = r(1, 2, 6, 5).astype(np.float32), r(1, 2, 3, 3).astype(np.float32)
    np.testing.assert_allclose(_ort_gradient(model, x, seed),
                               _linear_oracle(model, x.shape, seed), atol=1e-6)


def test_average_pool_ceil_mode_drops_a_window_starting_in_the_padding():
    """Length 4, kernel 2, stride 2, end pad 1: ceil mode would add a third window starting
    in the padding; ONNX Runtime drops it. ONNX shape inference does not (so a static model
    fails the checker and gets a wrongly shaped seed): dynamic dims only here."""
    model = _model("AveragePool", [2, 2, "l"], kernel_shape=[2], strides=[2], pads=[0, 1],
                   ceil_mode=1)
    x, seed = r(2, 2, 4).astype(np.float32), r(2, 2, 2).astype(np.float32)
    np.testing.assert_allclose(_ort_gradient(model, x, seed),
                               _linear_oracle(model, x.shape, seed), atol=1e-6)


@pytest.mark.parametrize(("length", "kernel", "stride", "dilation", "pads", "ceil"), [
    (4, 2, 2, 1, [0, 1], 1), (7, 3, 2, 1, [1, 1], 1), (8, 3, 3, 1, [0, 2], 1),
    (9, 2, 2, 2, [1, 0], 1), (7, 3, 2, 1, [1, 1], 0), (6, 2, 3, 2, [0, 1], 0),
])
def test_static_output_lengths_match_onnxruntime(length, kernel, stride, dilation, pads, ceil):
    """The static adjoint relies on output_dims; ONNX Runtime's forward is the truth."""
    attrs = {"kernel_shape": [kernel], "strides": [stride], "dilations": [dilation],
             "pads": pads, "ceil_mode": ceil}
    model = _model("MaxPool", [1, 1, length], opset=19, **attrs)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": np.zeros((1, 1, length), np.float32)})[0].shape[2:]
    win = Window((kernel,), (stride,), (dilation,), tuple(pads), "NOTSET")
    assert output_dims([length], win, pads, bool(ceil)) == list(got)


def test_global_max_pool_splits_ties_evenly():
    x = np.array([[[[1.0, 3.0], [3.0, 2.0]], [[5.0, 5.0], [5.0, 0.0]]]], dtype=np.float32)
    model = _model("GlobalMaxPool", [1, 2, 2, 2])
    seed = np.array([[[[6.0]], [[3.0]]]], dtype=np.float32)
    expected = [[[[0, 3], [3, 0]], [[1, 1], [1, 0]]]]
    np.testing.assert_allclose(_ort_gradient(model, x, seed), expected)


def test_lrn_even_size_follows_the_spec():
    """ONNX Runtime refuses even sizes, so this runs in the reference evaluator. The spec's
    size-4 window is [c-1, c+2] and torch's [c-2, c+1]: torch on reversed channels agrees."""
    x, seed = pos(2, 6, 3, 2), r(2, 6, 3, 2)
    attrs = {"size": 4, "alpha": 0.75, "beta": 0.625, "bias": 1.25}  # exact in float32
    diff = differentiate(_model("LRN", list(x.shape), dtype=onnx.TensorProto.DOUBLE, **attrs),
                         ["x"])
    grad = evaluator(diff.model).run([diff.grads["x"]], {"x": x, diff.seeds["y"]: seed})[0]
    xt = torch.tensor(x, requires_grad=True)
    yt = torch.nn.functional.local_response_norm(xt.flip(1), 4, alpha=0.75, beta=0.625, k=1.25)
    yt.flip(1).backward(torch.tensor(seed))
    np.testing.assert_allclose(grad, xt.grad.numpy(), rtol=1e-10)


def test_max_pool_reuses_and_adds_indices():
    model = _model("MaxPool", [1, 1, 4, 4], kernel_shape=[2, 2], strides=[2, 2])
    node = differentiate(model, ["x"]).model.graph.node[0]
    assert node.op_type == "MaxPool" and len(node.output) == 2 and node.output[1]


def test_overlapping_max_pool_over_dynamic_dims_at_opset9_is_rejected():
    model = _model("MaxPool", ["n", 2, "h", "w"], opset=9, **STEM)
    with pytest.raises(UnsupportedOpError, match="need opset 10"):
        differentiate(model, ["x"])
