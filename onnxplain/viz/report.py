"""A report comparing attribution methods on one batch: runs each method, the prediction and
optional faithfulness scores. `write_report` (report_files) saves it; `report_html` draws it.

    >>> report = build_report(explainer, x, ["saliency", "integrated_gradients", "grad_cam"])
    >>> write_report(report, "report/")  # index.html, report.json and one PNG per picture
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._text import counted
from ..attribution import Attribution
from ..errors import InputError, OnnxplainError
from ..images import image_layout
from ..inputs import prepare_inputs
from ..methods import get_method
from ..objective import (
    DENSE,
    EVERYWHERE,
    check_output_seed,
    check_place,
    class_scores,
    make_place,
    output_form,
    resolve_dense,
)
from ..vocab import Vocabulary, ids_as_tokens

# score(explainer, feeds, attribution) -> {name: number, or a list with one number per row}
Scorer = Callable[[Any, dict[str, np.ndarray], Attribution], Mapping[str, object]]
Progress = Callable[[str], None]

OK, NOT_APPLICABLE, FAILED = "ok", "not_applicable", "failed"


@dataclass
class MethodResult:
    """One method's attribution, or the one-line reason there is none."""

    method: str
    family: str
    status: str = OK  # OK, NOT_APPLICABLE (the method cannot explain this model) or FAILED
    attribution: Attribution | None = None
    note: str | None = None
    scores: dict[str, object] | None = None
    score_note: str | None = None  # why there are no scores, when a scorer was given


@dataclass
class ReconstructionColumn:
    """One layer of a decoder probe (onnxplain.probe) beside the methods: per row the input
    rebuilt from the layer's activations, its squared error per element and the class the
    model predicts on it (token models: the share of tokens the rebuilt embeddings name)."""

    heading: str  # e.g. "probe 0: <layer>"
    input: str  # the model input it rebuilds (token models: the ids input)
    reconstruction: np.ndarray | None  # [N, *image] for image inputs, else None
    error: np.ndarray | None  # like reconstruction
    mean_error: np.ndarray  # [N]
    predicted_class: np.ndarray | None  # [N]
    token_accuracy: np.ndarray | None = None  # [N]
    notes: list[str] = field(default_factory=list)  # about the whole layer, e.g. its fit


@dataclass
class Report:
    """Everything a report shows: the batch, the prediction and each method's result."""

    model: str | None
    output: str
    providers: list[str]
    feeds: dict[str, np.ndarray]
    scores_out: np.ndarray  # the explained output, one row per input row
    top_k: list[list[dict]]  # per row: [{"class", "label", "score", "probability"}]
    probabilities: str | None  # "softmax" (of logits), "model" (already probabilities) or None
    results: list[MethodResult]
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)  # per token input, row
    masks: dict[str, np.ndarray | None] = field(default_factory=dict)  # 1 for real tokens
    reconstructions: list[ReconstructionColumn] = field(default_factory=list)  # a probe's

    @property
    def rows(self) -> int:
        return len(self.scores_out)


def build_report(explainer: Any, inputs: Any, methods: Sequence[str] | None = None, *,
                 target: int | Sequence[int] | None = None, top_k: int = 5,
                 labels: Sequence[str] | None = None, vocabulary: Vocabulary | None = None,
                 options: Mapping[str, Mapping[str, object]] | None = None,
                 score: Scorer | None = None, progress: Progress | None = None,
                 output_seed: np.ndarray | None = None,
                 place: Mapping[str, object] | None = None) -> Report:
    """Run each method on `inputs` with an onnxplain.Explainer and collect what a report shows.
    `methods` None: default_methods; an empty list: no method (the batch and the prediction
    only, e.g. for a report of a decoder probe's reconstructions).

    A method that cannot explain this model (no conv layer for grad_cam, no attention for
    rollout, ...) becomes a note in its result instead of an error; unknown methods or
    options, bad inputs and bad targets raise InputError before anything runs. `options`
    maps a method to its options; `score` (e.g. onnxplain.metrics' entry point) is called
    once per explained method and its numbers are reported as they come. `output_seed`
    (weights shaped like the output) replaces the class target, as in Explainer.explain;
    a scorer of such attributions must be given the same seed. `place` ({"position": P},
    {"pixel": (y, x)} or {"region": ((y0, y1), (x0, x1))}) is where a sequence or map output
    is explained (objective.Place), the same in every method; scorers read the objective
    from each attribution (metrics' explained_target), so they score that place too.
    """
    feeds = prepare_inputs(explainer.model, inputs)
    names = list(dict.fromkeys(default_methods(explainer) if methods is None else methods))
    resolved = _check_options(names, options or {})
    if top_k < 1:
        raise InputError(f"top-k must be at least 1, got {top_k}")
    out = explainer.forward(feeds)[explainer.output]
    _check_target(target, out)
    objective = _objective(explainer, target, output_seed, len(out))
    objective.update(_place(explainer, feeds, out, objective, place or {}))
    rows, kind = top_classes(out, top_k, labels)
    say = progress or (lambda message: None)
    results = [_run(explainer, feeds, name, objective, resolved[name], score, say)
               for name in names]
    tokens = {name: [vocabulary.tokens_for(row) if vocabulary else ids_as_tokens(row)
                     for row in ids]
              for name, ids in feeds.items() if input_kind(ids) == "tokens"}
    masks = {name: padding(results, feeds, name) for name in tokens}
    # What the sessions really ran on ('auto' may have asked for CUDA and fallen back).
    used = next((r.attribution.providers for r in results if r.attribution is not None),
                getattr(explainer.engine, "session_providers", None) or explainer.providers)
    return Report(explainer.model.path, explainer.output, list(used), feeds, out, rows, kind,
                  results, tokens, masks)


