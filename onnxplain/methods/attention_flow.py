"""Explanations read from attention maps, their gradients and their LRP relevance.

With A_l the attention probabilities of layer l ([batch, heads, tokens, tokens]), G_l the
gradient of the explained score w.r.t. A_l, R_l the relevance of A_l under the LRP of Chefer et
al. (rules/chefer.py, seeded with the one-hot target), E_h the mean over heads and (.)+ the
positive part, every method returns one score per token, read from the class-token row
(`query`), with padded tokens and the query token's own entry set to zero:

- raw_attention: E_h A_L of the last layer (all layers and heads are returned as tensors).
- rollout (Abnar and Zuidema 2020): I + E_h A_l, rows renormalised, multiplied from
  `start_layer` up, the later layer on the left.
- partial_lrp (Voita et al. 2019): E_h R_L of the last layer; head relevance in extras.
- transformer_attribution (Chefer et al. 2021a): I + E_h (G_l * R_l)+ rolled out likewise.
- generic_attention (Chefer et al. 2021b): R = I, then R = R + E_h (G_l * A_l)+ R per layer.
- attgrad (Barkan et al. 2021, Grad-SAM): the product of E_h (G_l * A_l), no clamping and
  no identity, in the same order as rollout.

A causal model reads the row of the explained position (the last non-padding one). With a KV
cache the maps are [Tq, P + Tq]: the P cached keys are inputs of this step, so each layer's
matrix gets P rows that keep them as they are (identity rows once the residual is added) and
becomes square; the scores of the P cached positions come back summed as one block
(extras 'cached_block', 'cached_positions'), the map covers the Tq new tokens. Under a
next-token objective the gradient and relevance passes start from a copy of the model's tail
after the last attention layer that holds the explained position alone (_explained_row).
"""

from __future__ import annotations

import numpy as np

from ..autodiff import POST_PREFIX
from ..autodiff.program import Pass
from ..engine import GradientRun
from ..graph.attention_layouts import readable
from ..rules.chefer import CHEFER
from . import MethodOutput, MethodSpec, register
from ._attention_graph import (
    RELEVANCE,
    ROW,
    attention_mean,
    chain_post,
    gradient_times_attention,
    gradient_times_relevance,
)
from ._common import clean_run, explicit_target
from ._explained_row import explained_row
from ._tokens import (
    Rows,
    attention_layers,
    layer_index,
    layer_stack,
    map_sizes,
    padding_mask,
    probabilities,
    read_row,
    resolve_query,
    split_cached,
    token_layout,
    token_output,
)
from .options import Option, attention_options, start_layer_option

_POSITIVE_GXA = gradient_times_attention(positive=True)
_SIGNED_GXA = gradient_times_attention(positive=False)


def _finish(feeds, sources, run: GradientRun, layers, scores: np.ndarray, rows: Rows,
            upsample: str, tensors: dict | None = None, extras: dict | None = None,
            signed: bool = True) -> MethodOutput:
    """Map [N, P + S] scores (or [N, S, P + S] token matrices, read at the query row) onto
    the inputs, the P cached positions as one block; `signed` False for methods whose scores
    cannot be negative."""
    scores = np.asarray(scores, dtype=np.float64)
    count, tokens = scores.shape[0], scores.shape[-1] - rows.past
    layout = token_layout(feeds, sources, tokens, "mean" if rows.query is None else rows.query)
    if scores.ndim == 3:
        scores = read_row(scores, layout)
    scores, mask, block = split_cached(scores, padding_mask(feeds, layers, count,
                                                            tokens + rows.past), rows.past)
    at_inputs, out_tensors = token_output(feeds, scores, layout, mask, upsample)
    out_tensors.update(tensors or {})
    info = {"layers": [layer.as_dict() for layer in layers],
            "query": layout.query if layout.query is not None else "mean",
            "patch_grid": list(layout.grid) if layout.grid else None}
    notes = []
    if block is not None:
        info.update(cached_positions=rows.past, cached_block=block.tolist())
        if tokens == 1:
            notes.append(f"one new token after {rows.past} cached positions: its own entry is "
                         "0 as every query's is; what it reads from the cache is extras "
                         "'cached_block'")
    info.update(extras or {})
    return MethodOutput(run, at_inputs=at_inputs, tensors=out_tensors, extras=info,
                        signed=signed, notes=notes)


