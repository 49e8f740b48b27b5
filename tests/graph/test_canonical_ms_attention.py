"""com.microsoft Attention and MultiHeadAttention become standard ops with the fused kernels'
outputs (1e-5), every mask form, past/present, unidirectional and packed layouts included,
and their probabilities become a Softmax over [batch, heads, queries, keys] named
`<node>/softmax` that the attention locator finds. Oracle: ONNX Runtime's CPU kernels."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.errors import ModelError

from .ms_oracle import assert_matches, canonical, fused_model, run

RNG = np.random.default_rng(4)
B, S, N, H, P = 2, 5, 2, 4, 3
D = N * H


def f32(*shape, scale=1.0):
    return (RNG.standard_normal(shape) * scale).astype(np.float32)


X = f32(B, S, D)
W, BIAS = f32(D, 3 * D, scale=0.5), f32(3 * D)
LENGTHS = np.array([5, 3], np.int32)
RAW = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 1, 0]], np.int32)
RAW_PAST = np.array([[1] * (P + S), [0, 1, 1, 1, 1, 1, 1, 0]], np.int32)


def _attention(mask=None, past=None, attention_bias=None, outputs=("y",), weights=W,
               bias=BIAS, shapes=None, **attrs):
    inputs = [("x", X), ("w", weights, "const"), ("b", bias, "const") if bias is not None
              else None, ("mask", mask) if mask is not None else None,
              ("past", past) if past is not None else None,
              ("attention_bias", attention_bias) if attention_bias is not None else None]
    while inputs[-1] is None:
        inputs.pop()
    return fused_model("Attention", inputs, list(outputs), {"num_heads": N, **attrs},
                       shapes=shapes)


PAST = f32(2, B, N, P, H)
ATTENTION = {
    "no_mask": {},
    "lengths_1d": {"mask": LENGTHS},
    "ends_and_starts_1d": {"mask": np.array([5, 4, 0, 2], np.int32)},
    "raw_2d": {"mask": RAW},
    "raw_3d": {"mask": (RNG.random((B, S, S)) > 0.3).astype(np.int32)},
    "unidirectional": {"unidirectional": 1},
    "unidirectional_raw_2d": {"unidirectional": 1, "mask": RAW},
    "scale_and_filter": {"scale": 0.3, "mask": RAW, "mask_filter_value": -1000.0},
    "attention_bias": {"attention_bias": f32(1, N, S, S)},
    "past_present": {"past": PAST, "outputs": ("y", "present")},
    "past_unidirectional_raw": {"past": PAST, "outputs": ("y", "present"), "unidirectional": 1,
                                "mask": RAW_PAST},
    "present_without_past": {"outputs": ("y", "present"), "unidirectional": 1},
    "qkv_hidden_sizes": {"weights": f32(D, 2 * D + 12), "bias": f32(2 * D + 12),
                         "qkv_hidden_sizes": [D, D, 12]},
}


@pytest.mark.parametrize("case", ATTENTION)
def test_attention(case):
    canon = assert_matches(*_attention(**ATTENTION[case]))
    softmax = [n for n in canon.graph.node if n.op_type == "Softmax"]
    assert [n.output[0] for n in softmax] == ["fused_Attention/softmax"]


def test_attention_without_bias():
    """ONNX Runtime's CPU kernel crashes without a bias: the oracle is its run with zeros."""
    model, feeds = _attention(bias=None, shapes={"y": ((B, S, D), np.float32)})
    (got,) = run(canonical(model), feeds)
    (want,) = run(_attention(bias=np.zeros(3 * D, np.float32))[0], feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_probabilities_are_found_by_the_locator():
    from onnxplain.graph.attention import find_attention
    from onnxplain.graph.model import Model

    canon = canonical(_attention(mask=LENGTHS)[0])
    layers = find_attention(Model(canon))
    assert [layer.probabilities for layer in layers] == ["fused_Attention/softmax"]
    assert layers[0].heads == N and layers[0].hidden == "x"


def rotary_attention_reference(x, w, bias, heads, rotary, unidirectional):
    """Attention with do_rotary in float64, written from ONNX Runtime's CUDA kernel (its CPU
    kernel refuses do_rotary): Q and K heads rotated by halves, pair (x[i], x[i + d/2]) at
    angle t / 10000^(2i / d) for the token at t = 0, 1, ...; then softmax(Q Kᵀ / √h) V."""
    x, w, bias = (np.asarray(t, np.float64) for t in (x, w, bias))
    b, s, width = x.shape
    size = width // heads
    q, k, v = (t.reshape(b, s, heads, size).transpose(0, 2, 1, 3)
               for t in np.split(x @ w + bias, 3, axis=-1))
    angles = np.arange(s)[:, None] * 10000.0 ** (-np.arange(0, rotary, 2) / rotary)
    cos, sin = np.cos(angles), np.sin(angles)

    def rotate(t):
        half = rotary // 2
        x1, x2 = t[..., :half], t[..., half:rotary]
        return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin, t[..., rotary:]], -1)

    scores = rotate(q) @ rotate(k).transpose(0, 1, 3, 2) / np.sqrt(size)
    if unidirectional:
        scores += np.triu(np.full((s, s), -10000.0), 1)
    p = np.exp(scores - scores.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p @ v).transpose(0, 2, 1, 3).reshape(b, s, width)


@pytest.mark.parametrize("attrs", [{}, {"rotary_embedding_dim": 2, "unidirectional": 1}],
                         ids=["whole_heads", "partial_unidirectional"])
