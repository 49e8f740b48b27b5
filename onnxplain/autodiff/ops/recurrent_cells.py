"""The cells of LSTM, GRU and RNN written in ONNX ops, at one step ([N, ...]) or at all steps
at once ([T, N, ...]), and the Scan that runs a step body over time: shared by the backward
rules (recurrent.py) and by the forward that keeps LSTM's gates for them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import onnx
from onnx import helper

from ...graph.builder import GraphBuilder
from ...graph.shapes import TensorInfo
from .recurrent_activations import Activation, apply, derivative


@dataclass(frozen=True)
class Cell:
    """One direction's parameters, as the gate functions read them."""

    op: str
    hidden: int
    rt: str  # R^T, [H, G*H]
    clip: float | None = None
    input_forget: bool = False
    linear_before_reset: bool = False
    rb_h: str | None = None  # GRU with linear_before_reset: R's bias of the h gate
    peepholes: tuple[str, str, str] | None = None  # LSTM: P_i, P_o, P_f
    acts: tuple[Activation, ...] = ()  # the activation functions (f, g, h for LSTM)


def part(b: GraphBuilder, x: str, k: int, hidden: int, count: int = 1) -> str:
    """Gate slot(s) k .. k+count-1 of the last axis."""
    return b.slice(x, [k * hidden], [(k + count) * hidden], [-1])


def act(b: GraphBuilder, cell: Cell, slot: int, x: str) -> str:
    return apply(b, cell.acts[slot], x)


def dact(b: GraphBuilder, cell: Cell, slot: int, y: str, a: str, clip: bool = True) -> str:
    """The derivative of slot's function at the (clipped) pre-activation a, y its value."""
    return derivative(b, cell.acts[slot], y, lambda: clipped(b, cell, a) if clip else a)


def clipped(b: GraphBuilder, cell: Cell, a: str) -> str:
    if cell.clip is None:
        return a
    bound = b.scalar(cell.clip, a)
    return b.op("Max", b.op("Min", a, bound), b.op("Neg", bound))


def cell_gates(b: GraphBuilder, cell: Cell, xw: str, h: str, c: str | None,
               new_state: bool = True) -> dict[str, str]:
    """The cell at one step ([N, ...]) or at all steps ([T, N, ...]): gate values, raw
    pre-activations (for clip's derivative) and the new state under "h" (and "c"). Without
    `new_state` (the backward reads gates only) LSTM's and GRU's "h" is not emitted."""
    if cell.op == "LSTM":
        return _lstm_gates(b, cell, xw, h, c, new_state)
    if cell.op == "GRU":
        return _gru_gates(b, cell, xw, h, new_state)
    a = b.op("Add", xw, b.op("MatMul", h, cell.rt))
    return {"a": a, "h": act(b, cell, 0, clipped(b, cell, a))}


def _lstm_gates(b: GraphBuilder, cell: Cell, xw: str, h: str, c: str | None,
                new_state: bool) -> dict[str, str]:
    assert c is not None
    a = b.op("Add", xw, b.op("MatMul", h, cell.rt))
    gates = lstm_finish(b, cell, lstm_inputs(b, cell, a, c), c)
    return {**gates, "h": b.op("Mul", gates["o"], gates["tc"])} if new_state else gates


def lstm_inputs(b: GraphBuilder, cell: Cell, a: str, c: str | None) -> dict[str, str]:
    """The gates that do not read the new cell state: i, f, g (c: the old one, for P), and
    without peepholes o too, i o f then from one activation over their 3 slots ("s")."""
    if cell.peepholes is None and not cell.input_forget:
        a_iof, ac = part(b, a, 0, cell.hidden, 3), part(b, a, 3, cell.hidden)
        gates = act(b, cell, 0, clipped(b, cell, a_iof))
        i, o, f = (part(b, gates, k, cell.hidden) for k in range(3))
        g = act(b, cell, 1, clipped(b, cell, ac))
        return {"a_iof": a_iof, "ac": ac, "s": gates, "i": i, "o": o, "f": f, "g": g,
                "ig": b.op("Mul", i, g)}
    ai, ao, af, ac = (part(b, a, k, cell.hidden) for k in range(4))
    if cell.peepholes is not None:
        assert c is not None
        ai = b.op("Add", ai, b.op("Mul", cell.peepholes[0], c))
        af = b.op("Add", af, b.op("Mul", cell.peepholes[2], c))
    i = act(b, cell, 0, clipped(b, cell, ai))
    f = (b.op("Sub", b.scalar(1.0, i), i) if cell.input_forget
         else act(b, cell, 0, clipped(b, cell, af)))
    g = act(b, cell, 1, clipped(b, cell, ac))
    return {"ai": ai, "ao": ao, "af": af, "ac": ac, "i": i, "f": f, "g": g,
            "ig": b.op("Mul", i, g)}


