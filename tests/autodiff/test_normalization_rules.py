import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.load import set_runtime_ir_version

from .cases import Const, OpCase, pos, r
from .gradcheck import build_model, check_case
from .reference_fixes import Softmax


def test_spec_softmax_coerces_to_2d_before_opset_13():
    """The corrected reference itself: one softmax over axes 1 and 2 at opset 11."""
    case = OpCase("softmax", "Softmax", [r(2, 3, 4)], {"axis": 1}, opset=11)
    model, feeds = build_model(case, np.float64, symbolic=False)
    out = ReferenceEvaluator(model, new_ops=[Softmax]).run(None, feeds)[0]
    np.testing.assert_allclose(out.sum(axis=(1, 2)), 1.0)
    assert not np.allclose(out.sum(axis=1), 1.0)


SOFTMAX_CASES = [
    OpCase("softmax-opset13-default", "Softmax", [r(2, 3, 4)], opset=13),
    OpCase("softmax-opset13-axis1", "Softmax", [r(2, 3, 4)], {"axis": 1}, opset=13),
    OpCase("softmax-opset18-negative", "Softmax", [r(2, 3, 4)], {"axis": -2}, opset=18),
    OpCase("softmax-opset11-2d-axis1", "Softmax", [r(2, 3, 4)], {"axis": 1}, opset=11),
    OpCase("softmax-opset9-default", "Softmax", [r(2, 3, 4)], opset=9),
    OpCase("softmax-opset11-negative", "Softmax", [r(2, 3, 4, 2)], {"axis": -3}, opset=11),
    OpCase("logsoftmax-opset13-axis0", "LogSoftmax", [r(2, 3, 4)], {"axis": 0}, opset=13),
    OpCase("logsoftmax-opset18-default", "LogSoftmax", [r(3, 5)], opset=18),
    OpCase("logsoftmax-opset11-2d-axis1", "LogSoftmax", [r(2, 3, 4)], {"axis": 1}, opset=11),
]

BN_STATS = [Const(r(3)), Const(r(3)), Const(r(3)), Const(pos(3))]

NORM_CASES = [
    # BatchNormalization in inference mode.
    OpCase("bn-opset9-const", "BatchNormalization", [r(2, 3, 4, 5), *BN_STATS],
           {"epsilon": 1e-3}, opset=9),
    OpCase("bn-opset14-rank2", "BatchNormalization", [r(4, 3), *BN_STATS], opset=14),
    OpCase("bn-opset15-all-active", "BatchNormalization",
           [r(2, 3, 4), r(3), r(3), r(3), pos(3)], {"training_mode": 0}, opset=15),
    OpCase("bn-opset15-rank1", "BatchNormalization", [r(5), r(1), r(1), r(1), pos(1)],
           opset=15),
    OpCase("bn-opset15-var-active", "BatchNormalization",
           [r(2, 3, 2, 2), Const(r(3)), Const(r(3)), Const(r(3)), pos(3)], opset=15),
    # LayerNormalization: axes from `axis` on; scale/bias broadcast against x[axis:].
    OpCase("ln-last", "LayerNormalization", [r(2, 3, 8), r(8), r(8)]),
    OpCase("ln-axis1", "LayerNormalization", [r(2, 3, 4), r(3, 4), r(3, 4)], {"axis": 1}),
    OpCase("ln-negative-broadcast", "LayerNormalization", [r(2, 3, 4), r(1, 4), r(4)],
           {"axis": -2, "epsilon": 1e-3}, opset=18),
    OpCase("ln-const-scale-no-bias", "LayerNormalization", [r(4, 6), Const(r(6))], opset=17),
    OpCase("ln-opset23-stash-double", "LayerNormalization", [r(2, 3, 4), r(4), r(4)],
           {"stash_type": 1}, opset=23),
    # InstanceNormalization: per sample and channel over the spatial axes.
    OpCase("in-opset9-rank4", "InstanceNormalization", [r(2, 3, 4, 5), r(3), r(3)], opset=9),
    OpCase("in-rank3-const", "InstanceNormalization", [r(2, 3, 6), Const(r(3)), Const(r(3))],
           {"epsilon": 1e-2}),
    # GroupNormalization: scale and bias per group in opset 18, per channel from 21.
    OpCase("gn-opset18-per-group", "GroupNormalization", [r(2, 6, 3, 2), r(3), r(3)],
           {"num_groups": 3}, opset=18),
    OpCase("gn-opset18-const", "GroupNormalization",
           [r(2, 4, 5), Const(r(2)), Const(r(2))], {"num_groups": 2}, opset=18),
    OpCase("gn-opset21-per-channel", "GroupNormalization", [r(2, 6, 5), r(6), r(6)],
           {"num_groups": 2, "stash_type": 11}, opset=21),
    OpCase("gn-opset21-const", "GroupNormalization", [r(2, 4, 2, 3), Const(r(4)), Const(r(4))],
           {"num_groups": 4, "stash_type": 11}, opset=21),
]


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", SOFTMAX_CASES, ids=repr)
def test_softmax_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("case", NORM_CASES, ids=repr)
def test_norm_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


