"""Rules for control flow: If, Loop and Scan.

A subgraph's backward is itself a subgraph: the forward body is copied into a standalone
model (its formal inputs and the outer names it reads declared as inputs), the driver
differentiates it there with the same rule set, and the result (forward recomputed, then
its backward) becomes the branch or body of a new If or Loop in the outer graph.

- If: an If on the same condition whose branches each rerun their branch and its backward,
  returning the gradients of every outer tensor either branch reads (zero where it does not).
- Loop and Scan: the forward runs again with scan outputs recording each iteration's carried
  state, then a Loop walks the iterations in reverse, recomputing the body from the recorded
  state and applying its backward; gradients of captured tensors accumulate in its state.
  The trip count is read from the recording, so loops stopped by a computed condition work
  too (the condition itself has no gradient). Carried state must keep one shape across
  iterations (to be recorded as a scan output).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper

from ...errors import MissingRule, UnsupportedOpError
from ...graph.builder import GraphBuilder
from ...graph.ir import onnx_ir, remove_unused, subgraph_to_ir
from ...graph.shapes import TensorInfo, infer_shapes, value_info_to_tensor_info
from ...graph.walk import captures
from ..build import add_gradients
from ..registry import GRADIENT, NodeContext, rule

# Outer constants up to this size (shapes, axes, scalars) are read by rules inside bodies;
# weights are not (reading them would copy them).
_KNOWN_ELEMENTS = 64


def _free_names(graph: onnx.GraphProto) -> list[str]:
    """The outer-scope names `graph` reads (in nested subgraphs too), and outputs it passes
    through from outside: values that no node, input or initializer of theirs defines."""
    body = subgraph_to_ir(graph)
    read = [value for node in body.all_nodes() for value in node.inputs if value is not None]
    return list(dict.fromkeys(
        value.name for value in [*read, *body.outputs] if value.producer() is None
        and not value.is_graph_input() and not value.is_initializer()))


class Body:
    """A backward subgraph under construction around a copy of a forward subgraph.

    `b` emits into a standalone model holding `graph`'s nodes; `bind` computes the forward
    body's formal inputs (from recorded state), `close` returns the finished subgraph with
    `inputs` as its formal inputs and everything else read from the outer scope.
    """

    def __init__(self, outer: GraphBuilder, graph: onnx.GraphProto,
                 inputs: Sequence[tuple[str, TensorInfo]] = (), extra: Sequence[str] = ()):
        self.inputs = [_value_info(name, info) for name, info in inputs]
        outside = [name for name in dict.fromkeys([*_free_names(graph), *extra])
                   if name not in {i.name for i in self.inputs}]
        declared = [*self.inputs, *graph.input,
                    *(_value_info(name, outer.info(name)) for name in outside)]
        model = helper.make_model(
            helper.make_graph(list(graph.node), graph.name or "body", declared,
                              list(graph.output), list(graph.initializer)),
            opset_imports=list(outer.model.opset_import), ir_version=outer.model.ir_version)
        infos = infer_shapes(model)
        infos.update({name: outer.info(name) for name in outside if name in outer.infos})
        infos.update({name: info for name, info in inputs})
        self.b = GraphBuilder(model, infos, prefix=outer.fresh("grad_body"))
        for name in outside:  # small constants of the outer graph stay known to the rules
            shape = outer.static_shape(name)
            if shape is not None and int(np.prod(shape)) <= _KNOWN_ELEMENTS:
                self.b._static[name] = outer.static_value(name)  # as for its Constant nodes
        self.bound: list[onnx.NodeProto] = []

    def bind(self, formal: str, value: str) -> None:
        """The forward body's formal input `formal` takes `value` (emitted before the body)."""
        self.bound.append(helper.make_node("Identity", [value], [formal],
                                           name=self.b.fresh("bind")))

    def close(self, outputs: Sequence[str], name: str) -> onnx.GraphProto:
        """The subgraph returning `outputs`: the bound inputs, the forward body's copy and
        its backward, each node after what it reads, without the nodes and initializers no
        output is computed from; the outer names stay reads of the enclosing graph."""
        b = self.b
        named = [b.fresh("out") for _ in outputs]
        returned = [helper.make_node("Identity", [out], [n], name=b.fresh("out_node"))
                    for n, out in zip(named, outputs, strict=True)]
        results = [helper.make_tensor_value_info(n, b.dtype(out), None)
                   for n, out in zip(named, outputs, strict=True)]
        body = subgraph_to_ir(helper.make_graph(
            [*self.bound, *b.graph.node, *returned], name, self.inputs, results,
            list(b.graph.initializer)))
        body.sort()  # what the bound inputs are computed from moves before them
        remove_unused(body)
        return onnx_ir.serde.serialize_graph(body)


