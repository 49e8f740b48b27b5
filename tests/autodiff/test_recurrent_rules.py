"""LSTM, GRU and RNN gradients (dX, d initial_h, d initial_c) against central finite
differences in float64 of a numpy reference of the ops (recurrent_reference.py, itself
checked against ONNX Runtime's kernels), over directions, layouts, sequence_lens, initial
states, peepholes, clip, input_forget and linear_before_reset. The gradient graphs run in
float64 in onnx's reference evaluator and in float32 in ONNX Runtime, with the sequence
length and batch symbolic (the Scans take their length at run time)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from onnxplain.autodiff import add_input_like, add_output, differentiate
from onnxplain.autodiff.build import add_gradients
from onnxplain.autodiff.ops.recurrent import finish_gate_forwards
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.builder import GraphBuilder
from onnxplain.graph.load import set_runtime_ir_version
from onnxplain.graph.shapes import infer_shapes

from .recurrent_reference import SPEC_OPS, recurrent
from .reference_fixes import CORRECTED_OPS

# ONNX Runtime's CPU kernels refuse layout 1: those cases run in onnx's reference evaluator only.
NO_LAYOUT_1 = "ONNX Runtime has no kernel for layout 1 (batch-major) recurrent ops"
GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
T, N, I, H = 5, 3, 4, 3


@dataclass
class RnnCase:
    id: str
    op: str
    attrs: dict = field(default_factory=dict)
    lens: tuple[int, ...] | None = None
    states: bool = False  # initial_h (and initial_c) as differentiated inputs
    peepholes: bool = False
    y: bool = True  # whether the node outputs Y (else the rule runs the cell again)

    def __repr__(self) -> str:
        return self.id

    @property
    def dirs(self) -> int:
        return 2 if self.attrs.get("direction") == "bidirectional" else 1


def _values(case: RnnCase) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    g, d = GATES[case.op], case.dirs
    layout = case.attrs.get("layout", 0)
    values = {"X": rng.standard_normal((N, T, I) if layout else (T, N, I)),
              "W": rng.standard_normal((d, g * H, I)) * 0.6,
              "R": rng.standard_normal((d, g * H, H)) * 0.6,
              "B": rng.standard_normal((d, 2 * g * H)) * 0.3}
    state = (N, d, H) if layout else (d, N, H)
    if case.states:
        values["initial_h"] = rng.standard_normal(state)
        if case.op == "LSTM":
            values["initial_c"] = rng.standard_normal(state)
    if case.peepholes:
        values["P"] = rng.standard_normal((d, 3 * H)) * 0.5
    return values


def _model(case: RnnCase, values: dict, dtype) -> onnx.ModelProto:
    layout = case.attrs.get("layout", 0)
    order = ["X", "W", "R", "B", "sequence_lens", "initial_h", "initial_c", "P"]
    order = order[:8 if case.op == "LSTM" else 6]
    inputs, inits, names = [], [], []
    for name in order:
        if name == "sequence_lens" and case.lens is not None:
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT32, ["n"]))
        elif name in ("X", "initial_h", "initial_c") and name in values:
            dims = ["n", "t", I] if layout else ["t", "n", I]
            if name != "X":
                dims = ["n", case.dirs, H] if layout else [case.dirs, "n", H]
            inputs.append(helper.make_tensor_value_info(
                name, helper.np_dtype_to_tensor_dtype(np.dtype(dtype)), dims))
        elif name in values:
            inits.append(numpy_helper.from_array(values[name].astype(dtype), name))
        else:
            names.append("")
            continue
        names.append(name)
    while names and not names[-1]:
        names.pop()
    node_outs = ["Y" if case.y else "", "Y_h", "Y_c"][:3 if case.op == "LSTM" else 2]
    node = helper.make_node(case.op, names, node_outs, name="cell", hidden_size=H, **case.attrs)
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    graph = helper.make_graph([node], case.id, inputs,
                              [helper.make_tensor_value_info(o, elem, [None] * rank)
                               for o, rank in zip(node_outs, (4, 3, 3), strict=False) if o],
                              inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    set_runtime_ir_version(model)
    return model


def _feeds(case: RnnCase, values: dict, dtype) -> dict[str, np.ndarray]:
    feeds = {k: values[k].astype(dtype) for k in ("X", "initial_h", "initial_c") if k in values}
    if case.lens is not None:
        feeds["sequence_lens"] = np.array(case.lens, np.int32)
    return feeds


def _outputs(case: RnnCase) -> list[str]:
    return ["Y", "Y_h", "Y_c"][0 if case.y else 1:3 if case.op == "LSTM" else 2]


def _reference(case: RnnCase, values: dict) -> tuple[np.ndarray, ...]:
    """The graph outputs (Y only where the node has it)."""
    return _all_outputs(case, values)[0 if case.y else 1:]


def _all_outputs(case: RnnCase, values: dict) -> tuple[np.ndarray, ...]:
    return recurrent(case.op, values["X"], values["W"], values["R"], values["B"],
                     None if case.lens is None else np.array(case.lens),
                     values.get("initial_h"), values.get("initial_c"), values.get("P"),
                     **case.attrs)


def _session(model: onnx.ModelProto) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


CASES = [
    RnnCase("lstm", "LSTM"),
    RnnCase("lstm-reverse-states", "LSTM", {"direction": "reverse"}, states=True),
    RnnCase("lstm-bidirectional-states", "LSTM", {"direction": "bidirectional"}, states=True),
    RnnCase("lstm-reverse-without-y", "LSTM", {"direction": "reverse"}, y=False),
    RnnCase("lstm-bidirectional-layout1", "LSTM", {"direction": "bidirectional", "layout": 1},
            states=True),
    RnnCase("lstm-padded-bidirectional", "LSTM", {"direction": "bidirectional"},
            lens=(5, 2, 3), states=True),
    RnnCase("lstm-peepholes-clip", "LSTM", {"clip": 0.8}, peepholes=True, states=True),
    RnnCase("lstm-clip-padded", "LSTM", {"clip": 0.6}, lens=(5, 1, 3), states=True),
    RnnCase("lstm-input-forget", "LSTM", {"input_forget": 1}, peepholes=True),
    RnnCase("lstm-without-y-padded-reverse", "LSTM", {"direction": "reverse"}, lens=(4, 5, 1),
            states=True, y=False),
    RnnCase("gru", "GRU", states=True),
    RnnCase("gru-without-y", "GRU", {"direction": "bidirectional"}, y=False),
    RnnCase("gru-linear-before-reset", "GRU", {"linear_before_reset": 1,
                                               "direction": "bidirectional"}, states=True),
    RnnCase("gru-padded-reverse-layout1-clip", "GRU", {"direction": "reverse", "layout": 1,
                                                       "clip": 0.7}, lens=(3, 5, 1)),
    RnnCase("rnn-bidirectional", "RNN", {"direction": "bidirectional"}, states=True),
    RnnCase("rnn-padded-clip", "RNN", {"clip": 0.5}, lens=(2, 5, 4), states=True),
    RnnCase("rnn-padded-reverse-without-y", "RNN", {"direction": "reverse"}, lens=(2, 5, 4),
            y=False),
]
# Every activation function the spec allows, some differing between directions, alpha and
# beta consumed in order by the functions that take them.
ACTIVATION_CASES = [
    RnnCase("lstm-activations-bidirectional", "LSTM", {
        "direction": "bidirectional", "activation_alpha": [0.3, 0.8, 0.6, 0.1, 0.4],
        "activation_beta": [0.4, 1.2, 0.1],
        "activations": ["HardSigmoid", "ScaledTanh", "Affine", "Sigmoid", "LeakyRelu",
                        "ThresholdedRelu"]}, states=True),
    RnnCase("lstm-activations-padded-peepholes", "LSTM", {
        "direction": "reverse", "activations": ["Sigmoid", "Softsign", "Elu"]},
        lens=(4, 5, 2), peepholes=True, states=True),
    RnnCase("gru-activations-bidirectional", "GRU", {
        "direction": "bidirectional", "activation_alpha": [0.25, 0.7],
        "activation_beta": [0.45],
        "activations": ["HardSigmoid", "Elu", "Sigmoid", "Softplus"]}, states=True),
    RnnCase("gru-activations-linear-before-reset", "GRU", {
        "linear_before_reset": 1, "activations": ["Softsign", "Relu"]}, states=True),
    RnnCase("rnn-activations-bidirectional-padded", "RNN", {
        "direction": "bidirectional", "activation_alpha": [0.2],
        "activations": ["Relu", "LeakyRelu"]}, lens=(5, 3, 4), states=True),
    RnnCase("rnn-activations-clip", "RNN", {
        "clip": 0.9, "activation_alpha": [-0.2], "activations": ["ThresholdedRelu"]},
        states=True, y=False),
]
CASES += ACTIVATION_CASES


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_reference_matches_onnxruntime(case: RnnCase):
    """The oracle itself: the numpy reference equals ONNX Runtime's kernel (float32)."""
    if case.attrs.get("layout"):
        pytest.skip(NO_LAYOUT_1)
    values = _values(case)
    got = _session(_model(case, values, np.float32)).run(None, _feeds(case, values, np.float32))
    for value, expected in zip(got, _reference(case, values), strict=True):
        np.testing.assert_allclose(value, expected, atol=2e-5, err_msg=case.id)


