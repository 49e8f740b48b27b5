"""Decoders that reconstruct a model's input from one layer's activations, as ONNX nodes.

Schneider & Vlachos, "Explaining classifiers by constructing familiar concepts" (Machine
Learning, 2022): a decoder D_l trained so that D_l(a_l(x)) ~ x shows what of the input the
layer l still holds. Two kinds:

- linear: x_hat = a W + b. On sequence layers [T, H] whose target is [T, E] it acts per
  position (W is [H, E]); otherwise on the flattened row (W is [prod(layer), prod(target)]).
- conv: for spatial layers [C, h, w] -> input [Cin, H, W]:
  x_hat = Conv3x3(Resize_linear(ReLU(Conv3x3(a) + b1), (H, W))) + b2.
  Every op has a backward rule in onnxplain.autodiff, so the same emission is trained.
  (Before opset 11, Resize samples with asymmetric coordinates instead of half-pixel ones;
  the decoder is trained and emitted at the model's opset, so both agree.)

`emit_decoder` is the one place a decoder becomes nodes: the training graph (weights as
graph inputs) and the written probe model (weights as initializers) both call it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..images import image_layout

KINDS = ("linear", "conv")
CONV_HIDDEN = 32  # channels of the conv decoder's hidden layer
CONV_PARAMS = ("weight1", "bias1", "weight2", "bias2")
LINEAR_PARAMS = ("weight", "bias")


@dataclass
class Decoder:
    layer: str                      # the model tensor whose activations are decoded
    target: str                     # a model input name, or the embedding lookup's output
    kind: str                       # "linear" or "conv"
    params: dict[str, np.ndarray]   # float32 weights: linear weight/bias, conv weight1..bias2
    layer_shape: tuple[int, ...]    # one row's activation shape (no batch axis)
    target_shape: tuple[int, ...]   # one row's reconstruction shape (no batch axis)

    @property
    def per_position(self) -> bool:
        """A linear decoder applied to each position of a sequence ([T, H] -> [T, E])."""
        return self.kind == "linear" and per_position(self.layer_shape, self.target_shape)


def per_position(layer_shape: Sequence[int], target_shape: Sequence[int]) -> bool:
    """Sequence layer and target with the same positions: decode each position alike."""
    return (len(layer_shape) == 2 and len(target_shape) == 2
            and layer_shape[0] == target_shape[0])


def is_spatial(shape: Sequence[int]) -> bool:
    return len(shape) == 3


def choose_kind(kind: str, layer_shape: Sequence[int], target_shape: Sequence[int]) -> str:
    """'auto' is conv (a local decoder, as the paper's) from a spatial layer [C, h, w] of at
    least 2 x 2 positions to an image input [Cin, H, W] with channels first; else linear. From
    one position (a global pool's [C, 1, 1]) or one row, Resize would spread a constant: only
    the linear decoder can place detail there."""
    conv_fits = (is_spatial(layer_shape) and min(layer_shape[1:]) >= 2
                 and _channels_first(target_shape))
    if kind == "auto":
        return "conv" if conv_fits else "linear"
    if kind not in KINDS:
        raise InputError(f"unknown decoder '{kind}'; choose auto, {', '.join(KINDS)}")
    if kind == "conv" and not (is_spatial(layer_shape) and is_spatial(target_shape)):
        raise InputError(f"the conv decoder needs a spatial layer [C, h, w] and input "
                         f"[C, H, W], got layer {list(layer_shape)} and input "
                         f"{list(target_shape)}")
    if kind == "conv" and min(layer_shape[1:]) < 2:
        raise InputError(f"the conv decoder spreads a layer's positions over the image, but "
                         f"the layer {list(layer_shape)} has fewer than 2 x 2 (Resize would "
                         "spread one value); use the linear decoder")
    if kind == "conv" and not _channels_first(target_shape):
        raise InputError(f"the conv decoder rebuilds channels-first images [C, H, W], but the "
                         f"input {list(target_shape)} has its channels last (NHWC); use the "
                         "linear decoder")
    return kind


def _channels_first(shape: Sequence[int]) -> bool:
    return is_spatial(shape) and image_layout((1, *shape)) != "NHWC"


def init_decoder(layer: str, target: str, kind: str, layer_shape: Sequence[int],
                 target_shape: Sequence[int], rng: np.random.Generator,
                 hidden: int = CONV_HIDDEN) -> Decoder:
    """A decoder with He-uniform weights and zero biases (kind already chosen)."""
    layer_shape, target_shape = tuple(layer_shape), tuple(target_shape)
    if kind == "linear":
        if per_position(layer_shape, target_shape):
            fan_in, fan_out = layer_shape[-1], target_shape[-1]
        else:
            fan_in, fan_out = int(np.prod(layer_shape)), int(np.prod(target_shape))
        params = {"weight": _uniform(rng, (fan_in, fan_out), fan_in),
                  "bias": np.zeros(fan_out, np.float32)}
    else:
        channels, target_channels = layer_shape[0], target_shape[0]
        params = {"weight1": _uniform(rng, (hidden, channels, 3, 3), channels * 9),
                  "bias1": np.zeros(hidden, np.float32),
                  "weight2": _uniform(rng, (target_channels, hidden, 3, 3), hidden * 9),
                  "bias2": np.zeros(target_channels, np.float32)}
    return Decoder(layer, target, kind, params, layer_shape, target_shape)


def _uniform(rng: np.random.Generator, shape: tuple[int, ...], fan_in: int) -> np.ndarray:
    bound = np.sqrt(6.0 / max(fan_in, 1))
    return rng.uniform(-bound, bound, shape).astype(np.float32)


def emit_decoder(b: GraphBuilder, activation: str, decoder: Decoder, name: str,
                 params: dict[str, str] | None = None) -> str:
    """Emit the decoder on `activation` [N, *layer_shape] with GraphBuilder b;
    returns the reconstruction tensor [N, *target_shape]. Weights become initializers named
    under `name`, unless `params` maps a param key to an existing graph tensor (training:
    the weights are graph inputs)."""
    params = params or {}
    weights = {key: params[key] if key in params
               else b.initializer(np.asarray(value, np.float32), f"{name}/{key}")
               for key, value in decoder.params.items()}
    if decoder.kind == "linear":
        return _emit_linear(b, activation, decoder, weights)
    if decoder.kind == "conv":
        return _emit_conv(b, activation, decoder, weights)
    raise InputError(f"unknown decoder kind '{decoder.kind}'; choose one of {', '.join(KINDS)}")


def _emit_linear(b: GraphBuilder, a: str, decoder: Decoder, w: dict[str, str]) -> str:
    if decoder.per_position:
        # MatMul broadcasts [N, T, H] x [H, E], so any sequence length works.
        return b.op("Add", b.op("MatMul", a, w["weight"]), w["bias"])
    flat = b.reshape(a, [0, -1])
    out = b.op("Add", b.op("MatMul", flat, w["weight"]), w["bias"])
    return b.reshape(out, [-1, *decoder.target_shape])


def _emit_conv(b: GraphBuilder, a: str, decoder: Decoder, w: dict[str, str]) -> str:
    hidden = b.op("Relu", _conv3x3(b, a, w["weight1"], w["bias1"]))
    scales = _scales(decoder.layer_shape[1:], decoder.target_shape[1:])
    if any(s != 1.0 for s in scales):
        scale = b.const(np.array([1.0, 1.0, *scales], np.float32), "scales")
        if b.opset < 11:  # Resize-10 takes the scales alone
            hidden = b.op("Resize", hidden, scale, mode="linear")
        else:  # an empty roi could not be left out before opset 13
            roi = "" if b.opset >= 13 else b.const(np.zeros(0, np.float32), "roi")
            hidden = b.op("Resize", hidden, roi, scale, mode="linear")
    return _conv3x3(b, hidden, w["weight2"], w["bias2"])


def _conv3x3(b: GraphBuilder, x: str, weight: str, bias: str) -> str:
    """Same-size 3x3 Conv; the bias is a separate Add because autodiff's Conv rule needs the
    incoming gradient's rank for dB, which the driver does not record for gradients."""
    out = b.op("Conv", x, weight, kernel_shape=[3, 3], pads=[1, 1, 1, 1], out_rank=4)
    return b.op("Add", out, b.unsqueeze(bias, [1, 2]), out_rank=4)


def _scales(have: Sequence[int], want: Sequence[int]) -> list[float]:
    """Float32 scales with floor(have * scale) == want, as ONNX Runtime sizes Resize's output:
    want / have rounded to float32 may fall just short (e.g. 3 * float32(8 / 3) < 8)."""
    scales = []
    for h, target in zip(have, want, strict=True):
        scale = np.float32(target / h)
        while np.float32(scale * np.float32(h)) < target or scale * h < target:
            scale = np.nextafter(scale, np.float32(np.inf))
        scales.append(float(scale))
    return scales
