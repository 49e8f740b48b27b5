"""Guided Integrated Gradients as one graph: methods.guided_ig runs it in process and
`export` saves it.

The path is adaptive (each step reads the gradient at the previous point), so the steps run
one after the other in an ONNX Loop whose body runs the model and its gradient at the
current point x (carried, with the attribution) and then a nested Loop: PAIR's `while gamma
> 1` selection, which moves the `fraction` of features with the smallest |gradient| toward
the input until the step's L1 target is met. The path and the attribution are double, as in
PAIR's numpy (the model sees x cast to its input type); the rows are flattened to [N, D].
Rows finish their inner loop at different iterations: a finished row's x stays put.

The threshold is PAIR's np.quantile(|g|, fraction, method="lower"): the k-th smallest |g|
with k = floor(fraction (D - 1)) + 1 (TopK, ascending), features at x_max counting as +inf;
every feature with |g| <= threshold is selected, so ties are selected together as in PAIR.
The model also runs once on [x; x'] outside the Loop (the original outputs, the explained
class, the scores at x and x' for the convergence delta), so its weights are stored twice.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from ..autodiff.build import add_gradients
from ..autodiff.ops.recurrent import finish_gate_forwards
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from .graph import ExplainerGraph
from .loop import body_on, close_body
from .methods import (
    baseline_input,
    declare_completeness,
    declare_per_input,
    float_inputs,
    register_export,
)

DOUBLE = TensorProto.DOUBLE
# PAIR's math.isclose(l1_target, l1_current, rel_tol=EPSILON, abs_tol=EPSILON).
EPSILON = 1e-9


@register_export("guided_ig", ("n_steps", "fraction", "max_dist", "baseline", "baseline_value",
                              "blur_sigma", "seed"))
def guided_ig(eg: ExplainerGraph, options: dict) -> None:
    """Guided IG of the model's one float input: sum over the path's moves of
    (x_new - x_old) * d S_c / d x at the step's start (see the module docstring)."""
    b = eg.b
    name = _the_input(eg)
    steps, fraction, max_dist = (int(options["n_steps"]), float(options["fraction"]),
                                 float(options["max_dist"]))
    if steps < 1 or not 0 <= fraction <= 1 or not 0 <= max_dist <= 1:
        raise InputError("guided_ig needs n_steps >= 1 and fraction and max_dist in [0, 1], "
                         f"got {steps}, {fraction}, {max_dist}")
    if b.opset < 11:
        raise InputError(f"guided_ig's Loop needs opset 11 or newer; the model has opset "
                         f"{b.opset}")
    starts = {}

    def reference(b: GraphBuilder, input_name: str) -> str:
        starts[input_name] = baseline_input(eg, input_name, options)
        b.infos[starts[input_name]] = b.info(input_name)
        return starts[input_name]

    eg.run_on_copies(1, {name: reference}, clean_first=True)
    weights = eg.row_weights(b, eg.output)  # the class of the clean row, as in the outer graph
    flat = b.concat([eg.rows, b.ints([-1])], 0)
    x_input, x_base = (b.reshape(b.op("Cast", t, to=DOUBLE), flat) for t in (name, starts[name]))
    for t in (x_input, x_base):
        b.infos[t] = TensorInfo(DOUBLE, (None, None))
    path = _Path(b, x_input, x_base, steps, fraction, max_dist)
    body = _step_body(eg, name, b.shape(name), weights, path)
    _, attr = b.node("Loop", [b.const(np.array(steps, np.int64)), "", x_base,
                              b.zeros_like(x_input)], 2, body=body)
    values = {name: b.op("Cast", b.reshape(attr, b.shape(name)), to=b.dtype(name))}
    declare_per_input(eg, values, "Guided Integrated Gradients")
    declare_completeness(eg, values)


def _the_input(eg: ExplainerGraph) -> str:
    """The one float input Guided IG moves (PAIR explains one input array)."""
    inputs = list(eg.sources) if eg.sources is not None else float_inputs(eg)
    if len(eg.model.inputs) != 1 or len(inputs) != 1:
        raise InputError("guided_ig explains models with one float input (the path moves "
                         "all of its features together)")
    if not eg.model.batch.symbolic:
        raise InputError(f"the model's batch axis is {eg.model.batch.describe()}; guided_ig "
                         "runs each row with its baseline in one batch (2N rows): re-export "
                         "the model with dynamic axes")
    return inputs[0]