def relevance_pass(layers, sources) -> Pass:
    """R_l for every layer under Chefer et al.'s LRP. Activations are what depends on the
    sources (not only on the maps), so that a residual sum splits relevance between both
    its branches in the first layer too."""
    return Pass(RELEVANCE, CHEFER, tuple(probabilities(layers)),
                tuple(s.tensor for s in sources))


def readable_layers(engine, feeds, layers, method: str) -> list:
    """The layers of the explained sequence (graph/attention_layouts): window attention,
    pooled keys, cross-attention and decoders skipped with a warning naming them, refused
    when none is left. Shapes of one row, from shape inference when it knows them all."""
    def shapes():
        batch = engine.model.inputs[0].dims[0] if engine.model.inputs[0].dims else None
        static = [engine.model.infos[p].shape if p in engine.model.infos else None
                  for p in probabilities(layers)]
        if isinstance(batch, str) and all(
                s and len(s) == 4 and s[0] == batch and all(isinstance(d, int) for d in s[1:])
                for s in static):
            return [(1, *s[1:]) for s in static]
        return map_sizes(engine, feeds, layers)  # one probe, shared with resolve_query
    return readable(engine.model, layers, shapes, method)


def _chain(engine, feeds, target, sources, *, attention, query, upsample: str,
           start_layer: int, name: str, weighting, step: str, reads: str,
           signed: bool) -> MethodOutput:
    """A method chained over layers in the graph (see _attention_graph); `reads` is what the
    weighting needs besides the maps: "nothing" (one forward run), "gradients", or
    "relevance" (the gradients and Chefer et al.'s LRP, as a second pass of the same run)."""
    layers = readable_layers(engine, feeds, attention_layers(engine.model, attention), name)
    start = layer_index(start_layer, len(layers))
    rows = resolve_query(engine, feeds, sources, layers[start:], query, name)
    post = chain_post(name, probabilities(layers), start, weighting, step, rows.query,
                      cached=rows.past > 0)
    if reads == "nothing":
        values = engine.forward(feeds, post=post)
        outputs = {spec.name: values[spec.name] for spec in engine.model.outputs}
        run = clean_run(outputs, explicit_target(engine, outputs, target), engine)
        scores = values[POST_PREFIX + ROW]
    else:
        passes = [relevance_pass(layers, sources)] if reads == "relevance" else []
        # The objective reads one position: the backward passes start from it alone.
        run = engine.gradients(feeds, target, probabilities(layers), passes=passes, post=post,
                               pre=explained_row(target, probabilities(layers)[-1]))
        scores = run.post[ROW]
    return _finish(feeds, sources, run, layers, scores, rows, upsample, signed=signed)


def raw_attention(engine, feeds, target, sources, *, attention=None, query="auto",
                  upsample: str = "bilinear"):
    """E_h A_L[query, :] of the last layer; every layer's maps as tensors 'attention/L'."""
    layers = readable_layers(engine, feeds, attention_layers(engine.model, attention),
                             "raw_attention")
    rows = resolve_query(engine, feeds, sources, layers, query, "raw_attention")
    values = engine.forward(feeds, taps=probabilities(layers))
    outputs = {spec.name: values[spec.name] for spec in engine.model.outputs}
    run = clean_run(outputs, explicit_target(engine, outputs, target), engine)
    maps = layer_stack(values, layers, rows.past)
    tensors = {f"attention/{i}": m.astype(np.float32) for i, m in enumerate(maps)}
    return _finish(feeds, sources, run, layers, maps[-1].mean(axis=1), rows, upsample,
                   tensors, signed=False)


