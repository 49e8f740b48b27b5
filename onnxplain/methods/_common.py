"""Helpers the methods share: targets fixed from a clean forward run, row repetition."""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np

from ..engine import Engine, GradientRun, OutputSeed, decisions, is_labels
from ..errors import InputError
from ..graph.sources import Source
from ..inputs import prepare_target


def fixed_target(engine: Engine, feeds: Mapping[str, np.ndarray], target):
    """The target as explicit classes, so that runs on perturbed or interpolated inputs all
    explain the class of the clean input; also returns the clean forward outputs."""
    outputs = engine.forward(feeds)
    return explicit_target(engine, outputs, target), outputs


def explicit_target(engine: Engine, outputs: Mapping[str, np.ndarray], target):
    """The target as class indices (None: the predicted class) given the forward outputs."""
    logits = outputs[engine.output]
    if is_labels(logits) and not isinstance(target, OutputSeed):
        return decisions(logits).astype(np.int64) if target is None else prepare_target(
            target, logits.shape[0], None)
    if isinstance(target, OutputSeed) or logits.ndim != 2:
        return target
    if target is None:
        return logits.argmax(axis=1).astype(np.int64)
    return prepare_target(target, logits.shape[0], logits.shape[1])


def repeat_target(target, times: int):
    """A per-row target for inputs whose rows were repeated `times` times each (interleaved)."""
    if target is None:
        return None
    if isinstance(target, OutputSeed):
        return OutputSeed(np.repeat(target.values, times, axis=0))
    return np.repeat(np.asarray(target), times, axis=0)


def tile_target(target, times: int):
    """A per-row target for inputs stacked `times` times (block after block)."""
    if target is None:
        return None
    if isinstance(target, OutputSeed):
        return OutputSeed(np.concatenate([target.values] * times, axis=0))
    return np.concatenate([np.asarray(target)] * times, axis=0)


def input_sources(sources: Sequence[Source], feeds: Mapping[str, np.ndarray], method: str
                  ) -> list[Source]:
    """Sources that are float graph inputs: methods that move the input itself need them."""
    moved = [s for s in sources if s.tensor == s.input and s.tensor in feeds]
    inner = [s.input for s in sources if s not in moved]
    if inner:
        raise InputError(f"{method} moves the input values, but {', '.join(inner)} is "
                         "attributed at an inner tensor (token ids or attribute_at); for "
                         "token ids use layer_integrated_gradients, saliency or "
                         "input_x_gradient")
    return moved


def clean_run(outputs: dict[str, np.ndarray], target, engine: Engine) -> GradientRun:
    """A GradientRun describing the clean input: its outputs and the explained classes."""
    output = outputs[engine.output]
    objective = "output_seed" if isinstance(target, OutputSeed) else (
        "class" if output.ndim == 2 or is_labels(output) else "sum")
    used = None if objective != "class" else np.asarray(target, dtype=np.int64)
    return GradientRun(outputs=outputs, grads={}, target=used, objective=objective)


def completeness_delta(values: Mapping[str, np.ndarray], difference: np.ndarray,
                       tolerance: float, category: type[Warning], message: str) -> np.ndarray:
    """sum(attributions) - (S(x) - S(x')) per row, warning when it exceeds `tolerance` times
    |S(x) - S(x')|; `message` is formatted with the worst relative error as {worst}."""
    total = sum(v.reshape(v.shape[0], -1).sum(axis=1, dtype=np.float64) for v in values.values())
    delta = total - difference
    scale = np.abs(difference) + 1e-6
    if np.any(np.abs(delta) > tolerance * scale):
        worst = float(np.max(np.abs(delta) / scale))
        warnings.warn(message.format(worst=worst), category, stacklevel=5)
    return delta


def equal_runs(count: int, limit: int) -> int:
    """Points per run (path steps, noise samples) for `count` of them, at most `limit`: all
    if they fit, else a divisor of count between 2/3 of limit and limit where there is one,
    so that every run has the same shape (the first run of each shape builds a program:
    about a second on ResNet-18; much smaller runs cost more per row), else `limit`."""
    if count <= limit:
        return count
    for size in range(limit, max(1, -(-2 * limit // 3)) - 1, -1):
        if count % size == 0:
            return size
    return limit