class _Path:
    """Outer-graph values the steps read: the flattened input and baseline [N, D], their
    difference, the total L1 distance [N, 1], and TopK's k (PAIR's quantile index + 1)."""

    def __init__(self, b: GraphBuilder, x_input: str, x_base: str, steps: int,
                 fraction: float, max_dist: float):
        self.x_input, self.x_base, self.steps, self.max_dist = x_input, x_base, steps, max_dist
        self.diff = b.op("Sub", x_input, x_base)
        self.l1_total = b.reduce("ReduceSum", b.op("Abs", self.diff), [1], True)
        features = b.op("Cast", b.dim(x_input, 1), to=DOUBLE)
        index = b.op("Floor", b.op("Mul", b.op("Sub", features, _double(b, 1.0)),
                                   _double(b, fraction)))
        self.k = b.op("Cast", b.op("Add", index, _double(b, 1.0)), to=TensorProto.INT64)
        self.features = b.dim(x_input, 1)


def _double(b: GraphBuilder, value: float) -> str:
    return b.const(np.array(value, np.float64))


def _step_body(eg: ExplainerGraph, name: str, shape: str, weights: str, path: _Path):
    """One step: the gradient at x (the model in the body, fed x shaped as the input's outer
    `shape`), then the selection loop."""
    made = body_on(eg, eg.model, [path.x_input, path.x_input])
    bb, x, attr = made.bb, *made.carried
    spec = eg.model.inputs[0]
    fed = bb.op("Cast", bb.reshape(x, shape), to=bb.dtype(name))
    bb.graph.node.append(helper.make_node("Identity", [fed], [spec.name],
                                          name=bb.fresh("feed_node")))
    bb.infos[spec.name] = eg.model.infos.get(spec.name, spec.info)
    bb.graph.node.extend(made.model_nodes)
    grad = add_gradients(bb, {eg.output: weights}, [spec.name])[spec.name]
    g = bb.reshape(bb.op("Cast", grad, to=DOUBLE), bb.shape(x))
    bb.infos[g] = TensorInfo(DOUBLE, (None, None))
    x_new, attr_new = _selection(bb, made.step, x, attr, g, path)
    done = bb.op("Identity", made.cond)
    finish_gate_forwards(bb)
    carried = [helper.make_tensor_value_info(t, DOUBLE, [None, None]) for t in (x, attr)]
    return close_body(eg, made, "guided_ig_steps", carried,
                      [helper.make_tensor_value_info(done, TensorProto.BOOL, []),
                       *[helper.make_tensor_value_info(t, DOUBLE, [None, None])
                         for t in (x_new, attr_new)]])


def _selection(bb: GraphBuilder, step: str, x: str, attr: str, g: str, path: _Path
               ) -> tuple[str, str]:
    """PAIR's inner `while gamma > 1` for step `step`, as a nested Loop: (x, attr) after it."""
    alpha = bb.op("Div", bb.op("Add", bb.op("Cast", step, to=DOUBLE), _double(bb, 1.0)),
                  _double(bb, float(path.steps)))  # also the share of L1 done after the step
    alpha_min = bb.op("Max", bb.op("Sub", alpha, _double(bb, path.max_dist)), _double(bb, 0.0))
    alpha_max = bb.op("Min", bb.op("Add", alpha, _double(bb, path.max_dist)), _double(bb, 1.0))
    x_min, x_max = (bb.op("Add", path.x_base, bb.op("Mul", path.diff, a))
                    for a in (alpha_min, alpha_max))
    l1_target = bb.op("Mul", path.l1_total, bb.op("Sub", _double(bb, 1.0), alpha))
    rows_active = bb.op("Expand", bb.const(np.array([[True]])), bb.concat(
        [bb.dim(x, 0), bb.ints([1])], 0))
    # A pass that leaves gamma > 1 puts every selected feature at x_max (at least one more),
    # so D + 1 passes end any step: the cap only guards the Loop.
    trips = bb.reshape(bb.op("Add", path.features, bb.ints([2])), [])
    # The inner nodes are emitted into the body, then moved into the nested graph.
    first = len(bb.graph.node)
    names = [bb.fresh(hint) for hint in ("inner_iteration", "inner_cond", "inner_x",
                                         "inner_attr", "inner_active")]
    x_in, attr_in, active_in = names[2:]
    for t in (x_in, attr_in):
        bb.infos[t] = TensorInfo(DOUBLE, (None, None))
    bb.infos[active_in] = TensorInfo(TensorProto.BOOL, (None, None))
    with bb.own_memo():
        outputs = _inner_iteration(bb, x_in, attr_in, active_in, g, path, alpha_max,
                                   alpha_min, x_min, x_max, l1_target)
        cond_out = bb.op("Identity", bb.op("Greater", bb.reduce(
            "ReduceMax", bb.op("Cast", outputs[2], to=TensorProto.INT64), None, False),
            bb.const(np.array(0, np.int64))))
    inner_nodes = list(bb.graph.node[first:])
    del bb.graph.node[first:]
    kinds = [TensorProto.INT64, TensorProto.BOOL, DOUBLE, DOUBLE, TensorProto.BOOL]
    ranks = [[], [], [None, None], [None, None], [None, None]]
    inner = helper.make_graph(
        inner_nodes, bb.fresh("guided_ig_selection"),
        [helper.make_tensor_value_info(n, k, r) for n, k, r in zip(names, kinds, ranks,
                                                                    strict=True)],
        [helper.make_tensor_value_info(n, k, r) for n, k, r in zip(
            [cond_out, *outputs], kinds[1:], ranks[1:], strict=True)])
    x_new, attr_new, _ = bb.node("Loop", [trips, bb.const(np.array(True)), x, attr,
                                           rows_active], 3, body=inner)
    for t in (x_new, attr_new):
        bb.infos[t] = TensorInfo(DOUBLE, (None, None))
    return x_new, attr_new


