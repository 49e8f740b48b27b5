"""ONNX Runtime's quantized transformer ops (`com.microsoft` QAttention and
QEmbedLayerNormalization, written by `quantize_dynamic` on an optimized BERT) as
DequantizeLinear in front of the float op's decomposition, so that gradients pass the
quantized input by the straight-through rule (autodiff/ops/quantize.py) and the attention
probabilities are an ordinary Softmax.

Semantics (CPU kernels, contrib_ops/cpu/quantization/attention_quant.cc and
qembed_layer_norm.cc; tests/graph/test_canonical_quantized_attention.py):
- QAttention(input, weight, bias, input_scale, weight_scale, mask_index, input_zero_point,
  weight_zero_point, past): Attention (ms_attention.attention) on DQ(input) and DQ(weight),
  the weight's scale and zero point per tensor or per column of the [D, 3H] weight. The
  kernel multiplies the exact int32 product by input_scale * weight_scale; the
  decomposition dequantizes first, which rounds the same real number differently (float32,
  a few ulps).
- QEmbedLayerNormalization(input_ids, segment_ids, word, position, segment, gamma, beta,
  mask, then the five tables' scales and zero points): EmbedLayerNormalization on the
  dequantized tables (positions 0..S-1); mask_index counts the mask entries equal to 1, as
  the kernel does.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from . import DECOMPOSITIONS, Rewrite, decomposes
from .ms_attention import attention
from .ms_common import MS, rank_of, require_opset
from .quantized import _dequantize

_WEIGHT_AXIS = 1  # the weight is [input hidden, 3 * hidden]: per-column along axis 1


@decomposes(MS, "QAttention")
def qattention(r: Rewrite) -> list[onnx.NodeProto]:
    require_opset(r)
    for name in ("do_rotary", "past_present_share_buffer"):
        if r.attr(name, 0):
            raise r.refuse(f"{name}=1 (ONNX Runtime's CPU QAttention kernel has no such form "
                           "to check a decomposition against)")
    if _awaits_decomposition(r, r.input(5)):
        return [r.node]  # the next round, once the mask's producer is decomposed
    x = _dequantize(r, r.input(0), r.input(3), r.input(6))
    scale, zero_point = _per_column_pair(r, r.input(4), r.input(7))
    weights = _dequantize(r, r.input(1), scale, zero_point, axis=_WEIGHT_AXIS)
    info = r.index.info(r.input(1))
    width = info.shape[-1] if info is not None and info.shape else None
    attention(r, x, weights, r.input(2), r.input(5), r.input(8), "", TensorProto.FLOAT,
              width if isinstance(width, int) else None)
    return r.nodes


def _awaits_decomposition(r: Rewrite, mask: str) -> bool:
    """Whether the mask's rank is unknown because its producer is an op that shape
    inference does not know and a decomposition will replace (QEmbedLayerNormalization's
    mask_index, as quantize_dynamic writes it)."""
    if not mask or rank_of(r, mask) is not None:
        return False
    producer = r.index.producers.get(mask)
    return producer is not None and (producer.domain, producer.op_type) in DECOMPOSITIONS


def _per_column_pair(r: Rewrite, scale: str, zero_point: str) -> tuple[str, str]:
    """The weight's scale and zero point with one shape (DequantizeLinear needs it): a
    per-tensor one repeated to match a per-column other."""
    if not zero_point:
        return scale, zero_point
    values = r.static(scale), r.static(zero_point)
    if values[0] is None or values[1] is None:
        raise r.refuse("a computed weight scale or zero point (quantize_dynamic writes "
                       "constants)")
    size = max(v.size for v in values)
    if all(v.size == size for v in values):
        return scale, zero_point
    scale_value, zero_value = (np.broadcast_to(v.reshape(-1), (size,)).copy() for v in values)
    return r.const(scale_value, "weight_scale"), r.const(zero_value, "weight_zero_point")


@decomposes(MS, "QEmbedLayerNormalization")
def qembed_layer_norm(r: Rewrite) -> list[onnx.NodeProto]:
    """The float EmbedLayerNormalization on dequantized tables, decomposed in turn (the
    canonicalisation repeats until no contrib op is left), under this node's name so that the
    embedding lookups are named as for an EmbedLayerNormalization."""
    require_opset(r)
    tables = [_dequantize(r, r.input(i), r.input(i + 6), r.input(i + 11)) if r.input(i)
              else "" for i in range(2, 7)]
    mask = r.input(7)
    if mask:  # the kernel counts entries equal to 1 (EmbedLayerNormalization: non-zero)
        mask = r.op("Cast", r.op("Equal", mask, r.const(np.array(1, np.int32), "one")),
                    to=TensorProto.INT32)
    inputs = [r.input(0), r.input(1), *tables, mask]
    r.multi("EmbedLayerNormalization", inputs, [r.output(0), r.output(1)], domain=MS,
            epsilon=float(r.attr("epsilon", 1e-12)))
    r.nodes[-1].name = r.node.name
    return r.nodes
