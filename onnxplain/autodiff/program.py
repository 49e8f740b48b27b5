"""Gradient programs: the model rewritten to return outputs, gradients and taps in one run.

The objective is a weighted sum of output elements. For a classifier output [N, C] the weights
are a one-hot of the target class per row, chosen inside the graph (a negative target means
the predicted class), so one run explains a whole batch and reports which class it explained.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.ir import remove_unused, to_ir, to_proto
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.taps import append_outputs
from ..graph.walk import node_inputs
from ..graph.weights import Weights, light_copy
from ..objective import CLASS, DENSE, VALUE, Place, require_objective
from . import GRAD_PREFIX, POST_PREFIX, SEED_PREFIX, add_input_like, add_output
from .build import add_gradients
from .commute import pool_after_relu_for
from .ops.recurrent import finish_gate_forwards
from .registry import GRADIENT, RuleSet
from .seed import dense_weights

TARGET_INPUT = "onnxplain/target"
TARGET_OUTPUT = "onnxplain/target_used"


@dataclass
class GradientProgram:
    model: onnx.ModelProto | None              # None once a session holds it (engine)
    output: str
    grads: dict[str, str]                      # wrt tensor -> gradient output
    target_input: str | None = None            # int64 [N], -1 = predicted class
    target_output: str | None = None           # the class each row was explained for
    seed_input: str | None = None              # user weights shaped like the output
    taps: list[str] = field(default_factory=list)
    # Further backward passes under other rule sets: label -> wrt tensor -> output.
    passes: dict[str, dict[str, str]] = field(default_factory=dict)
    post: dict[str, str] = field(default_factory=dict)  # label -> output of `post` ops
    weights: Weights | None = None  # what the program's stubs stand for (graph.weights)


@dataclass(frozen=True)
class Pass:
    """One more backward pass in the same program, sharing its forward and its seed."""

    label: str
    rules: RuleSet
    wrt: tuple[str, ...]
    active_from: tuple[str, ...] = ()


@dataclass(frozen=True)
class Post:
    """Ops appended after the backward passes that reduce tensors inside the graph, so big
    intermediates (attention maps, their gradients) never leave ONNX Runtime. `emit` gets
    the builder and the gradient tensors by pass label ('' for the main pass) and wrt name,
    and returns output tensors by label; `key` names what it emits (programs are cached)."""

    key: tuple
    emit: Callable[[GraphBuilder, Mapping[str, Mapping[str, str]]], dict[str, str]]


@dataclass(frozen=True)
class Pre:
    """Ops inserted between the forward and the backward passes: `emit` gets the builder,
    the explained output and its seed, and returns the tensor the passes start from and its
    seed (export/explained_row: a copy of the model's tail at the seeded position alone);
    `key` names what it emits."""

    key: tuple
    emit: Callable[[GraphBuilder, str, str], tuple[str, str]]


def objective_kind(model: Model, output: str) -> str:
    """'class' for class scores ([N, C], also [N, C, 1, 1]), 'sum' for [N] outputs; others
    need an explicit seed (see objective)."""
    form = require_objective(model, output, seeded=False, targeted=False)
    if form == CLASS:
        return "class"
    if form == VALUE:
        return "sum"
    if form in DENSE:  # the explainer resolves it into a seed on the clean forward
        raise InputError(f"output {model.output(output).describe()} holds scores per "
                         "position: its objective is an output seed (objective.resolve_dense)")
    raise InputError(f"output {model.output(output).describe()} has no known shape, so no "
                     "class axis can be found: pass an output seed or choose another output")


def build_gradient_program(model: Model, output: str, wrt: Sequence[str], *,
                           rules: RuleSet = GRADIENT, seeded: bool = False,
                           taps: Sequence[str] = (), passes: Sequence[Pass] = (),
                           post: Post | None = None, active_from: Sequence[str] = (),
                           dense: tuple[str, Place] | None = None,
                           pre: Pre | None = None) -> GradientProgram:
    """Rewrite `model` to also return d(objective)/d(t) for every t in `wrt`, plus `taps`,
    and the gradients of further `passes`; with a `post`, its outputs instead of the
    gradients. `dense` (form, place): the dense objective is computed in the graph from
    the output it explains, its class read from the target input (-1: predicted). `pre`
    may replace the output and seed the backward passes start from."""
    proto = light_copy(model.proto)
    infos = dict(model.infos)
    if post is None and pre is None:
        pool_after_relu_for(proto.graph, infos, {output, *wrt, *taps, *active_from}, rules,
                            passes)
    b = GraphBuilder(proto, infos, weights=model.weights)
    program = GradientProgram(proto, output, {}, weights=model.weights)
    if seeded:
        program.seed_input = add_input_like(b, SEED_PREFIX + output, output)
        seed = program.seed_input
    elif dense is not None:
        seed = _dense_seed(b, model, output, dense, program)
    elif objective_kind(model, output) == "class":
        seed = _class_seed(b, output, program)
    else:
        one = numpy_helper.from_array(np.ones(1, dtype=b.np_dtype(output)))
        seed = b.op("ConstantOfShape", b.shape(output), value=one)
    start, seed = (output, seed) if pre is None else pre.emit(b, output, seed)
    computed = {"": add_gradients(b, {start: seed}, list(wrt), rules, active_from)}
    for extra in passes:
        computed[extra.label] = add_gradients(b, {start: seed}, list(extra.wrt), extra.rules,
                                              extra.active_from)
    if post is None:  # with a post, only what it computes comes back
        program.grads = {name: add_output(b, GRAD_PREFIX + name, grad, like=name)
                         for name, grad in computed[""].items()}
        program.passes = {label: {name: add_output(b, f"{GRAD_PREFIX}{label}/{name}", grad,
                                                   like=name) for name, grad in found.items()}
                          for label, found in computed.items() if label}
    else:
        program.post = {label: add_output(b, POST_PREFIX + label, tensor)
                        for label, tensor in post.emit(b, computed).items()}
    append_outputs(proto.graph, b.infos, list(taps))  # first: a tapped LSTM output is read
    finish_gate_forwards(b)  # LSTM kernels give way to the Scans that keep gates
    program.taps = list(taps)
    drop_unread(proto)
    return program


def drop_unread(proto: onnx.ModelProto) -> None:
    """Remove the nodes and initializers that no output is computed from: rules emit every
    active input's share, also where no later node asks for it, and ONNX Runtime would run
    them. Outputs (the model's, taps) keep what computes them. Only where the main graph
    holds such a node or initializer (the check is cheap, the conversion not) are they
    removed, in subgraphs too then; backward bodies are pruned as they close (Body.close)."""
    graph = proto.graph
    # Most programs have none: looking costs a tenth of the conversion (0.5 against 4 ms
    # on ResNet-18's saliency program, whose build takes 6).
    read = {name for node in graph.node for name in node_inputs(node)}
    read.update(value.name for value in [*graph.input, *graph.output])
    if all(any(out in read for out in node.output) for node in graph.node) and all(
            init.name in read for init in graph.initializer):
        return
    model = to_ir(proto)
    if remove_unused(model):
        graph.CopyFrom(to_proto(model).graph)


def _target_input(b: GraphBuilder, program: GradientProgram) -> str:
    target = TARGET_INPUT
    b.graph.input.append(helper.make_tensor_value_info(target, TensorProto.INT64, [None]))
    b.infos[target] = TensorInfo(TensorProto.INT64, (None,))
    program.target_input = target
    return target


def _dense_seed(b: GraphBuilder, model: Model, output: str, dense: tuple[str, Place],
                program: GradientProgram) -> str:
    """The dense objective's weights on `output`, computed in the graph (one definition,
    shared with exported explainers), so no separate clean forward resolves them."""
    form, place = dense
    return dense_weights(b, model, output, _target_input(b, program), form, place, {})


def _class_seed(b: GraphBuilder, output: str, program: GradientProgram) -> str:
    target = _target_input(b, program)
    chosen = chosen_class(b, output, target)
    b.graph.node.append(helper.make_node("Identity", [chosen], [TARGET_OUTPUT],
                                         name=b.fresh("target_output")))
    b.graph.output.append(helper.make_tensor_value_info(TARGET_OUTPUT, TensorProto.INT64,
                                                        [None]))
    program.target_output = TARGET_OUTPUT
    return one_hot(b, chosen, output)


def chosen_class(b: GraphBuilder, output: str, target: str) -> str:
    """The class each row explains: `target` where it is >= 0, else the predicted class
    (ArgMax over the class axis of `output`); a [1] target broadcasts over the rows."""
    predicted = b.op("ArgMax", scores_2d(b, output), axis=1, keepdims=0)
    negative = b.op("Less", target, b.const(np.array(0, dtype=np.int64)))
    return b.where(negative, predicted, target)


def one_hot(b: GraphBuilder, chosen: str, output: str) -> str:
    """Shaped like `output`, in its type: 1 at each row's chosen class."""
    classes = _class_range(b, output)
    hot = b.op("Cast", b.op("Equal", b.unsqueeze(chosen, [1]), b.unsqueeze(classes, [0])),
               to=b.dtype(output))
    rank = b.info(output).rank or 2
    return hot if rank == 2 else b.unsqueeze(hot, list(range(2, rank)))


def scores_2d(b: GraphBuilder, output: str) -> str:
    """`output` as [N, C]: class outputs may carry trailing axes of size 1 ([N, C, 1, 1])."""
    return output if b.info(output).rank == 2 else b.op("Flatten", output, axis=1)


def _class_range(b: GraphBuilder, output: str) -> str:
    """[0, 1, ..., C-1] for the class axis of `output`, C read at run time when it can be."""
    count = (b.info(output).certain or (None, None))[1]
    if isinstance(count, int):
        return b.const(np.arange(count, dtype=np.int64))
    if b.opset < 11:
        raise InputError(f"output '{output}' has no static class count and the model's opset "
                         f"{b.opset} has no Range op")
    zero, one = (b.const(np.array(v, dtype=np.int64)) for v in (0, 1))
    limit = b.squeeze(b.dim(output, 1), [0])
    return b.range(zero, limit, one)
