"""Dead-node removal of gradient programs and backward bodies (through onnx-ir).

A gradient program over a model whose Loop body holds dead nodes (one inside an If it
nests), reads outer tensors (a weight initializer, an input) and carries state: its
gradients against central finite differences in float64, its outputs against the name-walk
pruning it replaced (bit for bit), and its graphs (subgraphs too) free of nodes and
initializers nothing reads, with the outer tensors still read from the enclosing graph.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxplain.autodiff import differentiate, program
from onnxplain.autodiff.program import build_gradient_program
from onnxplain.graph.load import set_runtime_ir_version
from onnxplain.graph.model import Model

D = TensorProto.DOUBLE
I64 = TensorProto.INT64
W = np.array([[0.5, -0.3, 0.2], [0.1, 0.4, -0.6], [-0.2, 0.3, 0.1]])


def _t(name: str, dtype: int, shape) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, shape)


def _branch(name: str, nodes, out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [_t(out, D, None)])


def _loop_model() -> onnx.ModelProto:
    """y = Loop(3 times: h <- tanh(h @ W + a), times a from the second iteration on), with
    a dead Sin in the body, a dead Neg in the If it nests and an initializer nothing reads;
    a dead Cos in the main graph."""
    then = _branch("then", [helper.make_node("Mul", ["h2", "a"], ["t0"]),
                            helper.make_node("Neg", ["h2"], ["t_dead"])], "t0")
    other = _branch("else", [helper.make_node("Identity", ["h2"], ["e0"])], "e0")
    body = helper.make_graph(
        [helper.make_node("MatMul", ["h", "W"], ["hw"]),
         helper.make_node("Add", ["hw", "a"], ["pre"]),
         helper.make_node("Tanh", ["pre"], ["h2"]),
         helper.make_node("Sin", ["h2"], ["dead"]),
         helper.make_node("Greater", ["i", "one"], ["later"]),
         helper.make_node("If", ["later"], ["h3"], then_branch=then, else_branch=other),
         helper.make_node("Identity", ["cond"], ["cond2"])],
        "body", [_t("i", I64, []), _t("cond", TensorProto.BOOL, []), _t("h", D, [2, 3])],
        [_t("cond2", TensorProto.BOOL, []), _t("h3", D, [2, 3])],
        [numpy_helper.from_array(np.array(0, np.int64), "one"),
         numpy_helper.from_array(np.zeros(5), "unread_in_body")])
    graph = helper.make_graph(
        [helper.make_node("Loop", ["M", "", "x"], ["y"], body=body),
         helper.make_node("Cos", ["x"], ["main_dead"])],
        "loop_model", [_t("x", D, [2, 3]), _t("a", D, [2, 3])], [_t("y", D, [2, 3])],
        [numpy_helper.from_array(W, "W"), numpy_helper.from_array(np.array(3, np.int64), "M")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    set_runtime_ir_version(model)
    return model


def _feeds() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((2, 3)), "a": rng.standard_normal((2, 3))}


def _run(model: onnx.ModelProto, names, feeds) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    return session.run(names, feeds)


def _graphs(graph: onnx.GraphProto):
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            for inner in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                yield from _graphs(inner)


def _reads(graph: onnx.GraphProto) -> set[str]:
    """Every name read in `graph` and its subgraphs, and its outputs."""
    names = {out.name for out in graph.output}
    for node in graph.node:
        names.update(node.input)
        for attribute in node.attribute:
            for inner in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                names |= _reads(inner)
    return names


def _unread(model: onnx.ModelProto) -> list[str]:
    """Nodes and initializers, in any graph of `model`, that nothing reads."""
    found = []
    for graph in _graphs(model.graph):
        read = _reads(graph) | {i.name for i in graph.input}
        found += [f"{n.op_type} -> {list(n.output)}" for n in graph.node
                  if not any(out in read for out in n.output if out)]
        found += [f"initializer {i.name}" for i in graph.initializer if i.name not in read]
    return found


def _name_walk_pruned(graph: onnx.GraphProto, start: int) -> None:
    """The pruning drop_unread did before onnx-ir: main graph only, nodes before `start`
    (the model's) kept."""
    def node_reads(node):
        names = list(node.input)
        for attribute in node.attribute:
            for inner in [attribute.g] if attribute.HasField("g") else attribute.graphs:
                names += _reads(inner)
        return names

    read, keep = {out.name for out in graph.output}, []
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if index < start or any(out in read for out in node.output if out):
            read.update(node_reads(node))
            keep.append(node)
    kept = keep[::-1]
    del graph.node[:]
    graph.node.extend(kept)


def _objective(model: onnx.ModelProto, seed: np.ndarray, feeds) -> float:
    return float(np.sum(seed * _run(model, ["y"], feeds)[0]))


@pytest.mark.parametrize("wrt", [["x"], ["x", "a"]])
def test_backward_body_is_pruned_and_reads_outer_tensors(wrt):
    model, feeds = _loop_model(), _feeds()
    diff = differentiate(model, wrt)
    onnx.checker.check_model(diff.model, full_check=True)  # every read defined in scope
    body = next(a.g for n in diff.model.graph.node for a in n.attribute
                if n.op_type == "Loop" and "Loop_grad" in a.g.name)  # the backward body
    assert _unread(onnx.helper.make_model(body)) == []
    ops = {n.op_type for g in _graphs(body) for n in g.node}
    assert not ops & {"Sin", "Neg"}, ops  # the dead forward nodes did not come along
    declared = {i.name for i in body.input} | {i.name for i in body.initializer}
    assert {"W", "a"} <= _reads(body) and not {"W", "a"} & declared  # still outer reads
    seed = np.random.default_rng(1).standard_normal((2, 3))
    grads = _run(diff.model, [diff.grads[w] for w in wrt],
                 {**feeds, diff.seeds["y"]: seed})
    rng = np.random.default_rng(2)
    for name, grad in zip(wrt, grads, strict=True):
        for _ in range(3):
            direction, eps = rng.standard_normal((2, 3)), 1e-6
            plus = {**feeds, name: feeds[name] + eps * direction}
            minus = {**feeds, name: feeds[name] - eps * direction}
            numeric = (_objective(model, seed, plus) - _objective(model, seed, minus)) / (
                2 * eps)
            assert abs(numeric - float(np.sum(grad * direction))) <= 1e-6 * max(
                1.0, abs(numeric)), name


def test_gradient_program_equals_the_name_walk_pruning(monkeypatch):
    """The same program pruned both ways computes the same numbers, bit for bit; the onnx-ir
    pruning leaves nothing unread, in the Loop bodies and the If branches too."""
    proto = _loop_model()
    built = []
    real = program.drop_unread
    monkeypatch.setattr(program, "drop_unread", lambda p: built.append(p))
    gp = build_gradient_program(Model(proto), "y", ["x", "a"], seeded=True)
    monkeypatch.setattr(program, "drop_unread", real)
    unpruned = built[0]
    assert _unread(unpruned)  # the case has something to prune
    before, after = onnx.ModelProto(), onnx.ModelProto()
    before.CopyFrom(unpruned)
    after.CopyFrom(unpruned)
    _name_walk_pruned(before.graph, len(proto.graph.node))
    program.drop_unread(after)
    assert _unread(after) == []
    onnx.checker.check_model(after, full_check=True)
    names = ["y", *gp.grads.values()]
    feeds = {**_feeds(), gp.seed_input: np.random.default_rng(3).standard_normal((2, 3))}
    for old, new in zip(_run(before, names, feeds), _run(after, names, feeds), strict=True):
        np.testing.assert_array_equal(new, old)
    assert len(after.graph.node) < len(before.graph.node)  # the main graph's Cos went too


def _shape_model() -> onnx.ModelProto:
    """Shape computations to fold: a Reshape target read inside an If branch, Gather indices
    through NonZero (a length inference cannot know); `k` and `two` are read only by folded
    nodes, `idx` by a folded and a kept node, `unread` by none."""
    F = TensorProto.FLOAT
    then = helper.make_graph([helper.make_node("Reshape", ["x", "target"], ["t0"])], "then",
                             [], [_t("t0", F, None)])
    other = helper.make_graph([helper.make_node("Neg", ["x"], ["e0"])], "else", [],
                              [_t("e0", F, None)])
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Mul", ["s", "k"], ["target"]),
             helper.make_node("Greater", ["s", "two"], ["wide"]),
             helper.make_node("NonZero", ["wide"], ["nz"]),
             helper.make_node("Squeeze", ["nz", "idx"], ["index"]),
             helper.make_node("Gather", ["x", "index"], ["g"], axis=1),
             helper.make_node("Gather", ["x", "idx"], ["h"], axis=1),
             helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)]
    inits = {"k": [1, 1], "two": [2, 2], "idx": [0], "unread": [7]}
    graph = helper.make_graph(
        nodes, "shapes", [_t("x", F, [2, 3]), _t("c", TensorProto.BOOL, [])],
        [_t("y", F, None), _t("g", F, None), _t("h", F, None)],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    set_runtime_ir_version(model)
    return model


@pytest.mark.parametrize("cond", [True, False])
def test_folded_shape_computations_leave_the_outputs_and_only_their_constants(cond):
    from onnxplain.graph.shape_fold import fold_shape_computations

    model = _shape_model()
    folded = fold_shape_computations(model, Model(model).infos)
    assert folded is not None
    ops = [node.op_type for node in folded.graph.node]
    assert ops == ["Gather", "Gather", "If"], ops
    inits = {init.name for init in folded.graph.initializer}
    assert {"target", "index", "idx", "unread"} <= inits and not {"k", "two"} & inits
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "c": np.array(cond)}
    for old, new in zip(_run(model, None, feeds), _run(folded, None, feeds), strict=True):
        np.testing.assert_array_equal(new, old)
