"""ONNX Runtime's fused linear ops as standard ones: FusedConv and FusedGemm (the op followed
by an activation), FusedMatMul (a MatMul with transposes and a scale folded in).

Semantics (contrib schemas and CPU kernels; tests/graph/test_canonical_ms_fused.py):
- FusedConv(X, W[, B, Z]) = act(Conv(X, W, B) + Z), `activation` with `activation_params`
  (LeakyRelu [alpha], Clip [min, max], HardSigmoid [alpha, beta]).
- FusedGemm(A, B[, C]) = act(Gemm(A, B, C)), `activation` with `activation_alpha`,
  `activation_beta`, `activation_gamma`.
- FusedMatMul(A, B) = alpha · op(A) @ op(B): transA / transB swap the last two axes;
  transBatchA / transBatchB move the first axis behind the other batch axes first, so that
  A [d0, d1, .., M, K] reads as [d1, .., d0·.., M, K] (perm (1, .., r-2, 0, r-1); with the
  last-axes swap too (1, .., r-2, r-1, 0)).
"""

from __future__ import annotations

import numpy as np

from . import Rewrite, decomposes
from .ms_common import MS, elem_type, rank_of, require_opset, scalar

_CONV_ATTRS = ("auto_pad", "dilations", "group", "kernel_shape", "pads", "strides")
_GEMM_ATTRS = ("alpha", "beta", "transA", "transB")


def activation(r: Rewrite, x: str, kind: str, params: list[float], dtype: int,
               out: str) -> str:
    """act(x) for the activations ONNX Runtime fuses into Conv and Gemm; `params` in the
    order the op's attributes take them."""
    def param(i: int, default: float) -> float:
        return float(params[i]) if len(params) > i else default

    simple = {"Relu": {}, "Tanh": {}, "Sigmoid": {},
              "LeakyRelu": {"alpha": param(0, 0.01)}, "Elu": {"alpha": param(0, 1.0)},
              "HardSigmoid": {"alpha": param(0, 0.2), "beta": param(1, 0.5)},
              "ThresholdedRelu": {"alpha": param(0, 1.0)},
              "Selu": {"alpha": param(0, 1.67326319217681884765625),
                       "gamma": param(1, 1.05070102214813232421875)},
              "Softsign": {}, "Softplus": {}}
    if kind in simple:
        return r.op(kind, x, out=out, **simple[kind])
    if kind == "Clip":
        low, high = (scalar(r, param(i, bound), dtype, "clip")
                     for i, bound in enumerate((-np.inf, np.inf)))
        return r.op("Clip", x, low, high, out=out)
    raise r.refuse(f"activation '{kind}'")


def _copy_attrs(r: Rewrite, names: tuple[str, ...]) -> dict:
    return {name: r.attr(name) for name in names if r.attr(name) is not None}


@decomposes(MS, "FusedConv")
def _fused_conv(r: Rewrite):
    require_opset(r)
    x, w, b, z = (r.input(i) for i in range(4))
    kind = r.attr("activation", b"").decode() if r.attr("activation") else ""
    params = list(r.attr("activation_params", []))
    dtype = elem_type(r, w, x)
    conv = r.op("Conv", *([x, w, b] if b else [x, w]), **_copy_attrs(r, _CONV_ATTRS))
    return _activated(r, r.op("Add", conv, z) if z else conv, kind, params, dtype)


@decomposes(MS, "FusedGemm")
def _fused_gemm(r: Rewrite):
    require_opset(r)
    inputs = [i for i in r.node.input if i]
    kind = r.attr("activation", b"").decode() if r.attr("activation") else ""
    params = [r.attr(name) for name in ("activation_alpha", "activation_beta",
                                        "activation_gamma")]
    # Unset parameters take the activation's defaults (ordered alpha, beta / gamma).
    ordered = [p for p in params if p is not None]
    if kind == "Selu":
        ordered = [p for p in (params[0], params[2]) if p is not None]
    gemm = r.op("Gemm", *inputs, **_copy_attrs(r, _GEMM_ATTRS))
    return _activated(r, gemm, kind, ordered, elem_type(r, *inputs))


def _activated(r: Rewrite, value: str, kind: str, params: list, dtype: int):
    """The fused node's output: `value` through its activation (`kind`, '' for none)."""
    if kind:
        activation(r, value, kind, params, dtype, r.node.output[0])
    else:
        r.op("Identity", value, out=r.node.output[0])
    return r.nodes


@decomposes(MS, "FusedMatMul")
def _fused_matmul(r: Rewrite):
    require_opset(r)
    a, b = r.node.input[:2]
    a = _operand(r, a, int(r.attr("transA", 0)), int(r.attr("transBatchA", 0)))
    b = _operand(r, b, int(r.attr("transB", 0)), int(r.attr("transBatchB", 0)))
    alpha = float(r.attr("alpha", 1.0))
    if alpha == 1.0:
        r.op("MatMul", a, b, out=r.node.output[0])
    else:
        product = r.op("MatMul", a, b)
        r.op("Mul", product, scalar(r, alpha, elem_type(r, *r.node.input[:2]), "alpha"),
             out=r.node.output[0])
    return r.nodes


def _operand(r: Rewrite, x: str, trans: int, trans_batch: int) -> str:
    if not (trans or trans_batch):
        return x
    rank = rank_of(r, x)
    if rank is None:
        raise r.refuse(f"transposed input '{x}' of unknown rank")
    if rank < 2:
        return x  # a vector is not transposed (numpy.matmul semantics)
    if not trans_batch:
        perm = list(range(rank - 2)) + [rank - 1, rank - 2]
    else:
        middle = list(range(1, rank - 1))
        perm = middle + ([rank - 1, 0] if trans else [0, rank - 1])
    return r.op("Transpose", x, perm=perm)