def _value_info(name: str, info: TensorInfo) -> onnx.ValueInfoProto:
    dims = None if info.shape is None else list(info.shape)
    return helper.make_tensor_value_info(name, info.dtype or TensorProto.UNDEFINED, dims)


def _differentiate(body: Body, c: NodeContext, seeds: Sequence[tuple[str, str | None]],
                   wrt: Sequence[str], where: str) -> dict[str, str]:
    """Gradients in `body` of sum(seed * output) over (output, seed) pairs; one output may
    appear several times (its seeds add up). Nodes without a rule are named by their path
    (`where` is the subgraph's attribute)."""
    b, summed = body.b, {}
    for out, seed in seeds:
        if seed is not None:
            summed.setdefault(out, []).append(seed)
    if not summed or not wrt:
        return {name: b.zeros_like(name) for name in wrt}
    total = {out: b.add_all(parts) for out, parts in summed.items()}
    try:
        return add_gradients(b, total, list(wrt), c.rules or GRADIENT)
    except UnsupportedOpError as err:
        path = f"{c.node.name or c.node.op_type}/{where}"
        raise UnsupportedOpError([MissingRule(m.domain, m.op_type, m.opset,
                                              f"{path}/{m.node}", m.reason)
                                  for m in err.missing]) from None


def _wanted(c: NodeContext) -> list[str]:
    """The captured outer tensors that need a gradient."""
    offset = len(c.node.input)
    return [name for k, name in enumerate(captures(c.node)) if c.need(offset + k)]


def _result(c: NodeContext, explicit: dict[int, str], captured: dict[str, str]) -> list:
    """One gradient per explicit input, then one per capture (rule protocol of build.py)."""
    grads: list = [explicit.get(i) for i in range(len(c.node.input))]
    return grads + [captured.get(name) for name in captures(c.node)]


# ---- what the rules refuse ------------------------------------------------------------
def _tensors_only(graphs: Sequence[onnx.GraphProto]) -> str | None:
    """Sequences and optionals (opset 16+ bodies) have no gradient here."""
    for graph in graphs:
        for value in [*graph.input, *graph.output]:
            if value.type.WhichOneof("value") not in (None, "tensor_type"):
                return (f"subgraph '{graph.name}' passes '{value.name}' as a "
                        f"{value.type.WhichOneof('value')}: only tensors are differentiated")
    return None


def _if_supports(c: NodeContext) -> str | None:
    return _tensors_only([c.attr("then_branch"), c.attr("else_branch")])


def _state_supports(c: NodeContext, first_in: int, first_out: int, count: int,
                    first_node_in: int) -> str | None:
    """Carried state is recorded as scan outputs: it needs a known type and one shape in
    every iteration (checked where the body declares both)."""
    body = c.attr("body")
    reason = _tensors_only([body])
    for k in range(count if reason is None else 0):
        before = value_info_to_tensor_info(body.input[first_in + k])
        after = value_info_to_tensor_info(body.output[first_out + k])
        if before.dtype is None and c.b.info(c.x(first_node_in + k)).dtype is None:
            return f"carried state '{body.input[first_in + k].name}' has no known type"
        if before.shape is not None and after.shape is not None and (
                len(before.shape) != len(after.shape) or any(
                    isinstance(x, int) and isinstance(y, int) and x != y
                    for x, y in zip(before.shape, after.shape, strict=True))):
            return (f"carried state '{body.input[first_in + k].name}' changes shape across "
                    f"iterations ({list(before.shape)} -> {list(after.shape)}), so its values "
                    "cannot be recorded for the backward pass")
    return reason


