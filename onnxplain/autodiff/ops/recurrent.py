"""LSTM, GRU and RNN: backpropagation through time as ONNX Scans, one or two per direction.

The sequence length may be known only at run time, so nothing is unrolled. Per direction:
1. one MatMul gives every step's input projection X W^T + biases;
2. the state before each step is the node's own Y shifted by one step (h), and for LSTM a
   Scan of one Mul and one Add per step recovers the cell state c; with peepholes (the gates
   read c) or without a Y output, a Scan runs the cell again (one MatMul by R per step);
3. the gate values and local derivatives of every step are then computed at once over
   [T, N, ...] by the same cell functions (recurrent_cells.py; any activation the spec
   allows: recurrent_activations.py). The common LSTM skips 1-3: in gradient programs its
   kernel gives way to Scans that keep the gates (see "a forward that keeps its gates");
4. a backward Scan carries dh (and dc) from the last step to the first: one Gemm by R (which
   also adds the next step's dY) and a few elementwise ops per step; the gradients of the
   projections leave it stacked, and one MatMul by W gives dX.
The step bodies keep only what cannot be computed for all steps at once, though ONNX Runtime
1.31 spends only about 0.5 us per Scan step and 0.3 us per node on [8, 128] tensors: at
hidden 128 the products dominate (recomputing the gates costs about the forward's own
multiply-adds), and running both directions in one Scan ([T, D, N, ...]) measured 2 ms
slower (the stacking copies outweigh the halved step count; a batched [D, N, .] product per
step takes ONNX Runtime three times a pre-packed 2-D Gemm's time, on one thread or two).

`sequence_lens` follows ONNX Runtime: steps at or after a row's length keep the state
unchanged (so Y_h / Y_c are the last valid step's, and a reverse pass starts at the row's
last valid step) and Y is 0 there (so its gradient is dropped).
"""

from __future__ import annotations

from dataclasses import dataclass
from weakref import WeakKeyDictionary

import numpy as np
import onnx
from onnx import TensorProto

from ...graph.builder import GraphBuilder
from ...graph.shapes import TensorInfo
from ...graph.walk import node_inputs
from ..registry import NodeContext, rule
from .recurrent_activations import Activation, parse
from .recurrent_cells import Cell, cell_gates, dact, lstm_finish, lstm_inputs, part, scan

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
DEFAULT_ACTIVATIONS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"],
                       "RNN": ["Tanh"]}
# Inputs that are weights (W, R, B, and LSTM's peepholes P): not differentiated.
WEIGHT_INPUTS = {"LSTM": (1, 2, 3, 7), "GRU": (1, 2, 3), "RNN": (1, 2, 3)}
STATE_INPUTS = {"LSTM": (5, 6), "GRU": (5,), "RNN": (5,)}


def _directions(c: NodeContext) -> int:
    return 2 if c.str_attr("direction", "forward") == "bidirectional" else 1


def _activations(c: NodeContext) -> list[Activation] | str:
    """Every direction's functions in order (f, g, h for LSTM), or why not."""
    given = c.attr("activations", None)
    names = (DEFAULT_ACTIVATIONS[c.node.op_type] * _directions(c) if not given
             else [a.decode() if isinstance(a, bytes) else a for a in given])
    if len(names) != len(DEFAULT_ACTIVATIONS[c.node.op_type]) * _directions(c):
        return f"activations {names} do not give every direction's functions"
    return parse(names, c.attr("activation_alpha", None) or [],
                 c.attr("activation_beta", None) or [])


def _supports(c: NodeContext) -> str | None:
    op, name = c.node.op_type, c.node.name or c.y(0) or c.y(1)
    activations = _activations(c)
    if isinstance(activations, str):
        return f"{op} node '{name}': {activations}"
    if any(c.need(i) for i in WEIGHT_INPUTS[op]):
        return f"{op} node '{name}': gradients with respect to its weights W, R, B, P"
    if c.b.opset < 10:
        return f"{op} node '{name}': the backward pass needs opset 10 (computed Slice)"
    if c.x(4) and c.b.opset < 11:
        return f"{op} node '{name}': sequence_lens needs opset 11 (Range) in the backward pass"
    c.b.rank(c.x(0))  # a ModelError (rank unknown) becomes the reason
    return None