def default_methods(explainer: Any) -> list[str]:
    """A sensible comparison for the model: attention methods for transformers, Grad-CAM
    for CNNs on images, and gradient methods (integrated gradients where inputs are real)."""
    from ..graph.attention import find_attention
    from ..graph.layers import conv_candidates

    model = explainer.model
    per_token = any(source.per_token for source in explainer.sources)
    try:
        attention = bool(find_attention(model))
    except OnnxplainError:
        attention = False
    gradient = ["saliency", "input_x_gradient" if per_token else "integrated_gradients"]
    if attention:
        return [*gradient, "rollout", "transformer_attribution"]
    images = any(image_layout(tuple(d if isinstance(d, int) else 2 for d in spec.dims or ()))
                 for spec in model.inputs)
    if images and conv_candidates(model):
        return [*gradient, "grad_cam"]
    return gradient


def top_classes(out: np.ndarray, k: int, labels: Sequence[str] | None = None
                ) -> tuple[list[list[dict]], str | None]:
    """The k highest-scoring classes per row, with probabilities when they can be had;
    class scores may carry trailing axes of size 1 ([N, C, 1, 1])."""
    scores = class_scores(out)
    if scores is None or scores.shape[1] < 2:
        return [[] for _ in range(len(out))], None
    out = scores
    probs, kind = probabilities(out)
    order = np.argsort(-np.nan_to_num(out, nan=-np.inf), axis=1, kind="stable")[:, :k]
    rows = []
    for r, classes in enumerate(order):
        rows.append([{"class": int(c),
                      "label": labels[c] if labels is not None and c < len(labels) else None,
                      "score": finite(out[r, c]),
                      "probability": None if probs is None else finite(probs[r, c])}
                     for c in classes])
    return rows, kind


def probabilities(out: np.ndarray) -> tuple[np.ndarray | None, str | None]:
    """Rows that already are distributions are kept ('model'); other rows are read as
    logits and softmaxed ('softmax'); non-finite outputs give none."""
    values = out.astype(np.float64)
    if not np.isfinite(values).all():
        return None, None
    if (values >= 0).all() and np.allclose(values.sum(axis=1), 1.0, atol=1e-3):
        return values, "model"
    exp = np.exp(values - values.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True), "softmax"


def load_labels(path: str | os.PathLike) -> list[str]:
    """Class names, one a line (line number = class index); trailing blank lines dropped."""
    try:
        text = open(path, encoding="utf-8").read()  # noqa: SIM115 - read at once
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read labels file {os.fspath(path)}: "
                         f"{getattr(err, 'strerror', None) or err}") from None
    labels = [line.strip() for line in text.rstrip("\n\r ").splitlines()]
    if not any(labels):
        raise InputError(f"labels file {os.fspath(path)} is empty (expected one name a line)")
    return labels


def input_kind(values: np.ndarray) -> str | None:
    """How an input is drawn: 'image', 'tokens' (ids), 'vector' (features) or None."""
    if values.dtype.kind == "f" and image_layout(values.shape) is not None:
        return "image"
    if values.ndim == 2:
        return "tokens" if values.dtype.kind in "iu" else "vector"
    return None


def padding(results: Sequence[MethodResult], feeds: Mapping[str, np.ndarray], name: str
            ) -> np.ndarray | None:
    """1 for real tokens of input `name`: from the attention masks a method found, else from
    inputs named like a mask with the ids' shape (as `onnxplain explain` does)."""
    shape = feeds[name].shape
    masks = {m for r in results if r.attribution is not None
             for layer in r.attribution.extras.get("layers") or [] if isinstance(layer, dict)
             for m in layer.get("mask_inputs", [])}
    masks = masks or {n for n in feeds if "mask" in n.lower()}
    found = [feeds[n] != 0 for n in sorted(masks) if n in feeds and feeds[n].shape == shape]
    return np.logical_and.reduce(found) if found else None


