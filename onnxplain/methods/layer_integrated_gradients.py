"""Layer Integrated Gradients on token embeddings: the gradient baseline for text models.

Token ids cannot be interpolated, so the path integral runs over the tensor they are looked up
into (the embedding lookup's output, or the tensor named with attribute_at): the model is cut
there, that tensor becomes an input of the cut model, and Integrated Gradients runs on it
(Sundararajan et al. 2017; Captum's LayerIntegratedGradients on the embedding layer). Scores
per token are the sums over the embedding features. It runs the program `export` saves
(export.tokens: the same numbers); where the embedding reads other inputs too, Integrated
Gradients runs on the model cut there.
"""

from __future__ import annotations

import weakref

import numpy as np

from ..errors import InputError
from ..export.methods import BASELINE_SCORE, SCORE
from ..export.tokens import EMBEDDING, baseline_token_id
from ..graph.attention import find_attention
from ..graph.cut import cut_at
from ..graph.model import Model
from ..graph.sources import Source
from ..graph.walk import lookup_inputs
from ..inputs import batch_size
from ..runtime.engine import Engine
from ..runtime.progress import progress_bar
from . import MethodOutput, MethodSpec, register
from ._common import convergence_delta
from ._folded_path import needs_folding
from ._graph import graph_run, loop_rows
from ._tokens import padding_mask
from .ig_auto import AUTO, auto_steps, take, tolerance_for
from .integrated_gradients import (
    DELTA_TOLERANCE,
    INTERNAL_BATCH_SIZE,
    N_STEPS,
    RULE,
    check_auto_rule,
    integrated_gradients,
    path_work,
)
from .options import integer

_CUT_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _cut_engine(engine: Engine, tensor: str) -> Engine:
    cache = _CUT_ENGINES.setdefault(engine.base, {})
    if tensor not in cache:
        cache[tensor] = engine.part(cut_at(engine.model, tensor), engine.output, tensor)
    return engine.as_part(cache[tensor])


def layer_integrated_gradients(engine, feeds, target, sources, *, n_steps: int | str = 50,
                               rule: str = "gausslegendre", baseline_token=None,
                               internal_batch_size: int = 0,
                               delta_tolerance: float | None = None):
    """IG over the embeddings of the (first) token-id input, from a baseline embedding to the
    embedding of the input. The baseline is zeros (also for a negative `baseline_token`, as
    the exported method takes -1), or the embedding of `baseline_token`, an id put in place
    of every token. Padded tokens (from the attention mask) get zero. extras hold the
    convergence delta per row, as for integrated_gradients (and with n_steps="auto" the
    order each row took)."""
    tokens = [s for s in sources if s.per_token]
    if not tokens:
        raise InputError("layer_integrated_gradients attributes token-id inputs at their "
                         "embedding, and this model has none (use integrated_gradients)")
    # The first token-id input is integrated; others (token types) stay as they are.
    tokens = tokens[:1]
    # The program's Loop needs opset 10 and static ranks; the cut model's IG folds without.
    if not needs_folding(engine.model) and _reads_ids_alone(engine.model, tokens[0]):
        tolerance = tolerance_for(n_steps, delta_tolerance)
        if n_steps != AUTO:
            return _in_graph(engine, feeds, target, tokens[0], n_steps, rule, baseline_token,
                             internal_batch_size, tolerance)
        check_auto_rule(rule, "layer_integrated_gradients")
        axes = engine.model.batch.of_inputs

        def run(rows, chosen, order):
            return _in_graph(engine, take(feeds, axes, rows), chosen, tokens[0], order, rule,
                             baseline_token, internal_batch_size, tolerance)

        return auto_steps(run, target, batch_size(feeds, axes), axes, tolerance,
                          "layer integrated gradients")
    # IG on the cut model runs n_steps=auto itself.
    return _on_cut_model(engine, feeds, target, tokens, n_steps, rule, baseline_token,
                         internal_batch_size, delta_tolerance)