@pytest.mark.parametrize("case", CASES, ids=repr)
def test_gradient_matches_finite_differences(case: RnnCase):
    values = _values(case)
    rng = np.random.default_rng(3)
    wrt = [k for k in ("X", "initial_h", "initial_c") if k in values]
    outs = _outputs(case)
    expected = _reference(case, values)
    seeds = {o: rng.standard_normal(v.shape) for o, v in zip(outs, expected, strict=True)}
    diff = differentiate(_model(case, values, np.float64), wrt, outputs=outs)
    onnx.checker.check_model(diff.model, full_check=True)
    feeds = _feeds(case, values, np.float64)
    feeds.update({diff.seeds[o]: s for o, s in seeds.items()})
    evaluator = ReferenceEvaluator(diff.model, new_ops=CORRECTED_OPS + SPEC_OPS)
    grads = dict(zip(wrt, evaluator.run([diff.grads[w] for w in wrt], feeds), strict=True))

    def objective(perturbed: dict) -> float:
        outputs = _reference(case, perturbed)
        return float(sum(np.sum(seeds[o] * v) for o, v in zip(outs, outputs, strict=True)))

    eps = 1e-6
    for name in wrt:
        for _ in range(2):
            direction = rng.standard_normal(values[name].shape)
            plus, minus = dict(values), dict(values)
            plus[name] = values[name] + eps * direction
            minus[name] = values[name] - eps * direction
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            analytic = float(np.sum(grads[name] * direction))
            assert abs(numeric - analytic) <= 1e-6 * max(1.0, abs(numeric)), (
                f"{case.id} d/d{name}: finite differences {numeric!r}, rule {analytic!r}")
    if not case.attrs.get("layout"):
        _check_onnxruntime(case, values, wrt, seeds, grads)


