"""Gradients through If, Loop and Scan against central finite differences in float64.

Each case is a small hand-built model (captured outer tensors, nested subgraphs, carried
state, scan outputs); model and gradient graph run in ONNX Runtime in float64 (onnx's
reference evaluator mis-stacks Loop scan outputs and skips loops without a condition), and
the gradient graph built in float32 runs there too.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.autodiff import GRADIENT, differentiate
from onnxplain.errors import UnsupportedOpError
from onnxplain.graph.load import normalize, set_runtime_ir_version
from onnxplain.rules.guided import GUIDED_BACKPROP

D = TensorProto.DOUBLE
F = TensorProto.FLOAT


def _t(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _model(nodes, inputs, outputs, opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "control", inputs, outputs)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    set_runtime_ir_version(model)
    return model


def _retyped(model: onnx.ModelProto, dtype: int) -> onnx.ModelProto:
    """The same model with every float64 type (in subgraphs too) as `dtype`."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)

    def visit(graph: onnx.GraphProto) -> None:
        for value in [*graph.input, *graph.output, *graph.value_info]:
            if value.type.tensor_type.elem_type == D:
                value.type.tensor_type.elem_type = dtype
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.name == "to" and attribute.i == D:
                    attribute.i = dtype
                if attribute.HasField("t") and attribute.t.data_type == D:
                    value = numpy_helper.to_array(attribute.t).astype(np.float32)
                    attribute.t.CopyFrom(numpy_helper.from_array(value, attribute.t.name))
                for sub in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                    visit(sub)
    visit(copy.graph)
    return copy


def check_gradients(model: onnx.ModelProto, feeds: dict, wrt: list[str], seed: int = 0,
                    eps: float = 1e-6) -> dict:
    """d(sum seed * outputs)/d(wrt) of the rules against finite differences (float64), and
    the float32 graph in ONNX Runtime against the float64 gradient."""
    rng = np.random.default_rng(seed)
    ref = _Runner(model)
    outputs = [o.name for o in model.graph.output]
    values = ref.run(None, feeds)
    seeds = {o: rng.standard_normal(np.shape(v)) for o, v in zip(outputs, values, strict=True)}
    diff = differentiate(model, wrt)
    onnx.checker.check_model(diff.model, full_check=True)
    grad_feeds = {**feeds, **{diff.seeds[o]: s for o, s in seeds.items()}}
    grads = dict(zip(wrt, _Runner(diff.model).run([diff.grads[w] for w in wrt], grad_feeds),
                     strict=True))

    def objective(perturbed: dict) -> float:
        got = ref.run(outputs, perturbed)
        return float(sum(np.sum(s * v) for s, v in zip(seeds.values(), got, strict=True)))

    for name in wrt:
        assert grads[name].shape == feeds[name].shape
        for _ in range(3):
            direction = rng.standard_normal(feeds[name].shape)
            plus = {**feeds, name: feeds[name] + eps * direction}
            minus = {**feeds, name: feeds[name] - eps * direction}
            numeric = (objective(plus) - objective(minus)) / (2 * eps)
            analytic = float(np.sum(grads[name] * direction))
            assert abs(numeric - analytic) <= 1e-5 * max(1.0, abs(numeric)), (name, numeric,
                                                                              analytic)
    _check_onnxruntime(model, feeds, wrt, seeds, grads)
    return grads


class _Runner:
    def __init__(self, model: onnx.ModelProto):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        self.session = ort.InferenceSession(model.SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])

    def run(self, names, feeds: dict) -> list:
        return self.session.run(names, feeds)


def _check_onnxruntime(model, feeds, wrt, seeds, grads) -> None:
    diff = differentiate(_retyped(model, F), wrt)
    session = _Runner(diff.model)
    run = {k: v.astype(np.float32) if v.dtype == np.float64 else v for k, v in feeds.items()}
    run.update({diff.seeds[o]: s.astype(np.float32) for o, s in seeds.items()})
    for name, got in zip(wrt, session.run([diff.grads[w] for w in wrt], run), strict=True):
        np.testing.assert_allclose(got, grads[name], rtol=2e-3, atol=2e-4, err_msg=name)


def r(*shape: int, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape)


# ---- If ---------------------------------------------------------------------------------
def _branch(name: str, nodes, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [_t(out, D, None)])


