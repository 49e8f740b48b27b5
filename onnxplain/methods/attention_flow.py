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
"""

from __future__ import annotations

import numpy as np

from ..autodiff import POST_PREFIX
from ..autodiff.program import Pass
from ..engine import GradientRun
from ..errors import InputError
from ..objective import last_positions, mask_inputs
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
from ._common import clean_run, explicit_target, rows_text
from ._tokens import (
    attention_layers,
    is_auto_query,
    layer_index,
    layer_stack,
    padding_mask,
    probabilities,
    read_row,
    resolve_query,
    token_layout,
    token_output,
)

_COMMON = {"attention": None, "query": "auto", "upsample": "bilinear"}
_POSITIVE_GXA = gradient_times_attention(positive=True)
_SIGNED_GXA = gradient_times_attention(positive=False)


def explained_query(engine, feeds, sources, layers, query):
    """`query` as given, except "auto" on a causal model over token ids: the explained
    position, the last non-padding one (objective.last_positions), whose row is the only
    one that sees the whole prompt (the first token's row sees itself alone)."""
    text = [feeds[s.input] for s in sources if s.per_token and feeds[s.input].ndim == 2]
    if not is_auto_query(query) or not text:
        return query
    rows, length = text[0].shape
    positions = last_positions(feeds, mask_inputs(engine.model), rows, length)
    if not _causal(engine, feeds, layers[-1], positions[0]):
        return query
    if np.any(positions != positions[0]):
        raise InputError(f"the rows end at different positions ({rows_text(range(rows))}: "
                         f"{', '.join(str(p) for p in positions[:8])}), and attention "
                         "methods read one query row per run: pad on the left, or explain "
                         "rows of the same length together")
    return int(positions[0])


def _causal(engine, feeds, layer, last: int) -> bool:
    """Whether the layer's first row attends to no later token (checked on one forward run
    of that row, at the real query positions up to `last`)."""
    # Causality is a property of the model: decided once, kept with its derived facts.
    known = engine.model.derived.setdefault("causal_layers", {})
    if layer.probabilities not in known:
        row = {name: value[:1] for name, value in feeds.items()}
        maps = engine.forward(row, taps=[layer.probabilities])[layer.probabilities]
        if maps.ndim != 4 or maps.shape[2] != maps.shape[3] or maps.shape[2] <= last:
            return False  # not decided on this input: check again next time
        later = np.triu(np.abs(np.asarray(maps[0, :, :last + 1], dtype=np.float64)), 1)
        known[layer.probabilities] = bool(np.all(later <= 1e-6))
    return known[layer.probabilities]


def _finish(feeds, sources, run: GradientRun, layers, scores: np.ndarray, query,
            upsample: str, tensors: dict | None = None, extras: dict | None = None,
            signed: bool = True) -> MethodOutput:
    """Map [N, S] scores (or [N, S, S] token matrices, read at the query row) onto the
    inputs; `signed` False for methods whose scores cannot be negative."""
    scores = np.asarray(scores, dtype=np.float64)
    rows, tokens = scores.shape[0], scores.shape[-1]
    layout = token_layout(feeds, sources, tokens, "mean" if query is None else query)
    if scores.ndim == 3:
        scores = read_row(scores, layout)
    mask = padding_mask(feeds, layers, rows, tokens)
    at_inputs, out_tensors = token_output(feeds, scores, layout, mask, upsample)
    out_tensors.update(tensors or {})
    info = {"layers": [layer.as_dict() for layer in layers],
            "query": layout.query if layout.query is not None else "mean",
            "patch_grid": list(layout.grid) if layout.grid else None}
    info.update(extras or {})
    return MethodOutput(run, at_inputs=at_inputs, tensors=out_tensors, extras=info,
                        signed=signed)


def relevance_pass(layers, sources) -> Pass:
    """R_l for every layer under Chefer et al.'s LRP. Activations are what depends on the
    sources (not only on the maps), so that a residual sum splits relevance between both
    its branches in the first layer too."""
    return Pass(RELEVANCE, CHEFER, tuple(probabilities(layers)),
                tuple(s.tensor for s in sources))


def require_square_maps(engine, feeds, layers, method: str) -> None:
    """Chained methods multiply the layers' maps and add the identity (the residual): every
    map must be [tokens, tokens] over one sequence. Raise InputError naming the layers whose
    keys differ from their queries (a KV cache, pooled keys, cross-attention); shapes that
    shape inference leaves open are read from a forward run of the first row."""
    shapes = [engine.model.infos[layer.probabilities].shape
              if layer.probabilities in engine.model.infos else None for layer in layers]
    if all(s and len(s) == 4 and s[2] == s[3] == shapes[0][2] for s in shapes):
        return
    row = {name: value[:1] for name, value in feeds.items()}
    values = engine.forward(row, taps=probabilities(layers))
    sizes = [np.shape(values[layer.probabilities]) for layer in layers]
    odd = [f"{layer.index} ('{layer.probabilities}', {size[2]} queries x {size[3]} keys)"
           for layer, size in zip(layers, sizes, strict=True)
           if len(size) == 4 and size[2] != size[3]]
    if odd:
        raise InputError(f"{method} reads square self-attention maps (tokens x tokens of one "
                         f"sequence), and the maps of layers {', '.join(odd)} are not (keys "
                         "cached, pooled or from another sequence): name square "
                         "self-attention layers with attention=...")
    layer_stack(values, layers)  # [batch, heads, tokens, tokens], one token count


def _chain(engine, feeds, target, sources, *, attention, query, upsample: str,
           start_layer: int, name: str, weighting, step: str, reads: str,
           signed: bool) -> MethodOutput:
    """A method chained over layers in the graph (see _attention_graph); `reads` is what the
    weighting needs besides the maps: "nothing" (one forward run), "gradients", or
    "relevance" (the gradients and Chefer et al.'s LRP, as a second pass of the same run)."""
    layers = attention_layers(engine.model, attention)
    start = layer_index(start_layer, len(layers))
    require_square_maps(engine, feeds, layers[start:], name)
    query = explained_query(engine, feeds, sources, layers, query)
    row = resolve_query(engine, feeds, sources, layers, query)
    post = chain_post(name, probabilities(layers), start, weighting, step, row)
    if reads == "nothing":
        values = engine.forward(feeds, post=post)
        outputs = {spec.name: values[spec.name] for spec in engine.model.outputs}
        run = clean_run(outputs, explicit_target(engine, outputs, target), engine)
        scores = values[POST_PREFIX + ROW]
    else:
        passes = [relevance_pass(layers, sources)] if reads == "relevance" else []
        run = engine.gradients(feeds, target, probabilities(layers), passes=passes, post=post)
        scores = run.post[ROW]
    return _finish(feeds, sources, run, layers, scores, row, upsample, signed=signed)


def raw_attention(engine, feeds, target, sources, *, attention=None, query="auto",
                  upsample: str = "bilinear"):
    """E_h A_L[query, :] of the last layer; every layer's maps as tensors 'attention/L'."""
    layers = attention_layers(engine.model, attention)
    require_square_maps(engine, feeds, layers, "raw_attention")
    query = explained_query(engine, feeds, sources, layers, query)
    values = engine.forward(feeds, taps=probabilities(layers))
    outputs = {spec.name: values[spec.name] for spec in engine.model.outputs}
    run = clean_run(outputs, explicit_target(engine, outputs, target), engine)
    maps = layer_stack(values, layers)
    tensors = {f"attention/{i}": m.astype(np.float32) for i, m in enumerate(maps)}
    return _finish(feeds, sources, run, layers, maps[-1].mean(axis=1), query, upsample,
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
    layers = attention_layers(engine.model, attention)
    require_square_maps(engine, feeds, layers[-1:], "partial_lrp")
    query = explained_query(engine, feeds, sources, layers, query)
    relevance = relevance_pass(layers[-1:], sources)
    run = engine.gradients(feeds, target, relevance.wrt, rules=CHEFER,
                           active_from=relevance.active_from)
    last = np.asarray(run.grads[layers[-1].probabilities], dtype=np.float64)
    heads = last.sum(axis=(2, 3))
    return _finish(feeds, sources, run, layers, last.mean(axis=1), query, upsample,
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
          **defaults) -> MethodSpec:
    return register(MethodSpec(name=name, run=run, summary=summary, reference=reference,
                               family=family, defaults={**_COMMON, **defaults},
                               uses_objective=uses_objective))


_spec("raw_attention", raw_attention, "last layer's attention of the class token, mean over "
      "heads", "Bahdanau, Cho, Bengio 2015 (attention weights as explanation), "
      "arXiv:1409.0473", uses_objective=False)
_spec("rollout", rollout, "attention rolled out over layers with the residual identity",
      "Abnar, Zuidema 2020, arXiv:2005.00928", uses_objective=False, start_layer=0)
_spec("partial_lrp", partial_lrp, "LRP relevance of the last layer's attention heads",
      "Voita, Talbot, Moiseev, Sennrich, Titov 2019, arXiv:1905.09418")
_spec("transformer_attribution", transformer_attribution,
      "rollout of gradient x LRP relevance of each attention map, positive part",
      "Chefer, Gur, Wolf 2021, arXiv:2012.09838", start_layer=0)
_spec("generic_attention", generic_attention,
      "gradient x attention, positive part, accumulated R = R + A R over layers",
      "Chefer, Gur, Wolf 2021, arXiv:2103.15679")
_spec("attgrad", attgrad, "gradient x attention, mean over heads, multiplied across layers",
      "Barkan, Hauon, Caciularu, Katz, Malkiel, Armstrong, Koenigstein 2021 (Grad-SAM), "
      "arXiv:2204.11073")