def _loop_supports(c: NodeContext) -> str | None:
    return _state_supports(c, 2, 1, len(c.node.input) - 2, 2)


def _scan_supports(c: NodeContext) -> str | None:
    count = len(c.node.input) - int(c.attr("num_scan_inputs"))
    return _state_supports(c, 0, 0, count, 0)


# ---- If ---------------------------------------------------------------------------------
@rule("If", supports=_if_supports)
def if_(c: NodeContext, gy):
    """An If on the same condition; each branch reruns its forward and backward."""
    b, wanted = c.b, _wanted(c)
    if not wanted:
        return _result(c, {}, {})
    branches = {}
    for key in ("then_branch", "else_branch"):
        graph = c.attr(key)
        body = Body(b, graph, extra=[*wanted, *(g for g in gy if g)])
        seeds = list(zip((o.name for o in graph.output), gy, strict=True))
        grads = _differentiate(body, c, seeds, wanted, key)
        branches[key] = body.close([grads[name] for name in wanted], b.fresh(key))
    outs = b.node("If", [c.x(0)], len(wanted), **branches)
    for out, name in zip(outs, wanted, strict=True):
        b.infos[out] = b.info(name)
    return _result(c, {}, dict(zip(wanted, outs, strict=True)))


# ---- Loop -------------------------------------------------------------------------------
def _recorded(b: GraphBuilder, node: onnx.NodeProto, body: onnx.GraphProto,
              formal: Sequence[str], extra_attrs: dict) -> list[str]:
    """The forward node again, with scan outputs stacking each iteration's `formal` inputs;
    returns those stacks."""
    copy = onnx.GraphProto()
    copy.CopyFrom(body)
    for name in formal:
        recorded = b.fresh("record")
        copy.node.append(helper.make_node("Identity", [name], [recorded],
                                          name=b.fresh("record_node")))
        info = next(i for i in body.input if i.name == name)
        copy.output.append(helper.make_value_info(recorded, info.type))
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    attrs.update(extra_attrs, body=copy)
    outs = b.node(node.op_type, list(node.input), len(node.output) + len(formal), **attrs)
    for out, original in zip(outs, node.output, strict=False):
        b.infos[out] = b.info(original)
    return outs[len(node.output):]


def _is_float(info: TensorInfo) -> bool:
    return info.dtype is not None and info.is_float


def _formal_info(graph: onnx.GraphProto, k: int, outer: GraphBuilder, like: str) -> TensorInfo:
    info = value_info_to_tensor_info(graph.input[k])
    return info if info.dtype else outer.info(like)


