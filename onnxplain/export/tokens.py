"""Layer Integrated Gradients baked into the graph, for token models: the path runs over the
embedding of the first token-id input (its lookup's output), as in-process
(methods.layer_integrated_gradients), in a Loop (export.loop); one score per token."""

from __future__ import annotations

import numpy as np
from onnx import helper

from ..errors import InputError
from ..graph.attention import find_attention
from ..graph.cut import cut_at
from ..graph.shapes import TensorInfo
from ..graph.sources import find_sources
from ..graph.walk import ancestors, lookup_inputs, rename_reads
from .attention import real_tokens
from .graph import ExplainerGraph
from .loop import gradient_loop
from .methods import (
    ATTRIBUTION,
    declare_completeness,
    path_points,
    path_walk,
    register_export,
)

# The program's output of the attributions per embedding feature.
EMBEDDING = "embedding_attribution"


def baseline_token_id(baseline_token) -> int:
    """The baseline token id, -1 for a zero embedding (None, "zeros", a negative id)."""
    if baseline_token is None or (isinstance(baseline_token, str)
                                  and baseline_token.strip().lower() in ("", "none", "zeros")):
        return -1
    try:
        token = int(baseline_token)
    except (TypeError, ValueError):
        raise InputError(f"baseline_token must be a token id, got '{baseline_token}'") from None
    return max(token, -1)


@register_export("layer_integrated_gradients", ("n_steps", "rule", "baseline_token",
                                               "internal_batch_size"))
def layer_integrated_gradients(eg: ExplainerGraph, options: dict) -> None:
    """IG from the embedding of `baseline_token` put in place of every token (-1: a zero
    embedding) to the input's embedding, summed over the embedding features per token, zero
    on padding (the inputs the attention masks are computed from). The in-process method
    runs this program (methods.layer_integrated_gradients), reading the per-feature values
    (EMBEDDING), the convergence delta (before padding is zeroed) and the scores."""
    b = eg.b
    tokens = [source for source in find_sources(eg.model)[0] if source.per_token]
    if not tokens:
        raise InputError("layer_integrated_gradients attributes token-id inputs at their "
                         "embedding, and this model has none (use integrated_gradients)")
    ids, tensor = tokens[0].input, tokens[0].tensor
    tensor = (eg.sources or {}).get(ids, tensor)  # in-process: the explainer's (attribute_at)
    alphas, weights = path_points(int(options["n_steps"]), options["rule"])
    per_run = int(options["internal_batch_size"])
    token = baseline_token_id(options["baseline_token"])
    nodes = eg.take_model_nodes()
    _look_up_both(eg, nodes, ids, tensor, token)
    end = eg.block(tensor, 0)
    start = b.zeros_like(end) if token < 0 else eg.block(tensor, 1)
    for name in (end, start):
        b.infos[name] = b.info(tensor)
    body = cut_at(eg.model, tensor)
    clean = {spec.name: b.concat([spec.name, spec.name], 0) for spec in body.inputs
             if spec.name != tensor}
    clean[tensor] = b.concat([end, start], 0)
    difference = b.op("Sub", end, start)
    walk = path_walk(eg, body, alphas, weights, clean, {tensor: start}, {tensor: difference})
    (summed,) = gradient_loop(eg, walk, per_run)
    per_feature = b.op("Mul", difference, summed)
    features = list(range(b.rank(ids), b.rank(tensor)))
    declare_completeness(eg, {tensor: per_feature})
    mask = _padding(eg, ids)
    if mask is not None:
        mask = b.op("Cast", b.unsqueeze(mask, features), to=b.dtype(tensor))
        per_feature = b.op("Mul", per_feature, mask)
    eg.declare(per_feature, EMBEDDING, f"float [N, S, ...]: layer integrated gradients at "
               f"the embedding '{tensor}' per feature (0 on padding)", b.info(tensor))
    scores = b.reduce("ReduceSum", per_feature, features, False)
    eg.declare(scores, ATTRIBUTION + ids, f"layer integrated gradients at the embedding "
               f"'{tensor}', summed per token of input '{ids}' (0 on padding)",
               TensorInfo(b.dtype(tensor), b.info(ids).shape))


def _look_up_both(eg: ExplainerGraph, nodes, ids: str, tensor: str, token: int) -> None:
    """Put the lookup's nodes back, run on [ids; the baseline token everywhere] (the ids
    again for a zero baseline): `tensor` then holds both embeddings, 2N rows."""
    b = eg.b
    lookup = ancestors(nodes, [tensor])
    read = lookup_inputs(nodes, tensor, [spec.name for spec in eg.model.inputs])
    if read != {ids}:
        raise InputError(f"layer integrated gradients needs the embedding of '{ids}' "
                         f"alone, and '{tensor}' is computed from other inputs too "
                         f"({', '.join(sorted(read - {ids}))}): name the lookup's output "
                         "with attribute_at")
    dtype = np.dtype(helper.tensor_dtype_to_np_dtype(b.dtype(ids)))
    baseline = ids if token < 0 else b.op("Expand", b.const(np.array(token, dtype)),
                                          b.shape(ids))
    both = b.concat([ids, baseline], 0)
    b.infos[both] = b.info(ids)
    rename_reads(lookup, {ids: both})
    eg.proto.graph.node.extend(lookup)


def _padding(eg: ExplainerGraph, ids: str) -> str | None:
    """bool [N, S]: the real tokens of ids [N, S] by the masks the attention layers read
    (export.attention.real_tokens), as in process (methods._tokens.padding_mask)."""
    if eg.b.rank(ids) != 2:  # masks line up with ids [N, S] only (in process too)
        return None
    names = [name for layer in find_attention(eg.model) for name in layer.mask_inputs]
    return real_tokens(eg, names, eg.b.dim(ids, 1))
