"""Layer Integrated Gradients on token embeddings: the gradient baseline for text models.

Token ids cannot be interpolated, so the path integral runs over the tensor they are looked up
into (the embedding lookup's output, or the tensor named with attribute_at): the model is cut
there, that tensor becomes an input of the cut model, and Integrated Gradients runs on it
(Sundararajan et al. 2017; Captum's LayerIntegratedGradients on the embedding layer). Scores
per token are the sums over the embedding features.
"""

from __future__ import annotations

import weakref

import numpy as np
import onnx
from onnx import helper

from ..engine import Engine
from ..errors import InputError
from ..graph.attention import find_attention
from ..graph.model import Model
from ..graph.sources import Source
from . import MethodOutput, MethodSpec, register
from ._tokens import padding_mask
from .integrated_gradients import (
    INTERNAL_BATCH_SIZE,
    N_STEPS,
    RULE,
    integrated_gradients,
    path_work,
)
from .options import delta_tolerance, integer

_CUT_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def cut_at(model: Model, tensor: str) -> Model:
    """A copy of the model where `tensor` is a graph input instead of a computed value."""
    info = model.infos.get(tensor)
    if info is None or info.dtype is None:
        raise InputError(f"the type of tensor '{tensor}' is unknown; cannot cut the model there")
    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    kept = [node for node in proto.graph.node if tensor not in node.output]
    del proto.graph.node[:]
    proto.graph.node.extend(kept)
    dims = None if info.certain is None else list(info.certain)
    proto.graph.input.append(helper.make_tensor_value_info(tensor, info.dtype, dims))
    return Model(proto, model.path)


def _cut_engine(engine: Engine, tensor: str) -> Engine:
    cache = _CUT_ENGINES.setdefault(engine, {})
    if tensor not in cache:
        cut = cut_at(engine.model, tensor)
        cache[tensor] = Engine(cut, engine.providers, engine.output, [Source(tensor, tensor)],
                               engine.optimization, engine.memory_budget_mb)
    return cache[tensor]


def layer_integrated_gradients(engine, feeds, target, sources, *, n_steps: int = 50,
                               rule: str = "gausslegendre", baseline_token=None,
                               internal_batch_size: int = 0, delta_tolerance: float = 0.05):
    """IG over the embeddings of the (first) token-id input, from a baseline embedding to the
    embedding of the input. The baseline is zeros (also for a negative `baseline_token`, as
    the exported method takes -1), or the embedding of `baseline_token`, an id put in place
    of every token. Padded tokens (from the attention mask) get zero. extras hold the
    convergence delta per row, as for integrated_gradients."""
    tokens = [s for s in sources if s.per_token]
    if not tokens:
        raise InputError("layer_integrated_gradients attributes token-id inputs at their "
                         "embedding, and this model has none (use integrated_gradients)")
    # The first token-id input is integrated; others (token types) stay as they are.
    tokens = tokens[:1]
    name = tokens[0].tensor
    embedded = engine.forward(feeds, taps=[name])
    baselines = _baselines(engine, feeds, tokens, embedded, baseline_token)
    cut_feeds = {**feeds, name: embedded[name]}
    cut = _cut_engine(engine, name)
    result = integrated_gradients(cut, cut_feeds, target, cut.sources, n_steps=n_steps,
                                  rule=rule, baseline=baselines, baseline_value=0.0,
                                  internal_batch_size=internal_batch_size,
                                  delta_tolerance=delta_tolerance)
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
    zeros = {s.tensor: np.zeros_like(embedded[s.tensor]) for s in tokens}
    if baseline_token is None or (isinstance(baseline_token, str)
                                  and baseline_token.strip().lower() in ("", "none", "zeros")):
        return zeros
    try:
        token = int(baseline_token)
    except (TypeError, ValueError):
        raise InputError(f"baseline_token must be a token id, got '{baseline_token}'") from None
    if token < 0:  # as the exported method's -1
        return zeros
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
             INTERNAL_BATCH_SIZE, delta_tolerance(0.05)),
    work=path_work,
))