def test_rotary_attention_matches_the_reference(attrs):
    model, feeds = _attention(do_rotary=1, shapes={"y": ((B, S, D), np.float32)}, **attrs)
    canon = canonical(model)
    (got,) = run(canon, feeds)
    want = rotary_attention_reference(X, W, BIAS, N, attrs.get("rotary_embedding_dim", H),
                                      attrs.get("unidirectional", 0))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())
    assert [n.output[0] for n in canon.graph.node if n.op_type == "Softmax"] == [
        "fused_Attention/softmax"]


def test_rotary_reference_is_not_the_plain_kernel():
    """The rotation changes the result (else the test above could not fail)."""
    (plain,) = run(*_attention())
    want = rotary_attention_reference(X, W, BIAS, N, H, 0)
    assert np.abs(plain - want).max() > 1e-2


def test_rotary_attention_with_past_is_refused():
    model, _ = _attention(do_rotary=1, past=PAST, outputs=("y", "present"),
                          shapes={"y": ((B, S, D), np.float32),
                                  "present": ((2, B, N, P + S, H), np.float32)})
    with pytest.raises(ModelError, match=r"Attention node 'fused_Attention' \(.*do_rotary=1.*"
                                         r"\): do_rotary=1 with past state"):
        canonical(model)


def _mha(query, key=None, value=None, bias=None, mask=None, attention_bias=None,
         past_key=None, past_value=None, outputs=("y",), shapes=None, **attrs):
    inputs = [("q", query), ("k", key) if key is not None else None,
              ("v", value) if value is not None else None,
              ("bias", bias, "const") if bias is not None else None,
              ("mask", mask) if mask is not None else None,
              ("attention_bias", attention_bias) if attention_bias is not None else None,
              ("past_key", past_key) if past_key is not None else None,
              ("past_value", past_value) if past_value is not None else None]
    while inputs[-1] is None:
        inputs.pop()
    return fused_model("MultiHeadAttention", inputs, list(outputs), {"num_heads": N, **attrs},
                       shapes=shapes)


L = 7  # cross-attention keys
MHA = {
    "self_bias": dict(query=X, key=f32(B, S, D), value=f32(B, S, D), bias=f32(3 * D)),
    "cross_raw_mask": dict(query=X, key=f32(B, L, D), value=f32(B, L, D),
                           mask=(RNG.random((B, L)) > 0.3).astype(np.int32)),
    "lengths_1d": dict(query=X, key=f32(B, S, D), value=f32(B, S, D), bias=f32(3 * D),
                       mask=LENGTHS),
    "kv_in_heads": dict(query=X, key=f32(B, N, L, H), value=f32(B, N, L, H)),
    "past_present": dict(query=X, key=f32(B, S, D), value=f32(B, S, D), bias=f32(3 * D),
                         past_key=f32(B, N, P, H), past_value=f32(B, N, P, H),
                         outputs=("y", "present_key", "present_value")),
    "unidirectional_past": dict(query=X, key=f32(B, S, D), value=f32(B, S, D),
                                past_key=f32(B, N, P, H), past_value=f32(B, N, P, H),
                                unidirectional=1, outputs=("y", "present_key",
                                                           "present_value")),
    "attention_bias_scale": dict(query=X, key=f32(B, S, D), value=f32(B, S, D),
                                 attention_bias=f32(B, 1, S, S), scale=0.2),
}


@pytest.mark.parametrize("case", MHA)
def test_multi_head_attention(case):
    canon = assert_matches(*_mha(**MHA[case]))
    assert "fused_MultiHeadAttention/softmax" in {n.output[0] for n in canon.graph.node}


PACKED_QKV, PACKED_KV = f32(B, S, N, 3, H), f32(B, L, N, 2, H)


def _unpacked(packed, index):
    return packed[:, :, :, index].reshape(B, packed.shape[1], D)


@pytest.mark.parametrize("packed", ["qkv", "kv"])
def test_packed_multi_head_attention(packed):
    """ONNX Runtime's CPU kernel has no packed layouts: the oracle is the kernel on the
    unpacked query, key and value."""
    if packed == "qkv":
        model, feeds = _mha(PACKED_QKV, shapes={"y": ((B, S, D), np.float32)})
        unpacked = [_unpacked(PACKED_QKV, i) for i in range(3)]
    else:
        model, feeds = _mha(X, PACKED_KV, shapes={"y": ((B, S, D), np.float32)})
        unpacked = [X, _unpacked(PACKED_KV, 0), _unpacked(PACKED_KV, 1)]
    (got,) = run(canonical(model), feeds)
    oracle, oracle_feeds = _mha(*unpacked)
    (want,) = run(oracle, oracle_feeds)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_four_dimensional_mask_is_refused():
    model, _ = fused_model("Attention", [("x", X), ("w", W, "const"), ("b", BIAS, "const"),
                                         ("mask", np.ones((B, 1, S, S), np.int32))], ["y"],
                           {"num_heads": N}, shapes={"y": ((B, S, D), np.float32)})
    with pytest.raises(ModelError, match=r"Attention node 'fused_Attention' \(num_heads=2\): "
                                         r"a mask of rank 4"):
        canonical(model)


def test_cli_refuses_an_uncovered_case_in_one_line(tmp_path):
    """Exit 2, one line naming the node, its attributes and the case; the file untouched."""
    import onnx

    from ..cli_helpers import digests
    from ..cli_helpers import run as run_cli

    model, _ = _attention(do_rotary=1, past=PAST, outputs=("y", "present"),
                          shapes={"y": ((B, S, D), np.float32),
                                  "present": ((2, B, N, P + S, H), np.float32)})
    path = tmp_path / "rotary.onnx"
    onnx.save(model, str(path))
    before = digests(tmp_path)
    result = run_cli("inspect", str(path))
    assert result.exit_code == 2, (result.stdout, result.stderr)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "node 'fused_Attention'" in lines[0]
    assert "do_rotary=1" in lines[0]
    assert digests(tmp_path) == before
