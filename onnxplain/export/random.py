"""Deterministic random numbers inside an ONNX graph: a counter-based generator.

ONNX's RandomNormalLike/RandomUniformLike are seeded by the runtime per session, so a saved
explainer would draw new numbers on every run, and never the numbers an in-process run drew.
Here a draw is a pure function of 32-bit words: from opset 11 uint32 Add, Mul (which wrap
mod 2**32) and BitShift; at opset 10 int64 Add, Mul, Div and Mod (products below 2**63),
the same numbers:

    key(s)        = mix(s mod 2**32)                        per seed s
    key(s, j)     = mix(key(s) + j)                         per sample (copy, mask) j
    key_t(s, j)   = mix(key_t-1(s, j) + G),  key_0 = key(s, j)   per stream t = 1, 2
    bits_t        = final(key_t(s, j) + e)                  per element (pair) e

mod 2**32, where mix(x) is x += x >> 16; x *= A; x += 2 x**2; x += x >> 16 (an integer
finaliser with additions for the xors, which ONNX has only from opset 18; the square, a
permutation of Klimov and Shamir's kind, is what makes neighbouring counters unrelated:
without it the adds and multiplies stay near linear and neighbours correlate), and final(x)
is mix without its last fold (the per-element cost: only the top bits are used, which the
multiply and square already mix). The same
(seed, sample, element) gives the same 32 bits in any ONNX Runtime, every run. `uniform`
turns bits_1 into U(0, 1); `normal` turns the bits_1, bits_2 of element p into two N(0, 1)
by Box-Muller, sqrt(-2 ln u1) (cos, sin)(2 pi u2), for elements p and p + ceil(size / 2)
(one final mix per element), in the draws' float type (float32 for half types, whose result
is cast). The float steps use the runtime's Log, Sqrt and Cos, so across runtimes they agree
to a few units in the last place, not bit for bit.

API: `uniform` and `normal` emit draws [k, S, size] for seeds [S] (int64) and sample indices
[k] (int64), a seed taken mod 2**32 (2**32 streams: an option seed is 0 .. 2**32 - 1);
`reference_bits`, `reference_uniform`, `reference_normal` are the numpy references (the
bits exact, the floats in float64) for tests and oracles.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, numpy_helper

from ..graph.builder import GraphBuilder

WORD = 1 << 32
_A = 0x45D9F3B  # < 2**27: (2**32 + 2**16) * _A < 2**63
_G = 0x9E3779B9  # the golden ratio's 32 bits: spaces the per-stream keys
_HALF_TYPES = (TensorProto.FLOAT16, TensorProto.BFLOAT16)


# ---- the graph ------------------------------------------------------------------------
def uniform(b: GraphBuilder, seeds: str, samples: str, size: str, dtype: int) -> str:
    """U(0, 1) draws [k, S, size] (both ends excluded) of element type `dtype`, for int64
    `seeds` [S], sample indices `samples` [k] and `size` (int64 [1]) elements per sample."""
    elements, keys = _keys(b, seeds, samples, size, 1)
    wide = TensorProto.FLOAT if dtype in _HALF_TYPES else dtype
    drawn = _to_unit(b, _final(b, _add(b, keys[0], elements)), wide)
    return drawn if wide == dtype else b.op("Cast", drawn, to=dtype)


def normal(b: GraphBuilder, seeds: str, samples: str, size: str, dtype: int) -> str:
    """N(0, 1) draws [k, S, size], as `uniform`: Box-Muller on the two streams of pair p
    gives elements p (the cosine) and p + ceil(size / 2) (the sine)."""
    pairs = b.op("Div", b.op("Add", size, b.ints([1])), b.ints([2]))
    elements, keys = _keys(b, seeds, samples, pairs, 2)
    wide = TensorProto.FLOAT if dtype in _HALF_TYPES else dtype
    u1, u2 = (_to_unit(b, _final(b, _add(b, key, elements)), wide) for key in keys)
    radius = b.op("Sqrt", b.op("Mul", b.op("Log", u1), b.scalar(-2.0, wide)))
    angle = b.op("Mul", u2, b.scalar(2 * np.pi, wide))
    both = b.concat([b.op("Mul", radius, b.op(trig, angle)) for trig in ("Cos", "Sin")], 2)
    drawn = b.slice(both, [0], size, [2])
    return drawn if wide == dtype else b.op("Cast", drawn, to=dtype)


def _keys(b: GraphBuilder, seeds: str, samples: str, size: str, streams: int
          ) -> tuple[str, list[str]]:
    """The element indices [size] and the streams' keys [k, S, 1], as words."""
    seed = _mix(b, _word(b, b.op("Mod", seeds, b.const(np.array(WORD, np.int64)))))
    key = _mix(b, _add(b, b.unsqueeze(_word(b, samples), [1]), b.unsqueeze(seed, [0])))
    keys = []
    for _ in range(streams):
        key = _mix(b, _add(b, key, _const(b, _G)))
        keys.append(b.unsqueeze(key, [2]))
    return _word(b, indices(b, size)), keys


# From opset 11 a word is a uint32 (its Add and Mul wrap mod 2**32, BitShift shifts): half
# the bytes and no Mod or Div per step. Opset 10 has no BitShift: int64 with Mod and Div.
def _word(b: GraphBuilder, x: str) -> str:
    """int64 values >= 0 as words (mod 2**32)."""
    return b.op("Cast", x, to=TensorProto.UINT32) if b.opset >= 11 else x


