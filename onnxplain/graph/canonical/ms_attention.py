"""ONNX Runtime's fused attention (`com.microsoft` Attention, MultiHeadAttention,
GroupQueryAttention) as standard ops, with the attention probabilities an ordinary Softmax
over [batch, heads, queries, keys] named `<node>/softmax`, so that the attention locator
(graph/attention.py), the taps and autodiff see them as they see an exported eager model.

Every form computes, per head, P = Softmax(scale·(Q Kᵀ) + bias) and Y = P V merged back to
[batch, seq, heads·v_head]; scale defaults to 1/√head_size. Semantics follow the contrib
schemas and the CPU kernels (tests/graph/test_canonical_ms_attention.py checks each form
against them at 1e-5):
- Attention(input, weights, bias, mask_index, past, attention_bias): Q, K, V = the
  slices (qkv_hidden_sizes, else three equal) of input·weights + bias. past [2, b, n, p, h]
  goes before K and V on the sequence axis; present is the stacked result. do_rotary
  rotates Q and K as ONNX Runtime's CUDA kernel does (its CPU kernel has none; the test's
  oracle is a numpy reference written from the CUDA kernel), without past state only.
- MultiHeadAttention(query, key, value, bias, key_padding_mask, attention_bias, past_key,
  past_value): 3-D query/key/value (+ the bias slices), key/value already in heads
  [b, n, L, h], or packed QKV [b, s, n, 3, h] / KV [b, L, n, 2, h]; past_key/value
  [b, n, p, h] go before K and V (present_key/value are the results).
- The mask adds mask_filter_value (default -10000, finite as in the kernel) where a key is
  masked: 1-D [b] valid lengths (keys at or after the end), 1-D [2b] ends then starts
  (also keys before the start), 2-D [b, total] and 3-D [b, s, total] raw masks (value 0 =
  masked). unidirectional adds it again where key j > query i + past length, as the kernel
  does. attention_bias is added as it is.
"""

from __future__ import annotations

import math

import numpy as np
from onnx import TensorProto, helper

from . import Rewrite, decomposes
from .ms_common import (
    MS,
    bind,
    dims,
    elem_type,
    ints,
    length,
    rank_of,
    require_opset,
    scalar,
)

_FILTER = -10000.0
_END = 2**62


def attend(r: Rewrite, q: str, k: str, v: str, bias: str, scale: float | str, dtype: int,
           out: str) -> str:
    """q [b, n, s, h], k [b, n, t, h], v [b, n, t, hv], bias broadcasting to [b, n, s, t]
    ('' for none): P = Softmax((q @ kᵀ)·scale + bias), the Softmax named `<node>/softmax`,
    and P @ v merged to [b, s, n·hv] into `out`. `scale` is a number or a tensor."""
    scores = r.op("MatMul", q, r.op("Transpose", k, perm=[0, 1, 3, 2]), out=r.fresh("scores"))
    factor = scale if isinstance(scale, str) else scalar(r, scale, dtype, "scale")
    logits = r.op("Mul", scores, factor, out=r.fresh("scaled_scores"))
    if bias:
        logits = r.op("Add", logits, bias, out=r.fresh("logits"))
    probs = softmax_name(r)
    r.nodes.append(helper.make_node("Softmax", [logits], [probs], name=probs, axis=-1))
    context = r.op("MatMul", probs, v, out=r.fresh("context"))
    merged = r.op("Transpose", context, perm=[0, 2, 1, 3])
    return r.op("Reshape", merged, ints(r, [0, 0, -1], "merge_heads"), out=out)


def softmax_name(r: Rewrite) -> str:
    """`<node>/softmax`, as graph/attention_op.py names the standard Attention's."""
    return f"{r.node.name or r.node.output[0]}/softmax"


def split_heads(r: Rewrite, x: str, heads: int) -> str:
    """[b, s, n·h] -> [b, n, s, h]."""
    split = r.op("Reshape", x, ints(r, [0, 0, heads, -1], "split_heads"))
    return r.op("Transpose", split, perm=[0, 2, 1, 3])


