"""The reverse-mode driver: walks the differentiated region backwards and accumulates gradients."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

import onnx

from ..errors import MissingRule, ModelError, UnsupportedOpError
from ..graph.builder import GraphBuilder
from ..graph.op_kinds import (
    ARITHMETIC,
    CASTS,
    CONCATS,
    EXTREMA,
    LOGICAL,
    MODULO,
    NARY_SUMS,
    PARAMETERISED_ACTIVATIONS,
    QUANTIZERS,
    SHAPE_READERS,
    UNARY_MATH,
)
from ..graph.shapes import TensorInfo, ai_onnx_opset
from ..graph.walk import ancestors, captures, node_inputs
from .ops.quantize import INTEGER_PASSTHROUGH, carried_by, carried_outputs, float_view
from .registry import GRADIENT, NodeContext, RuleSet, has_no_gradient


def differentiated_region(b: GraphBuilder, wrt: Iterable[str], outputs: Iterable[str],
                          active_from: Iterable[str] = ()
                          ) -> tuple[list[onnx.NodeProto], set[str]]:
    """Nodes on a float path from any of `wrt` to any of `outputs`, and the active tensors.

    A tensor is active when it is a float tensor (or an integer one holding quantized values,
    see ops/quantize.py) that depends on a `wrt` tensor or on one of
    `active_from` (tensors that decide which inputs of a node count as activations, for
    rules that treat those differently, without being differentiated themselves); only nodes
    with an input that depends on `wrt` and an output that reaches `outputs` need a rule.
    """
    wrt = set(wrt)
    active = wrt | set(active_from)
    reached = set(wrt)
    forward: list[onnx.NodeProto] = []
    for node in b.graph.node:
        inputs = node_inputs(node)
        if not any(name in active for name in inputs):
            continue
        if has_no_gradient(node.domain, node.op_type):
            continue
        carried = carried_outputs(b, node, active)
        active.update(carried)
        if any(name in reached for name in inputs):
            reached.update(carried)
            forward.append(node)
    needed = set(outputs)
    region: list[onnx.NodeProto] = []
    for node in reversed(forward):
        if any(out in needed for out in node.output):
            region.append(node)
            needed.update(node_inputs(node))
    region.reverse()
    return region, active


def missing_rules(b: GraphBuilder, nodes: Sequence[onnx.NodeProto], rules: RuleSet,
                  active: set[str]) -> list[MissingRule]:
    """Every node in `nodes` whose op has no rule, or whose rule does not apply, listed at once."""
    missing = []
    for node in nodes:
        opset = _opset_of(b, node.domain)
        entry = rules.lookup(node.domain, node.op_type, opset)
        if entry is None:
            since = rules.earliest(node.domain, node.op_type)
            reason = f"rule needs opset {since} or newer" if since is not None else ""
            missing.append(MissingRule(node.domain, node.op_type, opset, node.name, reason))
            continue
        if entry.supports is not None:
            try:
                reason = entry.supports(_context(b, node, active, rules))
            except ModelError as err:  # e.g. a rank that static inference left unknown
                reason = f"{err}; known only at run time"
            if reason:
                missing.append(MissingRule(node.domain, node.op_type, opset, node.name, reason))
    return missing


def path_cuts(b: GraphBuilder, wrt: Iterable[str], outputs: Iterable[str], active: set[str]
              ) -> list[MissingRule]:
    """Where the gradient path is cut, when no output is active yet one depends on `wrt`
    through values (not only shapes): the nodes that read an active tensor and whose results
    the gradient treats as constant (integer casts, ArgMax, comparisons, rounding). Without
    this, the gradient would be an all-zero map presented as an answer."""
    outputs = set(outputs)
    if outputs & active:
        return []
    needed = {name for node in ancestors(b.graph.node, outputs) for name in node_inputs(node)}
    needed |= outputs
    depends, cuts = set(wrt), []
    for node in b.graph.node:
        if node.op_type in SHAPE_READERS or not any(n in depends for n in node_inputs(node)):
            continue
        depends.update(out for out in node.output if out)
        constant = [out for out in node.output if out in needed and out not in active]
        if constant and any(n in active for n in node_inputs(node)):
            cuts.append(MissingRule(node.domain, node.op_type, _opset_of(b, node.domain),
                                    node.name, CUT_REASON))
    return cuts if outputs & depends else []


def partial_cuts(nodes: Sequence[onnx.NodeProto], wrt: Iterable[str], outputs: Iterable[str],
                 is_float: Callable[[str], bool]) -> list[onnx.NodeProto]:
    """Where `outputs` depend on `wrt` through a differentiable path and also through nodes
    whose results the gradient treats as constant (rounding, integer casts, comparisons,
    ArgMax), with those results reaching `outputs` as values: the gradient ignores that part
    of the dependence. Results used only to select (Where's condition, gather indices) or as
    shapes are not listed: there the gradient of the selected values is the whole answer.
    (When no path is differentiable, path_cuts refuses instead.)"""
    active, outputs = set(wrt), set(outputs)
    reads: list[onnx.NodeProto] = []
    for node in nodes:
        if not any(name in active for name in node_inputs(node)):
            continue
        reads.append(node)
        if not has_no_gradient(node.domain, node.op_type):
            active.update(carried_by(node, is_float, active))
    if not outputs & active:
        return []
    return [node for node in reads
            if node.op_type not in SHAPE_READERS | QUANTIZERS  # quantizers: the STE's constants
            and _reaches_as_value(nodes, node, outputs, active, is_float)]


def _reaches_as_value(nodes: Sequence[onnx.NodeProto], cut: onnx.NodeProto, outputs: set[str],
                      active: set[str], is_float: Callable[[str], bool]) -> bool:
    tainted = {out for out in cut.output if out and out not in active}
    if not tainted:
        return False
    for node in nodes:
        if any(name in tainted and _as_value(node, i, name, is_float)
               for i, name in enumerate(node.input)):
            tainted.update(out for out in node.output if out)
    return bool(tainted & outputs)


def _as_value(node: onnx.NodeProto, index: int, name: str,
              is_float: Callable[[str], bool]) -> bool:
    """Whether input `index` of `node` enters its result as a value (not as an index, a
    condition or a shape): float inputs, and integer or boolean ones of arithmetic, logic,
    casts and data movement."""
    if node.op_type in SHAPE_READERS:
        return False
    if is_float(name) or node.op_type in _INTEGER_VALUE_OPS:
        return True
    return index == 0 and node.op_type in INTEGER_PASSTHROUGH


_INTEGER_VALUE_OPS = (CASTS | ARITHMETIC | UNARY_MATH | MODULO | EXTREMA | NARY_SUMS
                      | PARAMETERISED_ACTIVATIONS | CONCATS | LOGICAL)


def partial_cut_notes(nodes: Sequence[onnx.NodeProto], wrt: Iterable[str], output: str,
                      infos: Mapping[str, TensorInfo]) -> list[str]:
    """partial_cuts as one note for the summary (and a warning), or none."""
    cuts = partial_cuts(nodes, wrt, [output],
                        lambda name: name in infos and infos[name].is_float)
    if not cuts:
        return []
    named = ", ".join(f"'{node.name or node.output[0]}' ({node.op_type})" for node in cuts[:8])
    more = f" and {len(cuts) - 8} more" if len(cuts) > 8 else ""
    return [f"the gradient treats the path through {named}{more} as constant (a derivative "
            f"0 almost everywhere): output '{output}' also depends on the input through it, "
            "and the attribution leaves that dependence out"]


CUT_REASON = ("the explained output depends on the attributed input only through this "
              "node, whose result the gradient treats as constant (integer, boolean or "
              "piecewise constant): the gradient would be 0 everywhere")


def _opset_of(b: GraphBuilder, domain: str) -> int:
    if domain in ("", "ai.onnx"):
        return ai_onnx_opset(b.model) or 1
    return next((entry.version for entry in b.model.opset_import if entry.domain == domain), 1)


def _context(b: GraphBuilder, node: onnx.NodeProto, active: set[str],
             rules: RuleSet = GRADIENT) -> NodeContext:
    read = list(node.input) + captures(node)
    return NodeContext(b, node, tuple(name in active for name in read), rules)


def add_gradients(b: GraphBuilder, seeds: dict[str, str], wrt: Sequence[str],
                  rules: RuleSet = GRADIENT, active_from: Sequence[str] = ()
                  ) -> dict[str, str]:
    """Append d(sum of seed * output)/d(tensor) for each tensor in `wrt`; return their names.

    `seeds` maps output tensors to seed tensors of the same shape; `active_from` see
    differentiated_region. Raises UnsupportedOpError
    naming every op without a rule before emitting anything.
    """
    region, active = differentiated_region(b, wrt, seeds, active_from)
    missing = missing_rules(b, region, rules, active) or path_cuts(b, wrt, seeds, active)
    if missing:
        raise UnsupportedOpError(missing)
    grads: dict[str, list[str]] = {out: [seed] for out, seed in seeds.items()}

    def total(name: str) -> str | None:
        parts = grads.get(name)
        if not parts:
            return None
        if len(parts) > 1:
            grads[name] = [b.add_all(parts)]
        return grads[name][0]

    for node in reversed(region):
        gy = [total(out) if out else None for out in node.output]
        if all(g is None for g in gy):
            continue
        ctx = float_view(_context(b, node, active, rules), gy)
        entry = rules.lookup(node.domain, node.op_type, _opset_of(b, node.domain))
        assert entry is not None  # missing_rules checked the whole region
        gx = list(entry.rule(ctx, gy))
        for i, name in enumerate(list(node.input) + captures(node)):
            if i < len(gx) and gx[i] is not None and ctx.need(i):
                grads.setdefault(name, []).append(gx[i])
    result = {}
    for name in wrt:
        grad = total(name)
        result[name] = grad if grad is not None else b.zeros_like(name)
    return result
