"""Replace the standard ONNX `Attention` op (opset 23 and newer) by the standard ops it stands for.

Why: onnxplain's autodiff has no backward rule for the fused op, and the attention
probabilities inside it are no tensor of the graph, so they can be neither tapped nor
differentiated. After this pass each Attention node reads, as torch exporters write it,

    S = (Q·√s) @ (K·√s)ᵀ,   P = Softmax(softcap(S) + bias, axis=-1),   Y = P @ V

with `s` the scale (default 1/√head_size) and softcap(x) = c·tanh(x / c) when c > 0. The
Softmax is named `<node>/softmax` (`Attention_<index>/softmax` for an unnamed node) so that
layer methods find the probabilities [batch, q_heads, q_len, total_len].

Semantics follow the op's doc string, its function body and onnx's reference implementation
(onnx/reference/ops/op_attention.py), Attention-23 to -25:
- 3-D inputs [batch, seq, heads·size] are split into heads; past_key / past_value go before
  K / V on the sequence axis, and present_* are those concatenations.
- grouped-query heads: each kv head is repeated q_heads / kv_heads times in place (np.repeat:
  h0 h0 h1 h1 ...), as the reference does; not tiled.
- bias = attn_mask (bool: True → 0, False → -inf; float: added) + causal / window bias. A
  mask shorter than total_len on its last axis is padded with -inf (False), not broadcast.
  Causal is bottom-right: query i sees key j iff j <= i + offset, offset = past_len (0 without
  a cache, i.e. top-left when q_len != kv_len), or nonpad_kv_seqlen - q_len per batch.
- softcap is applied after the scale and before the bias. A query row whose bias is all -inf
  gives a zero row of Y (and of qk_matmul_output mode 3), as the spec says; the Softmax
  output itself is uniform there (its logits are set to 0), so no NaN reaches gradients.
- qk_matmul_output: mode 0 the scaled product S (as the doc and the function body say; the
  numpy reference returns the softcapped S there), 1 softcap(S), 2 softcap(S) + bias, 3 P.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import ModelError
from .shapes import FLOAT_TYPES, TensorInfo, infer_shapes, tensor_infos

_STANDARD = ("", "ai.onnx")
_INPUTS = ("Q", "K", "V", "attn_mask", "past_key", "past_value", "nonpad_kv_seqlen")


def is_attention_op(node: onnx.NodeProto) -> bool:
    return node.op_type == "Attention" and node.domain in _STANDARD


def has_attention_ops(model: onnx.ModelProto) -> bool:
    return any(is_attention_op(node) for node in model.graph.node)


def decompose_attention_ops(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every standard Attention node of the main graph, in place and at its position,
    by P = Softmax(softcap((Q·√s) @ (K·√s)ᵀ) + bias) (the Softmax named `<node>/softmax`)
    and Y = P @ V, with the reshapes, cache concatenation and masks around them; return the
    same model. Raises ModelError naming the node and the feature it cannot express.
    """
    _refuse_in_subgraphs(model.graph)
    graph = model.graph
    if not has_attention_ops(model):
        return model
    infos = _tensor_facts(model)
    # Every node is checked before anything is emitted, so a refusal leaves the model as it was.
    specs = {index: _Spec.of(node, node.name or f"Attention_{index}", infos)
             for index, node in enumerate(graph.node) if is_attention_op(node)}
    taken = _all_names(graph)
    nodes: list[onnx.NodeProto] = []
    for index, node in enumerate(graph.node):
        if index not in specs:
            nodes.append(node)
            continue
        _decompose(_Emitter(specs[index].base, taken, nodes, graph.initializer), specs[index])
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def _refuse_in_subgraphs(graph: onnx.GraphProto, inside: bool = False) -> None:
    for node in graph.node:
        if inside and is_attention_op(node):
            raise ModelError(f"Attention node '{node.name or '?'}': Attention in a subgraph "
                             "(If, Loop, Scan body) is not supported")
        for attribute in node.attribute:
            for sub in [attribute.g] if attribute.HasField("g") else list(attribute.graphs):
                _refuse_in_subgraphs(sub, inside=True)


def _tensor_facts(model: onnx.ModelProto) -> dict[str, TensorInfo]:
    """ONNX's shape inference; ONNX Runtime's symbolic one as well only when that left an
    Attention input without type or rank (it is slow on large models)."""
    try:
        infos = tensor_infos(onnx.shape_inference.infer_shapes(model, data_prop=True))
    except Exception:  # noqa: BLE001 - models over 2 GB: the declared types must do
        infos = tensor_infos(model)
    needed = [infos.get(name) for node in model.graph.node if is_attention_op(node)
              for name in node.input[:4] if name]
    known = all(i is not None and i.rank is not None and i.dtype for i in needed)
    return infos if known else infer_shapes(model)