def _reads_ids_alone(model: Model, source: Source) -> bool:
    """Whether `source`'s embedding is computed from its ids alone (walked once per model)."""
    key = f"embedding reads its ids alone: {source.tensor}"
    if key not in model.derived:
        model.derived[key] = lookup_inputs(model.proto.graph.node, source.tensor,
                                           [spec.name for spec in model.inputs]) == {source.input}
    return model.derived[key]


def _in_graph(engine, feeds, target, source: Source, n_steps, rule, baseline_token,
              internal_batch_size, tolerance) -> MethodOutput:
    """The exported program (export.tokens) run in-process: per-token scores as it sums
    them, the per-feature values at the embedding, and its convergence delta, warned here."""

    options = {"n_steps": int(n_steps), "rule": rule,
               "baseline_token": baseline_token_id(baseline_token),
               "internal_batch_size": loop_rows(engine, feeds, internal_batch_size)}
    # The Loop runs every step in one call: the bar moves when the rows are done.
    with progress_bar(engine.progress, int(n_steps), "integrated gradients", "step") as bar:
        run = graph_run(engine, "layer_integrated_gradients", feeds, target, [source],
                        options, read=(EMBEDDING, "convergence_delta", SCORE, BASELINE_SCORE),
                        specialise=False)
        bar.update(int(n_steps))
    clean, base = (run.post[name].astype(np.float64) for name in (SCORE, BASELINE_SCORE))
    # The program's delta counts padding too (before it is zeroed): its sum is the one checked.
    total = run.post["convergence_delta"].astype(np.float64) + clean - base
    delta = convergence_delta({source.tensor: total[:, None]}, clean, base, tolerance, rule)
    return MethodOutput(run, {source.tensor: run.post[EMBEDDING]},
                        at_inputs={source.input: run.grads[source.tensor]},
                        extras={"convergence_delta": delta})


def _on_cut_model(engine, feeds, target, tokens, n_steps, rule, baseline_token,
                  internal_batch_size, tolerance) -> MethodOutput:
    """Integrated Gradients (its Loop) on the model cut at the embedding, for an embedding
    computed from other inputs too (the program's lookup takes the ids alone)."""
    name = tokens[0].tensor
    embedded = engine.forward(feeds, taps=[name])
    baselines = _baselines(engine, feeds, tokens, embedded, baseline_token)
    cut_feeds = {**feeds, name: embedded[name]}
    cut = _cut_engine(engine, name)
    result = integrated_gradients(cut, cut_feeds, target, cut.sources, n_steps=n_steps,
                                  rule=rule, baseline=baselines, baseline_value=0.0,
                                  internal_batch_size=internal_batch_size,
                                  delta_tolerance=tolerance)
    layers = find_attention(engine.model)
    for source in tokens:
        value = result.at_sources[source.tensor]
        if value.ndim >= 2 and layers:
            mask = padding_mask(feeds, layers, value.shape[0], value.shape[1])
            result.at_sources[source.tensor] = value * mask.reshape(
                *mask.shape, *(1,) * (value.ndim - 2)).astype(value.dtype)
    return MethodOutput(result.run, result.at_sources, extras=result.extras,
                        notes=result.notes)


def _baselines(engine, feeds, tokens, embedded, baseline_token) -> dict[str, np.ndarray]:
    token = baseline_token_id(baseline_token)
    if token < 0:  # as the exported method's -1
        return {s.tensor: np.zeros_like(embedded[s.tensor]) for s in tokens}
    replaced = dict(feeds)
    for source in tokens:
        replaced[source.input] = np.full_like(feeds[source.input], token)
    values = engine.forward(replaced, taps=[s.tensor for s in tokens])
    return {s.tensor: values[s.tensor] for s in tokens}


register(MethodSpec(
    name="layer_integrated_gradients",
    run=layer_integrated_gradients,
    summary="integrated gradients over token embeddings, summed per token (text models)",
    reference="Sundararajan, Taly, Yan 2017, arXiv:1703.01365 (layer form as in Captum)",
    family="gradient",
    options=(N_STEPS, RULE,
             integer("baseline_token", -1, "token id put in place of every token for the "
                     "baseline (negative or None: a zero embedding)", none=True),
             INTERNAL_BATCH_SIZE, DELTA_TOLERANCE),
    work=path_work,
))