def _if_model() -> onnx.ModelProto:
    """y = If(sum(x) > 0, then: tanh(x) * w, else: x * x + w); both capture x and w, the
    else branch also reads v."""
    then = _branch("then", [helper.make_node("Tanh", ["x"], ["t0"]),
                            helper.make_node("Mul", ["t0", "w"], ["t1"])], "t1")
    other = _branch("else", [helper.make_node("Mul", ["x", "x"], ["e0"]),
                             helper.make_node("Mul", ["e0", "v"], ["e1"]),
                             helper.make_node("Add", ["e1", "w"], ["e2"])], "e2")
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], keepdims=0),
             helper.make_node("Greater", ["s", "zero"], ["c"]),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    zero = helper.make_node("Constant", [], ["zero"], value=helper.make_tensor("z", D, [], [0]))
    return _model([zero, *nodes], [_t("x", D, [2, 3]), _t("w", D, [3]), _t("v", D, [2, 3])],
                  [_t("y", D, [2, 3])])


@pytest.mark.parametrize("sign", [1.0, -1.0], ids=["then", "else"])
def test_if_both_branches_with_captures(sign: float):
    x = np.abs(r(2, 3)) * sign
    grads = check_gradients(_if_model(), {"x": x, "w": r(3), "v": r(2, 3)}, ["x", "w", "v"])
    if sign > 0:  # v is read only by the branch not taken
        assert not np.any(grads["v"])


def test_if_nested():
    """An If inside a branch, whose own branch reads a tensor of the outer branch and one of
    the main graph."""
    inner_then = _branch("inner_then", [helper.make_node("Mul", ["h", "w"], ["i0"])], "i0")
    inner_else = _branch("inner_else", [helper.make_node("Sin", ["h"], ["i1"])], "i1")
    outer_then = _branch("outer_then", [
        helper.make_node("Exp", ["x"], ["h"]),
        helper.make_node("If", ["c2"], ["o0"], then_branch=inner_then,
                         else_branch=inner_else)], "o0")
    outer_else = _branch("outer_else", [helper.make_node("Neg", ["x"], ["o1"])], "o1")
    model = _model([helper.make_node("If", ["c1"], ["y"], then_branch=outer_then,
                                     else_branch=outer_else)],
                   [_t("c1", TensorProto.BOOL, []), _t("c2", TensorProto.BOOL, []),
                    _t("x", D, [4]), _t("w", D, [4])], [_t("y", D, [4])])
    for c1, c2 in [(True, True), (True, False), (False, True)]:
        feeds = {"c1": np.array(c1), "c2": np.array(c2), "x": r(4), "w": r(4)}
        check_gradients(model, feeds, ["x", "w"])


def test_if_branch_shapes_differ():
    """ONNX lets the branches return different shapes: each backward follows its branch."""
    then = _branch("then", [helper.make_node("Tanh", ["x"], ["t0"])], "t0")
    other = _branch("else", [helper.make_node("ReduceSum", ["x"], ["e0"], keepdims=1)], "e0")
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                   [_t("c", TensorProto.BOOL, []), _t("x", D, [2, 3])], [_t("y", D, [None, None])])
    for c in (True, False):
        check_gradients(model, {"c": np.array(c), "x": r(2, 3)}, ["x"])


# ---- Loop -------------------------------------------------------------------------------
def _loop_body(scan_out: bool = True) -> onnx.GraphProto:
    """h' = tanh(h @ W + x * i); scan output h' * a."""
    nodes = [helper.make_node("Cast", ["i"], ["fi"], to=D),
             helper.make_node("MatMul", ["h", "W"], ["hw"]),
             helper.make_node("Mul", ["x", "fi"], ["xi"]),
             helper.make_node("Add", ["hw", "xi"], ["pre"]),
             helper.make_node("Tanh", ["pre"], ["h2"]),
             helper.make_node("Identity", ["cond"], ["cond2"])]
    outputs = [_t("cond2", TensorProto.BOOL, []), _t("h2", D, [2, 3])]
    if scan_out:
        nodes.append(helper.make_node("Mul", ["h2", "a"], ["s"]))
        outputs.append(_t("s", D, [2, 3]))
    inputs = [_t("i", TensorProto.INT64, []), _t("cond", TensorProto.BOOL, []),
              _t("h", D, [2, 3])]
    return helper.make_graph(nodes, "body", inputs, outputs)


def test_loop_carried_state_captures_and_scan_outputs():
    model = _model([helper.make_node("Loop", ["M", "", "h0"], ["hT", "hs"], body=_loop_body())],
                   [_t("M", TensorProto.INT64, []), _t("h0", D, [2, 3]), _t("W", D, [3, 3]),
                    _t("x", D, [2, 3]), _t("a", D, [2, 3])],
                   [_t("hT", D, [2, 3]), _t("hs", D, [None, 2, 3])])
    feeds = {"M": np.array(4), "h0": r(2, 3), "W": r(3, 3) * 0.5, "x": r(2, 3), "a": r(2, 3)}
    check_gradients(model, feeds, ["h0", "W", "x", "a"])