def _inner_iteration(bb: GraphBuilder, x: str, attr: str, active: str, g: str, path: _Path,
                     alpha_max: str, alpha_min: str, x_min: str, x_max: str, l1_target: str
                     ) -> list[str]:
    """One pass of PAIR's while loop on every row still active: (x, attr, active)."""
    zero, one = _double(bb, 0.0), _double(bb, 1.0)
    inf = _double(bb, float("inf"))
    moving = bb.op("Not", bb.op("Equal", path.diff, zero))
    safe = bb.where(moving, path.diff, one)
    x_alpha = bb.where(moving, bb.op("Div", bb.op("Sub", x, path.x_base), safe), alpha_max)
    x1 = bb.where(bb.op("Less", x_alpha, alpha_min), x_min, x)
    l1_current = bb.reduce("ReduceSum", bb.op("Abs", bb.op("Sub", x1, path.x_input)), [1], True)
    scale = bb.op("Max", bb.op("Abs", l1_target), bb.op("Abs", l1_current))
    close = bb.op("Not", bb.op("Greater", bb.op("Abs", bb.op("Sub", l1_target, l1_current)),
                               bb.op("Max", bb.op("Mul", scale, _double(bb, EPSILON)),
                                     _double(bb, EPSILON))))
    at_max = bb.op("Equal", x1, x_max)
    magnitude = bb.where(at_max, inf, bb.op("Abs", g))
    smallest = bb.node("TopK", [magnitude, bb.reshape(path.k, [1])], 2, axis=1, largest=0,
                       sorted=1)[0]
    threshold = bb.slice(smallest, bb.reshape(bb.op("Sub", path.k, bb.ints([1])), [1]),
                         bb.reshape(path.k, [1]), [1])
    selected = bb.op("And", bb.op("Not", bb.op("Greater", magnitude, threshold)),
                     bb.op("Not", at_max))
    l1_s = bb.reduce("ReduceSum", bb.where(selected, bb.op("Abs", bb.op("Sub", x1, x_max)),
                                           zero), [1], True)
    some = bb.op("Greater", l1_s, zero)
    gamma = bb.where(some, bb.op("Div", bb.op("Sub", l1_current, l1_target),
                                 bb.where(some, l1_s, one)), inf)
    beyond = bb.op("Greater", gamma, one)
    partial = bb.op("Add", x1, bb.op("Mul", bb.op("Sub", x_max, x1), gamma))
    moved = bb.where(selected, bb.where(beyond, x_max, partial), x1)
    x2 = bb.where(close, x1, moved)
    x_next = bb.where(active, x2, x)
    attr_next = bb.op("Add", attr, bb.op("Mul", bb.op("Sub", x_next, x), g))
    active_next = bb.op("And", active, bb.op("And", bb.op("Not", close), beyond))
    return [x_next, attr_next, active_next]