def finite(value: object) -> float | None:
    """A plain float, None for NaN and infinities (strict JSON has neither)."""
    number = float(value)  # type: ignore[arg-type]
    return number if math.isfinite(number) else None


def _run(explainer: Any, feeds: dict[str, np.ndarray], name: str, objective: dict,
         options: dict, score: Scorer | None, say: Progress) -> MethodResult:
    result = MethodResult(name, get_method(name).family)
    try:
        result.attribution = explainer.explain(feeds, method=name, **objective, **options)
    except OnnxplainError as err:  # the method does not fit this model: say why, go on
        result.status, result.note = NOT_APPLICABLE, _line(err)
    except Exception as err:  # noqa: BLE001 - a bug in one method must not lose the others
        result.status, result.note = FAILED, f"internal error: {type(err).__name__}: {_line(err)}"
        warnings.warn(f"{name} failed: {result.note}", stacklevel=2)
    if result.attribution is None:
        say(f"{name}: {'does not apply' if result.status == NOT_APPLICABLE else 'failed'} "
            f"({result.note})")
        return result
    say(f"{name}: {result.attribution.runtime_s:.3f} s")
    if score is not None:
        _score(explainer, feeds, result, score, say)
    return result


def _score(explainer: Any, feeds: dict[str, np.ndarray], result: MethodResult,
           score: Scorer, say: Progress) -> None:
    try:
        numbers = score(explainer, feeds, result.attribution)
        if not isinstance(numbers, Mapping):
            raise TypeError(f"the scorer returned {type(numbers).__name__}, not a dict")
        result.scores = dict(numbers)
    except Exception as err:  # noqa: BLE001 - scores are extra: keep the attribution
        result.score_note = f"scores failed: {type(err).__name__}: {_line(err)}"
        say(f"{result.method}: {result.score_note}")


def _check_options(names: list[str], options: Mapping[str, Mapping[str, object]]
                   ) -> dict[str, dict]:
    """Each method's options, checked now so that a typo fails before minutes of work."""
    unknown = [m for m in options if m not in names]
    if unknown:
        raise InputError(f"options given for '{unknown[0]}', which is not among the methods "
                         f"({', '.join(names)})")
    resolved = {}
    for name in names:
        given = dict(options.get(name, {}))
        get_method(name).resolve_options(given)  # raises on unknown keys and bad values
        resolved[name] = given
    return resolved


def _check_target(target: Any, out: np.ndarray) -> None:
    out = class_scores(out)
    if target is None or out is None:
        return
    values = np.atleast_1d(np.asarray(target))
    if values.dtype.kind not in "iu":
        raise InputError(f"target must be class indices, got {target!r}")
    if values.size not in (1, len(out)):
        raise InputError(f"{counted(values.size, 'target')} for {counted(len(out), 'row')}; "
                         "give one, or one per row")
    bad = values[(values < 0) | (values >= out.shape[1])]
    if bad.size:
        raise InputError(f"target class {int(bad[0])} is out of range: output "
                         f"has {counted(out.shape[1], 'class', 'classes')}")


def _objective(explainer: Any, target: Any, output_seed: Any, rows: int) -> dict:
    """explain()'s target or output_seed, the seed checked now (as explain() checks it): an
    error there would otherwise become every method's note."""
    if output_seed is None:
        return {"target": target}
    if target is not None:
        raise InputError("give either a target or an output seed, not both")
    return {"output_seed": check_output_seed(explainer.model, explainer.output, output_seed,
                                             rows)}


def _place(explainer: Any, feeds: dict[str, np.ndarray], out: np.ndarray, objective: dict,
           place: Mapping[str, object]) -> dict:
    """explain()'s place keywords, checked now against the output and the clean run (as
    explain() checks them): a bad place would otherwise become every method's note."""
    chosen = make_place(**place)
    if chosen == EVERYWHERE:
        return {}
    if "output_seed" in objective:
        raise InputError("give either an output seed or a position, pixel or region, not both")
    form = output_form(explainer.model, explainer.output)
    check_place(form, chosen, explainer.model.output(explainer.output).describe())
    if form in DENSE:
        resolve_dense(explainer.model, form, explainer.output, feeds,
                      {explainer.output: out}, objective["target"], chosen)
    return dict(place)


def _line(err: BaseException) -> str:
    return " ".join(str(err).split())


__all__ = ["FAILED", "NOT_APPLICABLE", "OK", "MethodResult", "ReconstructionColumn", "Report",
           "build_report", "default_methods", "load_labels", "top_classes"]