# The LSTMs whose gradient programs run them as Scans that keep the gates.
GATE_SCANS = [c for c in CASES if c.id in ("lstm", "lstm-reverse-states",
                                          "lstm-bidirectional-states", "lstm-reverse-without-y")]


@pytest.mark.parametrize("case", GATE_SCANS, ids=repr)
def test_gradient_program_runs_lstm_as_scans_keeping_its_outputs(case: RnnCase):
    """The gradient program replaces the kernel by Scans (the gates are read, not recomputed);
    its Y, Y_h, Y_c stay ONNX Runtime's kernel's within float32 rounding."""
    values = _values(case)
    model = _model(case, values, np.float32)
    wrt = [k for k in ("X", "initial_h", "initial_c") if k in values]
    outs = _outputs(case)
    diff = differentiate(model, wrt, outputs=outs)
    ops = [node.op_type for node in diff.model.graph.node]
    assert "LSTM" not in ops and "Scan" in ops
    assert "LSTM" in [node.op_type for node in model.graph.node]  # the forward keeps it
    feeds = _feeds(case, values, np.float32)
    expected = _session(model).run(outs, feeds)
    feeds.update({diff.seeds[o]: np.ones_like(v) for o, v in zip(outs, expected, strict=True)})
    got = _session(diff.model).run(outs, feeds)
    for name, value, kernel in zip(outs, got, expected, strict=True):
        np.testing.assert_allclose(value, kernel, rtol=1e-5, atol=1e-6, err_msg=name)


def test_two_passes_share_one_gate_forward():
    """A second backward pass (other rule sets' programs) still finds the LSTM node and
    reads the same Scans' gates; the kernel is gone once both are emitted."""
    case = next(c for c in GATE_SCANS if c.id == "lstm-bidirectional-states")
    values = _values(case)
    model = _model(case, values, np.float32)
    b = GraphBuilder(model, infer_shapes(model))
    seeds = {"Y": add_input_like(b, "seed_Y", "Y")}
    passes = [add_gradients(b, seeds, ["X"])["X"] for _ in range(2)]
    finish_gate_forwards(b)
    names = [add_output(b, f"dX{k}", grad, like="X") for k, grad in enumerate(passes)]
    ops = [node.op_type for node in model.graph.node]
    assert "LSTM" not in ops and ops.count("Scan") == 3 * case.dirs  # forward, 2 backward
    feeds = _feeds(case, values, np.float32)
    feeds["seed_Y"] = np.random.default_rng(5).standard_normal(
        _reference(case, values)[0].shape).astype(np.float32)
    first, second = _session(model).run(names, feeds)
    reference = differentiate(_model(case, values, np.float32), ["X"], outputs=["Y"])
    expected = _session(reference.model).run([reference.grads["X"]],
                                             {**_feeds(case, values, np.float32),
                                              reference.seeds["Y"]: feeds["seed_Y"]})[0]
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-6)


