"""Layer-wise Relevance Propagation (Bach et al. 2015; Montavon et al. 2019)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..export.graph import FED
from ..export.methods import BOUND, box_bound
from ..inputs import batch_size
from ..objective import class_scores
from ..rules.lrp import COMPOSITES, NEEDS_BOUNDS, LrpParams, lrp_rules
from ..runtime.engine import OutputSeed
from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from .options import Option, choice, flag, number


def lrp(engine, feeds, target, sources, *, composite: str = "epsilon-plus",
        epsilon: float = 1e-6, gamma: float = 0.25, alpha: float = 2.0, beta: float = 1.0,
        low=None, high=None, stabilizer: float = 1e-6, merge_batch_norm: bool = True):
    """Relevance of each input value, propagated back from the target score layer by layer.

    The output relevance is the explained score itself: R = y_c for class c (the predicted
    one by default), R = seed * y for an output seed, R = y for one-value outputs. Each layer
    redistributes the relevance of its outputs to its inputs (Montavon et al. 2019):

        R_j = sum_k x'_j w'_jk R_k / stab(b'_k + sum_j x'_j w'_jk)

    with the inputs, weights and bias modified by the rule the `composite` assigns to the
    layer: "epsilon-plus" (default; z+ on convolutions, epsilon on dense layers),
    "epsilon-plus-flat" (flat on the first layer), "epsilon-gamma-box" (box with bounds
    `low` and `high` on the first layer, gamma on convolutions, epsilon on dense layers),
    "epsilon-alpha2-beta1" (alpha-beta on convolutions, epsilon on dense layers), or one rule
    on every weighted layer: "epsilon", "gamma", "z-plus", "alpha-beta", "flat", "w-square".
    Parameters: `epsilon` of the epsilon rule (1e-6, Zennit's default; ~0 makes the
    "epsilon" composite equal Gradient x Input on ReLU networks), `gamma` (0.25), `alpha` and
    `beta` (2 and 1, alpha - beta = 1), `low` and `high` (numbers, or arrays broadcasting
    against the first layer's input, e.g. shape [1, C, 1, 1] for per-channel bounds), and
    `stabilizer` (1e-6), which keeps every other division (other rules, the proportional
    rule of pools and residual Adds) away from zero. With `merge_batch_norm` (default, as
    Zennit's canonizer) a BatchNormalization right after a Conv or Gemm is merged into that
    layer's weights before its rule applies; otherwise it gets the proportional rule, as in
    Captum. See onnxplain.rules.lrp for how relevance passes each op family.

    extras: "rules" (weighted node -> rule), "output_relevance" and "input_relevance" (per
    row, summed over every attributed input) and their ratio "conservation": 1 where the
    relevance is conserved; biases, epsilon and rules like alpha-beta without negative
    contributions make it drift.
    """

    # The numbers come checked by the declarations below (MethodSpec.resolve_options).
    params = LrpParams(epsilon, gamma, alpha, beta, box_bound(low), box_bound(high),
                       stabilizer)
    names = [source.tensor for source in sources]
    rules = lrp_rules(engine.model, names, str(composite), params, bool(merge_batch_norm))
    # The program export.methods.lrp emits (the one `export` saves); box bounds are its
    # inputs, fed one row per row, so a new bound is a new feed, not a new program.
    boxed = str(composite) in NEEDS_BOUNDS
    rows = batch_size(feeds, engine.model.batch.of_inputs)
    bounds = np.broadcast_arrays(params.low, params.high) if boxed else []  # one rank
    fed = {BOUND + name: np.repeat(bound[None], rows, axis=0)
           for name, bound in zip(("low", "high"), bounds, strict=True)} if boxed else {}
    options = {"composite": str(composite), "epsilon": params.epsilon, "gamma": params.gamma,
               "alpha": params.alpha, "beta": params.beta,
               "low": FED if boxed else None, "high": FED if boxed else None,
               "stabilizer": params.stabilizer, "merge_batch_norm": bool(merge_batch_norm),
               "bound_rank": bounds[0].ndim if boxed else None}
    run = graph_run(engine, "lrp", feeds, target, sources, options, fed=fed,
                    read=("output_relevance",))
    values = dict(run.grads)
    extras = {"composite": composite, "rules": rules.labels, **conservation(run, values)}
    return MethodOutput(run, values, extras=extras)


def conservation(run, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Extras "output_relevance" (the explained score the graph read), "input_relevance" (the
    attributions' sum per row) and their ratio "conservation", in float64."""
    given = run.post["output_relevance"].astype(np.float64)
    rows = given.shape[0]
    found = sum(v.reshape(rows, -1).sum(axis=1, dtype=np.float64) for v in values.values())
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.asarray(found) / given
    return {"output_relevance": given, "input_relevance": np.asarray(found),
            "conservation": ratio}


def initial_relevance(output: np.ndarray, target) -> np.ndarray:
    """The relevance of each output value: the explained score's share of it."""
    if isinstance(target, OutputSeed):
        return (np.asarray(target.values) * output).astype(output.dtype)
    scores = class_scores(output)
    if scores is not None:
        hot = np.zeros_like(scores)
        hot[np.arange(scores.shape[0]), np.asarray(target, dtype=np.int64)] = 1
        return (hot * scores).reshape(output.shape)
    if output.ndim == 1:
        return output.copy()
    raise InputError(f"the explained output has shape {tuple(output.shape)}: neither class "
                     "scores [batch, classes] nor one value per row; pass an output seed")


register(MethodSpec(
    name="lrp",
    run=lrp,
    summary="layer-wise relevance propagation, rules chosen per layer by a named composite "
            "(conservation in extras)",
    reference="Bach et al. 2015, PLOS ONE 10(7):e0130140; Montavon et al. 2019, "
              "doi:10.1007/978-3-030-28954-6_10",
    family="gradient",
    options=(
        choice("composite", "epsilon-plus", COMPOSITES, "named composite: which rule goes on "
               "which layers"),
        number("epsilon", 1e-6, "epsilon rule's stabiliser (dense layers)", low=0,
               open_low=True),
        number("gamma", 0.25, "gamma rule's extra weight on positive contributions", low=0),
        number("alpha", 2.0, "alpha-beta rule's weight of positive contributions (alpha - "
               "beta = 1)"),
        number("beta", 1.0, "alpha-beta rule's weight of negative contributions", low=0),
        Option("low", None, "box rule's lowest input value (epsilon-gamma-box): a number or "
               "an array", ("float", "array"), none=True),
        Option("high", None, "box rule's highest input value (epsilon-gamma-box)",
               ("float", "array"), none=True),
        number("stabilizer", 1e-6, "keeps the other rules' divisions by ~0 finite", low=0,
               open_low=True),
        flag("merge_batch_norm", True, "fold batch norms into the layers before them"),
    ),
))