def _all_names(graph: onnx.GraphProto) -> set[str]:
    names = {v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info)}
    names |= {init.name for init in graph.initializer}
    for node in graph.node:
        names.update([node.name, *node.input, *node.output])
    return names


class _Emitter:
    """Appends nodes to `nodes` and constants to `initializers`, under fresh names `base/hint`."""

    def __init__(self, base: str, taken: set[str], nodes: list[onnx.NodeProto],
                 initializers: list[onnx.TensorProto]) -> None:
        self.base, self.taken, self.nodes, self.initializers = base, taken, nodes, initializers
        self.consts: dict[tuple, str] = {}

    def fresh(self, hint: str) -> str:
        name, count = f"{self.base}/{hint}", 1
        while name in self.taken:
            count += 1
            name = f"{self.base}/{hint}_{count}"
        self.taken.add(name)
        return name

    def op(self, op_type: str, inputs: list[str], hint: str, out: str = "", **attrs) -> str:
        """One node with one output: `out` if given (a node output to bind), else fresh."""
        # A fresh output names its node too, so `base/softmax` is both node and tensor.
        name = self.fresh(hint)
        out = out or name
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=name, **attrs))
        return out

    def const(self, value, dtype: np.dtype | type, hint: str = "const") -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self.consts:
            self.consts[key] = self.fresh(hint)
            self.initializers.append(numpy_helper.from_array(array, self.consts[key]))
        return self.consts[key]

    def ints(self, values: list[int], hint: str = "ints") -> str:
        return self.const(values, np.int64, hint)

    def dims(self, x: str, start: int, end: int | None, hint: str) -> str:
        """Shape(x)[start:end] as an int64 vector."""
        attrs = {"start": start} if end is None else {"start": start, "end": end}
        return self.op("Shape", [x], hint, **attrs)

    def length(self, x: str, axis: int, hint: str) -> str:
        """Shape(x)[axis] as an int64 scalar, what Range needs."""
        return self.op("Squeeze", [self.dims(x, axis, axis + 1, hint + "_1d"),
                                   self.ints([0], "axis0")], hint)

    def arange(self, n: str, hint: str) -> str:
        """0, 1, ..., n - 1 for an int64 scalar n."""
        zero, one = self.const(0, np.int64, "i0"), self.const(1, np.int64, "i1")
        return self.op("Range", [zero, n, one], hint)

    def bind(self, x: str, out: str) -> None:
        """Make the node output `out` (if requested) carry the value `x`."""
        if out:
            self.op("Identity", [x], "identity", out=out)


@dataclass
class _Spec:
    """One Attention node: its input roles and outputs ('' when absent), attributes, and the
    element type and shape facts of its inputs."""

    base: str
    x: dict[str, str]
    y: list[str]
    attrs: dict
    info: dict[str, TensorInfo]
    rank: int                   # of Q, K and V: 3 or 4
    dtype: int                  # of Q, K and V
    np_dtype: np.dtype

    @classmethod
    def of(cls, node: onnx.NodeProto, base: str, infos: dict[str, TensorInfo]) -> _Spec:
        x = {role: node.input[i] if i < len(node.input) else "" for i, role in enumerate(_INPUTS)}
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        info = {role: infos.get(name) for role, name in x.items() if name}
        problem = _unsupported(x, attrs, info)
        if problem:
            raise ModelError(f"Attention node '{base}': {problem} is not supported")
        y = [node.output[i] if i < len(node.output) else "" for i in range(4)]
        q = info["Q"]
        return cls(base, x, y, attrs, info, q.rank, q.dtype, q.numpy_dtype)

    def dim(self, role: str, axis: int) -> int | None:
        # Dims guessed by ONNX Runtime's symbolic inference are no proof: they count as unknown.
        info = self.info.get(role)
        return _dim(info.certain if info is not None else None, axis)

    def heads(self) -> tuple[int | None, int | None]:
        if self.rank == 3:
            return self.attrs["q_num_heads"], self.attrs["kv_num_heads"]
        return self.dim("Q", 1), self.dim("K", 1)

    def head_size(self) -> int | None:
        if self.rank == 4:
            return self.dim("Q", 3)
        hidden = self.dim("Q", 2)
        return None if hidden is None else hidden // self.attrs["q_num_heads"]

    def total_length(self) -> int | None:
        kv = self.dim("K", 1 if self.rank == 3 else 2)
        past = self.dim("past_key", 2) if self.x["past_key"] else 0
        return None if kv is None or past is None else kv + past


