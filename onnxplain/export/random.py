"""Deterministic random numbers inside an ONNX graph: a counter-based generator.

ONNX's RandomNormalLike/RandomUniformLike are seeded by the runtime per session, so a saved
explainer would draw new numbers on every run, and never the numbers an in-process run drew.
Here a draw is a pure function of integers, computed with int64 Add, Mul, Div and Mod
(ONNX opset 10; products stay below 2**63):

    key(s)        = mix(s mod 2**32)                       per seed s
    key(s, j)     = mix(key(s) + j)                        per sample (copy, mask) j
    word(s, j, e) = mix(key(s, j) + e)                     per element e of the sample
    bits_t        = mix(word + key_t(s, j)),  key_1 = mix(key(s, j) + G), key_2 = mix(key_1 + G)

all mod 2**32, where mix(x) is x += x >> 16; x *= A; x += 2 x**2; x += x >> 16 (an integer
finaliser with additions for the xors, which ONNX has only from opset 18; the square, a
permutation of Klimov and Shamir's kind, is what makes neighbouring counters unrelated:
without it the adds and multiplies stay near linear and neighbours correlate). The same
(seed, sample, element) gives the same 32 bits in any ONNX Runtime, every run. `uniform`
turns bits_1 into U(0, 1); `normal` turns the bits_1, bits_2 of element p into two N(0, 1)
by Box-Muller, sqrt(-2 ln u1) (cos, sin)(2 pi u2), for elements p and p + ceil(size / 2)
(half the hashing), in the draws' float type (float32 for half types, whose result
is cast). The float steps use the runtime's Log, Sqrt and Cos, so across runtimes they agree
to a few units in the last place, not bit for bit.

API: `uniform` and `normal` emit draws [k, S, size] for seeds [S] (int64) and sample indices
[k] (int64); `seed_key` folds an option seed (0 .. 2**128 - 1) to the graph's seed;
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


def seed_key(seed: int) -> int:
    """An option seed as the graph's seed in [0, 2**32): itself below 2**32, else its 32-bit
    words folded through the mixer (exactly as the numpy reference computes it)."""
    seed = int(seed)
    if 0 <= seed < WORD:
        return seed
    key = 0
    while seed:
        key = int(_mix_np(np.array((key + seed % WORD) % WORD, np.int64)))
        seed //= WORD
    return key


# ---- the graph ------------------------------------------------------------------------
def uniform(b: GraphBuilder, seeds: str, samples: str, size: str, dtype: int) -> str:
    """U(0, 1) draws [k, S, size] (both ends excluded) of element type `dtype`, for int64
    `seeds` [S], sample indices `samples` [k] and `size` (int64 [1]) elements per sample."""
    words, keys = _words(b, seeds, samples, size)
    wide = TensorProto.FLOAT if dtype in _HALF_TYPES else dtype
    drawn = _to_unit(b, _mix(b, b.op("Add", words, keys[0])), wide)
    return drawn if wide == dtype else b.op("Cast", drawn, to=dtype)


def normal(b: GraphBuilder, seeds: str, samples: str, size: str, dtype: int) -> str:
    """N(0, 1) draws [k, S, size], as `uniform`: Box-Muller on the two streams of pair p
    gives elements p (the cosine) and p + ceil(size / 2) (the sine)."""
    pairs = b.op("Div", b.op("Add", size, b.ints([1])), b.ints([2]))
    words, keys = _words(b, seeds, samples, pairs)
    wide = TensorProto.FLOAT if dtype in _HALF_TYPES else dtype
    u1, u2 = (_to_unit(b, _mix(b, b.op("Add", words, key)), wide) for key in keys)
    radius = b.op("Sqrt", b.op("Mul", b.op("Log", u1), b.scalar(-2.0, wide)))
    angle = b.op("Mul", u2, b.scalar(2 * np.pi, wide))
    both = b.concat([b.op("Mul", radius, b.op(trig, angle)) for trig in ("Cos", "Sin")], 2)
    drawn = b.slice(both, [0], size, [2])
    return drawn if wide == dtype else b.op("Cast", drawn, to=dtype)


def _words(b: GraphBuilder, seeds: str, samples: str, size: str) -> tuple[str, list[str]]:
    """The per-element words [k, S, size] and the two stream keys [k, S, 1]."""
    seed = _mix(b, b.op("Mod", seeds, _int(b, WORD)))
    sample = _mix(b, b.op("Add", b.unsqueeze(samples, [1]), b.unsqueeze(seed, [0])))
    elements = _indices(b, size)
    words = _mix(b, b.op("Add", b.unsqueeze(sample, [2]), elements))
    first = _mix(b, b.op("Add", sample, _int(b, _G)))
    second = _mix(b, b.op("Add", first, _int(b, _G)))
    return words, [b.unsqueeze(key, [2]) for key in (first, second)]


def _mix(b: GraphBuilder, x: str) -> str:
    """x (int64 >= 0) -> mix(x mod 2**32) in [0, 2**32)."""
    x = b.op("Mod", x, _int(b, WORD))
    x = b.op("Mod", b.op("Mul", _fold(b, x), _int(b, _A)), _int(b, WORD))
    # x**2 mod 2**32 = low * (2 x - low), low = x mod 2**16: products below 2**49.
    low = b.op("Mod", x, _int(b, 1 << 16))
    square = b.op("Mul", low, b.op("Sub", b.op("Add", x, x), low))
    x = b.op("Mod", b.op("Add", x, b.op("Add", square, square)), _int(b, WORD))
    return b.op("Mod", _fold(b, x), _int(b, WORD))


def _fold(b: GraphBuilder, x: str) -> str:
    return b.op("Add", x, b.op("Div", x, _int(b, 1 << 16)))


def _to_unit(b: GraphBuilder, bits: str, dtype: int) -> str:
    """(the top p bits + 1/2) / 2**p: exact in the float type (p = 23 for float32, whose
    24-bit significand holds the half, 32 for double), so never 0 or 1 (Box-Muller takes a
    logarithm)."""
    precision = 32 if dtype == TensorProto.DOUBLE else 23
    top = b.op("Div", bits, _int(b, 1 << (32 - precision)))
    unit = b.op("Add", b.op("Cast", top, to=dtype), b.scalar(0.5, dtype))
    return b.op("Mul", unit, b.scalar(2.0 ** -precision, dtype))


def _indices(b: GraphBuilder, size: str) -> str:
    """0 .. size-1 (int64 [size]); NonZero of ones below opset 11 (no Range)."""
    if b.opset >= 11:
        zero, one = (b.const(np.array(v, np.int64)) for v in (0, 1))
        return b.range(zero, b.reshape(size, []), one)
    ones = b.op("ConstantOfShape", size, value=numpy_helper.from_array(np.ones(1, np.int64)),
                out_type=TensorProto.INT64)
    return b.reshape(b.op("NonZero", ones, out_type=TensorProto.INT64), [-1])


def _int(b: GraphBuilder, value: int) -> str:
    return b.const(np.array(value, np.int64))


# ---- numpy references -------------------------------------------------------------------
def reference_bits(seeds, samples, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The two 32-bit streams [k, S, size] (int64 values in [0, 2**32)) the graph computes
    for `seeds` [S] and `samples` [k]: exact."""
    seeds = np.asarray(seeds, np.int64).reshape(-1)
    samples = np.asarray(samples, np.int64).reshape(-1)
    seed = _mix_np(seeds % WORD)
    sample = _mix_np(samples[:, None] + seed[None, :])
    words = _mix_np(sample[:, :, None] + np.arange(size, dtype=np.int64))
    first = _mix_np(sample + _G)
    second = _mix_np(first + _G)
    return _mix_np(words + first[:, :, None]), _mix_np(words + second[:, :, None])


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
    x = np.asarray(x, np.int64) % WORD
    x = ((x + (x >> 16)) * _A) % WORD
    low = x % (1 << 16)
    x = (x + 2 * low * (2 * x - low)) % WORD
    return (x + (x >> 16)) % WORD