@dataclass(frozen=True)
class Steps:
    """What both Scans of one direction read: the mask of valid steps ([T, N, 1] float, None
    without sequence_lens) and the direction."""

    mask: str | None
    reverse: bool


def _masked(bb: GraphBuilder, m: str | None, old: str, new: str) -> str:
    return new if m is None else bb.op("Add", old, bb.op("Mul", m, bb.op("Sub", new, old)))


def _states_before(b: GraphBuilder, cell: Cell, steps: Steps, xw: str, h0: str,
                   c0: str | None) -> list[str]:
    """The state before every step, [T, N, H] in time order (h, then c for LSTM), by running
    the cell again (peepholes, or no Y output to read the states from)."""
    initial = [h0] + ([c0] if c0 is not None else [])
    xs = [xw] + ([steps.mask] if steps.mask is not None else [])

    def body(bb: GraphBuilder, carried: list[str], slices: list[str]):
        m = slices[1] if len(slices) > 1 else None
        h, c = carried[0], carried[1] if len(carried) > 1 else None
        gates = cell_gates(bb, cell, slices[0], h, c)
        new = [_masked(bb, m, h, gates["h"])]
        if c is not None:
            new.append(_masked(bb, m, c, gates["c"]))
        return new, list(carried)

    return scan(b, initial, xs, steps.reverse, len(initial), body)[len(initial):]


def _shifted(b: GraphBuilder, y: str, fill: str, reverse: bool) -> str:
    """y moved one step along the direction: the value before each step, `fill` ([1, ...])
    before the first."""
    if reverse:
        return b.concat([b.slice(y, [1], [np.iinfo(np.int64).max], [0]), fill], 0)
    return b.concat([fill, b.slice(y, [0], [-1], [0])], 0)


def _hidden_before(b: GraphBuilder, steps: Steps, y: str, h0: str) -> str:
    """h before every step from the node's own Y ([T, N, H] of this direction). Y is 0 at
    padded steps, so in reverse a row starts from h0 where the next step is padded."""
    if steps.mask is None or not steps.reverse:
        return _shifted(b, y, b.unsqueeze(h0, [0]), steps.reverse)
    zero = b.unsqueeze(b.op("Mul", h0, b.scalar(0.0, h0)), [0])
    after = _shifted(b, steps.mask, b.slice(b.op("Mul", steps.mask, b.scalar(0.0, y)),
                                            [0], [1], [0]), True)
    fresh = b.op("Mul", b.op("Sub", b.scalar(1.0, after), after), h0)
    return b.op("Add", _shifted(b, y, zero, True), fresh)


def _cells_before(b: GraphBuilder, steps: Steps, f: str, ig: str, c0: str) -> tuple[str, str]:
    """LSTM's cell state before and after every step from f and i*g of all steps (no
    peepholes): c' = f c + i g, one Mul and one Add per step. (After: c' at valid steps.)"""
    xs = [f, ig] + ([steps.mask] if steps.mask is not None else [])

    def body(bb: GraphBuilder, carried: list[str], slices: list[str]):
        c = carried[0]
        kept = bb.op("Mul", slices[0], c)
        new = bb.op("Add", kept, slices[1])
        if len(slices) == 2:
            return [new], [kept]
        return [_masked(bb, slices[2], c, new)], [new]

    # Each step emits a value other than its carried state (which would cost an Identity per
    # step): f c (then c after = f c + i g), or with a mask the unmasked new state (then the
    # state after is read like h from Y, 0 at padded steps).
    emitted = scan(b, [c0], xs, steps.reverse, 1, body)[1]
    if steps.mask is None:
        after = b.op("Add", emitted, ig)
        return _shifted(b, after, b.unsqueeze(c0, [0]), steps.reverse), after
    return _hidden_before(b, steps, b.op("Mul", emitted, steps.mask), c0), emitted


# ---- local derivatives, all steps at once ----------------------------------------------