def _unsupported(x: dict[str, str], attrs: dict, info: dict[str, TensorInfo | None]) -> str:
    """The first feature of the node that the decomposition cannot express, '' if none."""
    for role in ("Q", "K", "V") + (("attn_mask",) if x["attn_mask"] else ()):
        if info[role] is None or info[role].dtype is None or info[role].rank is None:
            return f"input {role} of unknown element type or rank"
    q, k, v = info["Q"], info["K"], info["V"]
    if q.dtype not in FLOAT_TYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return "Q, K and V of different element types"
    if q.rank not in (3, 4) or k.rank != q.rank or v.rank != q.rank:
        return f"inputs of rank {q.rank}, {k.rank}, {v.rank}"
    if q.rank == 3 and ("q_num_heads" not in attrs or "kv_num_heads" not in attrs):
        return "3-D inputs without q_num_heads and kv_num_heads"
    if bool(x["past_key"]) != bool(x["past_value"]):
        return "past_key without past_value (or the reverse)"
    if x["nonpad_kv_seqlen"] and x["past_key"]:
        return "nonpad_kv_seqlen together with past_key"
    if x["attn_mask"] and info["attn_mask"].dtype not in FLOAT_TYPES | {TensorProto.BOOL}:
        return "an integer attn_mask"
    q_heads, kv_heads = (attrs["q_num_heads"], attrs["kv_num_heads"]) if q.rank == 3 else (
        _dim(q.certain, 1), _dim(k.certain, 1))
    if q_heads and kv_heads and q_heads % kv_heads:
        return f"{q_heads} query heads for {kv_heads} kv heads (not a multiple)"
    mode = attrs.get("qk_matmul_output_mode", 0)
    return f"qk_matmul_output_mode={mode}" if mode not in (0, 1, 2, 3) else ""


def _dim(shape: tuple | None, axis: int) -> int | None:
    value = shape[axis] if shape is not None and -len(shape) <= axis < len(shape) else None
    return value if isinstance(value, int) else None


def _decompose(e: _Emitter, spec: _Spec) -> None:
    q, k, v = (_split_heads(e, spec, role) for role in ("Q", "K", "V"))
    if spec.x["past_key"]:
        key = e.op("Concat", [spec.x["past_key"], k], "present_key", spec.y[1], axis=2)
        value = e.op("Concat", [spec.x["past_value"], v], "present_value", spec.y[2], axis=2)
    else:
        key, value = k, v
        e.bind(k, spec.y[1])
        e.bind(v, spec.y[2])
    key, value = _repeat_kv(e, spec, q, key), _repeat_kv(e, spec, q, value)

    root = _sqrt_scale(e, spec, q)
    scores = e.op("MatMul", [e.op("Mul", [q, root], "q_scaled"),
                             e.op("Mul", [e.op("Transpose", [key], "k_t", perm=[0, 1, 3, 2]),
                                          root], "k_scaled")], "scores")
    capped = scores
    softcap = float(spec.attrs.get("softcap", 0.0))
    if softcap > 0:
        cap = e.const(softcap, spec.np_dtype, "softcap")
        capped = e.op("Mul", [e.op("Tanh", [e.op("Div", [scores, cap], "capped_in")],
                                   "capped_tanh"), cap], "capped")
    bias, guard = _bias(e, spec, q, key)
    with_bias = e.op("Add", [capped, bias], "logits") if bias else capped
    masked = _fully_masked_rows(e, spec, bias) if guard else ""
    logits = _zero_rows(e, spec, masked, with_bias, "logits_safe")
    probs = _softmax(e, spec, logits)
    if spec.y[3]:
        mode = int(spec.attrs.get("qk_matmul_output_mode", 0))
        shown = [scores, capped, with_bias, probs][mode]
        e.bind(_zero_rows(e, spec, masked, probs, "probs") if mode == 3 else shown, spec.y[3])
    _output(e, spec, probs, value, masked)


def _fully_masked_rows(e: _Emitter, spec: _Spec, bias: str) -> str:
    """True where a query row's bias is all -inf: it attends no key, and the spec gives it zero
    probabilities and a zero output row. Its logits are set to 0 before the Softmax (else NaN
    there, and NaN gradients for every key) and the row is zeroed after the product with V,
    so that the Softmax feeds that MatMul directly, as exporters write attention."""
    row_max = e.op("ReduceMax", [bias, e.ints([-1], "last_axis")], "bias_row_max", keepdims=1)
    return e.op("Equal", [row_max, e.const(-np.inf, spec.np_dtype, "neg_inf")], "row_masked")


