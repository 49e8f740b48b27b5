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

"auto" over token ids reads, in the graph (export.attention._auto_row, as export does), each
row's last real token where the model is causal (the explained position), else token 0. With a KV
cache the maps are [Tq, P + Tq]: the P cached keys are inputs of this step, so each layer's
matrix gets P rows that keep them as they are (identity rows once the residual is added) and
becomes square; the scores of the P cached positions come back summed as one block
(extras 'cached_block', 'cached_positions'), the map covers the Tq new tokens. Under a
next-token objective the gradient and relevance passes start from a copy of the model's tail
after the last attention layer that holds the explained position alone (export/explained_row).

Each method is one graph (export.attention), the program `export` saves: here the layers,
the query row and the token layout are resolved from the inputs (with their warnings and
checks), the program runs through methods._graph, and its outputs are wrapped.
"""

from __future__ import annotations

from dataclasses import replace

from ..export import explained_row as row_copy
from ..export.attention import (
    ACTIVE,
    ATTENTION_OUTPUTS,
    CACHED_BLOCK,
    HEAD_RELEVANCE,
    LAYER_MAP,
    PATCHES,
    QUERY_ROW,
    READING,
    ROW_COPY,
    TOKENS,
)
from ..export.attention_graph import Reading
from ..export.methods import ATTRIBUTION
from ..graph.attention import attention_layers, layer_index, probabilities
from ..graph.attention_layouts import readable
from ..images import image_inputs
from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from ._tokens import map_sizes, resolve_query, settled_auto_row, token_layout
from .options import Option, attention_options, start_layer_option

FORWARD_ONLY = ("raw_attention", "rollout")


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


def _explain(engine, feeds, target, sources, method: str, *, attention, query,
             upsample: str, start_layer: int = 0, last_only: bool = False,
             signed: bool = True) -> MethodOutput:
    """Run `method`'s one graph (export.attention) with what it reads resolved from the
    inputs here: the readable layers, the query row (`last_only`: resolved on the last
    layer alone), the token layout; wrap its outputs."""

    layers = readable_layers(engine, feeds, attention_layers(engine.model, attention), method)
    start = layer_index(start_layer, len(layers))
    rows = resolve_query(engine, feeds, sources, layers[-1:] if last_only else layers[start:],
                         query, method)
    layout = token_layout(feeds, sources, rows.tokens, "mean" if rows.query is None
                          else rows.query)
    # "auto" over token ids: a causal model's last real token in each row (the explained
    # position), else the class token; settled here where the inputs decide it for every row
    # as export's in-graph rule would (AUTO_ROW, left to the graph otherwise).
    query = settled_auto_row(engine, feeds, layers, rows.tokens) if rows.last else layout.query
    reading = Reading(query, layout.prefix, layout.grid, layout.text_inputs, rows.past > 0)
    options = {"attention": tuple(probabilities(layers)), "upsample": upsample,
               "start_layer": start, READING: reading,
               ACTIVE: tuple(s.tensor for s in sources),
               ROW_COPY: row_copy.explained_row(target, layers[-1].probabilities) is not None}
    names = [*ATTENTION_OUTPUTS, *(f"{LAYER_MAP}{i}" for i in range(len(layers))),
             *(ATTRIBUTION + name for name in (*layout.text_inputs, *image_inputs(engine.model)))]
    # Forward-only methods run the generic program, as the model's own forward runs: ONNX
    # Runtime lays out a quantized model's ops differently for static shapes (maps off 1e-4).
    run = graph_run(engine, method, feeds, target, (), options, read=names,
                    specialise=method not in FORWARD_ONLY)
    found = run.post
    at_inputs = {name[len(ATTRIBUTION):]: value for name, value in found.items()
                 if name.startswith(ATTRIBUTION)}
    tensors = {name: value for name, value in found.items()
               if name in (TOKENS, PATCHES) or name.startswith(LAYER_MAP)}
    info = {"layers": [layer.as_dict() for layer in layers],
            "query": query_read(found.get(QUERY_ROW), layout.query),
            "patch_grid": list(layout.grid) if layout.grid else None}
    notes = []
    if CACHED_BLOCK in found:
        info.update(cached_positions=rows.past, cached_block=found[CACHED_BLOCK].tolist())
        if rows.tokens == 1:
            notes.append(f"one new token after {rows.past} cached positions: its own entry is "
                         "0 as every query's is; what it reads from the cache is extras "
                         "'cached_block'")
    if HEAD_RELEVANCE in found:
        info["head_relevance"] = found[HEAD_RELEVANCE].tolist()
    return MethodOutput(replace(run, post={}), at_inputs=at_inputs, tensors=tensors,
                        extras=info, signed=signed, notes=notes)


def query_read(rows, query: int | None) -> int | list[int] | str:
    """extras 'query': the row read (one per row where the graph chose them and they
    differ), or 'mean'."""
    if rows is not None:
        found = [int(r) for r in rows]
        return found[0] if len(set(found)) == 1 else found
    return query if query is not None else "mean"


def raw_attention(engine, feeds, target, sources, *, attention=None, query="auto",
                  upsample: str = "bilinear"):
    """E_h A_L[query, :] of the last layer; every layer's maps as tensors 'attention/L'."""
    return _explain(engine, feeds, target, sources, "raw_attention", attention=attention,
                    query=query, upsample=upsample, signed=False)


def rollout(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear", start_layer: int = 0):
    """Attention rollout: prod_l normalise(I + E_h A_l), read at the query row."""
    return _explain(engine, feeds, target, sources, "rollout", attention=attention,
                    query=query, upsample=upsample, start_layer=start_layer, signed=False)


def partial_lrp(engine, feeds, target, sources, *, attention=None, query="auto",
                upsample: str = "bilinear"):
    """E_h R_L[query, :]: the LRP relevance of the last layer's attention map. extras hold
    each head's total relevance ('head_relevance', [N, heads]), Voita et al.'s head ranking."""
    return _explain(engine, feeds, target, sources, "partial_lrp", attention=attention,
                    query=query, upsample=upsample, last_only=True)


def transformer_attribution(engine, feeds, target, sources, *, attention=None, query="auto",
                            upsample: str = "bilinear", start_layer: int = 0):
    """Rollout of I + E_h (G_l * R_l)+ (Chefer, Gur, Wolf 2021a)."""
    return _explain(engine, feeds, target, sources, "transformer_attribution",
                    attention=attention, query=query, upsample=upsample,
                    start_layer=start_layer, signed=False)


def generic_attention(engine, feeds, target, sources, *, attention=None, query="auto",
                      upsample: str = "bilinear"):
    """R = I; R <- R + E_h (G_l * A_l)+ R for each layer (Chefer, Gur, Wolf 2021b)."""
    return _explain(engine, feeds, target, sources, "generic_attention", attention=attention,
                    query=query, upsample=upsample, signed=False)


def attgrad(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear"):
    """prod_l E_h (G_l * A_l), later layers on the left, without clamping (Grad-SAM's
    gradient-weighted attention, multiplied across layers)."""
    return _explain(engine, feeds, target, sources, "attgrad", attention=attention,
                    query=query, upsample=upsample)


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