def _through_clip(b: GraphBuilder, cell: Cell, derivative: str, a: str) -> str:
    """The derivative zeroed where clip cut the pre-activation `a`."""
    if cell.clip is None:
        return derivative
    inside = b.op("Not", b.op("Greater", b.op("Abs", a), b.scalar(cell.clip, a)))
    return b.keep(derivative, inside)


def _lstm_coefficients(b: GraphBuilder, cell: Cell, g: dict[str, str], cp: str
                       ) -> dict[str, str]:
    """dA = [dc', dh', dc', dc'] * k4 with dh' = dh_new and dc' = dc (masked) + dh' * kc;
    dc_prev = dc' * kcc."""
    kc = b.op("Mul", g["o"], dact(b, cell, 2, g["tc"], g["c"], clip=False))
    kg = b.op("Mul", g["i"], _through_clip(b, cell, dact(b, cell, 1, g["g"], g["ac"]), g["ac"]))
    if "s" in g:  # i, o, f as one [.., 3H] activation: ki, ko, kf = [g, tanh c', c] * s'
        d_s = _through_clip(b, cell, dact(b, cell, 0, g["s"], g["a_iof"]), g["a_iof"])
        k_iof = b.op("Mul", b.concat([g["g"], g["tc"], cp], -1), d_s)
        return {"k4": b.concat([k_iof, kg], -1), "kc": kc, "kcc": g["f"]}
    d_o = _through_clip(b, cell, dact(b, cell, 0, g["o"], g["ao"]), g["ao"])
    ko = b.op("Mul", g["tc"], d_o)
    d_i = _through_clip(b, cell, dact(b, cell, 0, g["i"], g["ai"]), g["ai"])
    if cell.input_forget:  # f = 1 - i
        ki = b.op("Mul", b.op("Sub", g["g"], cp), d_i)
        kf = b.op("Mul", ki, b.scalar(0.0, ki))
    else:
        ki = b.op("Mul", g["g"], d_i)
        kf = b.op("Mul", cp, _through_clip(b, cell, dact(b, cell, 0, g["f"], g["af"]), g["af"]))
    kcc = g["f"]
    if cell.peepholes is not None:
        p_i, p_o, p_f = cell.peepholes
        kc = b.op("Add", kc, b.op("Mul", ko, p_o))
        kcc = b.add_all([kcc, b.op("Mul", ki, p_i), b.op("Mul", kf, p_f)])
    return {"k4": b.concat([ki, ko, kf, kg], -1), "kc": kc, "kcc": kcc}


def _gru_coefficients(b: GraphBuilder, cell: Cell, g: dict[str, str], hp: str
                      ) -> dict[str, str]:
    kz = b.op("Mul", b.op("Sub", hp, g["hh"]),
              _through_clip(b, cell, dact(b, cell, 0, g["z"], g["az"]), g["az"]))
    kh = b.op("Mul", b.op("Sub", b.scalar(1.0, g["z"]), g["z"]),
              _through_clip(b, cell, dact(b, cell, 1, g["hh"], g["ah"]), g["ah"]))
    d_r = _through_clip(b, cell, dact(b, cell, 0, g["r"], g["ar"]), g["ar"])
    if cell.linear_before_reset:  # a_h = x_h + r * q: dA_R = dh' * [kz, kr, kh r]
        kr = b.op("Mul", b.op("Mul", kh, g["q"]), d_r)
        return {"k3": b.concat([kz, kr, kh], -1),
                "k3r": b.concat([kz, kr, b.op("Mul", kh, g["r"])], -1), "z": g["z"]}
    # a_h = x_h + (r h) R_h^T: u = da_h R_h, da_r = u * h * r'
    return {"kz": kz, "kh": kh, "kr": b.op("Mul", hp, d_r), "r": g["r"], "z": g["z"]}


def _rnn_coefficients(b: GraphBuilder, cell: Cell, g: dict[str, str]) -> dict[str, str]:
    return {"k": _through_clip(b, cell, dact(b, cell, 0, g["h"], g["a"]), g["a"])}


# ---- backward step ---------------------------------------------------------------------

