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

from ..errors import InputError
from ..graph.attention import token_layout_of
from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from ._layer import image_sources
from ._tokens import attention_layers, is_auto_query, query_index
from .attention_flow import readable_layers
from .options import attention_options

TOKENS, PATCHES = "tokens", "patches"  # the programs' outputs besides the attributions
LAYER = "layer/"  # and each layer's share of the scores, "layer/<index>"


def hidden_states(layers) -> list[str]:
    missing = [layer.index for layer in layers if layer.hidden is None]
    if missing:
        raise InputError(f"the hidden state read by attention layer(s) {missing} was not "
                         "found (Q, K and V must be projected from one tensor)")
    return [layer.hidden for layer in layers]


def static_tokens(model, layers) -> int | None:
    layout = token_layout_of(model, layers)
    return None if layout is None else layout["tokens"]


def static_grid(model, layers) -> tuple[int, tuple[int, int]] | None:
    """(class tokens in front, patch grid) of an image model with static shapes."""
    layout = token_layout_of(model, layers)
    if not layout or not layout.get("patch_grid"):
        return None
    return layout.get("class_tokens", 0), tuple(layout["patch_grid"])


def query_row(query, class_token: bool, tokens: int | None) -> int | None:
    """The query row read: 'auto' is the class token (0) where there is one, else the mean
    of all rows (None); a negative index counts from the end, in the graph where the token
    count is not static."""
    if is_auto_query(query):
        return 0 if class_token else None
    if tokens is None and _negative(query):
        return int(query)
    return query_index(query, tokens)


def _negative(query) -> bool:
    try:
        return int(query) < 0
    except (TypeError, ValueError):
        return False


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
    read = (TOKENS, PATCHES, *(f"{LAYER}{layer.index}" for layer in layers))
    run = graph_run(engine, method, feeds, target, at, options, read=read)
    tensors = dict(run.post)
    if query is not None and query < 0:
        query += tensors[TOKENS].shape[1]
    extras = {"layers": [layer.as_dict() for layer in layers],
              "query": query if query is not None else "mean"}
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
