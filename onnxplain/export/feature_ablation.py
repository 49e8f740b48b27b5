"""Feature ablation as one graph (methods.feature_ablation's definition): copy p of each row
has the elements of feature p set to the baseline, made inside the perturbation Loop
(export.perturb) from p and the `feature_mask` input, so no table of features x input size
is ever made; only each copy's score leaves the Loop ([N, F]). After it, every element takes
its feature's score drop (export.coalitions' map from features to elements).

The program's inputs are the model's, `target`, `feature_mask` (int64 [1 or N, *row], as
Kernel SHAP's: ids 0..F-1, another id such as -1 is never ablated and gets 0) and
`baseline/<input>` ([1 or N, *row], as occlusion's)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto

from ..graph.shapes import TensorInfo
from ..runtime.batching import DEFAULT_BUDGET_MB
from ..runtime.budget import Work, check_work
from .coalitions import MASK, Coalitions, declare_feature_map, exported_mask, no_feature_last
from .graph import ExplainerGraph, is_fed
from .methods import baseline_input, register_export
from .occlusion import baseline_like
from .perturb import Perturbation, baseline_row, perturbation_loop, perturbed_input, row_shape

DROPS = "feature_drops"


def check_features(width: int, max_runs, rows: int = 1,
                   budget_mb: float = DEFAULT_BUDGET_MB) -> None:
    """Refuse more than `max_runs` ablated copies per row (one per feature); the score table
    [rows, F] (float64) is what the run holds besides the model."""
    work = Work("features", width, width, 8 * rows * width, about=f"with {width:,} features",
                advice="use fewer, larger features (-O features=grid, or a coarser mask)")
    check_work("feature_ablation", work, max_runs, budget_mb)


@register_export("feature_ablation", ("features", "cell", "baseline", "input"),
                 any_output=True)
def feature_ablation(eg: ExplainerGraph, options: dict) -> None:
    """A_i = S(x) - S(x with feature f(i) set to the baseline), every element i of a
    feature f its score drop; `feature_drops` [N, F] the drops per feature (0 past a row's
    own feature count)."""
    b = eg.b
    name = perturbed_input(eg.model, options.get("input"))
    row = row_shape(eg, name, options)
    if is_fed(options["features"]):
        default, width = None, int(options["n_features"])
    else:
        default = exported_mask(eg, name, options)
        width = int(default.max()) + 1
    if "max_runs" in options:  # export; in-process runs check it before (no program key)
        check_features(width, options["max_runs"])
    mask = eg.add_input(MASK, TensorProto.INT64, ["mask_rows", *[None] * len(row)], default,
                        f"the feature id (0..{width - 1}) of each element of input '{name}' "
                        "(another id, such as -1: no feature, never ablated, attribution 0)")
    ids = b.op("Expand", mask, b.shape(name))
    b.infos[ids] = TensorInfo(TensorProto.INT64, b.info(name).shape)
    fill = baseline_input(eg, name, baseline_row(eg, name, row, options, baseline_like))

    def perturb(bb, chunk, clean: dict[str, str]) -> dict[str, str]:
        """k blocks of N copies: block j has feature chunk.index[j] at the baseline."""
        feature = bb.reshape(chunk.index, [-1] + [1] * (len(row) + 1))  # [k, 1, ...]
        ablated = bb.op("Equal", bb.unsqueeze(ids, [0]), feature)  # [k, N, *row]
        copies = bb.where(ablated, bb.unsqueeze(fill, [0]), bb.unsqueeze(clean[name], [0]))
        return {name: bb.reshape(copies, bb.concat([bb.ints([-1]), bb.dims(clean[name], 1)],
                                                   0))}

    run = perturbation_loop(eg, Perturbation(width, perturb, lambda bb, chunk, scores: [],
                                             [], table=True))
    drops = _own_features(b, b.op("Sub", b.unsqueeze(run.clean, [1]), run.table), ids, width)
    features = Coalitions(name, no_feature_last(b, ids, width), "", 1, width)
    declare_feature_map(eg, features, drops, "feature ablation (the score drop when the element's "
                 "feature is set to the baseline)")
    eg.declare(drops, DROPS, f"float64 [N, {width}]: the score drop per feature",
               TensorInfo(TensorProto.DOUBLE, ("N", width)))


def _own_features(b, drops: str, ids: str, width: int) -> str:
    """drops [N, F] with the columns past each row's own feature count set to exactly 0:
    per-row masks may have fewer features than the program's F, and their extra copies
    equal the row (only rounding can tell their scores apart)."""
    flat = b.reshape(ids, b.concat([b.dims(ids, 0, 1), b.ints([-1])], 0))
    count = b.op("Add", b.reduce("ReduceMax", flat, [1], True), b.ints([1]))  # [N, 1]
    return b.keep(drops, b.op("Less", b.const(np.arange(width, dtype=np.int64)[None]), count))
