"""Corrections to onnx 1.23's reference evaluator, the float64 oracle of the gradient checks.

Every known defect of the reference that a test in tests/autodiff would otherwise meet lives
here, in one of two forms:

* `CORRECTED_OPS`: op classes for `ReferenceEvaluator(model, new_ops=CORRECTED_OPS)`, which
  is how `gradcheck.evaluator` builds every evaluator. A class replaces the op at every opset,
  so one that differs between opsets reads the model's opset itself.
* `corrected_reference()`: a context manager for the defects that sit in module-level helpers
  (and so cannot be fixed by a class), plus the checker's refusal of GroupNormalization-18.
  It also installs `CORRECTED_OPS` in onnx's operator registry, so an evaluator built without
  `new_ops` (or a function body that the reference expands) gets them too. tests/autodiff's
  conftest.py applies it around every test; on exit everything is restored.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import onnx
import pytest
from onnx.reference.op_run import OpRun
from onnx.reference.ops import _op_list, op_gather_elements, op_pad
from onnx.reference.ops._op import OpRunUnaryNum
from onnx.reference.ops.op_batch_normalization import (
    BatchNormalization_6,
    BatchNormalization_14,
    _batchnorm_test_mode,
)
from onnx.reference.ops.op_conv_transpose import ConvTranspose as ReferenceConvTranspose
from onnx.reference.ops.op_global_max_pool import GlobalMaxPool as ReferenceGlobalMaxPool
from onnx.reference.ops.op_lrn import LRN as ReferenceLRN
from onnx.reference.ops.op_max_pool import MaxPool as ReferenceMaxPool
from onnx.reference.ops.op_resize import Resize as ReferenceResize
from onnx.reference.ops.op_scatter_elements import ScatterElements


def _opset(op: OpRun) -> int:
    """The default-domain opset of the model that `op` runs in."""
    return op.run_params["opsets"][""]


# --- Precision -------------------------------------------------------------------------------


class Erf(OpRunUnaryNum):
    """onnx 1.23's Erf rounds through float32; finite differences need float64."""

    def _run(self, x):
        return (np.vectorize(math.erf, otypes=[x.dtype])(x),)


class Gelu(OpRunUnaryNum):
    """onnx 1.23's Gelu expands to its float32 Erf; this one stays in float64."""

    def _run(self, x):  # OpRunUnary passes no attributes
        if self.approximate in ("tanh", b"tanh"):
            inner = math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)
            return ((0.5 * x * (1 + np.tanh(inner))).astype(x.dtype),)
        erf = np.vectorize(math.erf, otypes=[x.dtype])
        return ((0.5 * x * (1 + erf(x / math.sqrt(2)))).astype(x.dtype),)


# --- Convolution and pooling -----------------------------------------------------------------


