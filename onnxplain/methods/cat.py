"""CAT and AttnCAT (Qiang, Pan, Li, Zhu 2022, "AttCAT: explaining transformers via attentive
class activation tokens", arXiv:2209.14212).

With h_l the hidden state that attention layer l reads (the residual stream: the embeddings
for the first layer, the previous layer's output after it), g_l the gradient of the explained
score w.r.t. h_l, H heads and the features of h_l split into H head slices:

    CAT(i)     = sum_l E_h ( sum_{d in head h} g_l[i, d] h_l[i, d] )
    AttnCAT(i) = sum_l E_h ( A_l[h, query, i] * sum_{d in head h} g_l[i, d] h_l[i, d] )

so AttnCAT weighs each head's share of token i's gradient x activation by how much the query
(class) token attends to i in that head. Scores are signed.

One program each, export.cat's (the one `export` saves), run here by methods._graph.
"""

from __future__ import annotations

from ..export.attention import QUERY_ROW
from ..export.cat import (
    LAYER,
    PATCHES,
    TOKENS,
    hidden_states,
    query_row,
    static_grid,
    static_tokens,
)
from ..graph.attention import attention_layers
from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from ._layer import image_sources
from .attention_flow import query_read, readable_layers
from .options import attention_options


def _run(method: str, engine, feeds, target, sources, options: dict) -> MethodOutput:
    found = attention_layers(engine.model, options["attention"])
    layers = readable_layers(engine, feeds, found, method)  # window attention etc. skipped
    if len(layers) < len(found):  # the program reads these, numbered from 0
        options = {**options, "attention": [layer.probabilities for layer in layers]}
        layers = attention_layers(engine.model, options["attention"])
    hidden_states(layers)  # refused before anything is built
    text = [s for s in sources if s.per_token and feeds[s.input].ndim == 2]
    grid = None if text else static_grid(engine.model, layers)
    tokens = feeds[text[0].input].shape[1] if text else static_tokens(engine.model, layers)
    query = query_row(options["query"], bool(text) or bool(grid and grid[0]), tokens)
    at = text or (image_sources(engine.model) if grid else [])
    read = (TOKENS, PATCHES, QUERY_ROW, *(f"{LAYER}{layer.index}" for layer in layers))
    run = graph_run(engine, method, feeds, target, at, options, read=read)
    tensors = dict(run.post)
    rows = tensors.pop(QUERY_ROW, None)  # "auto" over token ids: the graph's choice
    if query is not None and query < 0:
        query += tensors[TOKENS].shape[1]
    extras = {"layers": [layer.as_dict() for layer in layers],
              "query": query_read(rows, query)}
    return MethodOutput(run, at_inputs={s.input: run.grads[s.tensor] for s in at},
                        tensors=tensors, extras=extras)


def cat(engine, feeds, target, sources, *, attention=None, query="auto",
        upsample: str = "bilinear"):
    """Class activation tokens: sum over layers of the per-token gradient x hidden state."""
    return _run("cat", engine, feeds, target, sources,
                {"attention": attention, "query": query, "upsample": upsample})


def attncat(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear"):
    """CAT with each head's share weighted by the query token's attention to the token."""
    return _run("attncat", engine, feeds, target, sources,
                {"attention": attention, "query": query, "upsample": upsample})


_REFERENCE = "Qiang, Pan, Li, Zhu 2022 (AttCAT), arXiv:2209.14212"
register(MethodSpec("cat", cat, "gradient x hidden state per token, summed over layers",
                    _REFERENCE, "attention", attention_options()))
register(MethodSpec("attncat", attncat, "CAT weighted by the class token's attention per "
                    "head", _REFERENCE, "attention", attention_options()))