def test_loop_with_computed_condition():
    """The loop stops when sum(h) exceeds a bound (a condition computed in the body): the
    backward replays the iterations that ran."""
    body = _loop_body(scan_out=False)
    body.node.pop()  # the Identity(cond)
    body.node.extend([helper.make_node("ReduceSum", ["h2"], ["sum"], keepdims=0),
                      helper.make_node("Less", ["sum", "bound"], ["cond2"])])
    model = _model([helper.make_node("Loop", ["M", "c0", "h0"], ["hT"], body=body)],
                   [_t("M", TensorProto.INT64, []), _t("c0", TensorProto.BOOL, []),
                    _t("bound", D, []), _t("h0", D, [2, 3]), _t("W", D, [3, 3]),
                    _t("x", D, [2, 3])], [_t("hT", D, [2, 3])])
    feeds = {"M": np.array(10), "c0": np.array(True), "bound": np.array(1.5),
             "h0": r(2, 3), "W": r(3, 3) * 0.5, "x": np.abs(r(2, 3)) * 0.3}
    check_gradients(model, feeds, ["h0", "W", "x"])


def test_loop_body_with_an_if_on_the_iteration_number():
    """Iterations 0 and 1 take one branch, the rest the other: the backward must replay each
    iteration with its own number (and the branch reads the loop's captured weights)."""
    then = _branch("then", [helper.make_node("MatMul", ["h", "W"], ["t0"]),
                            helper.make_node("Tanh", ["t0"], ["t1"])], "t1")
    other = _branch("else", [helper.make_node("Mul", ["h", "a"], ["e0"])], "e0")
    body = helper.make_graph(
        [helper.make_node("Less", ["i", "two"], ["early"]),
         helper.make_node("If", ["early"], ["h2"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["cond"], ["cond2"])], "body",
        [_t("i", TensorProto.INT64, []), _t("cond", TensorProto.BOOL, []), _t("h", D, [2, 3])],
        [_t("cond2", TensorProto.BOOL, []), _t("h2", D, [2, 3])])
    two = helper.make_node("Constant", [], ["two"], value=helper.make_tensor(
        "two", TensorProto.INT64, [], [2]))
    model = _model([two, helper.make_node("Loop", ["M", "", "h0"], ["hT"], body=body)],
                   [_t("M", TensorProto.INT64, []), _t("h0", D, [2, 3]), _t("W", D, [3, 3]),
                    _t("a", D, [2, 3])], [_t("hT", D, [2, 3])])
    feeds = {"M": np.array(4), "h0": r(2, 3), "W": r(3, 3), "a": r(2, 3, seed=4)}
    check_gradients(model, feeds, ["h0", "W", "a"])


# ---- Scan -------------------------------------------------------------------------------
def _scan_body() -> onnx.GraphProto:
    """state' = state * u + x_t; out_t = sin(state') * v."""
    nodes = [helper.make_node("Mul", ["st", "u"], ["su"]),
             helper.make_node("Add", ["su", "xt"], ["st2"]),
             helper.make_node("Sin", ["st2"], ["sn"]),
             helper.make_node("Mul", ["sn", "v"], ["ot"]),
             helper.make_node("Identity", ["st2"], ["st3"])]
    return helper.make_graph(nodes, "scan_body", [_t("st", D, [3]), _t("xt", D, [3])],
                             [_t("st3", D, [3]), _t("ot", D, [3])])


@pytest.mark.parametrize("attrs", [{}, {"scan_input_directions": [1]},
                                   {"scan_input_axes": [1], "scan_output_axes": [1],
                                    "scan_output_directions": [1]}],
                         ids=["forward", "reverse-input", "axis1-reverse-output"])
def test_scan_state_inputs_and_outputs(attrs: dict):
    shape = [3, 4] if attrs.get("scan_input_axes") == [1] else [4, 3]
    model = _model([helper.make_node("Scan", ["s0", "xs"], ["sT", "os"], body=_scan_body(),
                                     num_scan_inputs=1, **attrs)],
                   [_t("s0", D, [3]), _t("xs", D, shape), _t("u", D, [3]), _t("v", D, [3])],
                   [_t("sT", D, [3]), _t("os", D, [None, None])])
    feeds = {"s0": r(3), "xs": r(*shape), "u": r(3) * 0.7, "v": r(3)}
    check_gradients(model, feeds, ["s0", "xs", "u", "v"])


def test_modified_rules_apply_inside_branches():
    """Guided backpropagation through an If equals guided backpropagation of the branch
    taken, written without the If (the branch's backward uses the caller's rule set)."""
    then = _branch("then", [helper.make_node("Mul", ["x", "w"], ["t0"]),
                            helper.make_node("Relu", ["t0"], ["t1"])], "t1")
    other = _branch("else", [helper.make_node("Neg", ["x"], ["e0"])], "e0")
    inputs = [_t("x", D, [5]), _t("w", D, [5])]
    model = _retyped(_model([helper.make_node("If", ["c"], ["y"], then_branch=then,
                                              else_branch=other)],
                            [_t("c", TensorProto.BOOL, []), *inputs], [_t("y", D, [5])]), F)
    flat = _retyped(_model(list(then.node), inputs, [_t("t1", D, [5])]), F)
    feeds = {"x": r(5).astype(np.float32), "w": r(5, seed=2).astype(np.float32)}
    seed = r(5, seed=3).astype(np.float32)
    got, want = (_guided(m, {**feeds, **extra}, seed)
                 for m, extra in ((model, {"c": np.array(True)}), (flat, {})))
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.any(got != _guided(model, {**feeds, "c": np.array(True)}, seed, plain=True))


def _guided(model: onnx.ModelProto, feeds: dict, seed: np.ndarray, plain: bool = False):
    rules = GRADIENT if plain else GUIDED_BACKPROP
    diff = differentiate(model, ["x"], rules=rules)
    (output,) = diff.seeds.values()
    return _Runner(diff.model).run([diff.grads["x"]], {**feeds, output: seed})[0]


def test_function_called_in_a_branch_is_inlined_then_differentiated():
    """Exporters may call local functions inside branches: loading inlines them there too."""
    twice = helper.make_function("local", "Twice", ["a"], ["b"],
                                 [helper.make_node("Mul", ["a", "a"], ["b"])],
                                 [helper.make_opsetid("", 17)])
    then = _branch("then", [helper.make_node("Twice", ["x"], ["t0"], domain="local")], "t0")
    other = _branch("else", [helper.make_node("Neg", ["x"], ["e0"])], "e0")
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                   [_t("c", TensorProto.BOOL, []), _t("x", D, [3])], [_t("y", D, [3])])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(twice)
    normal = normalize(model)
    assert not normal.functions
    check_gradients(normal, {"c": np.array(True), "x": r(3)}, ["x"])