class ConvTranspose(ReferenceConvTranspose):
    """onnx 1.23's ConvTranspose fails for group > 1 and for output_shape without auto_pad."""

    def _run(self, X, W, B=None, auto_pad=None, dilations=None, group=None,  # noqa: N803
             kernel_shape=None, output_padding=None, output_shape=None, pads=None,
             strides=None):
        # output_shape with explicit (ignored) pads: the spec's pads, the odd one first.
        if output_shape is not None and auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            spatial = X.shape[2:]
            strides = strides or [1] * len(spatial)
            dilations = dilations or [1] * len(spatial)
            extra = output_padding or [0] * len(spatial)
            kernel = W.shape[2:]
            total = [s * (n - 1) + e + (k - 1) * d + 1 - o for n, s, d, k, e, o in zip(
                spatial, strides, dilations, kernel, extra, output_shape, strict=True)]
            if min(total) >= 0:
                pads = [t - t // 2 for t in total] + [t // 2 for t in total]
                auto_pad, output_shape = "NOTSET", None
        attrs = {"auto_pad": auto_pad, "dilations": dilations, "kernel_shape": kernel_shape,
                 "output_padding": output_padding, "output_shape": output_shape,
                 "pads": pads, "strides": strides}
        if not group or group == 1:
            return super()._run(X, W, B, group=1, **attrs)
        # Run the groups one by one.
        biases = np.split(B, group) if B is not None else [None] * group
        parts = [super(ConvTranspose, self)._run(x, w, bias, group=1, **attrs)[0]
                 for x, w, bias in zip(np.split(X, group, axis=1), np.split(W, group),
                                       biases, strict=True)]
        return (np.concatenate(parts, axis=1),)


def _same_pads(spatial, kernel, strides, dilations, auto_pad: str) -> list[int]:
    """Explicit pads for SAME_UPPER/SAME_LOWER: ceil(n / stride) outputs, odd pad last/first."""
    begin, end = [], []
    for n, k, s, d in zip(spatial, kernel, strides, dilations, strict=True):
        total = max(0, (-(-n // s) - 1) * s + (k - 1) * d + 1 - n)
        small = total // 2
        begin.append(small if auto_pad == "SAME_UPPER" else total - small)
        end.append(total - begin[-1])
    return begin + end


class MaxPool(ReferenceMaxPool):
    """onnx 1.23's MaxPool: wrong Indices at unit strides/dilations, wrong SAME_LOWER shape.

    The unit-stride shortcut path mislabels Indices, and the general path floors SAME_LOWER's
    output size and pads it like SAME_UPPER: take the general path, with the spec's pads.
    """

    def _run(self, x, auto_pad=None, ceil_mode=None, dilations=None, kernel_shape=None,
             pads=None, storage_order=None, strides=None):
        if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            rank = len(kernel_shape)
            pads = _same_pads(x.shape[2:], kernel_shape, strides or [1] * rank,
                              dilations or [1] * rank, auto_pad)
            auto_pad = "NOTSET"
        return self._max_pool(x, auto_pad, ceil_mode, dilations, kernel_shape, pads,
                              storage_order, strides)


class GlobalMaxPool(ReferenceGlobalMaxPool):
    """onnx 1.23's GlobalMaxPool reduces the wrong axes unless the input is 4-D."""

    def _run(self, x):
        return (x.max(axis=tuple(range(2, x.ndim)), keepdims=True),)


class LRN(ReferenceLRN):
    """onnx 1.23's LRN sums squares over the batch instead of the channels.

    The spec's square sum for channel c runs over channels
    max(0, c - floor((size-1)/2)) .. min(C-1, c + ceil((size-1)/2)).
    """

    def _run(self, x, alpha=None, beta=None, bias=None, size=None):
        before = (size - 1) // 2
        channels = x.shape[1]
        squares = x * x
        square_sum = np.stack([
            squares[:, max(0, c - before):min(channels, c + size - before)].sum(axis=1)
            for c in range(channels)], axis=1)
        return ((x / (bias + alpha / size * square_sum) ** beta).astype(x.dtype),)


# --- Normalization ---------------------------------------------------------------------------


def _softmax(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    e = np.exp(x - x.max(axis=axes, keepdims=True))
    return e / e.sum(axis=axes, keepdims=True)


class _Softmax(OpRunUnaryNum):
    """Softmax as the spec defines it: before opset 13 the input is coerced to 2-D at `axis`."""

    log = False

    def _run(self, x, axis=None):
        opset = _opset(self)
        given = {a.name: a.i for a in self.onnx_node.attribute}
        axis = given.get("axis", 1 if opset < 13 else -1)
        axis = axis + x.ndim if axis < 0 else axis
        axes = tuple(range(axis, x.ndim)) if opset < 13 else (axis,)
        y = _softmax(x, axes)
        return ((np.log(y) if self.log else y).astype(x.dtype),)


class Softmax(_Softmax):
    """onnx 1.23's Softmax ignores the 2-D coercion of opsets before 13 (normalizes one axis)."""


class LogSoftmax(_Softmax):
    """onnx 1.23's LogSoftmax ignores the 2-D coercion of opsets before 13 (one axis only)."""

    log = True


class BatchNormalization(OpRun):
    """onnx 1.23 runs single-output BatchNormalization-7..13 as training, not inference.

    (Its momentum attribute has a default, which the reference takes as a request for batch
    statistics; the spec and ONNX Runtime use the given mean and var.)
    """

    def _run(self, x, scale, bias, mean, var, epsilon=None, momentum=None, **attrs):
        opset = _opset(self)
        if opset >= 14:  # training_mode decides; onnx gets this one right
            return BatchNormalization_14._run(self, x, scale, bias, mean, var, epsilon=epsilon,
                                              momentum=momentum, **attrs)
        if opset < 7:  # is_test decides
            return BatchNormalization_6._run(self, x, scale, bias, mean, var, epsilon=epsilon,
                                             momentum=momentum, **attrs)
        if len(self.onnx_node.output) > 1:
            raise NotImplementedError("training-mode BatchNormalization before opset 14")
        return (_batchnorm_test_mode(x, scale, bias, mean, var, epsilon=epsilon),)


# --- Indexing --------------------------------------------------------------------------------


class Scatter(ScatterElements):
    """onnx 1.23 lacks Scatter (opset 9-10): ScatterElements without reduction."""

    def _run(self, data, indices, updates, axis=None):
        return super()._run(data, indices, updates, axis=axis)


def _gather_elements(data: np.ndarray, axis: int, index: np.ndarray) -> np.ndarray:
    """onnx 1.23's GatherElements rejects indices smaller than data off the axis (spec: fine).

    Only the leading part of data is read then.
    """
    axis %= data.ndim
    crop = tuple(slice(None) if a == axis else slice(0, index.shape[a])
                 for a in range(data.ndim))
    index = np.where(index < 0, index + data.shape[axis], index)
    return np.take_along_axis(data[crop], index, axis)


# --- Shape -----------------------------------------------------------------------------------


_reference_pad = op_pad._pad_impl


def _cropping_pad(data, raw_pads, mode, constant_values=0.0, axes=None):
    """onnx 1.23's Pad rejects negative pads; crop them first, as ONNX Runtime does."""
    rank = data.ndim
    axes = list(range(rank)) if axes is None else [int(a) % rank for a in axes]
    count = len(axes)
    index = [slice(None)] * rank
    for k, axis in enumerate(axes):
        head, tail = int(raw_pads[k]), int(raw_pads[count + k])
        index[axis] = slice(max(-head, 0), data.shape[axis] - max(-tail, 0))
    pads = [max(int(p), 0) for p in raw_pads]
    return _reference_pad(data[tuple(index)], pads, mode, constant_values, axes)


# --- Resize ----------------------------------------------------------------------------------


def _resize_10(op: OpRun, x: np.ndarray, scales, mode=None) -> tuple[np.ndarray]:
    """Resize-10 and Upsample as ONNX Runtime runs them: asymmetric, floor for nearest."""
    scales = np.asarray(scales, dtype=np.float32)
    return ReferenceResize._run(op, x, None, scales, mode=mode, nearest_mode="floor",
                                coordinate_transformation_mode="asymmetric")


class Resize(ReferenceResize):
    """onnx 1.23 reads Resize-10's (X, scales) as (X, roi) and mishandles negative `axes`."""

    def _run(self, X, *inputs, axes=None, mode=None, **attrs):  # noqa: N803
        if _opset(self) < 11:
            return _resize_10(self, X, inputs[0], mode=mode)
        if axes is not None:
            axes = [int(a) % X.ndim for a in axes]
        return super()._run(X, *inputs, axes=axes, mode=mode, **attrs)


class Upsample(OpRun):
    """onnx 1.23's Upsample does only nearest with integer scales."""

    def _run(self, x, scales=None, mode=None):
        # `scales` is an input from opset 9 and an attribute before.
        return _resize_10(self, x, scales, mode=mode)


CORRECTED_OPS: list[type[OpRun]] = [
    Erf, Gelu,
    ConvTranspose, MaxPool, GlobalMaxPool, LRN,
    Softmax, LogSoftmax, BatchNormalization,
    Scatter,
    Resize, Upsample,
]


def _check_model_allowing_group_norm_18(original):
    def check_model(model, *args, **kwargs):
        """onnx 1.23's checker refuses GroupNormalization-18 (deprecated) that ONNX Runtime runs.

        For such a model, type-check the graph by strict shape inference instead.
        """
        try:
            original(model, *args, **kwargs)
        except onnx.checker.ValidationError as error:
            if "GroupNormalization is deprecated" not in str(error):
                raise
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)

    return check_model


@contextmanager
def corrected_reference() -> Iterator[None]:
    """Apply the module-level corrections (and register CORRECTED_OPS); undo them on exit."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(op_pad, "_pad_impl", _cropping_pad)
        patch.setattr(op_gather_elements, "gather_numpy", _gather_elements)
        patch.setattr(onnx.checker, "check_model",
                      _check_model_allowing_group_norm_18(onnx.checker.check_model))
        _op_list.load_op("", "Abs")  # builds the registry
        for op in CORRECTED_OPS:
            patch.setitem(_op_list._registered_operators, op.__name__, {None: op})
        yield