def _backward_step(bb: GraphBuilder, cell: Cell, r: dict[str, str], k: dict[str, str],
                   dh: str, dc: str | None, dy_next: str | None) -> tuple[str, str, str | None]:
    """From the gradients reaching the new state (already masked), the gradient of the step's
    input projection, and the parts of dh_prev (plus the next step's dY), dc_prev that flow
    through the cell."""
    if cell.op == "LSTM":
        assert dc is not None
        dc = bb.op("Add", dc, bb.op("Mul", dh, k["kc"]))
        da = bb.op("Mul", bb.concat([dc, dh, dc, dc], -1), k["k4"])
        return da, _times_r(bb, da, r["all"], dy_next), bb.op("Mul", dc, k["kcc"])
    if cell.op == "RNN":
        da = bb.op("Mul", dh, k["k"])
        return da, _times_r(bb, da, r["all"], dy_next), None
    through_z, rest = bb.op("Mul", dh, k["z"]), [dy_next] if dy_next else []
    if cell.linear_before_reset:
        spread = bb.concat([dh, dh, dh], -1)
        da_r = bb.op("Mul", spread, k["k3r"])
        return (bb.op("Mul", spread, k["k3"]),
                bb.add_all([bb.op("MatMul", da_r, r["all"]), through_z, *rest]), None)
    da_z, da_h = bb.op("Mul", dh, k["kz"]), bb.op("Mul", dh, k["kh"])
    u = bb.op("MatMul", da_h, r["h"])
    da_zr = bb.concat([da_z, bb.op("Mul", u, k["kr"])], -1)
    dh_prev = bb.add_all([bb.op("MatMul", da_zr, r["zr"]), bb.op("Mul", u, k["r"]), through_z,
                          *rest])
    return bb.concat([da_zr, da_h], -1), dh_prev, None


def _times_r(bb: GraphBuilder, da: str, r: str, dy_next: str | None) -> str:
    """da R (+ dy_next): one Gemm, a node fewer per step than MatMul and Add."""
    return bb.op("Gemm", da, r, dy_next) if dy_next else bb.op("MatMul", da, r)


def _part_rows(b: GraphBuilder, r: str, k: int, hidden: int, count: int = 1) -> str:
    return b.slice(r, [k * hidden], [(k + count) * hidden], [0])


def _backward(b: GraphBuilder, cell: Cell, steps: Steps, r: str, k: dict[str, str],
              dy: str | None, dh: str, dc: str | None) -> list[str]:
    """The backward Scan: [dh before the first step, (dc), dA stacked in time order]. The
    carried dh includes the step's own dY: each step adds the next one's (dy_next)."""
    dy_next = None
    if dy is not None:
        first = [-1, np.iinfo(np.int64).max] if not steps.reverse else [0, 1]
        dh = b.op("Add", dh, b.squeeze(b.slice(dy, [first[0]], [first[1]], [0]), [0]))
        dy_next = _shifted(b, dy, b.slice(b.op("Mul", dy, b.scalar(0.0, dy)), [0], [1], [0]),
                           steps.reverse)
    initial = [dh] + ([dc] if dc is not None else [])
    names = list(k)
    extra = [v for v in (dy_next, steps.mask) if v is not None]
    rows = {"all": r}
    if cell.op == "GRU" and not cell.linear_before_reset:  # R's row blocks, sliced once
        rows.update(h=_part_rows(b, r, 2, cell.hidden), zr=_part_rows(b, r, 0, cell.hidden, 2))

    def body(bb: GraphBuilder, carried: list[str], slices: list[str]):
        at = dict(zip(names, slices, strict=False))
        rest = slices[len(names):]
        dy_t = rest.pop(0) if dy_next is not None else None
        m = rest.pop(0) if steps.mask is not None else None
        dh_total = carried[0]
        dh_new = dh_total if m is None else bb.op("Mul", m, dh_total)
        dc_old = carried[1] if len(carried) > 1 else None
        dc_new = dc_old if m is None or dc_old is None else bb.op("Mul", m, dc_old)
        da, dh_prev, dc_prev = _backward_step(bb, cell, rows, at, dh_new, dc_new, dy_t)
        if m is not None:  # padded steps pass the state (and its gradient) through
            dh_prev = bb.op("Add", dh_prev, bb.op("Sub", dh_total, dh_new))
            if dc_prev is not None:
                dc_prev = bb.op("Add", dc_prev, bb.op("Sub", dc_old, dc_new))
        return [dh_prev] + ([dc_prev] if dc_prev is not None else []), [da]

    return scan(b, initial, [k[n] for n in names] + extra, not steps.reverse, 1, body)