def lstm_finish(b: GraphBuilder, cell: Cell, gates: dict[str, str], c: str,
                 c_new: str | None = None) -> dict[str, str]:
    """The new cell state (unless given), o and h's activation of c_new ("tc")."""
    if c_new is None:
        c_new = b.op("Add", b.op("Mul", gates["f"], c), gates["ig"])
    gates = {**gates, "c": c_new, "tc": act(b, cell, 2, c_new)}
    if "o" in gates:
        return gates
    ao = gates["ao"]
    if cell.peepholes is not None:
        ao = b.op("Add", ao, b.op("Mul", cell.peepholes[1], c_new))
    return {**gates, "ao": ao, "o": act(b, cell, 0, clipped(b, cell, ao))}


def _gru_gates(b: GraphBuilder, cell: Cell, xw: str, h: str, new_state: bool
               ) -> dict[str, str]:
    hidden = cell.hidden
    rt_zr, rt_h = part(b, cell.rt, 0, hidden, 2), part(b, cell.rt, 2, hidden)
    hr = b.op("MatMul", h, rt_zr)
    az = b.op("Add", part(b, xw, 0, hidden), part(b, hr, 0, hidden))
    ar = b.op("Add", part(b, xw, 1, hidden), part(b, hr, 1, hidden))
    z = act(b, cell, 0, clipped(b, cell, az))
    r = act(b, cell, 0, clipped(b, cell, ar))
    out = {"az": az, "ar": ar, "z": z, "r": r}
    if cell.linear_before_reset:
        q = b.op("MatMul", h, rt_h)
        if cell.rb_h is not None:
            q = b.op("Add", q, cell.rb_h)
        out["q"] = q
        ah = b.op("Add", part(b, xw, 2, hidden), b.op("Mul", r, q))
    else:
        ah = b.op("Add", part(b, xw, 2, hidden), b.op("MatMul", b.op("Mul", r, h), rt_h))
    hh = act(b, cell, 1, clipped(b, cell, ah))
    out.update(ah=ah, hh=hh)
    if new_state:
        out["h"] = b.op("Add", hh, b.op("Mul", z, b.op("Sub", h, hh)))
    return out


# ---- Scans --------------------------------------------------------------------------------

Body = Callable[[GraphBuilder, list[str], list[str]], tuple[list[str], list[str]]]


def scan(b: GraphBuilder, initial: Sequence[str], xs: Sequence[str], reverse: bool,
          n_scans: int, build: Body) -> list[str]:
    """Scan over the first axis of `xs` (from the end when `reverse`) with carried `initial`;
    build(bb, carried, slices) emits the body and returns (next carried, per-step outputs).
    Returns the final carried values, then the per-step outputs stacked in time order.
    (Scan slices its inputs itself.)"""
    proto = onnx.ModelProto()
    proto.ir_version = b.model.ir_version
    proto.opset_import.extend(b.model.opset_import)
    bb = GraphBuilder(proto, b.infos, prefix=b.fresh("recurrence"))
    carried = [bb.fresh("carried") for _ in initial]
    slices = [bb.fresh("step") for _ in xs]
    for name, like in zip(carried, initial, strict=True):
        bb.infos[name] = b.info(like)
    for name, like in zip(slices, xs, strict=True):
        rank = b.info(like).rank
        bb.infos[name] = TensorInfo(b.dtype(like), None if rank is None else (None,) * (rank - 1))
    updated, scans = build(bb, carried, slices)
    assert len(scans) == n_scans
    inputs = set(carried) | set(slices)
    # A body output that is a body input goes through an Identity.
    outputs = [bb.op("Identity", v) if v in inputs else v for v in updated + scans]

    def typed(name: str) -> onnx.ValueInfoProto:
        rank = bb.info(name).rank
        return helper.make_tensor_value_info(name, bb.dtype(name),
                                             None if rank is None else [None] * rank)

    body = helper.make_graph(list(proto.graph.node), bb.prefix.replace("/", "_"),
                             [typed(n) for n in carried + slices], [typed(n) for n in outputs],
                             list(proto.graph.initializer))
    results = b.node("Scan", [*initial, *xs], len(initial) + n_scans, body=body,
                     num_scan_inputs=len(xs), scan_input_directions=[int(reverse)] * len(xs),
                     scan_output_directions=[int(reverse)] * n_scans)
    for k, (result, source) in enumerate(zip(results, outputs, strict=True)):
        rank, stacked = bb.info(source).rank, int(k >= len(initial))
        b.infos[result] = TensorInfo(bb.info(source).dtype,
                                     None if rank is None else (None,) * (rank + stacked))
    return results