def _const(b: GraphBuilder, value: int) -> str:
    return b.const(np.array(value, np.uint32 if b.opset >= 11 else np.int64))


def _wrap(b: GraphBuilder, x: str) -> str:
    return x if b.opset >= 11 else b.op("Mod", x, _const(b, WORD))


def _add(b: GraphBuilder, x: str, y: str) -> str:
    return _wrap(b, b.op("Add", x, y))


def _shift(b: GraphBuilder, x: str, bits: int) -> str:
    """x >> bits."""
    if b.opset >= 11:
        return b.op("BitShift", x, _const(b, bits), direction="RIGHT")
    return b.op("Div", x, _const(b, 1 << bits))


def _mix(b: GraphBuilder, x: str) -> str:
    """mix(x) of words."""
    return _fold(b, _final(b, x))


def _final(b: GraphBuilder, x: str) -> str:
    """((x + x >> 16) A) + 2 (...)**2 of words."""
    x = _wrap(b, b.op("Mul", _fold(b, x), _const(b, _A)))
    if b.opset >= 11:
        square = b.op("Mul", x, x)
    else:  # x**2 mod 2**32 = low * (2 x - low), low = x mod 2**16: products below 2**49
        low = b.op("Mod", x, _const(b, 1 << 16))
        square = b.op("Mul", low, b.op("Sub", b.op("Add", x, x), low))
    return _add(b, x, b.op("Add", square, square))


def _fold(b: GraphBuilder, x: str) -> str:
    """x + x >> 16 of words (int64: below 2**32 + 2**16, times _A below 2**63)."""
    return b.op("Add", x, _shift(b, x, 16))


def _to_unit(b: GraphBuilder, bits: str, dtype: int) -> str:
    """(the top p bits + 1/2) / 2**p: exact in the float type (p = 23 for float32, whose
    24-bit significand holds the half, 32 for double), so never 0 or 1 (Box-Muller takes a
    logarithm)."""
    precision = 32 if dtype == TensorProto.DOUBLE else 23
    top = _shift(b, bits, 32 - precision) if precision < 32 else bits
    unit = b.op("Add", b.op("Cast", top, to=dtype), b.scalar(0.5, dtype))
    return b.op("Mul", unit, b.scalar(2.0 ** -precision, dtype))


def indices(b: GraphBuilder, size: str) -> str:
    """0 .. size-1 (int64 [size]); NonZero of ones below opset 11 (no Range)."""
    if b.opset >= 11:
        zero, one = (b.const(np.array(v, np.int64)) for v in (0, 1))
        return b.range(zero, b.reshape(size, []), one)
    ones = b.op("ConstantOfShape", size, value=numpy_helper.from_array(np.ones(1, np.int64)),
                out_type=TensorProto.INT64)
    return b.reshape(b.op("NonZero", ones, out_type=TensorProto.INT64), [-1])


# ---- numpy references -------------------------------------------------------------------
def reference_bits(seeds, samples, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two 32-bit streams [k, S, size] (int64 values in [0, 2**32)) the graph computes
    for `seeds` [S] and `samples` [k]: exact."""
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    samples = np.asarray(samples, np.int64).reshape(-1)
    key = _mix_np(samples[:, None] + _mix_np(seeds % WORD)[None, :])
    first = _mix_np(key + _G)
    second = _mix_np(first + _G)
    elements = np.arange(size, dtype=np.int64)
    return (_final_np(first[:, :, None] + elements),
            _final_np(second[:, :, None] + elements))


def reference_uniform(seeds, samples, size: int, dtype=np.float32) -> np.ndarray:
    """`uniform`'s draws in float64, exactly the values the graph's `dtype` holds."""
    return _unit_np(reference_bits(seeds, samples, size)[0], dtype)


def reference_normal(seeds, samples, size: int, dtype=np.float32) -> np.ndarray:
    """`normal`'s draws computed in float64 from the same uniforms (the graph's Log, Cos and
    Sin in `dtype` agree to a few units in its last place)."""
    pairs = (size + 1) // 2
    u1, u2 = (_unit_np(bits, dtype) for bits in reference_bits(seeds, samples, pairs))
    radius, angle = np.sqrt(-2 * np.log(u1)), 2 * np.pi * u2
    return np.concatenate([radius * np.cos(angle), radius * np.sin(angle)], axis=2)[..., :size]


def _unit_np(bits: np.ndarray, dtype) -> np.ndarray:
    precision = 32 if np.dtype(dtype) == np.float64 else 23
    return ((bits >> (32 - precision)) + 0.5) * 2.0 ** -precision


def _mix_np(x: np.ndarray) -> np.ndarray:
    x = _final_np(x)
    return (x + (x >> 16)) % WORD


def _final_np(x: np.ndarray) -> np.ndarray:
    x = (np.asarray(x, np.int64) % WORD).astype(np.uint64)  # products wrap mod 2**64
    x = ((x + (x >> np.uint64(16))) * np.uint64(_A)) % np.uint64(WORD)
    return ((x + np.uint64(2) * x * x) % np.uint64(WORD)).astype(np.int64)