# ---- the rule ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Seeds:
    """The output gradients in time-major layout: dY [T, D, N, H], dY_h and dY_c [D, N, H];
    and the node's own Y (time-major), when it has one."""

    y: str | None
    y_h: str | None
    y_c: str | None
    forward_y: str | None


def _take(b: GraphBuilder, x: str, d: int, axis: int = 0) -> str:
    return b.op("Gather", x, b.const(np.array(d, np.int64), "direction"), axis=axis)


def _cell(c: NodeContext, d: int, hidden: int, forward: bool = True
          ) -> tuple[Cell, str, str, str | None]:
    """Direction d's cell, its W [G*H, I], R [G*H, H] and input bias (or None). Without
    `forward` (the gates are known: _gate_forward) neither the bias nor R^T, which only the
    forward reads, is emitted (cell.rt is then '')."""
    b, op = c.b, c.node.op_type
    gates = GATES[op]
    w, r = _take(b, c.x(1), d), _take(b, c.x(2), d)
    lbr = op == "GRU" and bool(c.attr("linear_before_reset", 0))
    bias, rb_h, peepholes = None, None, None
    if c.x(3) and forward:
        both = _take(b, c.x(3), d)
        wb, rb = (b.slice(both, [k * gates * hidden], [(k + 1) * gates * hidden], [0])
                  for k in range(2))
        if lbr:  # R's h-gate bias sits inside r * (h R_h^T + Rb_h)
            rb_h = part(b, rb, 2, hidden)
            rb = b.op("Mul", rb, b.const(np.repeat(np.array([1, 1, 0], b.np_dtype(rb)), hidden)))
        bias = b.op("Add", wb, rb)
    if op == "LSTM" and c.x(7):
        p = _take(b, c.x(7), d)
        peepholes = tuple(part(b, p, k, hidden) for k in range(3))
    clip, activations = c.attr("clip", None), _activations(c)
    assert not isinstance(activations, str)  # _supports refused otherwise
    slots = len(DEFAULT_ACTIVATIONS[op])
    cell = Cell(op, hidden, b.op("Transpose", r, perm=[1, 0]) if forward else "",
                None if clip is None else float(clip), bool(c.attr("input_forget", 0)), lbr,
                rb_h, peepholes, tuple(activations[d * slots:(d + 1) * slots]))
    return cell, w, r, bias


def _zeros_state(b: GraphBuilder, xt: str, hidden: int) -> str:
    zero = onnx.numpy_helper.from_array(np.zeros(1, b.np_dtype(xt)))
    out = b.op("ConstantOfShape", b.concat([b.dim(xt, 1), b.ints([hidden])], 0), value=zero)
    b.infos[out] = TensorInfo(b.dtype(xt), (None, hidden))
    return out


def _direction(c: NodeContext, d: int, xt: str, steps: Steps, seeds: Seeds,
               states: tuple[str | None, str | None], known: Known | None = None
               ) -> tuple[str, str, str | None]:
    """dX, d initial_h and d initial_c of direction d (`known`: its forward values, kept by
    _gate_forward)."""
    b, hidden = c.b, _hidden(c)
    cell, w, r, bias = _cell(c, d, hidden, forward=known is None)
    lstm = cell.op == "LSTM"
    hp: str | None = None
    if known is not None:
        gates, cp = known
    else:
        xw = _projection(b, xt, b.op("Transpose", w, perm=[1, 0]), bias)
        h0, c0 = _initial(c, d, xt, states, hidden)
        gates, hp, cp = _forward_values(b, cell, steps, xw, seeds.forward_y, d, h0, c0)
    if lstm:
        assert cp is not None
        k = _lstm_coefficients(b, cell, gates, cp)
    elif cell.op == "GRU":
        assert hp is not None
        k = _gru_coefficients(b, cell, gates, hp)
    else:
        k = _rnn_coefficients(b, cell, gates)
    dy = _take(b, seeds.y, d, axis=1) if seeds.y is not None else None
    if dy is not None and steps.mask is not None:
        dy = b.op("Mul", dy, steps.mask)  # Y is 0 at padded steps
    dh = _take(b, seeds.y_h, d) if seeds.y_h is not None else _zeros_state(b, xt, hidden)
    dc = None
    if lstm:
        dc = _take(b, seeds.y_c, d) if seeds.y_c is not None else _zeros_state(b, xt, hidden)
    results = _backward(b, cell, steps, r, k, dy, dh, dc)
    return b.op("MatMul", results[-1], w), results[0], results[1] if lstm else None


