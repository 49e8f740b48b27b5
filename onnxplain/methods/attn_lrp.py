"""AttnLRP (Achtibat et al. 2024): LRP with rules for softmax, products of activations and
normalisations, for transformers (encoders and causal decoders) and any other model."""

from __future__ import annotations

from . import MethodOutput, MethodSpec, register
from ._graph import graph_run
from .lrp import conservation


def attn_lrp(engine, feeds, target, sources):
    """Relevance of each input value, R_x = x * g, with g the gradient of the target score
    modified by AttnLRP's rules (rules.attn_lrp): the identity rule on elementwise
    nonlinearities (R_x = R_y), the uniform rule on products of activations (Q K^T,
    attention x V, gates: each operand gets R / 2), LayerNorm and RMSNorm with their scale
    held constant, and the gradient elsewhere, which in this Gradient x Input form is the
    epsilon rule on linear layers and the paper's rule R_x = x (R_y - s sum R_y) on softmax.
    The relevance given is the explained score (the target logit).

    For token ids x is the embedding vector and each token gets the sum over the embedding
    axis. extras: "output_relevance" and "input_relevance" (per row) and their ratio
    "conservation" (biases, LayerNorm shifts and the mask absorb a share).
    """
    run = graph_run(engine, "attn_lrp", feeds, target, sources, {},
                    read=("output_relevance",))
    values = dict(run.grads)
    return MethodOutput(run, values, extras=conservation(run, values))


register(MethodSpec(
    name="attn_lrp",
    run=attn_lrp,
    summary="AttnLRP: relevance through softmax, attention products and normalisations "
            "(conservation in extras)",
    reference="Achtibat et al. 2024, ICML, arXiv:2402.05602",
    family="gradient",
))