def test_growing_carried_state_is_refused_in_one_line():
    body = helper.make_graph(
        [helper.make_node("Concat", ["acc", "x"], ["acc2"], axis=0),
         helper.make_node("Identity", ["cond"], ["cond2"])], "grow",
        [_t("i", TensorProto.INT64, []), _t("cond", TensorProto.BOOL, []), _t("acc", D, [1])],
        [_t("cond2", TensorProto.BOOL, []), _t("acc2", D, [2])])
    model = _model([helper.make_node("Loop", ["M", "", "x"], ["out"], body=body,
                                     name="grow_loop")],
                   [_t("M", TensorProto.INT64, []), _t("x", D, [1])], [_t("out", D, [None])])
    with pytest.raises(UnsupportedOpError, match="grow_loop.*'acc' changes shape") as err:
        differentiate(model, ["x"])
    assert "\n" not in str(err.value)


def test_missing_rule_inside_a_branch_is_named():
    then = _branch("then", [helper.make_node("Erf", ["x"], ["t0"]),
                            helper.make_node("Det", ["t0"], ["t1"])], "t1")
    other = _branch("else", [helper.make_node("ReduceSum", ["x"], ["e0"], keepdims=0)], "e0")
    model = _model([helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)],
                   [_t("c", TensorProto.BOOL, []), _t("x", D, [3, 3])], [_t("y", D, [])])
    model.graph.node[0].name = "choose"
    with pytest.raises(UnsupportedOpError, match="Det.*'choose/then_branch/"):
        differentiate(model, ["x"])


def test_if_on_a_constant_condition_is_not_a_constant():
    """Graph passes (affine stems, attention finding) treat tensors computed from constants
    as constants: an If on a constant condition still reads its inputs in its branches."""
    from onnxplain.graph.model import Model

    then = _branch("then", [helper.make_node("Neg", ["x"], ["t0"])], "t0")
    other = _branch("else", [helper.make_node("Sin", ["x"], ["e0"])], "e0")
    true = helper.make_node("Constant", [], ["c"], value=helper.make_tensor(
        "c", TensorProto.BOOL, [], [True]))
    model = _model([true, helper.make_node("If", ["c"], ["y"], then_branch=then,
                                           else_branch=other)],
                   [_t("x", D, [3])], [_t("y", D, [3])])
    constants = Model(model).constants
    assert "c" in constants and "y" not in constants
    check_gradients(model, {"x": r(3)}, ["x"])