def _initial(c: NodeContext, d: int, xt: str, states: tuple[str | None, str | None],
             hidden: int) -> tuple[str, str | None]:
    b = c.b
    h0 = _take(b, states[0], d) if states[0] else _zeros_state(b, xt, hidden)
    if c.node.op_type != "LSTM":
        return h0, None
    return h0, _take(b, states[1], d) if states[1] else _zeros_state(b, xt, hidden)


# ---- LSTM: a forward that keeps its gates ------------------------------------------------
# ONNX Runtime's LSTM kernel keeps no gates, so the backward would compute them again (one
# product as large as the forward's). Gradient programs run Scans that emit them instead
# (measured at hidden 128, batch 8, 128 steps, one thread: 1.7 ms against 1.2 ms for the
# kernel plus 1.2 ms to recompute the gates at input 64; 2.5 against 1.9 + 1.9 at input 256).
# The rule emits them beside the kernel (so every pass still finds the LSTM node, and the
# graph stays valid); finish_gate_forwards then puts them in the kernel's place. Plain
# forwards keep the kernel.

Known = tuple[dict[str, str], str]  # gates, and c before every step


@dataclass(frozen=True)
class GateForward:
    """The Scans' forward values per direction, the names their nodes compute, and each
    direction's (y, final h, final c), stacked into the node's outputs once it is known
    which of them anything reads."""

    known: list[Known]
    computed: frozenset[str]
    finals: list[tuple[str, str, str]]


_FORWARDS: WeakKeyDictionary[GraphBuilder, dict[tuple[str, ...], GateForward]] = (
    WeakKeyDictionary())


def _replaceable(c: NodeContext) -> bool:
    """The common LSTM: functions whose derivatives read their values only, no peepholes,
    clip, coupled gates or sequence_lens, time-major, and in the graph the rule emits into."""
    acts = _activations(c)
    return (c.node.op_type == "LSTM" and not c.x(4) and not c.x(7)
            and c.attr("clip", None) is None and not c.attr("input_forget", 0)
            and not int(c.attr("layout", 0)) and not isinstance(acts, str)
            and all(a.name in ("Sigmoid", "Tanh") for a in acts)
            and any(node == c.node for node in c.b.graph.node))


def _gate_forward(c: NodeContext, xt: str, states: tuple[str | None, str | None]
                  ) -> list[Known]:
    """Each direction's forward values, from Scans emitted once per node and builder."""
    done = _FORWARDS.setdefault(c.b, {})
    key = tuple(c.node.output)
    if key not in done:
        done[key] = _emit_gate_forward(c, xt, states)
    return done[key].known


def _emit_gate_forward(c: NodeContext, xt: str, states: tuple[str | None, str | None]
                       ) -> GateForward:
    b, start = c.b, len(c.b.graph.node)
    with b.own_memo():  # these nodes will move to the kernel's place
        known, finals = _gate_forward_nodes(c, xt, states)
    computed = frozenset(out for node in b.graph.node[start:] for out in node.output)
    return GateForward(known, computed, finals)


def _gate_forward_nodes(c: NodeContext, xt: str, states: tuple[str | None, str | None]
                        ) -> tuple[list[Known], list[tuple[str, str, str]]]:
    """Each direction's Scan: its forward values and its (y, final h, final c)."""
    b, hidden = c.b, _hidden(c)
    known, finals = [], []
    for d in range(_directions(c)):
        reverse = c.str_attr("direction", "forward") == "reverse" or d == 1
        cell, w, _, bias = _cell(c, d, hidden)
        xw = _projection(b, xt, b.op("Transpose", w, perm=[1, 0]), bias)
        h0, c0 = _initial(c, d, xt, states, hidden)
        assert c0 is not None
        values, h_t, c_t = _gate_scan(b, cell, xw, h0, c0, reverse)
        known.append(values)
        finals.append((values[0]["y"], h_t, c_t))
    return known, finals


