"""A float64 numpy reference of ONNX's LSTM, GRU and RNN, written from the spec with ONNX
Runtime's treatment of `sequence_lens` (steps at or after a row's length keep the state and
output 0): the oracle of the recurrent rules' finite differences. The tests check it against
ONNX Runtime's own kernels in float32."""

from __future__ import annotations

import numpy as np
import onnx
from onnx.reference.op_run import OpRun
from onnx.reference.ops.op_scan import Scan as ReferenceScan


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _clip(a: np.ndarray, clip: float | None) -> np.ndarray:
    return a if clip is None else np.clip(a, -clip, clip)


# The spec's activation functions: (takes alpha, takes beta, default alpha, default beta, f).
FUNCTIONS = {
    "relu": (0, 0, 0, 0, lambda x, a, b: np.maximum(x, 0.0)),
    "tanh": (0, 0, 0, 0, lambda x, a, b: np.tanh(x)),
    "sigmoid": (0, 0, 0, 0, lambda x, a, b: _sigmoid(x)),
    "affine": (1, 1, 0, 0, lambda x, a, b: a * x + b),
    "leakyrelu": (1, 0, 0.01, 0, lambda x, a, b: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, 0, 0, 0, lambda x, a, b: np.where(x > a, x, 0.0)),
    "scaledtanh": (1, 1, 0, 0, lambda x, a, b: a * np.tanh(b * x)),
    "hardsigmoid": (1, 1, 0.2, 0.5, lambda x, a, b: np.clip(a * x + b, 0.0, 1.0)),
    "elu": (1, 0, 1.0, 0, lambda x, a, b: np.where(x >= 0, x, a * (np.exp(x) - 1.0))),
    "softsign": (0, 0, 0, 0, lambda x, a, b: x / (1.0 + np.abs(x))),
    "softplus": (0, 0, 0, 0, lambda x, a, b: np.log1p(np.exp(x))),
}
DEFAULTS = {"LSTM": ["Sigmoid", "Tanh", "Tanh"], "GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}


def _functions(op: str, dirs: int, attrs: dict) -> list[list]:
    """Each direction's functions, alpha/beta consumed in order by those that take them."""
    names = attrs.get("activations") or DEFAULTS[op] * dirs
    alphas, betas = list(attrs.get("activation_alpha") or []), list(
        attrs.get("activation_beta") or [])
    out = []
    for name in names:
        name = name.decode() if isinstance(name, bytes) else name
        takes_a, takes_b, a, b, f = FUNCTIONS[name.lower()]
        a = alphas.pop(0) if takes_a and alphas else a
        b = betas.pop(0) if takes_b and betas else b
        out.append(lambda x, f=f, a=a, b=b: f(x, a, b))
    slots = len(DEFAULTS[op])
    return [out[d * slots:(d + 1) * slots] for d in range(dirs)]


def _lstm_step(x, h, c, w, r, b, p, attrs, fs):
    hidden = h.shape[-1]
    a = x @ w.T + h @ r.T + b[:4 * hidden] + b[4 * hidden:]
    ai, ao, af, ac = (a[:, k * hidden:(k + 1) * hidden] for k in range(4))
    clip = attrs.get("clip")
    i = fs[0](_clip(ai + p[:hidden] * c, clip))
    if attrs.get("input_forget"):
        f = 1.0 - i
    else:
        f = fs[0](_clip(af + p[2 * hidden:] * c, clip))
    c_new = f * c + i * fs[1](_clip(ac, clip))
    o = fs[0](_clip(ao + p[hidden:2 * hidden] * c_new, clip))
    return o * fs[2](c_new), c_new


def _gru_step(x, h, w, r, b, attrs, fs):
    hidden = h.shape[-1]
    wb, rb = b[:3 * hidden], b[3 * hidden:]
    xw = x @ w.T + wb
    clip = attrs.get("clip")
    z = fs[0](_clip(xw[:, :hidden] + h @ r[:hidden].T + rb[:hidden], clip))
    rr = fs[0](_clip(xw[:, hidden:2 * hidden] + h @ r[hidden:2 * hidden].T
                        + rb[hidden:2 * hidden], clip))
    r_h, rb_h = r[2 * hidden:], rb[2 * hidden:]
    if attrs.get("linear_before_reset"):
        ah = xw[:, 2 * hidden:] + rr * (h @ r_h.T + rb_h)
    else:
        ah = xw[:, 2 * hidden:] + (rr * h) @ r_h.T + rb_h
    hh = fs[1](_clip(ah, clip))
    return (1 - z) * hh + z * h


def _rnn_step(x, h, w, r, b, attrs, fs):
    hidden = h.shape[-1]
    return fs[0](_clip(x @ w.T + h @ r.T + b[:hidden] + b[hidden:], attrs.get("clip")))


def recurrent(op: str, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, **attrs):
    """Y, Y_h (and Y_c for LSTM), in the node's layout."""
    layout = attrs.get("layout", 0)
    if layout:
        x = x.transpose(1, 0, 2)
        h0 = None if h0 is None else h0.transpose(1, 0, 2)
        c0 = None if c0 is None else c0.transpose(1, 0, 2)
    steps, batch, _ = x.shape
    dirs, hidden = w.shape[0], r.shape[-1]
    gates = {"LSTM": 4, "GRU": 3, "RNN": 1}[op]
    b = np.zeros((dirs, 2 * gates * hidden)) if b is None else b
    p = np.zeros((dirs, 3 * hidden)) if p is None else p
    lens = np.full(batch, steps) if lens is None else lens
    y = np.zeros((steps, dirs, batch, hidden))
    y_h, y_c = np.zeros((dirs, batch, hidden)), np.zeros((dirs, batch, hidden))
    reverse = attrs.get("direction") == "reverse"
    functions = _functions(op, dirs, attrs)
    for d in range(dirs):
        h = np.zeros((batch, hidden)) if h0 is None else h0[d].copy()
        c = np.zeros((batch, hidden)) if c0 is None else c0[d].copy()
        order = range(steps - 1, -1, -1) if reverse or d == 1 else range(steps)
        for t in order:
            if op == "LSTM":
                h_new, c_new = _lstm_step(x[t], h, c, w[d], r[d], b[d], p[d], attrs,
                                          functions[d])
            elif op == "GRU":
                h_new, c_new = _gru_step(x[t], h, w[d], r[d], b[d], attrs, functions[d]), c
            else:
                h_new, c_new = _rnn_step(x[t], h, w[d], r[d], b[d], attrs, functions[d]), c
            valid = (t < lens)[:, None]
            h, c = np.where(valid, h_new, h), np.where(valid, c_new, c)
            y[t, d] = np.where(valid, h, 0.0)
        y_h[d], y_c[d] = h, c
    if layout:
        y, y_h, y_c = y.transpose(2, 0, 1, 3), y_h.transpose(1, 0, 2), y_c.transpose(1, 0, 2)
    return (y, y_h, y_c) if op == "LSTM" else (y, y_h)


class _Recurrent(OpRun):
    """The reference above as an op of onnx's reference evaluator (its own LSTM, GRU and RNN
    ignore sequence_lens, clip and input_forget)."""

    op_type = ""

    def _run(self, x, w, r, b=None, lens=None, h0=None, c0=None, p=None, **_):
        attrs = {name: getattr(self, name, None) for name in
                 ("clip", "input_forget", "linear_before_reset", "layout", "activations",
                  "activation_alpha", "activation_beta")}
        attrs = {k: v for k, v in attrs.items() if v is not None}
        attrs["direction"] = getattr(self, "direction", None) or "forward"
        if isinstance(attrs["direction"], bytes):
            attrs["direction"] = attrs["direction"].decode()
        outputs = recurrent(self.op_type, x, w, r, b, lens, h0, c0, p, **attrs)
        return tuple(o.astype(x.dtype) for o in outputs)


class LSTM(_Recurrent):
    op_type = "LSTM"


class GRU(_Recurrent):
    op_type = "GRU"


class RNN(_Recurrent):
    op_type = "RNN"


class Scan(ReferenceScan):
    """onnx 1.23's Scan refuses reverse directions: scan inputs read from the end are flipped
    before, outputs written from the end flipped after."""

    _DIRECTIONS = ("scan_input_directions", "scan_output_directions")

    def __init__(self, onnx_node, run_params):
        directions = {a.name: list(a.ints) for a in onnx_node.attribute
                      if a.name in self._DIRECTIONS}
        forward = onnx.NodeProto()
        forward.CopyFrom(onnx_node)
        kept = [a for a in forward.attribute if a.name not in self._DIRECTIONS]
        del forward.attribute[:]
        forward.attribute.extend(kept)
        super().__init__(forward, run_params)
        self._inputs = directions.get("scan_input_directions", [])
        self._outputs = directions.get("scan_output_directions", [])

    def _run(self, *args, **kwargs):
        states = len(args) - len(self._inputs) if self._inputs else 0
        args = [a[::-1] if i >= states and self._inputs[i - states] else a
                for i, a in enumerate(args)]
        results = list(super()._run(*args, **kwargs))
        first = len(results) - len(self._outputs)
        return tuple(r[::-1] if i >= first and self._outputs[i - first] else r
                     for i, r in enumerate(results))


SPEC_OPS = [LSTM, GRU, RNN, Scan]
