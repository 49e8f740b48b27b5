"""Kernel SHAP and LIME as one program each: the coalitions are fixed by the seed and the
number of features, so each method's regression is a constant matrix applied to the scores
of the coalitions with one MatMul (export.designs: shapley_map, ridge_map,
computed in float64 when the program is built and applied in float64).

The program's inputs are the model's, `target`, `feature_mask` (int64 [1 or N, *row]: the
feature id of each element, 0..F-1; an element with another id, such as -1, belongs to no
feature: it is never perturbed and its attribution is 0) and `background/<input>`
([B, *row]: the values absent features take, averaged over its B rows). Point p of the
P x B points of a row is coalition p // B over background row p % B: h(z) =
where(z[feature_mask], x, background). The points run in a Loop, a few per iteration,
scores only (no gradients).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..errors import InputError
from ..features import baseline_values, row_masks
from ..graph.shapes import TensorInfo
from ..runtime.batching import DEFAULT_BUDGET_MB
from .designs import (
    check_matrix,
    check_runs,
    coalition_baseline,
    coalitions,
    lime_kernel,
    lime_samples,
    ridge_map,
    shapley_map,
)
from .graph import ExplainerGraph, is_fed
from .methods import ATTRIBUTION, SCORE, register_export
from .perturb import (
    Perturbation,
    perturbation_loop,
    perturbed_input,
    remainder,
    row_shape,
    zeros,
)

MASK = "feature_mask"
BACKGROUND = "background/"
# Named after their method: "values" or "weights" are common tensor names inside models.
VALUES, EXPECTED, ADDITIVITY = "shap_values", "expected_value", "additivity_error"
WEIGHTS, INTERCEPT, FIT = "lime_weights", "lime_intercept", "lime_r2"
COMMON = ("features", "cell", "n_samples", "seed", "baseline", "input")


@dataclass(frozen=True)
class Coalitions:
    """What both methods perturb: input `name`, the feature id of each element in `mask`
    ([N, *row], ids 0..width-1, and `width` for an element of no feature), the `count`
    rows of `background` ([B, *row])."""

    name: str
    mask: str
    background: str
    count: int
    width: int


@register_export("kernel_shap", COMMON, any_output=True)
def kernel_shap(eg: ExplainerGraph, options: dict) -> None:
    """phi_{<F} = A [E, v(z_1..z_M), f(x)], phi_F = f(x) - E - sum(phi_{<F}): Kernel SHAP
    (methods.kernel_shap) with E the score of the empty coalition (the first scored)."""
    b = eg.b
    features = coalition_features(eg, options, "kernel_shap")
    present, weights, _ = coalitions(features.width, int(options["n_samples"]),
                                     int(options["seed"]))
    evaluated = np.vstack([np.zeros((1, features.width), bool), present])
    scores, fx = coalition_scores(eg, features, evaluated, options)
    expected = feature_column(b, scores, 0)
    delta = b.op("Sub", fx, expected)
    if features.width == 1:
        values = b.unsqueeze(delta, [1])
    else:
        rows = b.concat([scores, b.unsqueeze(fx, [1])], 1)
        head = b.op("MatMul", rows, b.const(np.ascontiguousarray(
            shapley_map(present, weights).T), "shapley_map"))
        last = b.op("Sub", delta, b.reduce("ReduceSum", head, [1], False))
        values = b.concat([head, b.unsqueeze(last, [1])], 1)
    values = _zero_where_unchanged(b, values, scores, fx)
    declare_shapley_outputs(eg, features, values, expected, fx, "Kernel SHAP values")


def declare_shapley_outputs(eg: ExplainerGraph, features: Coalitions, values: str,
                            expected: str, fx: str, kind: str) -> None:
    """Shapley-value outputs (kernel_shap, shapley_sampling): the values per feature and
    per element, the score with every feature absent, the additivity error and the score."""
    b = eg.b
    error = b.op("Abs", b.op("Sub", b.op("Add", b.reduce("ReduceSum", values, [1], False),
                                        expected), fx))
    declare_feature_map(eg, features, values, f"{kind} (each element its feature's)")
    declare_row_outputs(eg, {VALUES: (values, f"{kind} per feature", True),
                             EXPECTED: (expected, "the score with every feature absent "
                                        "(mean over the background)", False),
                             ADDITIVITY: (error, "|sum(values) + expected_value - score|",
                                          False),
                             SCORE: (fx, "the explained score at the input", False)},
                        features.width)


@register_export("lime", (*COMMON, "kernel_width", "alpha"), any_output=True)
def lime(eg: ExplainerGraph, options: dict) -> None:
    """coef = C y, b = c . y for the scores y of the coalitions (designs.ridge_map);
    R^2 of the fit from its residuals (sklearn's convention for a constant target)."""
    b = eg.b
    features = coalition_features(eg, options, "lime")
    present = lime_samples(features.width, int(options["n_samples"]), int(options["seed"]))
    weights = lime_kernel(present, float(options["kernel_width"]))
    coef, intercept = ridge_map(present, weights, float(options["alpha"]))
    scores, fx = coalition_scores(eg, features, present, options)
    fitted_coef = _zero_where_unchanged(b, b.op("MatMul", scores, b.const(
        np.ascontiguousarray(coef.T), "ridge_map")), scores, fx)
    fitted_intercept = b.op("MatMul", scores, b.const(intercept, "ridge_intercept"))
    fitted = b.op("Add", b.op("MatMul", fitted_coef, b.const(
        np.ascontiguousarray(present.T.astype(np.float64)), "coalitions")),
        b.unsqueeze(fitted_intercept, [1]))
    r2 = _r2(b, scores, fitted, weights)
    declare_feature_map(eg, features, fitted_coef, "LIME weights (each element its feature's)")
    declare_row_outputs(eg, {WEIGHTS: (fitted_coef, "the ridge weights per feature", True),
                       INTERCEPT: (fitted_intercept, "the ridge intercepts", False),
                       FIT: (r2, "the kernel-weighted R^2 of the fit", False)},
                  features.width)


def _r2(b, scores: str, fitted: str, weights: np.ndarray) -> str:
    """1 - sum_w (y - fit)^2 / sum_w (y - mean_w y)^2 per row; a constant target (spread
    below rounding) gets 1 if fitted exactly, else 0."""
    total = float(weights.sum())
    column = b.const(weights[:, None], "kernel_weights")

    def weighted_squares(values: str) -> str:
        return b.squeeze(b.op("MatMul", b.op("Mul", values, values), column), [1])

    residual = weighted_squares(b.op("Sub", scores, fitted))
    mean = b.op("MatMul", scores, b.const(weights[:, None] / total, "kernel_mean"))
    spread = weighted_squares(b.op("Sub", scores, mean))
    largest = b.op("Mul", b.reduce("ReduceMax", b.op("Abs", scores), [1], False),
                   b.const(np.array(1e-12)))
    tiny = b.op("Mul", b.op("Mul", largest, largest), b.const(np.array(total)))
    one, zero = b.const(np.array(1.0)), b.const(np.array(0.0))
    constant = b.where(b.op("Greater", residual, tiny), zero, one)
    return b.where(b.op("Greater", spread, tiny),
                   b.op("Sub", one, b.op("Div", residual, spread)), constant)


def feature_column(b, values: str, index: int) -> str:
    return b.squeeze(b.slice(values, [index], [index + 1], [1]), [1])


def _zero_where_unchanged(b, values: str, scores: str, fx: str) -> str:
    """values [N, F], exactly 0 in rows where no coalition changed the score: the solve
    leaves rounding noise there (1e-16), which would hide the all-zero warning."""
    change = b.reduce("ReduceMax", b.op("Abs", b.op("Sub", scores, b.unsqueeze(fx, [1]))),
                      [1], True)
    return b.keep(values, b.op("Greater", change, b.scalar(0.0, change)))


def coalition_scores(eg: ExplainerGraph, features: Coalitions, present: np.ndarray,
            options: dict) -> tuple[str, str]:
    """(float64 [N, P]: each row's explained score with the features of present[p] kept,
    averaged over the background rows; float64 [N]: the score at the row itself). The
    P x B points run in perturb's Loop."""
    b, count, name = eg.b, features.count, features.name
    # Column F: the elements of no feature, always kept.
    table = b.const(np.hstack([present, np.ones((len(present), 1), bool)]), "present")
    points = len(present) * count

    def perturb(bb, chunk, clean: dict[str, str]) -> dict[str, str]:
        """k blocks of N copies: point p is coalition p // B over background row p % B."""
        background_row = bb.ints([count])
        keep = bb.op("Gather", table, bb.op("Div", chunk.index, background_row),
                     axis=0)  # [k, F]
        elements = bb.op("Gather", keep, features.mask, axis=1)  # [k, N, *row]
        absent = bb.op("Gather", features.background,
                       remainder(bb, chunk.index, background_row), axis=0)  # [k, *row]
        made = bb.where(elements, bb.unsqueeze(clean[name], [0]), bb.unsqueeze(absent, [1]))
        return {name: bb.reshape(made, bb.concat([bb.ints([-1]), bb.dims(clean[name], 1)],
                                                 0))}

    run = perturbation_loop(
        eg, Perturbation(points, perturb, lambda bb, chunk, scores: [], [], table=True))
    table_scores = run.table  # [N, P x B]
    if count == 1:
        return table_scores, run.clean
    shaped = b.reshape(table_scores, b.concat([eg.rows, b.ints([len(present), count])], 0))
    return b.reduce("ReduceMean", shaped, [2], False), run.clean


def coalition_features(eg: ExplainerGraph, options: dict, method: str) -> Coalitions:
    """The perturbed input, its feature mask and background inputs, and the counts."""
    name = perturbed_input(eg.model, options.get("input"))
    b, rank = eg.b, eg.b.rank(name)
    row = [None] * (rank - 1)
    if is_fed(options["features"]):
        default, width = None, int(options["n_features"])
    else:
        default = exported_mask(eg, name, options)
        width = int(default.max()) + 1
        # The budget export checks its work against (in-process: the caller's, checked there).
        check_matrix(method, width, int(options["n_samples"]), DEFAULT_BUDGET_MB)
    mask = eg.add_input(MASK, TensorProto.INT64, ["mask_rows", *row], default,
                        f"the feature id (0..{width - 1}) of each element of input '{name}' "
                        "(another id, such as -1: no feature, never perturbed, attribution 0)")
    background = _background_rows(eg, name, options["baseline"])
    count = len(background)
    if "max_runs" in options:  # export; in-process runs check it before (no program key)
        check_runs(method, width, int(options["n_samples"]), int(options["seed"]), count,
                   options["max_runs"], DEFAULT_BUDGET_MB)
    key = eg.add_input(BACKGROUND + name, b.dtype(name), [count, *row], background,
                       f"the values absent features of input '{name}' take, averaged over "
                       f"the {count} rows")
    full = no_feature_last(b, b.op("Expand", mask, b.shape(name)), width)
    b.infos[full] = TensorInfo(TensorProto.INT64, b.info(name).shape)
    rows = b.op("Expand", key, b.concat([b.ints([count]), b.dims(name, 1)], 0))
    b.infos[rows] = TensorInfo(b.dtype(name), (count, *b.info(name).shape[1:])
                               if b.info(name).shape else None)
    return Coalitions(name, full, rows, count, width)


def no_feature_last(b, ids: str, width: int) -> str:
    """The ids with every one outside 0..width-1 (a fed mask's -1) set to `width`: the
    column of no feature (kept in every coalition, attribution 0), where Gather would read
    a negative id as a feature counted from the end."""
    inside = b.op("And", b.op("Not", b.op("Less", ids, b.ints([0]))),
                  b.op("Less", ids, b.ints([width])))
    return b.where(inside, ids, b.ints([width]))


def exported_mask(eg: ExplainerGraph, name: str, options: dict) -> np.ndarray:
    """The feature mask of the exported program's rows, [1, *row]."""
    features = options["features"]
    if isinstance(features, str) and features == "superpixels":
        raise InputError("superpixels depend on each image, so they cannot be baked into an "
                         "export: export with features=grid, columns, tokens or an integer "
                         "mask (the exported feature_mask input takes any mask)")
    row = row_shape(eg, name, options)
    if not isinstance(features, str) and np.ndim(features) == len(row) + 1 and \
            len(features) > 1:
        raise InputError("an exported feature mask is one mask for every row; to explain "
                         "rows with masks of their own, feed them to the exported "
                         "feature_mask input")
    blank = np.zeros((1, *row), eg.model.input(name).numpy_dtype)
    return row_masks(blank, features, cell=int(options["cell"]))[0][None]


def _background_rows(eg: ExplainerGraph, name: str, baseline) -> np.ndarray:
    """The baseline as background rows [B, *row] ([1, 1, ...] for a number), baked in as
    the default of the background input (in-process: the rows given, keyed by a digest)."""
    dtype, rank = eg.model.input(name).numpy_dtype, eg.b.rank(name)
    if np.ndim(baseline) in (0, rank):
        base = baseline_values(baseline, dtype)
        return np.ascontiguousarray(base.reshape((1,) * rank) if base.ndim == 0 else base)
    blank = np.zeros((1, *row_shape(eg, name, {})), dtype)
    base = coalition_baseline(baseline, blank)
    return np.ascontiguousarray(np.broadcast_to(base, blank.shape[1:])[None])


def declare_feature_map(eg: ExplainerGraph, features: Coalitions, values: str,
                        meaning: str) -> None:
    """Each element's feature value, in the input's float type (float32 for token ids)."""
    b, name = eg.b, features.name
    flat = b.reshape(features.mask, b.concat([eg.rows, b.ints([-1])], 0))  # [N, E]
    values = b.concat([values, zeros(b, [eg.rows, 1])], 1)  # id F: no feature, 0
    if b.opset >= 11:
        picked = b.op("GatherElements", values, flat, axis=1)
    else:  # one-hot [N, E, F + 1] (float32: ONNX Runtime has no double OneHot) x [N, F + 1, 1]
        hot = b.op("OneHot", flat, b.ints([features.width + 1]),
                   b.const(np.array([0.0, 1.0], np.float32)), axis=-1)
        picked = b.squeeze(b.op("MatMul", b.op("Cast", hot, to=TensorProto.DOUBLE),
                                b.unsqueeze(values, [2])), [2])
    picked = b.reshape(picked, b.shape(name))
    dtype = b.dtype(name) if b.info(name).is_float else TensorProto.FLOAT
    eg.declare(b.op("Cast", picked, to=dtype), ATTRIBUTION + name,
               f"{meaning}, shaped like input '{name}'", TensorInfo(dtype, b.info(name).shape))


def declare_row_outputs(eg: ExplainerGraph, outputs: dict[str, tuple[str, str, bool]],
                  width: int) -> None:
    """float64 outputs per row ([N]) or per row and feature ([N, F])."""
    for key, (tensor, meaning, per_feature) in outputs.items():
        shape = ("N", width) if per_feature else ("N",)
        eg.declare(tensor, key, f"float64 [{', '.join(map(str, shape))}]: {meaning}",
                   TensorInfo(TensorProto.DOUBLE, shape))
