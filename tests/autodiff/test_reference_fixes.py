"""The corrected reference (reference_fixes.py) agrees with ONNX Runtime where onnx 1.23's own
reference evaluator does not: the gradient checks trust its forward passes."""

import numpy as np
import onnxruntime as ort
import pytest

from .cases import Const, OpCase, apart, ints, pos, r
from .gradcheck import build_model, evaluator


def f32(*values: float) -> Const:
    return Const(np.array(values, dtype=np.float32), keep_dtype=True)


CASES = [
    OpCase("conv-transpose-group", "ConvTranspose", [r(1, 4, 3, 3), Const(r(4, 3, 3, 3))],
           {"group": 2, "strides": [2, 2], "pads": [1, 1, 0, 0]}),
    OpCase("conv-transpose-output-shape", "ConvTranspose", [r(1, 2, 5), Const(r(2, 3, 3))],
           {"strides": [2], "output_shape": [10]}),
    OpCase("max-pool-stride1-indices", "MaxPool", [apart(1, 2, 5, 6)],
           {"kernel_shape": [3, 2], "pads": [1, 0, 1, 1]}, n_outputs=2),
    OpCase("max-pool-same-lower", "MaxPool", [apart(1, 2, 6, 5)],
           {"kernel_shape": [2, 3], "strides": [2, 2], "auto_pad": "SAME_LOWER"}, n_outputs=2),
    OpCase("max-pool-same-upper-3d", "MaxPool", [apart(1, 1, 4, 3, 5)],
           {"kernel_shape": [2, 2, 3], "auto_pad": "SAME_UPPER"}),
    OpCase("global-max-pool-3d", "GlobalMaxPool", [r(2, 3, 5)]),
    OpCase("global-max-pool-5d", "GlobalMaxPool", [r(1, 2, 3, 2, 4)]),
    OpCase("lrn", "LRN", [r(2, 5, 3, 4)], {"size": 3, "alpha": 0.5, "beta": 0.75, "bias": 1.5}),
    OpCase("softmax-opset11", "Softmax", [r(2, 3, 4)], {"axis": 1}, opset=11),
    OpCase("log-softmax-opset9", "LogSoftmax", [r(2, 3, 4)], opset=9),
    OpCase("batch-norm-opset9", "BatchNormalization",
           [r(2, 3, 4), Const(r(3)), Const(r(3)), Const(r(3)), Const(pos(3))], opset=9),
    OpCase("scatter-opset9", "Scatter", [r(3, 3), ints(2, 0, 1).value.reshape(1, 3), r(1, 3)],
           opset=9),
    OpCase("gather-elements-smaller", "GatherElements",
           [r(3, 4, 2), Const(np.array([[[2], [0], [2]], [[-3], [1], [2]]]))], opset=13),
    OpCase("pad-negative-opset9", "Pad", [r(4, 5)], {"pads": [-1, 2, 1, -2]}, opset=9),
    OpCase("pad-negative-axes", "Pad", [r(2, 3, 4), ints(1, -1, 2, 0), None, ints(-1, 0)],
           opset=18),
    OpCase("resize10-linear", "Resize", [r(1, 2, 4, 5), f32(1, 1, 0.5, 0.6)],
           {"mode": "linear"}, opset=10),
    OpCase("resize10-nearest", "Resize", [r(1, 2, 4, 5), f32(1, 1, 1.5, 2)], opset=10),
    OpCase("upsample-linear", "Upsample", [r(1, 2, 4, 5), f32(1, 1, 2, 1.5)],
           {"mode": "linear"}, opset=9),
    OpCase("resize18-negative-axes", "Resize", [r(1, 2, 4, 5), None, f32(2, 0.5)],
           {"mode": "linear", "axes": [-1, 2]}, opset=18),
]


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_corrected_reference_agrees_with_onnxruntime(case):
    model, feeds = build_model(case, np.float32, symbolic=False)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    expected = session.run(None, feeds)
    got = evaluator(model).run(None, feeds)
    for want, have in zip(expected, got, strict=True):
        assert np.shape(have) == np.shape(want)
        np.testing.assert_allclose(have, want, rtol=1e-5, atol=1e-5)
