"""Rotary position embeddings (RoPE) in standard ops: `rotate`, shared by
com.microsoft::RotaryEmbedding (here) and GroupQueryAttention's do_rotary (ms_attention.py);
engineer O's ai.onnx RotaryEmbedding (opset 23) can call it too.

With c = cos_cache[position], s = sin_cache[position] ([.., rotary_dim / 2]) and the first
rotary_dim features of each head rotated (the rest pass through):
- halves (interleaved = 0): x1 = x[:d/2], x2 = x[d/2:d]; y = (x1·c - x2·s, x2·c + x1·s).
- interleaved pairs (x[2i], x[2i+1]) -> (x[2i]·c_i - x[2i+1]·s_i, x[2i+1]·c_i + x[2i]·s_i).
com.microsoft::RotaryEmbedding(input, position_ids, cos_cache, sin_cache): input
[batch, seq, heads·head] or [batch, heads, seq, head]; position_ids [batch, seq], or [1]
holding the first position (positions p, p+1, ...).
"""

from __future__ import annotations

import numpy as np

from . import Rewrite, decomposes
from .ms_common import MS, dims, ints, length, rank_of, require_opset

_END = 2**62


def rotate(r: Rewrite, x: str, cos: str, sin: str, interleaved: bool,
           out: str | None = None) -> str:
    """x [.., head] rotated by cos / sin [.., rotary_dim / 2], which broadcast against x's
    leading axes; features past rotary_dim pass through."""
    half = dims(r, cos, [-1], "rotary_half")
    rotary = r.op("Mul", half, ints(r, [2], "two"))
    last = ints(r, [-1], "last_axis")
    start = ints(r, [0], "zero")
    x_rot = r.op("Slice", x, start, rotary, last)
    if interleaved:
        lead = r.op("Slice", r.op("Shape", x_rot), start, last)  # all but the last axis
        pairs = r.op("Concat", lead, half, ints(r, [2], "pair"), axis=0)
        grouped = r.op("Reshape", x_rot, pairs)
        x1 = r.op("Slice", grouped, start, ints(r, [1], "one"), last)
        x2 = r.op("Slice", grouped, ints(r, [1], "one"), ints(r, [2], "two_end"), last)
        c, s = (r.op("Unsqueeze", t, last) for t in (cos, sin))
    else:
        x1 = r.op("Slice", x_rot, start, half, last)
        x2 = r.op("Slice", x_rot, half, rotary, last)
        c, s = cos, sin
    y1 = r.op("Sub", r.op("Mul", x1, c), r.op("Mul", x2, s))
    y2 = r.op("Add", r.op("Mul", x2, c), r.op("Mul", x1, s))
    rotated = r.op("Concat", y1, y2, axis=-1)
    if interleaved:
        rotated = r.op("Reshape", rotated, r.op("Shape", x_rot))
    passed = r.op("Slice", x, rotary, ints(r, [_END], "end"), last)
    return r.op("Concat", rotated, passed, axis=-1, out=out)


def _rank(r: Rewrite, x: str) -> int:
    rank = rank_of(r, x)
    if rank is None:
        raise r.refuse(f"rotated tensor '{x}' of unknown rank")
    return rank


def cos_sin(r: Rewrite, cos_cache: str, sin_cache: str, positions: str) -> tuple[str, str]:
    """The cache rows at `positions` ([batch, seq] or [seq]): [.., rotary_dim / 2]."""
    return (r.op("Gather", cos_cache, positions, axis=0, out=r.fresh("cos")),
            r.op("Gather", sin_cache, positions, axis=0, out=r.fresh("sin")))


@decomposes(MS, "RotaryEmbedding")
def _rotary_embedding(r: Rewrite):
    require_opset(r)
    x, position_ids, cos_cache, sin_cache = r.node.input[:4]
    if r.attr("is_packed_batching", 0):
        raise r.refuse("is_packed_batching=1 (ragged batches)")
    if float(r.attr("scale", 1.0)) != 1.0:
        raise r.refuse("a scale other than 1")
    rank = _rank(r, x)
    seq_axis = 1 if rank == 3 else 2
    if _rank(r, position_ids) == 1:  # the first position: p, p + 1, ...
        steps = r.op("Range", r.const(np.array(0, np.int64), "start"), length(r, x, seq_axis),
                     r.const(np.array(1, np.int64), "step"))
        position_ids = r.op("Add", steps, r.op("Cast", position_ids, to=7))
    cos, sin = cos_sin(r, cos_cache, sin_cache, position_ids)  # [b, s, d/2] or [s, d/2]
    interleaved = bool(r.attr("interleaved", 0))
    if rank == 4:  # [b, n, s, h]: cos and sin broadcast over the heads
        cos, sin = (r.op("Unsqueeze", t, ints(r, [-3], "heads_axis")) for t in (cos, sin))
        rotate(r, x, cos, sin, interleaved, out=r.node.output[0])
        return r.nodes
    heads = int(r.attr("num_heads", 0))
    head = _head_size(r, cos_cache) if not heads else -1
    split = r.op("Reshape", x, ints(r, [0, 0, heads or -1, head], "split_heads"))
    cos, sin = (r.op("Unsqueeze", t, ints(r, [-2], "heads_axis")) for t in (cos, sin))
    rotated = rotate(r, split, cos, sin, interleaved)
    r.op("Reshape", rotated, ints(r, [0, 0, -1], "merge_heads"), out=r.node.output[0])
    return r.nodes


def _head_size(r: Rewrite, cos_cache: str) -> int:
    """Without num_heads the heads are as wide as the rotation (2 · cos_cache columns)."""
    if int(r.attr("rotary_embedding_dim", 0)):
        raise r.refuse("rotary_embedding_dim without num_heads")
    cache = r.static(cos_cache)
    if cache is None:
        raise r.refuse("3-D input without num_heads and a computed cos_cache")
    return 2 * int(cache.shape[-1])