@pytest.mark.parametrize("symbolic", [False, True], ids=["static", "symbolic"])
@pytest.mark.parametrize("seeded", [(0, 1, 2), (1,), (2,), (1, 2)],
                         ids=["all", "mean", "inv-std", "stats"])
def test_layer_norm_statistics_outputs_match_torch(seeded, symbolic):
    """When the model reads LayerNormalization's Mean and InvStdDev outputs, their gradients
    flow into x too. (Mean and InvStdDev are float32 by the spec, so no float64 check.)"""
    x, scale, bias = r(2, 3, 5), r(5), r(5)
    case = OpCase("ln-stats", "LayerNormalization", [x, scale, bias], {"epsilon": 1e-3},
                  n_outputs=3)
    model, feeds = build_model(case, np.float32, symbolic)
    outputs = [f"out{k}" for k in seeded]
    diff = differentiate(model, ["in0", "in1", "in2"], outputs=outputs)
    rng = np.random.default_rng(5)
    shapes = {"out0": x.shape, "out1": (2, 3, 1), "out2": (2, 3, 1)}
    seeds = {o: rng.standard_normal(shapes[o]) for o in outputs}
    feeds.update({diff.seeds[o]: s.astype(np.float32) for o, s in seeds.items()})
    session = ort.InferenceSession(diff.model.SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    got = session.run([diff.grads[n] for n in ("in0", "in1", "in2")], feeds)

    xt, st, bt = (torch.tensor(v, requires_grad=True) for v in (x, scale, bias))
    mean = xt.mean(-1, keepdim=True)
    inv_std = 1 / torch.sqrt(((xt - mean) ** 2).mean(-1, keepdim=True) + 1e-3)
    values = {"out0": (xt - mean) * inv_std * st + bt, "out1": mean, "out2": inv_std}
    sum(torch.sum(values[o] * torch.tensor(s)) for o, s in seeds.items()).backward()
    for value, tensor in zip(got, (xt, st, bt), strict=True):
        expected = tensor.grad.numpy() if tensor.grad is not None else np.zeros(tensor.shape)
        np.testing.assert_allclose(value, expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("attrs, opset, n_outputs, reason", [
    ({"training_mode": 1}, 15, 1, "training_mode=1"),
    ({}, 9, 5, "running-statistics outputs"),
], ids=["training-mode", "training-outputs"])
def test_batch_norm_training_mode_is_rejected(attrs, opset, n_outputs, reason):
    names = ["x", "scale", "bias", "mean", "var"]
    outputs = ["y", "running_mean", "running_var", "saved_mean", "saved_var"][:n_outputs]
    node = helper.make_node("BatchNormalization", names, outputs, **attrs)
    graph = helper.make_graph([node], "bn", [
        helper.make_tensor_value_info(n, TensorProto.FLOAT, [2, 3, 4] if n == "x" else [3])
        for n in names], [helper.make_tensor_value_info(n, TensorProto.FLOAT, None)
                          for n in outputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_runtime_ir_version(model)
    with pytest.raises(UnsupportedOpError, match=reason):
        differentiate(model, ["x"], outputs=["y"])


def test_batch_norm_folds_constant_statistics():
    """With constant scale and var, dx is one Mul by a precomputed per-channel gain."""
    case = OpCase("bn", "BatchNormalization", [r(2, 3, 4, 5), *BN_STATS], opset=15)
    model, _ = build_model(case, np.float32, symbolic=True)
    diff = differentiate(model, ["in0"], outputs=["out0"])
    added = [n.op_type for n in diff.model.graph.node[1:]]
    assert added == ["Mul", "Identity"]
