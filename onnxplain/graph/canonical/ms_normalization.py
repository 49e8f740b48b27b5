"""ONNX Runtime's fused normalisations as standard ops: SkipLayerNormalization,
SkipSimplifiedLayerNormalization, SimplifiedLayerNormalization (written by ONNX Runtime in
the ai.onnx domain, registered under both) and EmbedLayerNormalization.

Semantics (contrib schemas and CPU kernels; tests/graph/test_canonical_ms_normalization.py):
- SkipLayerNormalization(input, skip, gamma[, beta, bias]): s = (input + bias) + skip;
  output = LayerNorm(s)·gamma + beta over the last axis; the optional outputs are the mean,
  1/√(var + ε) (both [.., 1]) and s.
- SkipSimplifiedLayerNormalization(input, skip, gamma[, bias]): the same with the RMS form
  s / √(mean(s²) + ε)·gamma; outputs output, mean (not produced), inv_std_var, s.
- SimplifiedLayerNormalization(X, scale): X / √(mean(X²) + ε)·scale over the last axis.
- EmbedLayerNormalization(input_ids, segment_ids, word_embedding, position_embedding,
  segment_embedding, gamma, beta, mask, position_ids): e = word[ids] + position[pos] (+
  segment[segment_ids]), pos = position_ids or 0..S-1; output = LayerNorm(e)·gamma + beta;
  mask_index = the number of non-zero mask entries per row (int32 [batch]); embedding_sum e.
"""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper

from . import Rewrite, decomposes
from .ms_common import (
    MS,
    bind,
    dims,
    elem_type,
    ints,
    layer_norm,
    length,
    reduce_mean,
    require_opset,
    rms_norm,
    scalar,
)

_EPSILON = 1e-12


def _skip_sum(r: Rewrite, bias_index: int) -> str:
    """(input + bias) + skip: the optimizer fuses a dense layer's bias and the residual
    connection after it, and rules that split relevance over an Add's operands (LRP) must
    see the dense output and the residual as the un-optimised export has them."""
    x, bias = r.node.input[0], r.input(bias_index)
    if bias:
        x = r.op("Add", x, bias, out=r.fresh("biased"))
    return r.op("Add", x, r.node.input[1], out=r.fresh("skip_sum"))


@decomposes(MS, "SkipLayerNormalization")
def _skip_layer_norm(r: Rewrite):
    require_opset(r)
    gamma, beta = r.node.input[2], r.input(3)
    dtype = elem_type(r, gamma, r.node.input[0])
    epsilon = float(r.attr("epsilon", _EPSILON))
    total = _skip_sum(r, 4)
    mean_out, inv_std_out = r.output(1), r.output(2)
    if (mean_out or inv_std_out) and r.opset >= 17:
        inputs = [total, gamma] + ([beta] if beta else [])
        r.multi("LayerNormalization", inputs, [r.node.output[0], mean_out, inv_std_out],
                axis=-1, epsilon=epsilon)
    else:
        layer_norm(r, total, gamma, beta, epsilon, dtype, out=r.node.output[0])
        if mean_out or inv_std_out:
            _statistics(r, total, epsilon, dtype, mean_out, inv_std_out)
    bind(r, total, r.output(3))
    return r.nodes


def _statistics(r: Rewrite, x: str, epsilon: float, dtype: int, mean_out: str,
                inv_std_out: str) -> None:
    """Mean and 1/√(var + ε) over the last axis, for models that read them (before 17)."""
    mean = reduce_mean(r, x, [-1])
    bind(r, mean, mean_out)
    if inv_std_out:
        centred = r.op("Sub", x, mean)
        variance = reduce_mean(r, r.op("Mul", centred, centred), [-1], "variance")
        std = r.op("Sqrt", r.op("Add", variance, scalar(r, epsilon, dtype, "epsilon")))
        r.op("Reciprocal", std, out=inv_std_out)


@decomposes(MS, "SkipSimplifiedLayerNormalization")
def _skip_simplified_layer_norm(r: Rewrite):
    require_opset(r)
    gamma = r.node.input[2]
    if r.output(1):
        raise r.refuse("the mean output (RMS normalisation computes no mean)")
    total = _skip_sum(r, 3)
    rms_norm(r, total, gamma, float(r.attr("epsilon", _EPSILON)),
             elem_type(r, gamma, r.node.input[0]), out=r.node.output[0],
             inv_std_out=r.output(2))
    bind(r, total, r.output(3))
    return r.nodes


@decomposes("", "SimplifiedLayerNormalization")
@decomposes(MS, "SimplifiedLayerNormalization")
def _simplified_layer_norm(r: Rewrite):
    require_opset(r)
    x, scale = r.node.input[:2]
    axis = int(r.attr("axis", -1))
    rms_norm(r, x, scale, float(r.attr("epsilon", 1e-5)), elem_type(r, scale, x),
             out=r.node.output[0], axis=axis, inv_std_out=r.output(1))
    return r.nodes


@decomposes(MS, "EmbedLayerNormalization")
def _embed_layer_norm(r: Rewrite):
    require_opset(r)
    ids, segments, words, positions, segment_table, gamma, beta = (
        r.input(i) for i in range(7))
    mask, position_ids = r.input(7), r.input(8)
    dtype = elem_type(r, words)
    if not position_ids:
        position_ids = r.op("Range", r.const(_i64(0), "start"), length(r, ids, 1),
                            r.const(_i64(1), "step"), out=r.fresh("position_ids"))
    # Named after the node: attributions over embeddings are reported under these names.
    base = r.node.name or r.node.output[0]
    total = r.op("Add", r.op("Gather", words, ids, axis=0, out=f"{base}/word_embedding"),
                 r.op("Gather", positions, position_ids, axis=0,
                      out=f"{base}/position_embedding"))
    if segments:
        total = r.op("Add", total, r.op("Gather", segment_table, segments, axis=0,
                                        out=f"{base}/segment_embedding"))
    layer_norm(r, total, gamma, beta, float(r.attr("epsilon", _EPSILON)), dtype,
               out=r.node.output[0])
    if r.output(1):
        _mask_index(r, mask, ids, r.output(1))
    bind(r, total, r.output(2))
    return r.nodes


def _mask_index(r: Rewrite, mask: str, ids: str, out: str) -> None:
    """Valid tokens per row, int32 [batch]: non-zero mask entries counted (zeros without a
    mask, as the kernel writes)."""
    if not mask:
        r.op("ConstantOfShape", dims(r, ids, [0], "batch"), out=out,
             value=helper.make_tensor("value", TensorProto.INT32, [1], [0]))
        return
    valid = r.op("Cast", r.op("Cast", mask, to=TensorProto.BOOL), to=TensorProto.INT32)
    r.op("ReduceSum", valid, ints(r, [1], "axis1"), out=out, keepdims=0)


def _i64(value: int) -> np.ndarray:
    return np.array(value, dtype=np.int64)
