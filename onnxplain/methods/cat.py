"""CAT and AttnCAT (Qiang, Pan, Li, Zhu 2022, "AttCAT: explaining transformers via attentive
class activation tokens", arXiv:2209.14212).

With h_l the hidden state that attention layer l reads (the residual stream: the embeddings
for the first layer, the previous layer's output after it), g_l the gradient of the explained
score w.r.t. h_l, H heads and the features of h_l split into H head slices:

    CAT(i)     = sum_l E_h ( sum_{d in head h} g_l[i, d] h_l[i, d] )
    AttnCAT(i) = sum_l E_h ( A_l[h, query, i] * sum_{d in head h} g_l[i, d] h_l[i, d] )

so AttnCAT weighs each head's share of token i's gradient x activation by how much the query
(class) token attends to i in that head. Scores are signed.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from . import MethodOutput, MethodSpec, register
from ._tokens import attention_layers, padding_mask, token_layout, token_output
from .options import attention_options


def _hidden_states(layers) -> list[str]:
    missing = [layer.index for layer in layers if layer.hidden is None]
    if missing:
        raise InputError(f"the hidden state read by attention layer(s) {missing} was not "
                         "found (Q, K and V must be projected from one tensor)")
    return [layer.hidden for layer in layers]


def _head_shares(g: np.ndarray, h: np.ndarray, heads: int, name: str) -> np.ndarray:
    """[N, S, D] gradient and activation -> [N, S, heads]: g * h summed per head slice."""
    if h.ndim != 3 or h.shape[-1] % heads:
        raise InputError(f"hidden state '{name}' has shape {h.shape}; CAT needs [batch, "
                         f"tokens, features] with features divisible by {heads} heads")
    product = np.asarray(g, dtype=np.float64) * np.asarray(h, dtype=np.float64)
    return product.reshape(*product.shape[:2], heads, -1).sum(axis=-1)


def _run(engine, feeds, target, sources, attention, query, upsample: str, weighted: bool
         ) -> MethodOutput:
    layers = attention_layers(engine.model, attention)
    hidden = _hidden_states(layers)
    taps = list(dict.fromkeys(hidden + ([lay.probabilities for lay in layers]
                                         if weighted else [])))
    run = engine.gradients(feeds, target, list(dict.fromkeys(hidden)), taps=taps)
    first = run.taps[hidden[0]]
    if first.ndim != 3:
        raise InputError(f"hidden state '{hidden[0]}' has shape {first.shape}; CAT needs "
                         "[batch, tokens, features]")
    rows, tokens = first.shape[:2]
    layout = token_layout(feeds, sources, tokens, query)
    total = np.zeros((rows, tokens))
    per_layer = {}
    for layer, name in zip(layers, hidden, strict=True):
        probs = run.taps.get(layer.probabilities)
        heads = layer.heads or (probs.shape[1] if probs is not None else None)
        if heads is None:
            raise InputError(f"the head count of attention layer {layer.index} is unknown")
        shares = _head_shares(run.grads[name], run.taps[name], heads, name)
        if weighted:
            attended = np.asarray(probs, dtype=np.float64)
            row = (attended.mean(axis=2) if layout.query is None
                   else attended[:, :, layout.query, :])
            shares = shares * row.transpose(0, 2, 1)
        score = shares.mean(axis=-1)
        per_layer[f"layer/{layer.index}"] = score.astype(np.float32)
        total += score
    mask = padding_mask(feeds, layers, rows, tokens)
    at_inputs, tensors = token_output(feeds, total, layout, mask, upsample)
    tensors.update(per_layer)
    extras = {"layers": [layer.as_dict() for layer in layers],
              "query": layout.query if layout.query is not None else "mean"}
    return MethodOutput(run, at_inputs=at_inputs, tensors=tensors, extras=extras)


def cat(engine, feeds, target, sources, *, attention=None, query="auto",
        upsample: str = "bilinear"):
    """Class activation tokens: sum over layers of the per-token gradient x hidden state."""
    return _run(engine, feeds, target, sources, attention, query, upsample, weighted=False)


def attncat(engine, feeds, target, sources, *, attention=None, query="auto",
            upsample: str = "bilinear"):
    """CAT with each head's share weighted by the query token's attention to the token."""
    return _run(engine, feeds, target, sources, attention, query, upsample, weighted=True)


_REFERENCE = "Qiang, Pan, Li, Zhu 2022 (AttCAT), arXiv:2209.14212"
register(MethodSpec("cat", cat, "gradient x hidden state per token, summed over layers",
                    _REFERENCE, "attention", attention_options()))
register(MethodSpec("attncat", attncat, "CAT weighted by the class token's attention per "
                    "head", _REFERENCE, "attention", attention_options()))