def finish_gate_forwards(b: GraphBuilder) -> None:
    """Put the gate-keeping Scans the rules emitted in place of the LSTM kernels they copy
    (call once every backward pass is emitted, and before adding outputs (taps) that read
    an LSTM output nothing else reads: only the outputs read then are stacked)."""
    forwards = _FORWARDS.pop(b, {})
    if not forwards:
        return
    read = {name for node in b.graph.node for name in node_inputs(node)}
    read.update(value.name for value in b.graph.output)
    for key, forward in forwards.items():
        start = len(b.graph.node)
        with b.own_memo():  # these nodes move too
            renames = _stacked_outputs(b, forward.finals, [n if n in read else "" for n in key])
        computed = forward.computed | {out for node in b.graph.node[start:] for out in node.output}
        nodes = list(b.graph.node)
        moved = [n for n in nodes if any(out in computed for out in n.output)]
        rest = [n for n in nodes if not any(out in computed for out in n.output)]
        index = next(k for k, n in enumerate(rest)
                     if n.op_type == "LSTM" and tuple(n.output) == key)
        for node in moved:
            node.output[:] = [renames.get(out, out) for out in node.output]
        del b.graph.node[:]
        b.graph.node.extend(rest[:index] + moved + rest[index + 1:])


def _stacked_outputs(b: GraphBuilder, finals: list[tuple[str, str, str]], names: list[str]
                     ) -> dict[str, str]:
    """Y [T, D, N, H], Y_h and Y_c [D, N, H] from the directions' `finals`, for the node's
    output `names` that are not '' (unread ones are not emitted): fresh name -> node's name."""
    renames = {}
    for k, (name, axis) in enumerate(zip(names, (1, 0, 0), strict=False)):
        if name:
            renames[b.concat([b.unsqueeze(f[k], [axis]) for f in finals], axis)] = name
    return renames


def _gate_scan(b: GraphBuilder, cell: Cell, xw: str, h0: str, c0: str, reverse: bool
               ) -> tuple[Known, str, str]:
    """One direction's forward as a Scan emitting h, the sigmoid gates (i, o, f), g, c and
    tanh c per step; with the final h and c."""
    def body(bb: GraphBuilder, carried: list[str], slices: list[str]):
        h, c = carried
        a = bb.op("Gemm", h, cell.rt, slices[0])
        g = lstm_finish(bb, cell, lstm_inputs(bb, cell, a, c), c)
        h_new = bb.op("Mul", g["o"], g["tc"])
        return [h_new, g["c"]], [bb.op("Identity", h_new), g["s"], g["g"],
                                 bb.op("Identity", g["c"]), g["tc"]]

    h_t, c_t, y, s, g, c_new, tc = scan(b, [h0, c0], [xw], reverse, 5, body)
    i, o, f = (part(b, s, k, cell.hidden) for k in range(3))
    gates = {"y": y, "s": s, "g": g, "c": c_new, "tc": tc, "i": i, "o": o, "f": f,
             "a_iof": s, "ac": g}  # (pre-activations: Sigmoid's and Tanh's derivatives skip them)
    cp = _shifted(b, c_new, b.unsqueeze(c0, [0]), reverse)  # (LSTM's rule reads no h before)
    return (gates, cp), h_t, c_t