@rule("Loop", supports=_loop_supports)
def loop(c: NodeContext, gy):
    """Record every iteration's carried state, then a Loop over the iterations in reverse:
    recompute the body at iteration t from the record and apply its backward."""
    b, node, body = c.b, c.node, c.attr("body")
    carried = len(node.input) - 2
    formal = [i.name for i in body.input]
    stacks = _recorded(b, node, body, [formal[0], *formal[2:]], {})
    trips, states = stacks[0], stacks[1:]
    count = b.squeeze(b.dim(trips, 0), [0])
    step = _Reverse(b, count)
    wanted = _wanted(c)
    floats = [k for k in range(carried) if _is_float(_formal_info(body, 2 + k, b, c.x(2 + k)))]
    new = ([(b.fresh("g_state"), b.info(c.x(2 + k))) for k in floats]
           + [(b.fresh("g_capture"), b.info(name)) for name in wanted])
    grad_body = Body(b, body, [step.inputs[0], step.inputs[1], *new],
                     extra=[count, *states, *(g for g in gy[carried:] if g)])
    t = step.position(grad_body.b)
    grad_body.bind(formal[0], t)
    grad_body.bind(formal[1], grad_body.b.const(np.array(True), "true"))
    for k in range(carried):
        grad_body.bind(formal[2 + k], grad_body.b.op("Gather", states[k], t, axis=0))
    seeds = [(body.output[1 + k].name, name) for k, (name, _) in zip(floats, new, strict=False)]
    seeds += [(out.name, grad_body.b.op("Gather", g, t, axis=0) if g else None)
              for out, g in zip(body.output[1 + carried:], gy[carried:], strict=True)]
    state_wrt = [formal[2 + k] for k in floats]
    grads = _differentiate(grad_body, c, seeds, state_wrt + wanted, "body")
    outs = _run_backward(c, grad_body, grads, count, {2 + k: (formal[2 + k], gy[k])
                                                      for k in floats},
                         dict(zip(wanted, (n for n, _ in new[len(floats):]), strict=True)))
    explicit = {2 + k: out for k, out in zip(floats, outs, strict=False)}
    return _result(c, explicit, dict(zip(wanted, outs[len(floats):], strict=True)))


def _run_backward(c: NodeContext, grad_body: Body, grads: dict[str, str], count: str,
                  states: dict[int, tuple[str, str | None]], accumulators: dict[str, str],
                  stacked: Sequence[str] = ()) -> list[str]:
    """Close the backward body and run it `count` times. `states`: node input index ->
    (formal input of the forward body, initial gradient or None);
    `accumulators`: captured tensor -> its carried sum; `stacked`: per-iteration gradients
    returned as scan outputs. Returns the final state gradients, sums, then the stacks."""
    b, gb = c.b, grad_body.b
    summed = [gb.op("Add", acc, grads[name]) for name, acc in accumulators.items()]
    outputs = [gb.const(np.array(True), "true"),
               *(grads[formal] for formal, _ in states.values()), *summed,
               *(grads[name] for name in stacked)]
    graph = grad_body.close(outputs, b.fresh(f"{c.node.op_type}_grad"))
    initial = [g or b.zeros_like(c.x(i)) for i, (_, g) in states.items()]
    initial += [b.zeros_like(name) for name in accumulators]
    outs = b.node("Loop", [count, "", *initial], len(initial) + len(stacked), body=graph)
    for out, name in zip(outs, [c.x(i) for i in states] + list(accumulators), strict=False):
        b.infos[out] = b.info(name)
    return outs


class _Reverse:
    """The formal inputs of a backward Loop body and the forward iteration it stands for."""

    def __init__(self, b: GraphBuilder, count: str):
        self.count = count
        self.inputs = [(b.fresh("i"), TensorInfo(TensorProto.INT64, ())),
                       (b.fresh("cond"), TensorInfo(TensorProto.BOOL, ()))]

    def position(self, b: GraphBuilder) -> str:
        """t = count - 1 - i: the backward loop's i-th iteration undoes forward iteration t."""
        one = b.const(np.array(1, np.int64))
        return b.op("Sub", b.op("Sub", self.count, one), self.index)

    @property
    def index(self) -> str:
        """i, the backward loop's own iteration number."""
        return self.inputs[0][0]


# ---- Scan -------------------------------------------------------------------------------
def _ints(c: NodeContext, name: str, count: int) -> list[int]:
    return list(c.attr(name, None) or [0] * count)