def rollout(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear", start_layer: int = 0):
    """Attention rollout: prod_l normalise(I + E_h A_l), read at the query row."""
    return _chain(engine, feeds, target, sources, attention=attention, query=query,
                  upsample=upsample, start_layer=start_layer, name="rollout",
                  weighting=attention_mean, step="rollout", reads="nothing",
                  signed=False)


def partial_lrp(engine, feeds, target, sources, *, attention=None, query="auto",
                upsample: str = "bilinear"):
    """E_h R_L[query, :]: the LRP relevance of the last layer's attention map. extras hold
    each head's total relevance ('head_relevance', [N, heads]), Voita et al.'s head ranking."""
    layers = readable_layers(engine, feeds, attention_layers(engine.model, attention),
                             "partial_lrp")
    rows = resolve_query(engine, feeds, sources, layers[-1:], query, "partial_lrp")
    relevance = relevance_pass(layers[-1:], sources)
    run = engine.gradients(feeds, target, relevance.wrt, rules=CHEFER,
                           active_from=relevance.active_from,
                           pre=explained_row(target, relevance.wrt[-1]))
    last = layer_stack(run.grads, layers[-1:], rows.past)[0]
    heads = last.sum(axis=(2, 3))
    return _finish(feeds, sources, run, layers, last.mean(axis=1), rows, upsample,
                   extras={"head_relevance": heads.tolist()})


def transformer_attribution(engine, feeds, target, sources, *, attention=None, query="auto",
                            upsample: str = "bilinear", start_layer: int = 0):
    """Rollout of I + E_h (G_l * R_l)+ (Chefer, Gur, Wolf 2021a)."""
    return _chain(engine, feeds, target, sources, attention=attention, query=query,
                  upsample=upsample, start_layer=start_layer, name="transformer_attribution",
                  weighting=gradient_times_relevance, step="rollout",
                  reads="relevance", signed=False)


def generic_attention(engine, feeds, target, sources, *, attention=None, query="auto",
                      upsample: str = "bilinear"):
    """R = I; R <- R + E_h (G_l * A_l)+ R for each layer (Chefer, Gur, Wolf 2021b)."""
    return _chain(engine, feeds, target, sources, attention=attention, query=query,
                  upsample=upsample, start_layer=0, name="generic_attention",
                  weighting=_POSITIVE_GXA, step="accumulate",
                  reads="gradients", signed=False)


def attgrad(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear"):
    """prod_l E_h (G_l * A_l), later layers on the left, without clamping (Grad-SAM's
    gradient-weighted attention, multiplied across layers)."""
    return _chain(engine, feeds, target, sources, attention=attention, query=query,
                  upsample=upsample, start_layer=0, name="attgrad", weighting=_SIGNED_GXA,
                  step="product", reads="gradients", signed=True)


def _spec(name, run, summary, reference, family="attention", uses_objective=True,
          extra: tuple[Option, ...] = ()) -> MethodSpec:
    return register(MethodSpec(name=name, run=run, summary=summary, reference=reference,
                               family=family, options=(*attention_options(), *extra),
                               uses_objective=uses_objective))


_spec("raw_attention", raw_attention, "last layer's attention of the class token, mean over "
      "heads", "Bahdanau, Cho, Bengio 2015 (attention weights as explanation), "
      "arXiv:1409.0473", uses_objective=False)
_spec("rollout", rollout, "attention rolled out over layers with the residual identity",
      "Abnar, Zuidema 2020, arXiv:2005.00928", uses_objective=False,
      extra=(start_layer_option(),))
_spec("partial_lrp", partial_lrp, "LRP relevance of the last layer's attention heads",
      "Voita, Talbot, Moiseev, Sennrich, Titov 2019, arXiv:1905.09418")
_spec("transformer_attribution", transformer_attribution,
      "rollout of gradient x LRP relevance of each attention map, positive part",
      "Chefer, Gur, Wolf 2021, arXiv:2012.09838", extra=(start_layer_option(),))
_spec("generic_attention", generic_attention,
      "gradient x attention, positive part, accumulated R = R + A R over layers",
      "Chefer, Gur, Wolf 2021, arXiv:2103.15679")
_spec("attgrad", attgrad, "gradient x attention, mean over heads, multiplied across layers",
      "Barkan, Hauon, Caciularu, Katz, Malkiel, Armstrong, Koenigstein 2021 (Grad-SAM), "
      "arXiv:2204.11073")