def _forward_values(b: GraphBuilder, cell: Cell, steps: Steps, xw: str, y: str | None, d: int,
                    h0: str, c0: str | None) -> tuple[dict[str, str], str, str | None]:
    """Every step's gates and the states before it. With the node's Y, h needs no recurrence
    (and LSTM's c one Mul and Add per step); with peepholes or without Y the cell runs again."""
    if y is None or cell.peepholes is not None:
        before = _states_before(b, cell, steps, xw, h0, c0)
        hp, cp = before[0], before[1] if c0 is not None else None
        return cell_gates(b, cell, xw, hp, cp, new_state=False), hp, cp
    hp = _hidden_before(b, steps, _take(b, y, d, axis=1), h0)
    if cell.op != "LSTM":
        return cell_gates(b, cell, xw, hp, None, new_state=False), hp, None
    assert c0 is not None
    early = lstm_inputs(b, cell, _projection(b, hp, cell.rt, plus=xw), None)
    cp, c_new = _cells_before(b, steps, early["f"], early["ig"], c0)
    return lstm_finish(b, cell, early, cp, c_new), hp, cp


def _projection(b: GraphBuilder, x: str, w: str, bias: str | None = None,
                plus: str | None = None) -> str:
    """x [T, N, K] @ w + bias ([M]) or + plus ([T, N, M]) as one Gemm over T*N rows: the
    addition rides on the product instead of a pass of its own over [T, N, M]."""
    rows = b.op("Flatten", x, axis=2)
    c = bias if plus is None else b.op("Flatten", plus, axis=2)
    if c is None:
        product = b.op("MatMul", rows, w)
    else:
        product = b.op("Gemm", rows, w, c)
    return b.reshape(product, b.concat([b.dims(x, 0, 2), b.ints([-1])], 0))


def _hidden(c: NodeContext) -> int:
    hidden = c.attr("hidden_size", None)
    if hidden is None:
        hidden = (c.b.info(c.x(2)).certain or (None,))[-1]
    return int(hidden)


def _valid_steps(b: GraphBuilder, lens: str, xt: str) -> str | None:
    """[T, N, 1] float: 1 where step t < sequence_lens[n]."""
    if not lens:
        return None
    t = b.range(b.const(np.array(0, np.int64)), b.reshape(b.dim(xt, 0), []),
                b.const(np.array(1, np.int64)))
    valid = b.op("Less", b.unsqueeze(t, [1]),
                 b.unsqueeze(b.op("Cast", lens, to=TensorProto.INT64), [0]))
    return b.unsqueeze(b.op("Cast", valid, to=b.dtype(xt)), [2])


def _time_major(b: GraphBuilder, x: str | None, perm: list[int], layout: int) -> str | None:
    return b.op("Transpose", x, perm=perm) if x and layout else (x or None)


@rule("LSTM", "GRU", "RNN", supports=_supports)
def recurrent(c: NodeContext, gy):
    """Backpropagation through time (Werbos 1990) for the ONNX recurrent ops: dX and the
    gradients of the initial states; see the module docstring for the formulation."""
    b, op = c.b, c.node.op_type
    layout = int(c.attr("layout", 0))
    xt = _time_major(b, c.x(0), [1, 0, 2], layout)
    assert xt is not None
    seeds = Seeds(_time_major(b, gy[0], [1, 2, 0, 3], layout),
                  _time_major(b, gy[1] if len(gy) > 1 else None, [1, 0, 2], layout),
                  _time_major(b, gy[2] if len(gy) > 2 else None, [1, 0, 2], layout),
                  _time_major(b, c.y(0), [1, 2, 0, 3], layout))
    states = (_time_major(b, c.x(5), [1, 0, 2], layout),
              _time_major(b, c.x(6), [1, 0, 2], layout) if op == "LSTM" else None)
    mask = _valid_steps(b, c.x(4), xt)
    direction = c.str_attr("direction", "forward")
    known = _gate_forward(c, xt, states) if _replaceable(c) else None
    parts = []
    for d in range(_directions(c)):
        reverse = direction == "reverse" or d == 1
        parts.append(_direction(c, d, xt, Steps(mask, reverse), seeds, states,
                                known[d] if known else None))
    grads: list[str | None] = [None] * len(c.node.input)
    if c.need(0):
        dx = b.add_all([p[0] for p in parts])
        grads[0] = _time_major(b, dx, [1, 0, 2], layout)
    for i, k in zip(STATE_INPUTS[op], (1, 2), strict=False):
        if c.need(i):
            stacked = b.concat([b.unsqueeze(p[k], [0]) for p in parts], 0)
            grads[i] = _time_major(b, stacked, [1, 0, 2], layout)
    return grads