def _zero_rows(e: _Emitter, spec: _Spec, masked: str, x: str, hint: str, out: str = "") -> str:
    """x with the fully masked rows set to 0 (x itself when no row can be)."""
    if not masked:
        return x
    return e.op("Where", [masked, e.const(0, spec.np_dtype, "zero"), x], hint, out)


def _split_heads(e: _Emitter, spec: _Spec, role: str) -> str:
    """[batch, seq, heads·size] -> [batch, heads, seq, size]; 4-D inputs pass through."""
    x = spec.x[role]
    if spec.rank == 4:
        return x
    heads = spec.attrs["q_num_heads" if role == "Q" else "kv_num_heads"]
    split = e.op("Reshape", [x, e.ints([0, 0, heads, -1], "split_shape")], f"{role}_split")
    return e.op("Transpose", [split], f"{role}_heads", perm=[0, 2, 1, 3])


def _repeat_kv(e: _Emitter, spec: _Spec, q: str, x: str) -> str:
    """Grouped-query attention: each kv head repeated r = q_heads / kv_heads times in place,
    [b, kv_heads, T, d] -> [b, kv_heads·r, T, d] ordered h0 h0 h1 h1 ... (np.repeat)."""
    q_heads, kv_heads = spec.heads()
    if q_heads is not None and q_heads == kv_heads:
        return x
    if q_heads is not None and kv_heads is not None:
        times = e.ints([1, 1, q_heads // kv_heads, 1, 1], "repeat_shape")
    else:  # unknown head counts: r from the shapes at run time (1 when they agree)
        ratio = e.op("Div", [e.dims(q, 1, 2, "q_heads"), e.dims(x, 1, 2, "kv_heads")], "ratio")
        ones = e.ints([1, 1], "ones")
        times = e.op("Concat", [ones, ratio, ones], "repeat_shape", axis=0)
    grouped = e.op("Expand", [e.op("Unsqueeze", [x, e.ints([2], "axis2")], "kv_grouped"),
                              times], "kv_expanded")
    merged = e.op("Concat", [e.ints([0, -1], "merge_heads"), e.dims(x, 2, None, "kv_dims")],
                  "repeated_shape", axis=0)
    return e.op("Reshape", [grouped, merged], "kv_repeated")


def _sqrt_scale(e: _Emitter, spec: _Spec, q: str) -> str:
    """√s, applied to Q and to K (the spec's guard against overflow in the product)."""
    if "scale" in spec.attrs or spec.head_size() is not None:
        scale = spec.attrs.get("scale", 1 / np.sqrt(spec.head_size() or 1))
        return e.const(np.sqrt(np.float64(scale)), spec.np_dtype, "sqrt_scale")
    # √(1/√head_size) computed in float32 then cast, as the function body does.
    size = e.op("Cast", [e.dims(q, 3, 4, "head_size")], "head_size_f", to=TensorProto.FLOAT)
    root = e.op("Pow", [size, e.const(-0.25, np.float32, "quarter")], "sqrt_scale_f")
    return e.op("Cast", [root], "sqrt_scale", to=spec.dtype)


def _bias(e: _Emitter, spec: _Spec, q: str, key: str) -> tuple[str, bool]:
    """The additive bias (broadcastable to the scores, '' if none) and whether one of its rows
    can be all -inf (so that the fully-masked-row guard is needed)."""
    parts = [_mask_bias(e, spec, key)] if spec.x["attn_mask"] else []
    position = _position_bias(e, spec, q, key)
    parts += [position] if position else []
    if not parts:
        return "", False
    bias = parts[0] if len(parts) == 1 else e.op("Add", parts, "bias")
    windows = spec.attrs.get("left_window_size", -1) >= 0 or \
        spec.attrs.get("right_window_size", -1) >= 0
    return bias, bool(spec.x["attn_mask"] or spec.x["nonpad_kv_seqlen"] or windows)


def _mask_bias(e: _Emitter, spec: _Spec, key: str) -> str:
    """attn_mask as an additive bias of Q's type, its last axis padded with -inf to the total
    kv length when shorter (the spec pads a short mask; it does not broadcast it)."""
    mask = spec.x["attn_mask"]
    neg_inf = e.const(-np.inf, spec.np_dtype, "mask_neg_inf")
    if spec.info["attn_mask"].dtype == TensorProto.BOOL:
        mask = e.op("Where", [mask, e.const(0, spec.np_dtype, "mask_zero"), neg_inf],
                    "mask_bias")
    elif spec.info["attn_mask"].dtype != spec.dtype:
        mask = e.op("Cast", [mask], "mask_bias", to=spec.dtype)
    total, last = spec.total_length(), spec.dim("attn_mask", -1)
    if total is not None and last is not None:
        if last >= total:
            return mask
        pads = e.ints([0, total - last], "mask_pads")
    else:
        short = e.op("Sub", [e.dims(key, 2, 3, "total_len"), e.dims(mask, -1, None, "mask_len")],
                     "mask_short")
        pads = e.op("Concat", [e.ints([0], "zero_pad"), short], "mask_pads", axis=0)
    return e.op("Pad", [mask, pads, neg_inf, e.ints([-1], "pad_axis")], "mask_padded")


def _position_bias(e: _Emitter, spec: _Spec, q: str, key: str) -> str:
    """-inf where causality, the sliding window or nonpad_kv_seqlen forbid key j for query i.

    With p = i + offset (offset = past length, nonpad_kv_seqlen - q_len per batch, or 0) and
    d = p - j: causal forbids d < 0, left_window_size L forbids d > L, right_window_size R
    forbids d < -R, and nonpad_kv_seqlen n forbids j >= n.
    """
    causal = bool(spec.attrs.get("is_causal", 0))
    left, right = spec.attrs.get("left_window_size", -1), spec.attrs.get("right_window_size", -1)
    lengths = spec.x["nonpad_kv_seqlen"]
    if not (causal or left >= 0 or right >= 0 or lengths):
        return ""
    cols = e.arange(e.length(key, 2, "total_len"), "key_index")
    forbidden = []
    if lengths:
        lengths = e.op("Reshape", [lengths, e.ints([-1, 1, 1, 1], "per_batch")], "nonpad_len")
        forbidden.append(e.op("GreaterOrEqual", [cols, lengths], "key_is_pad"))
    if causal or left >= 0 or right >= 0:
        distance = e.op("Sub", [_query_positions(e, spec, q, lengths), cols], "distance")
        limits = [("Less", 0, causal, "future"), ("Greater", left, left >= 0, "left_of_window"),
                  ("Less", -right, right >= 0, "right_of_window")]
        forbidden += [e.op(op, [distance, e.const(bound, np.int64, "bound")], hint)
                      for op, bound, used, hint in limits if used]
    while len(forbidden) > 1:
        forbidden[:2] = [e.op("Or", forbidden[:2], "forbidden")]
    return e.op("Where", [forbidden[0], e.const(-np.inf, spec.np_dtype, "neg_inf"),
                         e.const(0, spec.np_dtype, "zero")], "position_bias")


def _query_positions(e: _Emitter, spec: _Spec, q: str, lengths: str) -> str:
    """p = i + offset as a column: [q_len, 1], or [batch, 1, q_len, 1] from nonpad lengths."""
    q_len = e.length(q, 2, "q_len")
    rows = e.op("Unsqueeze", [e.arange(q_len, "query_index"), e.ints([1], "axis1")],
                "query_column")
    if spec.x["past_key"]:
        return e.op("Add", [rows, e.dims(spec.x["past_key"], 2, 3, "past_len")], "query_pos")
    if lengths:
        return e.op("Add", [rows, e.op("Sub", [lengths, q_len], "offset")], "query_pos")
    return rows


def _softmax(e: _Emitter, spec: _Spec, logits: str) -> str:
    """The probabilities, through the one Softmax named `base/softmax`, in softmax_precision
    when it differs from Q's type (cast there and back, as the spec says)."""
    precision = spec.attrs.get("softmax_precision", spec.dtype)
    if precision != spec.dtype:
        logits = e.op("Cast", [logits], "softmax_in", to=precision)
    probs = e.op("Softmax", [logits], "softmax", axis=-1)
    if precision != spec.dtype:
        probs = e.op("Cast", [probs], "softmax_out", to=spec.dtype)
    return probs


def _output(e: _Emitter, spec: _Spec, probs: str, value: str, masked: str) -> None:
    """Y = P @ V (fully masked rows zeroed), merged back to [batch, q_len, heads·v_size] for
    3-D inputs."""
    out = spec.y[0] if spec.rank == 4 else ""
    context = e.op("MatMul", [probs, value], "context", "" if masked else out)
    context = _zero_rows(e, spec, masked, context, "context_guarded", out)
    if spec.rank == 3:
        merged = e.op("Transpose", [context], "context_t", perm=[0, 2, 1, 3])
        e.op("Reshape", [merged, e.ints([0, 0, -1], "merge_shape")], "output", spec.y[0])