def default_scale(r: Rewrite, q_heads: str, head_size: int | None, dtype: int) -> float | str:
    """The `scale` attribute, else 1/√head_size (from the shapes at run time if unknown)."""
    if r.attr("scale") is not None and float(r.attr("scale")) != 0.0:
        return float(r.attr("scale"))
    if head_size:
        return 1 / math.sqrt(head_size)
    size = r.op("Cast", dims(r, q_heads, [3], "head_size"), to=TensorProto.FLOAT)
    root = r.op("Pow", size, r.const(np.array(-0.5, np.float32), "minus_half"))
    return r.op("Cast", root, to=dtype) if dtype != TensorProto.FLOAT else root


def mask_bias(r: Rewrite, mask: str, q: str, key: str, dtype: int) -> str:
    """mask_filter_value where the mask hides key j (see the module doc), 0 elsewhere,
    broadcasting to [b, n, s, t]; q and key are in heads, key holding every key."""
    filter_value = scalar(r, float(r.attr("mask_filter_value", _FILTER)), dtype, "filter")
    zero = scalar(r, 0.0, dtype, "zero")
    rank = rank_of(r, mask)
    if rank == 1:
        hidden = _outside_lengths(r, mask, q, key)
    elif rank in (2, 3):
        keep = r.op("Greater", r.op("Cast", mask, to=TensorProto.FLOAT),
                    r.const(np.array(0, np.float32), "zero_f"))
        axes = [1, 2] if rank == 2 else [1]
        hidden = r.op("Not", r.op("Unsqueeze", keep, ints(r, axes, "mask_axes")))
    else:
        raise r.refuse(f"a mask of rank {rank} (covered: 1-D lengths, 2-D and 3-D raw masks)")
    return r.op("Where", hidden, filter_value, zero, out=r.fresh("mask_bias"))


def _outside_lengths(r: Rewrite, mask: str, q: str, key: str) -> str:
    """True [b, 1, 1, t] where key j >= end[b] or j < start[b]: mask [b] holds the ends,
    [2b] the ends then the starts (padding the mask with b zeros reads starts of 0 when
    there are none)."""
    batch = dims(r, q, [0], "batch")
    lengths = r.op("Cast", mask, to=TensorProto.INT64)
    padded = r.op("Concat", lengths, r.op("ConstantOfShape", batch, value=helper.make_tensor(
        "value", TensorProto.INT64, [1], [0])), axis=0)
    ends = r.op("Slice", padded, ints(r, [0], "zero"), batch)
    starts = r.op("Slice", padded, batch, r.op("Mul", batch, ints(r, [2], "two")))
    column = ints(r, [-1, 1, 1, 1], "per_batch")
    ends, starts = (r.op("Reshape", t, column) for t in (ends, starts))
    keys = _arange(r, length(r, key, 2, "total_length"))
    return r.op("Or", r.op("GreaterOrEqual", keys, ends), r.op("Less", keys, starts))


def _arange(r: Rewrite, n: str) -> str:
    return r.op("Range", r.const(np.array(0, np.int64), "start"), n,
                r.const(np.array(1, np.int64), "step"))


def causal_bias(r: Rewrite, q: str, key: str, dtype: int, filter_value: float) -> str:
    """filter_value [s, t] where key j > query i + past length (t - s)."""
    total, queries = length(r, key, 2, "total_length"), length(r, q, 2, "query_length")
    rows = r.op("Unsqueeze", r.op("Add", _arange(r, queries), r.op("Sub", total, queries)),
                ints(r, [1], "axis1"))
    future = r.op("Greater", _arange(r, total), rows)
    return r.op("Where", future, scalar(r, filter_value, dtype, "filter"),
                scalar(r, 0.0, dtype, "zero"), out=r.fresh("causal_bias"))


def total_bias(r: Rewrite, q: str, key: str, dtype: int, mask: str, attention_bias: str,
               causal: bool) -> str:
    """The sum of the mask, causal and attention biases ('' when there is none)."""
    parts = [mask_bias(r, mask, q, key, dtype)] if mask else []
    if causal:
        parts.append(causal_bias(r, q, key, dtype, float(r.attr("mask_filter_value",
                                                                _FILTER))))
    if attention_bias:
        parts.append(attention_bias)
    while len(parts) > 1:
        parts[:2] = [r.op("Add", *parts[:2], out=r.fresh("bias"))]
    return parts[0] if parts else ""