def test_gate_forward_reads_nothing_emitted_after_the_kernel():
    """A rule that ran before the LSTM's (a ReduceSum of X after the node) memoises X's shape
    at the end of the graph; the Scans that move to the kernel's place must not read it."""
    case = next(c for c in GATE_SCANS if c.id == "lstm")
    values = _values(case)
    model = _model(case, values, np.float32)
    model.graph.node.extend([
        helper.make_node("ReduceSum", ["X"], ["X_sum"], keepdims=1),
        helper.make_node("Add", ["Y", "X_sum"], ["Z"])])
    model.graph.output.append(helper.make_tensor_value_info("Z", TensorProto.FLOAT,
                                                            ["t", 1, "n", H]))
    diff = differentiate(model, ["X"], outputs=["Z"])
    onnx.checker.check_model(diff.model, full_check=True)
    feeds = _feeds(case, values, np.float32)
    y = _session(model).run(["Z"], feeds)[0]
    feeds[diff.seeds["Z"]] = np.ones_like(y)
    got = _session(diff.model).run([diff.grads["X"]], feeds)[0]
    plain = differentiate(_model(case, values, np.float32), ["X"], outputs=["Y"])
    expected = _session(plain.model).run([plain.grads["X"]], {
        **_feeds(case, values, np.float32), plain.seeds["Y"]: np.ones_like(y)})[0]
    np.testing.assert_allclose(got, expected + y.size, rtol=1e-5)  # X_sum reaches every Z


def _check_onnxruntime(case, values, wrt, seeds, grads) -> None:
    """The float32 gradient graph runs in ONNX Runtime and agrees with the float64 one."""
    diff = differentiate(_model(case, values, np.float32), wrt, outputs=list(seeds))
    feeds = _feeds(case, values, np.float32)
    feeds.update({diff.seeds[o]: s.astype(np.float32) for o, s in seeds.items()})
    got = _session(diff.model).run([diff.grads[w] for w in wrt], feeds)
    for name, value in zip(wrt, got, strict=True):
        np.testing.assert_allclose(value, grads[name], rtol=1e-3, atol=1e-4,
                                   err_msg=f"{case.id}: ONNX Runtime float32 d/d{name}")


def test_one_set_of_activations_for_two_directions_is_refused():
    """ONNX Runtime refuses such a node too: the spec wants every direction's functions."""
    case = RnnCase("gru-one-set", "GRU", {"direction": "bidirectional",
                                          "activations": ["Sigmoid", "Relu"]})
    model = _model(case, _values(case), np.float32)
    with pytest.raises(UnsupportedOpError, match=r"GRU node 'cell': activations \['Sigmoid', "
                       r"'Relu'\] do not give every direction's functions"):
        differentiate(model, ["X"], outputs=["Y"])


@pytest.mark.parametrize("activations", [["Affine"], ["ScaledTanh"], ["ThresholdedRelu"]])
def test_activations_without_their_arguments_are_refused_by_node(activations):
    """The spec defaults them to their operators' values, ONNX Runtime to 0."""
    case = RnnCase("rnn-defaults", "RNN", {"activations": activations})
    model = _model(case, _values(case), np.float32)
    with pytest.raises(UnsupportedOpError, match=rf"RNN node 'cell': activation "
                       rf"{activations[0]} without activation_alpha/activation_beta values"):
        differentiate(model, ["X"], outputs=["Y"])


def test_weight_gradients_are_refused():
    case = RnnCase("gru-weights", "GRU")
    model = _model(case, _values(case), np.float32)
    weights = model.graph.initializer[0]  # W, as a graph input to differentiate
    model.graph.input.append(helper.make_tensor_value_info(
        weights.name, TensorProto.FLOAT, list(weights.dims)))
    del model.graph.initializer[0]
    with pytest.raises(UnsupportedOpError, match="weights W, R, B, P"):
        differentiate(model, ["X", "W"], outputs=["Y"])
