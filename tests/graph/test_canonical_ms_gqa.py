"""com.microsoft::GroupQueryAttention becomes standard ops with the kernel's outputs (1e-5):
prompts (uniform and right-padded rows), a cache with several new tokens (batch 1, as the
kernel requires), ragged single-token decoding, a shared (max-length) cache buffer, packed
QKV, rotary embeddings and attention bias. Oracle: ONNX Runtime's CPU kernel. Padded query
rows of a ragged prompt are compared as well: the kernel defines them (keys j < T_b)."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import ModelError

from .ms_oracle import assert_matches, canonical, fused_model

RNG = np.random.default_rng(5)
N, KV, H, P, MAX = 4, 2, 16, 5, 16  # the kernel's rotary needs heads of 16k


def f32(*shape):
    return RNG.standard_normal(shape).astype(np.float32)


def _caches():
    angles = RNG.uniform(0, 6.28, (MAX, H // 2))
    return [("cos", np.cos(angles).astype(np.float32), "const"),
            ("sin", np.sin(angles).astype(np.float32), "const")]


def _gqa(batch, new, seqlens, total, past=None, packed=False, rotary=False,
         attention_bias=False, **attrs):
    q, k, v = f32(batch, new, N * H), f32(batch, new, KV * H), f32(batch, new, KV * H)
    inputs = [("q", np.concatenate([q, k, v], -1)) if packed else ("q", q),
              None if packed else ("k", k), None if packed else ("v", v),
              ("past_key", f32(batch, KV, past, H)) if past else None,
              ("past_value", f32(batch, KV, past, H)) if past else None,
              ("seqlens_k", np.array(seqlens, np.int32)),
              ("total_sequence_length", np.array(total, np.int32))]
    if rotary or attention_bias:
        inputs += _caches() if rotary else [None, None]
        inputs += [None]
    if attention_bias:
        inputs += [("attention_bias", f32(1, 1, new, max(total, past or 0)))]
    attrs = {"num_heads": N, "kv_num_heads": KV, "do_rotary": int(rotary), **attrs}
    return fused_model("GroupQueryAttention", inputs, ["y", "present_key", "present_value"],
                       attrs)


CASES = {
    "prompt": dict(batch=2, new=3, seqlens=[2, 2], total=3),
    "prompt_padded_rows": dict(batch=2, new=3, seqlens=[2, 1], total=3),
    "cache_several_tokens": dict(batch=1, new=3, seqlens=[P + 2], total=P + 3, past=P),
    "ragged_decoding": dict(batch=2, new=1, seqlens=[P, 3], total=P + 1, past=P),
    "shared_buffer": dict(batch=2, new=1, seqlens=[3, 2], total=4, past=8),
    "packed_qkv": dict(batch=2, new=3, seqlens=[2, 2], total=3, packed=True),
    "rotary_prompt": dict(batch=2, new=3, seqlens=[2, 2], total=3, rotary=True),
    "rotary_interleaved_decoding": dict(batch=2, new=1, seqlens=[P, 3], total=P + 1, past=P,
                                        rotary=True, rotary_interleaved=1),
    "attention_bias": dict(batch=2, new=3, seqlens=[2, 2], total=3, attention_bias=True),
    "scale": dict(batch=2, new=3, seqlens=[2, 2], total=3, scale=0.2),
}


@pytest.mark.parametrize("case", CASES)
def test_group_query_attention(case):
    canon = assert_matches(*_gqa(**CASES[case]))
    assert "fused_GroupQueryAttention/softmax" in {n.output[0] for n in canon.graph.node}


def test_sliding_window_is_refused():
    model, _ = _gqa(batch=2, new=3, seqlens=[2, 2], total=3, local_window_size=2)
    with pytest.raises(ModelError, match=r"GroupQueryAttention node 'fused_GroupQueryAttention'"
                                         r" \(.*local_window_size=2.*\): local_window_size"):
        canonical(model)
