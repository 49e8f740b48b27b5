"""Perturbation curves: the explained score while features are removed from the input (or
inserted into a baseline) in the order the attribution ranks them.

With F features ranked by attribution (a feature's attribution is the sum over its
elements) and K steps, step k removes (or inserts) the first n_k = floor(k F / K + 1/2)
features of that ranking, replacing the removed ones by the baseline value b:

    x^(k) = x with features r_1..r_{n_k} set to b          (deletion; insertion starts
    s_k   = S_c(x^(k)),  k = 0..K                           from b and inserts them)

- deletion / insertion (Petsiuk, Das, Saenko 2018, RISE, arXiv:1806.07421): the area under
  s over the fraction k / K of the ranking moved, by the trapezoid rule:
  AUC = 1 / K sum_{k=0..K-1} (s_k + s_{k+1}) / 2. Deletion: lower is better (the score falls as
  soon as the most relevant features go); insertion: higher is better.
- pixel flipping, MoRF and LeRF (Samek et al. 2017, IEEE TNNLS 28(11), arXiv:1509.06321):
  AOPC = 1 / (K + 1) sum_{k=0..K} (s_0 - s_k), features removed most relevant first (MoRF:
  higher is better) or least relevant first (LeRF: lower is better). MoRF removes in the
  deletion order, so both read the same runs.

S_c is the score the attribution explains (the target logit), or with `probability` the
softmax probability of the target class, as RISE scores. Every perturbed copy runs through
the perturbation methods' executor (runtime.perturb): chunked, batched, one progress bar.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ..attribution import Attribution
from ..errors import InputError
from ..features import apply_features, row_masks
from ..images import image_layout
from ..inputs import Inputs, prepare_inputs
from ..methods._perturb import copies
from ..objective import class_scores
from ..runtime.perturb import perturbed_scores
from ._common import attributed_input, check_output, explained_target

# kind -> (most relevant first, insert into the baseline instead of removing)
KINDS: dict[str, tuple[bool, bool]] = {
    "deletion": (True, False),
    "insertion": (True, True),
    "morf": (True, False),
    "lerf": (False, False),
}
FEATURES = ("auto", "pixels", "grid", "superpixels", "tokens", "columns")


@dataclass
class Curve:
    """Scores [rows, steps + 1] of one perturbation curve, at `fractions` of the features."""

    kind: str
    fractions: np.ndarray
    scores: np.ndarray

    @property
    def auc(self) -> np.ndarray:
        """Area under the curve per row, trapezoid rule over the fraction of features."""
        width = np.diff(self.fractions)
        return ((self.scores[:, 1:] + self.scores[:, :-1]) / 2 * width).sum(axis=1)

    @property
    def aopc(self) -> np.ndarray:
        """Area over the perturbation curve per row: mean over k of s_0 - s_k."""
        return (self.scores[:, :1] - self.scores).mean(axis=1)


@dataclass(frozen=True)
class CurveSettings:
    """How the curves perturb: `steps` K, the `baseline_value` b removed features take,
    `features` (see feature_masks) with grid `cell` size, the perturbed `input`, the score
    (`probability`: softmax of the target class) and rows per run (`batch_size`)."""

    steps: int = 20
    baseline_value: float | np.ndarray = 0.0
    features: str | np.ndarray = "auto"
    cell: int = 0
    input: str | None = None
    probability: bool = False
    batch_size: int | None = None


def perturbation_curves(explainer, inputs: Inputs, attribution: Attribution,
                        kinds: Sequence[str], settings: CurveSettings | None = None, *,
                        maps: Sequence[np.ndarray] = (), output_seed=None
                        ) -> dict[str, list[Curve]]:
    """Curves of each kind for the attribution, then for each extra attribution in `maps`
    (shaped like the input: random ones, for a baseline), all in one stream of forward
    runs. A map shared over an image's channels ranks pixels as the same map repeated over
    the channels would (metrics._common.shaped_like_input)."""
    settings = settings or CurveSettings()
    unknown = [kind for kind in kinds if kind not in KINDS]
    if unknown:
        raise InputError(f"unknown curve '{unknown[0]}' (choose from {', '.join(KINDS)})")
    steps = _steps(settings.steps)
    check_output(explainer, attribution)
    feeds = prepare_inputs(explainer.model, inputs)
    name, shaped = attributed_input(attribution, feeds, settings.input)
    rows = feeds[name].shape[0]
    target = explained_target(attribution, rows, output_seed)
    values = [shaped, *maps]
    masks = feature_masks(feeds[name], settings.features, settings.cell)
    # Kinds that perturb alike (deletion and MoRF) share their runs.
    plans = sorted({KINDS[kind] for kind in kinds}, reverse=True)
    orders = [_positions(values, masks, row, plans) for row in range(rows)]
    engine = explainer.engine  # settings.batch_size: rows per run of these curves only
    engine = engine.with_policy(engine.policy.derive(batch_size=settings.batch_size))
    if settings.probability:
        engine = _SoftmaxScores(engine)
    plan_inserts = np.array([insert for _, insert in plans for _ in values])
    label = "/".join(dict.fromkeys(kinds)) + " curves"

    def make(row: int, first: int, last: int) -> Mapping[str, np.ndarray]:
        mask = masks[row]
        count = int(mask.max()) + 1
        done = np.floor(np.arange(steps + 1) * count / steps + 0.5).astype(np.int64)
        plan, step = np.divmod(np.arange(first, last), steps + 1)
        taken = orders[row][plan] < done[step][:, None]  # [n, F] features moved so far
        present = np.where(plan_inserts[plan][:, None], taken, ~taken)
        batch = apply_features(feeds[name][row], mask, present, settings.baseline_value)
        return copies(feeds, name, batch)

    count = len(plans) * len(values) * (steps + 1)
    scores = perturbed_scores(engine, feeds, target, make, count, label=label)
    scores = scores.reshape(rows, len(plans), len(values), steps + 1)
    fractions = np.arange(steps + 1) / steps
    return {kind: [Curve(kind, fractions, scores[:, plans.index(KINDS[kind]), m])
                   for m in range(len(values))] for kind in kinds}


def deletion_curve(explainer, inputs: Inputs, attribution: Attribution, *,
                   output_seed=None, **settings) -> Curve:
    """The deletion curve (RISE): most relevant features removed first; `.auc` per row,
    lower is better. Settings: see CurveSettings."""
    return _one("deletion", explainer, inputs, attribution, output_seed, settings)


def insertion_curve(explainer, inputs: Inputs, attribution: Attribution, *,
                    output_seed=None, **settings) -> Curve:
    """The insertion curve (RISE): most relevant features inserted into the baseline
    first; `.auc` per row, higher is better. Settings: see CurveSettings."""
    return _one("insertion", explainer, inputs, attribution, output_seed, settings)


def pixel_flipping(explainer, inputs: Inputs, attribution: Attribution, *,
                   order: str = "morf", output_seed=None, **settings) -> Curve:
    """The pixel-flipping curve (Samek et al. 2017), `order` "morf" (most relevant first)
    or "lerf" (least relevant first); `.aopc` per row. Settings: see CurveSettings."""
    if order not in ("morf", "lerf"):
        raise InputError(f"order must be 'morf' or 'lerf', got {order!r}")
    return _one(order, explainer, inputs, attribution, output_seed, settings)


def feature_masks(value: np.ndarray, features: str | np.ndarray = "auto", cell: int = 0
                  ) -> list[np.ndarray]:
    """One feature mask per row: "pixels" (one per pixel, shared over channels), "grid"
    (square patches of `cell` pixels, 0: 8 per side), "superpixels", "tokens", "columns"
    (one per element), an integer mask, or "auto": pixels for images, tokens for token ids,
    columns otherwise."""
    kind = resolve_features(value, features)
    if not isinstance(kind, str):
        return row_masks(value, np.asarray(kind))
    if kind == "pixels":
        return row_masks(value, "grid", cell=1)
    return row_masks(value, kind, cell=int(cell))


def resolve_features(value: np.ndarray, features: str | np.ndarray = "auto"
                     ) -> str | np.ndarray:
    """The feature kind "auto" stands for on these inputs (a mask is returned as is)."""
    if not isinstance(features, str):
        return features
    if features not in FEATURES:
        raise InputError(f"unknown features '{features}' (choose from {', '.join(FEATURES)}, "
                         "or pass an integer mask)")
    image = image_layout(value.shape) is not None
    if features == "pixels" and not image:
        raise InputError(f"features='pixels' needs image rows, got shape {value.shape[1:]}; "
                         "use 'columns', 'tokens' or a mask")
    if features != "auto":
        return features
    if image:
        return "pixels"
    return "tokens" if value.ndim == 2 and value.dtype.kind in "iu" else "columns"


def _one(kind: str, explainer, inputs, attribution, output_seed, settings: dict) -> Curve:
    try:
        chosen = CurveSettings(**settings)
    except TypeError as err:
        raise InputError(f"unknown curve setting: {err}") from None
    return perturbation_curves(explainer, inputs, attribution, [kind], chosen,
                               output_seed=output_seed)[kind][0]


def _steps(steps) -> int:
    if not isinstance(steps, int | np.integer) or steps < 1:
        raise InputError(f"steps must be a positive integer, got {steps!r}")
    return int(steps)


def _positions(values: Sequence[np.ndarray], masks: list[np.ndarray], row: int,
               plans: list[tuple[bool, bool]]) -> np.ndarray:
    """[plans x maps, F]: where each feature comes in each ranking (0: moved first)."""
    mask = masks[row].ravel()
    count = int(mask.max()) + 1
    out = []
    for most_first, _ in plans:
        for value in values:
            flat = np.nan_to_num(np.asarray(value[row], dtype=np.float64).ravel())
            score = np.bincount(mask, weights=flat, minlength=count)
            # Stable: ties keep feature order, so a ranking is reproducible.
            order = np.argsort(-score if most_first else score, kind="stable")
            position = np.empty(count, dtype=np.int64)
            position[order] = np.arange(count)
            out.append(position)
    return np.stack(out)


class _SoftmaxScores:
    """The engine with its explained output replaced by the softmax over classes, so the
    perturbation executor scores target probabilities; everything else passes through."""

    def __init__(self, engine) -> None:
        self._engine = engine

    def __getattr__(self, name: str):
        return getattr(self._engine, name)

    def forward(self, feeds, *args, **kwargs) -> dict[str, np.ndarray]:
        outputs = dict(self._engine.forward(feeds, *args, **kwargs))
        raw = outputs[self._engine.output]
        logits = class_scores(raw)
        if logits is None:
            raise InputError("probability scores need class scores [batch, classes], got "
                             f"{raw.dtype} of shape {raw.shape}")
        logits = logits.astype(np.float64)
        shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
        probabilities = shifted / shifted.sum(axis=1, keepdims=True)
        outputs[self._engine.output] = probabilities.reshape(raw.shape)
        return outputs