def _with_past(r: Rewrite, past: str, x: str, out: str) -> str:
    """past [b, n, p, h] before x [b, n, s, h] on the sequence axis."""
    if not past:
        bind(r, x, out)
        return x
    return r.op("Concat", past, x, axis=2, out=out or None)


@decomposes(MS, "Attention")
def _attention(r: Rewrite):
    require_opset(r)
    x, weights, bias, mask, past, attention_bias, past_length = (r.input(i)
                                                                for i in range(7))
    if r.attr("past_present_share_buffer", 0) or past_length:
        raise r.refuse("past_present_share_buffer (a shared key/value buffer)")
    if r.attr("do_rotary", 0) and past:
        raise r.refuse("do_rotary=1 with past state (the kernel rotates at its decode step)")
    info = r.index.info(weights)
    width = info.shape[-1] if info is not None and info.shape else None
    attention(r, x, weights, bias, mask, past, attention_bias, elem_type(r, weights, x),
              width if isinstance(width, int) else None)
    return r.nodes


def attention(r: Rewrite, x: str, weights: str, bias: str, mask: str, past: str,
              attention_bias: str, dtype: int, width: int | None) -> None:
    """com.microsoft::Attention on float tensors, writing the node's outputs: also the body
    of a quantized variant (QAttention: x and weights dequantized in front). `width` is the
    weights' last dim (None when unknown: then qkv_hidden_sizes must say it)."""
    heads = int(r.attr("num_heads"))
    qkv = r.op("MatMul", x, weights, out=r.fresh("qkv"))
    if bias:
        qkv = r.op("Add", qkv, bias, out=r.fresh("qkv_biased"))
    sizes = list(r.attr("qkv_hidden_sizes", [])) or ([width // 3] * 3 if width else [])
    if not sizes:
        raise r.refuse("weights of unknown width without qkv_hidden_sizes")
    bounds = np.cumsum([0, *sizes]).tolist()
    last = ints(r, [-1], "last_axis")
    q, k, v = (split_heads(r, r.op("Slice", qkv, ints(r, [bounds[i]], "start"),
                                   ints(r, [bounds[i + 1]], "end"), last,
                                   out=r.fresh("qkv"[i])), heads) for i in range(3))
    if int(r.attr("do_rotary", 0)):
        q, k = _attention_rotary(r, q, k, sizes[0] // heads, dtype)
    if past:
        index = {i: r.const(np.array(i, np.int64), "past_index") for i in (0, 1)}
        k, v = (r.op("Concat", r.op("Gather", past, index[i], axis=0), t, axis=2)
                for i, t in ((0, k), (1, v)))
    present = r.output(1)
    if present:
        zero = ints(r, [0], "axis0")
        r.op("Concat", r.op("Unsqueeze", k, zero), r.op("Unsqueeze", v, zero), axis=0,
             out=present)
    biases = total_bias(r, q, k, dtype, mask, attention_bias,
                        bool(r.attr("unidirectional", 0)))
    attend(r, q, k, v, biases, default_scale(r, q, sizes[0] // heads, dtype), dtype,
           r.node.output[0])


def _attention_rotary(r: Rewrite, q: str, k: str, head_size: int, dtype: int
                      ) -> tuple[str, str]:
    """Attention's do_rotary, as ONNX Runtime's CUDA kernel computes it (its CPU kernel has
    none): the first rotary_embedding_dim (default: all) features of each Q and K head
    rotated by halves (x[i], x[i + d/2]) at angle t / 10000^(2i / d) for the token at
    position t = 0, 1, ... (no past)."""
    from .ms_rotary import rotate

    rotary = int(r.attr("rotary_embedding_dim", 0) or 0) or head_size
    if rotary % 2 or rotary > head_size:
        raise r.refuse(f"rotary_embedding_dim {rotary} with heads of {head_size} (it must be "
                       "even and at most the head size)")
    # Angles in float32 as the kernel computes them (ONNX Runtime's Cos/Sin are float only).
    inverse = np.power(10000.0, -np.arange(0, rotary, 2) / rotary).astype(np.float32)
    steps = r.op("Cast", _arange(r, length(r, q, 2, "query_length")), to=TensorProto.FLOAT)
    angles = r.op("Mul", r.op("Unsqueeze", steps, ints(r, [1], "axis1")),
                  r.const(inverse, "inverse_frequency"))  # [s, d/2]
    cos, sin = (r.op(op, angles) for op in ("Cos", "Sin"))
    if dtype != TensorProto.FLOAT:
        cos, sin = (r.op("Cast", t, to=dtype) for t in (cos, sin))
    return rotate(r, q, cos, sin, False), rotate(r, k, cos, sin, False)


@decomposes(MS, "MultiHeadAttention")
def _multi_head_attention(r: Rewrite):
    require_opset(r)
    query, key, value, bias, mask, attention_bias, past_key, past_value = (
        r.input(i) for i in range(8))
    if r.input(8) or r.input(9):
        raise r.refuse("past_sequence_length or cache_indirection (a shared key/value "
                       "buffer, beam search)")
    if r.output(3):
        raise r.refuse("the qk output")
    heads = int(r.attr("num_heads"))
    dtype = elem_type(r, *filter(None, (bias, query)))
    q, k, v = _mha_heads(r, query, key, value, bias, heads)
    k = _with_past(r, past_key, k, r.output(1))
    v = _with_past(r, past_value, v, r.output(2))
    biases = total_bias(r, q, k, dtype, mask, attention_bias,
                        bool(r.attr("unidirectional", 0)))
    info = r.index.info(query)
    width = info.shape[-1] if info is not None and info.shape else None
    head_size = width // heads if isinstance(width, int) and rank_of(r, query) == 3 else None
    attend(r, q, k, v, biases, default_scale(r, q, head_size, dtype), dtype, r.node.output[0])
    return r.nodes


def _mha_heads(r: Rewrite, query: str, key: str, value: str, bias: str, heads: int):
    """Q, K, V in heads [b, n, ., h] from MultiHeadAttention's query/key/value forms."""
    rank_q, rank_k = rank_of(r, query), rank_of(r, key) if key else None
    if rank_q == 5 and not key:  # packed QKV [b, s, n, 3, h]
        if bias:
            raise r.refuse("bias with packed QKV")
        return tuple(_unpack(r, query, i) for i in range(3))
    if rank_q != 3:
        raise r.refuse(f"a query of rank {rank_q} (covered: 3-D, packed QKV)")
    slices = _bias_slices(r, query, bias) if bias else ("", "", "")
    q = split_heads(r, r.op("Add", query, slices[0]) if bias else query, heads)
    if rank_k == 5 and not value:  # packed KV [b, L, n, 2, h]
        if bias:
            raise r.refuse("bias with packed KV")
        return q, _unpack(r, key, 0), _unpack(r, key, 1)
    if rank_k == 4 and rank_of(r, value) == 4:  # already [b, n, L, h]
        if bias:
            raise r.refuse("bias with key and value in heads (BNSH)")
        return q, key, value
    if rank_k != 3:
        raise r.refuse(f"a key of rank {rank_k} (covered: 3-D, [b, n, L, h], packed KV)")
    k, v = ((split_heads(r, r.op("Add", t, s) if bias else t, heads))
            for t, s in ((key, slices[1]), (value, slices[2])))
    return q, k, v


def _unpack(r: Rewrite, packed: str, index: int) -> str:
    """[b, s, n, k, h] -> the index-th of k, in heads [b, n, s, h]."""
    one = r.op("Gather", packed, r.const(np.array(index, np.int64), "packed_index"), axis=3)
    return r.op("Transpose", one, perm=[0, 2, 1, 3])


def _bias_slices(r: Rewrite, query: str, bias: str) -> tuple[str, str, str]:
    """bias [D + D + Dv] cut at D (the query's width, read at run time)."""
    width = dims(r, query, [-1], "hidden")
    twice = r.op("Mul", width, ints(r, [2], "two"))
    zero, end = ints(r, [0], "zero"), ints(r, [_END], "end")
    return (r.op("Slice", bias, zero, width), r.op("Slice", bias, width, twice),
            r.op("Slice", bias, twice, end))


@decomposes(MS, "GroupQueryAttention")
def _group_query_attention(r: Rewrite):
    """GroupQueryAttention(query, key, value, past_key, past_value, seqlens_k,
    total_sequence_length[, cos_cache, sin_cache, position_ids, attention_bias]).

    Row b holds T_b = seqlens_k[b] + 1 tokens, p_b = max(0, T_b - s) of them cached: present
    [b, kv_heads, max(past length, total_sequence_length), h] is past[:p_b], then the s new
    keys (rotated when do_rotary), then zeros. Query i sits at position p_b + i and sees key
    j when j < T_b and (causal) j <= p_b + i and (local_window_size w >= 0) j > p_b + i - w.
    Each kv head serves num_heads / kv_num_heads query heads (h0 h0 h1 h1 ...).
    """
    require_opset(r)
    _refuse_gqa_extras(r)
    query, key, value, past_key, past_value, seqlens, total = (r.input(i)
                                                              for i in range(7))
    heads, kv_heads = int(r.attr("num_heads")), int(r.attr("kv_num_heads"))
    dtype = elem_type(r, query)
    q, k, v = _gqa_heads(r, query, key, value, heads, kv_heads)
    seqlens = r.op("Cast", seqlens, to=TensorProto.INT64)
    new = length(r, q, 2, "new_length")
    cached = r.op("Max", r.op("Sub", r.op("Add", seqlens, ints(r, [1], "one")), new),
                  ints(r, [0], "zero"), out=r.fresh("cached_length"))  # p_b
    if int(r.attr("do_rotary", 0)):
        q, k = _gqa_rotary(r, q, k, cached, new)
    k = _gqa_present(r, past_key, k, cached, total, dtype, r.output(1))
    v = _gqa_present(r, past_value, v, cached, total, dtype, r.output(2))
    bias = _gqa_bias(r, q, k, seqlens, cached, dtype)
    if r.input(10):
        bias = r.op("Add", bias, r.input(10), out=r.fresh("bias"))
    k, v = (_repeat_kv(r, t, heads // kv_heads) for t in (k, v))
    info = r.index.info(query)
    width = info.shape[-1] if info is not None and info.shape else None
    head_size = width // heads if isinstance(width, int) and key else None
    attend(r, q, k, v, bias, default_scale(r, q, head_size, dtype), dtype, r.node.output[0])
    return r.nodes


def _refuse_gqa_extras(r: Rewrite) -> None:
    extras = {"softcap": 0.0, "smooth_softmax": 0, "qk_output": 0, "sliding_window_cache": 0}
    for name, neutral in extras.items():
        if r.attr(name) not in (None, neutral):
            raise r.refuse(f"{name}={r.attr(name)!r}")
    if any(r.input(i) for i in range(11, 16)) or r.output(3):
        raise r.refuse("head_sink, quantized KV cache, QK norms or the output_qk output")
    if r.attr("local_window_size", -1) not in (None, -1):
        raise r.refuse("local_window_size (sliding-window attention)")


def _gqa_heads(r: Rewrite, query: str, key: str, value: str, heads: int, kv_heads: int):
    """Q [b, n, s, h], K and V [b, kv, s, h]; a packed query [b, s, (n + 2 kv)·h] when there
    is no key."""
    if key:
        return (split_heads(r, query, heads), split_heads(r, key, kv_heads),
                split_heads(r, value, kv_heads))
    info = r.index.info(query)
    width = info.shape[-1] if info is not None and info.shape else None
    if not isinstance(width, int):
        raise r.refuse("packed QKV of unknown width")
    size = width // (heads + 2 * kv_heads)
    bounds = np.cumsum([0, heads * size, kv_heads * size, kv_heads * size]).tolist()
    last = ints(r, [-1], "last_axis")
    parts = [r.op("Slice", query, ints(r, [bounds[i]], "start"), ints(r, [bounds[i + 1]], "end"),
                  last) for i in range(3)]
    return tuple(split_heads(r, t, n) for t, n in zip(parts, (heads, kv_heads, kv_heads),
                                                      strict=True))


def _gqa_rotary(r: Rewrite, q: str, k: str, cached: str, new: str) -> tuple[str, str]:
    """Q and the new K rotated at their positions: position_ids, else p_b + i."""
    from .ms_rotary import cos_sin, rotate

    positions = r.input(9)
    if positions:
        positions = r.op("Cast", positions, to=TensorProto.INT64)
    else:
        positions = r.op("Add", r.op("Unsqueeze", cached, ints(r, [1], "axis1")),
                         _arange(r, new))
    cos, sin = cos_sin(r, r.input(7), r.input(8), positions)  # [b, s, d/2]
    cos, sin = (r.op("Unsqueeze", t, ints(r, [1], "heads_axis")) for t in (cos, sin))
    interleaved = bool(r.attr("rotary_interleaved", 0))
    return rotate(r, q, cos, sin, interleaved), rotate(r, k, cos, sin, interleaved)


def _gqa_present(r: Rewrite, past: str, x: str, cached: str, total: str, dtype: int,
                 out: str) -> str:
    """present[b, :, t] = past[b, :, t] for t < p_b, x[b, :, t - p_b] for the next s
    positions, 0 after; max(past length, total_sequence_length) positions."""
    if not past:
        bind(r, x, out)
        return x
    past_len, new = length(r, past, 2, "past_length"), length(r, x, 2, "new_length")
    zeros = r.op("Mul", r.op("Slice", x, ints(r, [0], "zero"), ints(r, [1], "one"),
                             ints(r, [2], "axis2")), scalar(r, 0.0, dtype, "zero"))
    pool = r.op("Concat", past, x, zeros, axis=2)  # the zero row at index past + s
    width = r.op("Max", past_len, r.op("Cast", r.op("Reshape", total, ints(r, [], "scalar")),
                                       to=TensorProto.INT64))
    t = r.op("Unsqueeze", _arange(r, width), ints(r, [0], "axis0"))  # [1, T]
    start = r.op("Unsqueeze", cached, ints(r, [1], "axis1"))  # [b, 1]
    shifted = r.op("Add", past_len, r.op("Sub", t, start))
    in_new = r.op("And", r.op("GreaterOrEqual", t, start),
                  r.op("Less", t, r.op("Add", start, new)))
    index = r.op("Where", r.op("Less", t, start), t, r.op("Where", in_new, shifted, r.op(
        "Add", past_len, new)))  # [b, T]
    shape = r.op("Concat", dims(r, x, [0, 1], "batch_heads"), dims(r, index, [1], "width"),
                 dims(r, x, [3], "size"), axis=0)
    expanded = r.op("Expand", r.op("Unsqueeze", index, ints(r, [1, 3], "axes")), shape)
    return r.op("GatherElements", pool, expanded, axis=2, out=out or None)


def _gqa_bias(r: Rewrite, q: str, key: str, seqlens: str, cached: str, dtype: int) -> str:
    """The lowest finite value where query i (at p_b + i) may not see key j, 0 elsewhere:
    [b, 1, s, T]. Every query sees itself, so no row is wholly masked."""
    keys = _arange(r, length(r, key, 2, "total_length"))  # [T]
    column = ints(r, [-1, 1, 1, 1], "per_batch")
    valid = r.op("Less", keys, r.op("Reshape", r.op("Add", seqlens, ints(r, [1], "one")),
                                     column))
    if int(r.attr("causal", 1)):
        rows = r.op("Unsqueeze", _arange(r, length(r, q, 2, "query_length")),
                    ints(r, [1], "axis1"))  # [s, 1]
        position = r.op("Add", rows, r.op("Reshape", cached, column))  # [b, 1, s, 1]
        valid = r.op("And", valid, r.op("LessOrEqual", keys, position))
    lowest = float(np.finfo(np.dtype(helper.tensor_dtype_to_np_dtype(dtype))).min)
    return r.op("Where", valid, scalar(r, 0.0, dtype, "zero"), scalar(r, lowest, dtype, "lowest"),
                out=r.fresh("mask_bias"))


def _repeat_kv(r: Rewrite, x: str, times: int) -> str:
    """[b, kv, T, h] -> [b, kv·times, T, h], each head repeated in place (h0 h0 h1 h1 ...)."""
    if times == 1:
        return x
    grouped = r.op("Unsqueeze", x, ints(r, [2], "axis2"))
    expanded = r.op("Expand", grouped, ints(r, [1, 1, times, 1, 1], "repeat"))
    shape = r.op("Concat", dims(r, x, [0], "batch"), ints(r, [-1], "heads"),
                 dims(r, x, [2, 3], "length_size"), axis=0)
    return r.op("Reshape", expanded, shape)