@rule("Scan", since=9, supports=_scan_supports)
def scan(c: NodeContext, gy):
    """Scan's backward as a reverse Loop over recorded states, like Loop's; scan inputs get
    their per-iteration gradients stacked (in reverse), then put back in order and axis."""
    b, node, body = c.b, c.node, c.attr("body")
    n_in = int(c.attr("num_scan_inputs"))
    n_state = len(node.input) - n_in
    n_out = len(node.output) - n_state
    in_axes, in_dirs = _ints(c, "scan_input_axes", n_in), _ints(c, "scan_input_directions", n_in)
    out_axes = _ints(c, "scan_output_axes", n_out)
    out_dirs = _ints(c, "scan_output_directions", n_out)
    formal = [i.name for i in body.input]
    extra = {"scan_output_axes": out_axes + [0] * n_state,
             "scan_output_directions": out_dirs + [0] * n_state}
    states = _recorded(b, node, body, formal[:n_state], extra) if n_state else []
    in_axes = [_axis(b, a, c.x(n_state + j)) for j, a in enumerate(in_axes)]
    count = b.squeeze(b.dim(c.x(n_state), in_axes[0]), [0])
    step = _Reverse(b, count)
    wanted = _wanted(c)
    floats = [k for k in range(n_state) if _is_float(b.info(c.x(k)))]
    slices = [j for j in range(n_in) if c.need(n_state + j)]
    new = ([(b.fresh("g_state"), b.info(c.x(k))) for k in floats]
           + [(b.fresh("g_capture"), b.info(name)) for name in wanted])
    scanned = [c.x(n_state + j) for j in range(n_in)]
    grad_body = Body(b, body, [step.inputs[0], step.inputs[1], *new],
                     extra=[count, *states, *scanned, *(g for g in gy[n_state:] if g)])
    gb = grad_body.b
    t, i = step.position(gb), step.index
    for k in range(n_state):
        grad_body.bind(formal[k], gb.op("Gather", states[k], t, axis=0))
    for j in range(n_in):
        at = i if in_dirs[j] else t
        grad_body.bind(formal[n_state + j], gb.op("Gather", scanned[j], at, axis=in_axes[j]))
    seeds = [(body.output[k].name, name) for k, (name, _) in zip(floats, new, strict=False)]
    for j, g in enumerate(gy[n_state:]):
        if g:
            axis = _axis(b, out_axes[j], node.output[n_state + j])
            seeds.append((body.output[n_state + j].name,
                          gb.op("Gather", g, i if out_dirs[j] else t, axis=axis)))
    state_wrt = [formal[k] for k in floats]
    slice_wrt = [formal[n_state + j] for j in slices]
    grads = _differentiate(grad_body, c, seeds, state_wrt + slice_wrt + wanted, "body")
    outs = _run_backward(c, grad_body, grads, count, {k: (formal[k], gy[k]) for k in floats},
                         dict(zip(wanted, (n for n, _ in new[len(floats):]), strict=True)),
                         slice_wrt)
    carried = len(floats) + len(wanted)
    explicit = {k: out for k, out in zip(floats, outs, strict=False)}
    for j, stacked in zip(slices, outs[carried:], strict=True):
        explicit[n_state + j] = _in_order(b, stacked, in_dirs[j], in_axes[j], scanned[j])
        b.infos[explicit[n_state + j]] = b.info(scanned[j])
    return _result(c, explicit, dict(zip(wanted, outs[len(floats):carried], strict=True)))


def _axis(b: GraphBuilder, axis: int, like: str) -> int:
    """A scan axis counted from the front (the rank is needed only for negative ones)."""
    return axis if axis >= 0 else axis % b.rank(like)


def _in_order(b: GraphBuilder, stacked: str, reverse: int, axis: int, like: str) -> str:
    """Per-iteration gradients stacked by the backward loop (last iteration first) as the
    scan input's layout: element order along `axis`."""
    if not reverse:
        stop = np.iinfo(np.int64).min
        stacked = b.slice(stacked, [-1], [stop], [0], [-1])
    if axis == 0:
        return stacked
    perm = list(range(1, b.rank(like)))
    perm.insert(axis, 0)
    return b.op("Transpose", stacked, perm=perm)
