"""Independent float64 PyTorch oracles for transformer explanation methods.

Pure functions over a Hugging Face ``BertForSequenceClassification`` (post-LayerNorm encoder,
tanh pooler, classifier) or ``ViTForImageClassification`` (pre-LayerNorm encoder, final
LayerNorm, classifier on the CLS token), or over a wrapper module whose ``.model`` is one.
Every call works on a float64 deep copy in eval mode; the caller's model is never touched.

Notation: A_l [N, H, S, S] is layer l's post-softmax attention (l = 1..L), G_l = d y / d A_l
with y = sum over rows of logit[row, target[row]] (rows are independent), h_l [N, S, D] the
residual stream that layer l reads (HF ``hidden_states[l-1]``) and g_l = d y / d h_l. Token 0
(CLS) is the query; every per-token result is [N, S] with padded tokens and the CLS entry 0.

Methods: raw attention; rollout (Abnar & Zuidema, ACL 2020, in the form of Chefer et al.'s
``compute_rollout_attention``); generic attention explainability (Chefer, Gur, Wolf, ICCV
2021); AttGrad; CAT and AttnCAT (Qiang et al., "AttCAT", NeurIPS 2022); LRP relevance of the
attention maps, partial LRP (Voita et al., ACL 2019) and transformer attribution (Chefer, Gur,
Wolf, "Transformer interpretability beyond attention visualization", CVPR 2021), with the
alpha=1, beta=0 LRP rules written out by hand below.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

CLS = 0
SUPPORTED = ("BertForSequenceClassification", "ViTForImageClassification")
_ATTENTION = "onnxplain_reference_eager64"
_LINEAR_ROLES = ("q", "k", "v", "o", "fc1", "fc2")
# float64 for the oracle; float32 only to measure how far float32 arithmetic alone drifts.
PRECISION = {"dtype": torch.float64}


@contextlib.contextmanager
def precision(dtype: torch.dtype):
    """Run the reference in another dtype (float32: the drift of float32 arithmetic)."""
    previous, PRECISION["dtype"] = PRECISION["dtype"], dtype
    try:
        yield
    finally:
        PRECISION["dtype"] = previous


# --------------------------------------------------------------------------- model plumbing


def _eager64_attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
                       attention_mask: Tensor | None, scaling: float | None = None,
                       dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """HF's eager attention with the softmax kept in the working dtype.

    ViT's eager attention runs its softmax in float32 even for a float64 model, which would
    cap this oracle at ~1e-7 relative precision; BERT's already matches this function.
    """
    if module.training or dropout:
        raise RuntimeError("the reference attention runs in eval mode only")
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = torch.matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probs = torch.softmax(scores, dim=-1)
    context = torch.matmul(probs, value)
    trace = getattr(module, "_reference_trace", None)
    if trace is not None:
        trace.append({"q": query, "k": key, "v": value, "a": probs, "ctx": context})
    return context.transpose(1, 2).contiguous(), probs


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    # A new key next to "eager": nothing registered by others changes. The mask creator must
    # be registered too, or transformers builds no padding mask at all for an unknown key.
    AttentionInterface.register(_ATTENTION, _eager64_attention)
    AttentionMaskInterface.register(_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def unwrap(model: nn.Module) -> nn.Module:
    """The HF classification model: ``model`` itself or its ``.model`` attribute."""
    hf = model if type(model).__name__ in SUPPORTED else getattr(model, "model", None)
    if type(hf).__name__ not in SUPPORTED:
        raise TypeError(f"expected one of {SUPPORTED} or a module whose .model is one, "
                        f"got {type(model).__name__}")
    return hf


def float64_model(model: nn.Module) -> nn.Module:
    """A float64, eval-mode deep copy of the HF model, on the float64 eager attention."""
    hf = copy.deepcopy(unwrap(model)).to(PRECISION["dtype"]).eval()
    _register_attention()
    hf.config._attn_implementation = _ATTENTION
    return hf


@dataclass(frozen=True)
class _Layer:
    block: nn.Module
    attention: nn.Module  # the module that the attention function receives
    q: nn.Linear
    k: nn.Linear
    v: nn.Linear
    o: nn.Linear
    fc1: nn.Linear
    fc2: nn.Linear
    mlp_residual: nn.Module  # its input is `a`, the stream that the MLP's residual Add reads


def _architecture(hf: nn.Module) -> tuple[list[_Layer], list[nn.Linear]]:
    """The encoder layers, and the head's Linear layers in forward order."""
    if type(hf).__name__ == "BertForSequenceClassification":
        layers = [_Layer(block, block.attention.self, block.attention.self.query,
                         block.attention.self.key, block.attention.self.value,
                         block.attention.output.dense, block.intermediate.dense,
                         block.output.dense, block.intermediate.dense)
                  for block in hf.bert.encoder.layer]
        return layers, [hf.bert.pooler.dense, hf.classifier]
    layers = [_Layer(block, block.attention, block.attention.q_proj, block.attention.k_proj,
                     block.attention.v_proj, block.attention.o_proj, block.mlp.fc1,
                     block.mlp.fc2, block.layernorm_after)
              for block in hf.vit.layers]
    return layers, [hf.classifier]


@dataclass
class _Capture:
    hidden: list[Tensor] = field(default_factory=list)  # h_l, the input of layer l
    residual: list[Tensor] = field(default_factory=list)  # a_l, read by the MLP residual Add
    linear: dict[tuple[int, str], tuple[Tensor, Tensor]] = field(default_factory=dict)
    head: list[tuple[Tensor, Tensor]] = field(default_factory=list)
    traces: list[list[dict[str, Tensor]]] = field(default_factory=list)


def _run(hf: nn.Module, inputs: Mapping[str, Tensor]) -> tuple[Tensor, _Capture]:
    """Logits, and every tensor the LRP rules and the gradients need, from one forward."""
    layers, head = _architecture(hf)
    cap = _Capture()

    def keep_io(store: Any, key: Any):
        def hook(module, args, output):
            store[key] = (args[0], output)
        return hook

    def keep_input(store: list[Tensor]):
        def hook(module, args, kwargs):
            store.append(args[0] if args else kwargs["hidden_states"])
        return hook

    handles = []
    try:
        for i, layer in enumerate(layers):
            cap.traces.append([])
            layer.attention._reference_trace = cap.traces[i]
            handles.append(layer.block.register_forward_pre_hook(
                keep_input(cap.hidden), with_kwargs=True))
            handles.append(layer.mlp_residual.register_forward_pre_hook(
                keep_input(cap.residual), with_kwargs=True))
            for role in _LINEAR_ROLES:
                handles.append(getattr(layer, role).register_forward_hook(
                    keep_io(cap.linear, (i, role))))
        cap.head = [None] * len(head)
        for j, linear in enumerate(head):
            handles.append(linear.register_forward_hook(keep_io(cap.head, j)))
        with torch.enable_grad():
            logits = hf(**inputs).logits
    finally:
        for handle in handles:
            handle.remove()
        for layer in layers:
            layer.attention.__dict__.pop("_reference_trace", None)
    if len(cap.hidden) != len(layers) or any(len(t) != 1 for t in cap.traces):
        raise RuntimeError("each encoder layer and its attention must run exactly once")
    for i, (trace,) in enumerate(cap.traces):
        n, heads, s, d = trace["v"].shape
        # The map we differentiate is the one whose product with V feeds the output projection.
        if not torch.equal(trace["ctx"].transpose(1, 2).reshape(n, s, heads * d),
                           cap.linear[(i, "o")][0]):
            raise RuntimeError(f"layer {i + 1}: the output projection does not read A @ V")
    return logits, cap


def _prepare_inputs(inputs: Mapping[str, Any]) -> dict[str, Tensor]:
    prepared = {}
    for name, value in inputs.items():
        tensor = torch.as_tensor(value)
        prepared[name] = (tensor.to(PRECISION["dtype"]) if tensor.is_floating_point()
                          else tensor)
    return prepared


def _targets(target: Any, logits: Tensor) -> Tensor:
    if target is None:
        return logits.argmax(-1)
    target = torch.as_tensor(target, dtype=torch.long).reshape(-1)
    if target.numel() == 1:
        target = target.expand(logits.shape[0])
    if target.shape != logits.shape[:1]:
        raise ValueError(f"target has shape {tuple(target.shape)}, expected [{logits.shape[0]}]")
    return target.clone()


# --------------------------------------------------------------------------- LRP rules


def safe_divide(a: Tensor, b: Tensor) -> Tensor:
    """Chefer et al.'s safe_divide: a / (b + 1e-9 sign-ish), and 0 where b == 0."""
    den = b.clamp(min=1e-9) + b.clamp(max=1e-9)
    den = den + (den == 0).to(b.dtype) * 1e-9
    return a / den * (b != 0).to(b.dtype)


def lrp_linear(x: Tensor, weight: Tensor, relevance: Tensor) -> Tensor:
    """Alpha=1, beta=0 rule of y = x W^T + b, bias excluded.

    z = x+ W+^T + x- W-^T, S = R / z, R_x = x+ (S W+) + x- (S W-). Every term of z is >= 0,
    so sum R_x = sum R wherever z > 0.
    """
    xp, xn = x.clamp(min=0), x.clamp(max=0)
    wp, wn = weight.clamp(min=0), weight.clamp(max=0)
    s = safe_divide(relevance, xp @ wp.T + xn @ wn.T)
    return xp * (s @ wp) + xn * (s @ wn)


def lrp_add(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Chefer's residual Add rule, normalised per batch row so that R_a + R_b sums to R."""
    s = safe_divide(relevance, a + b)
    a_rel, b_rel = a * s, b * s
    dims = tuple(range(1, relevance.dim()))
    a_sum, b_sum = a_rel.sum(dims, keepdim=True), b_rel.sum(dims, keepdim=True)
    total = relevance.sum(dims, keepdim=True)
    both = a_sum.abs() + b_sum.abs()
    a_fact = safe_divide(a_sum.abs(), both) * total
    b_fact = safe_divide(b_sum.abs(), both) * total
    return a_rel * safe_divide(a_fact, a_sum), b_rel * safe_divide(b_fact, b_sum)


def lrp_matmul(left: Tensor, right: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Rule of a product of two activations Z = left @ right, relevance split in halves.

    S = R / Z, R_left = left * (S right^T) / 2, R_right = right * (left^T S) / 2; each half
    sums to sum(R) / 2 (Chefer et al. divide both by 2 in their attention relprop).
    """
    s = safe_divide(relevance, left @ right)
    return (left * (s @ right.transpose(-1, -2)) / 2,
            right * (left.transpose(-1, -2) @ s) / 2)


def _attention_relprop(trace: dict[str, Tensor],
                       r_ctx: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
    """R_A and the relevance of the q, k, v projections' outputs ([N, S, D] each)."""
    q, k, v, a = trace["q"], trace["k"], trace["v"], trace["a"]
    n, heads, s, d = v.shape
    r_a, r_v = lrp_matmul(a, v, r_ctx.view(n, s, heads, d).transpose(1, 2))
    # Softmax, mask add and scaling pass R_A unchanged to the scores Q @ K^T.
    r_q, r_kt = lrp_matmul(q, k.transpose(-1, -2), r_a)

    def merge(r: Tensor) -> Tensor:
        return r.transpose(1, 2).reshape(n, s, heads * d)

    return r_a, {"q": merge(r_q), "k": merge(r_kt.transpose(-1, -2)), "v": merge(r_v)}


LRP_STEPS = ("output", "mlp_out", "mlp_residual", "attention_out", "context", "attention",
             "q", "k", "v", "input")
"""Keys of each layer's LRP steps: the relevance of the layer output, the MLP output y2,
the stream a read by the MLP (both branches summed), the attention output o, the merged
context A @ V [N, S, D], R_l [N, H, S, S], the q / k / v projections' outputs [N, S, D]
and the layer input h_l."""


def _layer_relprop(layer: _Layer, cap: _Capture, i: int, relevance: Tensor) -> dict[str, Tensor]:
    """The relevance of every step of a layer (see LRP_STEPS), from its output down.

    One walk fits both layouts because LayerNorm passes relevance unchanged: BERT's
    out = LN2(fc2(.) + a), a = LN1(o + h); ViT's out = fc2(.) + a, a = o + h.
    """
    io = {role: cap.linear[(i, role)] for role in _LINEAR_ROLES}
    steps = {"output": relevance}
    steps["mlp_out"], r_a = lrp_add(io["fc2"][1], cap.residual[i], relevance)
    r_inner = lrp_linear(io["fc2"][0], layer.fc2.weight, steps["mlp_out"])  # GELU passes R
    steps["mlp_residual"] = r_a + lrp_linear(io["fc1"][0], layer.fc1.weight, r_inner)
    steps["attention_out"], r_h = lrp_add(io["o"][1], cap.hidden[i], steps["mlp_residual"])
    steps["context"] = lrp_linear(io["o"][0], layer.o.weight, steps["attention_out"])
    steps["attention"], projections = _attention_relprop(cap.traces[i][0], steps["context"])
    for role in ("q", "k", "v"):  # fan-out of the stream: relevances add up
        steps[role] = projections[role]
        r_h = r_h + lrp_linear(io[role][0], getattr(layer, role).weight, projections[role])
    steps["input"] = r_h
    return steps


def _relprop(hf: nn.Module, cap: _Capture, target: Tensor,
             classes: int) -> list[dict[str, Tensor]]:
    """Chefer et al.'s LRP from a one-hot seed down to the first layer's attention."""
    layers, head = _architecture(hf)
    relevance = nn.functional.one_hot(target, classes).to(PRECISION["dtype"])
    for linear, (x, _) in zip(reversed(head), reversed(cap.head), strict=True):
        relevance = lrp_linear(x, linear.weight, relevance)  # tanh / LayerNorm pass it
    stream = torch.zeros_like(cap.hidden[0])
    stream[:, CLS] = relevance  # the head reads token 0 only
    steps = []
    for i in reversed(range(len(layers))):
        steps.insert(0, _layer_relprop(layers[i], cap, i, stream))
        stream = steps[0]["input"]
    return steps


# --------------------------------------------------------------------------- raw pieces


@dataclass
class ReferencePieces:
    """The float64 tensors every method is computed from (lists run over layers 1..L)."""

    logits: Tensor  # [N, C]
    target: Tensor  # [N]
    mask: Tensor  # [N, S] float64, 1 for real tokens
    attentions: list[Tensor]  # A_l [N, H, S, S]
    attention_grads: list[Tensor]  # G_l = d y / d A_l
    hidden: list[Tensor]  # h_l [N, S, D], the input of layer l (HF hidden_states[l-1])
    hidden_grads: list[Tensor]  # g_l = d y / d h_l, total derivative
    relevances: list[Tensor] | None  # R_l [N, H, S, S], Chefer LRP of A_l
    # LRP relevance at h_1 .. h_L and at the last layer's output (L + 1 tensors [N, S, D]).
    stream_relevances: list[Tensor] | None
    lrp_steps: list[dict[str, Tensor]] | None  # per layer, keyed as in LRP_STEPS


def reference_pieces(model: nn.Module, inputs: Mapping[str, Any], target: Any = None,
                     lrp: bool = True) -> ReferencePieces:
    """A_l, G_l, h_l, g_l, logits, target and, if ``lrp``, R_l, the relevance at every h_l
    and every LRP step of every layer: all float64 and detached, from one forward.

    ``inputs``: BERT ``input_ids`` [N, S] (``attention_mask``, ``token_type_ids`` optional),
    ViT ``pixel_values`` [N, 3, H, W]. ``target``: class per row, an int for all rows, or
    None for the predicted class.
    """
    hf = float64_model(model)
    inputs = _prepare_inputs(inputs)
    logits, cap = _run(hf, inputs)
    target = _targets(target, logits.detach())
    attentions = [trace[0]["a"] for trace in cap.traces]
    objective = logits.gather(1, target[:, None]).sum()
    # autograd.grad raises if a map is not in the graph of the logits.
    grads = torch.autograd.grad(objective, [*attentions, *cap.hidden])
    attention_grads, hidden_grads = grads[:len(attentions)], grads[len(attentions):]
    for layer, g in enumerate(attention_grads, 1):
        if not bool(g.abs().sum() > 0):
            raise RuntimeError(f"layer {layer}: the logit does not depend on the attention map")
    n, s = attentions[0].shape[0], attentions[0].shape[-1]
    mask = inputs.get("attention_mask")
    dtype = PRECISION["dtype"]
    mask = torch.ones(n, s, dtype=dtype) if mask is None else mask.to(dtype)
    relevances = streams = steps = None
    if lrp:
        with torch.no_grad():
            cap = _detached(cap)
            steps = _relprop(hf, cap, target, logits.shape[-1])
        relevances = [step["attention"] for step in steps]
        streams = [step["input"] for step in steps] + [steps[-1]["output"]]
    return ReferencePieces(
        logits=logits.detach(), target=target, mask=mask,
        attentions=[a.detach() for a in attentions],
        attention_grads=[g.detach() for g in attention_grads],
        hidden=[h.detach() for h in cap.hidden], hidden_grads=[g.detach() for g in hidden_grads],
        relevances=relevances, stream_relevances=streams, lrp_steps=steps)


def _detached(cap: _Capture) -> _Capture:
    return _Capture(
        hidden=[h.detach() for h in cap.hidden], residual=[a.detach() for a in cap.residual],
        linear={key: (x.detach(), y.detach()) for key, (x, y) in cap.linear.items()},
        head=[(x.detach(), y.detach()) for x, y in cap.head],
        traces=[[{name: t.detach() for name, t in trace[0].items()}] for trace in cap.traces])


def _tokens(scores: Tensor, mask: Tensor) -> Tensor:
    """Zero the padded tokens and the CLS query itself."""
    scores = scores * mask
    scores[:, CLS] = 0
    return scores


# --------------------------------------------------------------------------- rollout helpers


def augment(maps: list[Tensor]) -> list[Tensor]:
    """Â_l = I + M_l with rows renormalised, for head-reduced maps M_l [N, S, S]."""
    eye = torch.eye(maps[0].shape[-1], dtype=maps[0].dtype)
    augmented = [m + eye for m in maps]
    return [m / m.sum(dim=-1, keepdim=True) for m in augmented]


def rollout_product(matrices: list[Tensor], start_layer: int = 0) -> Tensor:
    """Â_L ... Â_{start+1} (``start_layer`` 0-based, the later layer on the left)."""
    joint = matrices[start_layer]
    for matrix in matrices[start_layer + 1:]:
        joint = matrix @ joint
    return joint


# --------------------------------------------------------------------------- methods
# Each method is a function of the pieces (so one forward serves all of them), with a
# model-level wrapper below.


def raw_attention_scores(p: ReferencePieces) -> Tensor:
    """mean_h A_L[:, :, 0, :]: the last layer's head-averaged attention of CLS."""
    return _tokens(p.attentions[-1][:, :, CLS].mean(1), p.mask)


def rollout_scores(p: ReferencePieces, start_layer: int = 0) -> Tensor:
    """Attention rollout (Abnar & Zuidema 2020): Â_l = norm(I + mean_h A_l),
    R = Â_L ... Â_{start+1}, scores = R[:, 0, :]."""
    joint = rollout_product(augment([a.mean(1) for a in p.attentions]), start_layer)
    return _tokens(joint[:, CLS], p.mask)


def generic_attention_scores(p: ReferencePieces) -> Tensor:
    """Chefer, Gur, Wolf (ICCV 2021): R = I; R += mean_h clamp(G_l * A_l, 0) @ R for
    l = 1..L; scores = R[:, 0, :]."""
    n, s = p.mask.shape
    joint = torch.eye(s, dtype=p.mask.dtype).expand(n, s, s)
    for a, g in zip(p.attentions, p.attention_grads, strict=True):
        joint = joint + (g * a).clamp(min=0).mean(1) @ joint
    return _tokens(joint[:, CLS], p.mask)


def attgrad_scores(p: ReferencePieces) -> Tensor:
    """E = Ā_L ... Ā_1 with Ā_l = mean_h (G_l * A_l), no clamp; scores = E[:, 0, :]."""
    maps = [(g * a).mean(1) for a, g in zip(p.attentions, p.attention_grads, strict=True)]
    return _tokens(rollout_product(maps)[:, CLS], p.mask)


def cat_scores(p: ReferencePieces) -> Tensor:
    """CAT (Qiang et al. 2022): sum_l (1/H) sum_d g_l[i, d] h_l[i, d]."""
    heads = p.attentions[0].shape[1]
    total = sum((g * h).sum(-1) for h, g in zip(p.hidden, p.hidden_grads, strict=True))
    return _tokens(total / heads, p.mask)


def attncat_scores(p: ReferencePieces) -> Tensor:
    """AttnCAT (Qiang et al. 2022): sum_l (1/H) sum_h A_l[h, 0, i] *
    sum_{d in head h's slice} g_l[i, d] h_l[i, d]."""
    total = torch.zeros_like(p.mask)
    for a, h, g in zip(p.attentions, p.hidden, p.hidden_grads, strict=True):
        n, s, width = h.shape
        heads = a.shape[1]
        per_head = (g * h).view(n, s, heads, width // heads).sum(-1)  # [N, S, H]
        total = total + (a[:, :, CLS] * per_head.transpose(1, 2)).sum(1) / heads
    return _tokens(total, p.mask)


def partial_lrp_scores(p: ReferencePieces) -> Tensor:
    """Partial LRP (Voita et al. 2019, as in Chefer et al.): mean_h R_L[:, :, 0, :]."""
    return _tokens(p.relevances[-1][:, :, CLS].mean(1), p.mask)


def transformer_attribution_scores(p: ReferencePieces, start_layer: int = 0) -> Tensor:
    """Chefer, Gur, Wolf (CVPR 2021): Â_l = norm(I + mean_h clamp(G_l * R_l, 0)), rolled
    out as in rollout; scores = R[:, 0, :]."""
    maps = [(g * r).clamp(min=0).mean(1)
            for r, g in zip(p.relevances, p.attention_grads, strict=True)]
    return _tokens(rollout_product(augment(maps), start_layer)[:, CLS], p.mask)


SCORES = {
    "raw_attention": raw_attention_scores, "rollout": rollout_scores,
    "generic_attention": generic_attention_scores, "attgrad": attgrad_scores,
    "cat": cat_scores, "attncat": attncat_scores, "partial_lrp": partial_lrp_scores,
    "transformer_attribution": transformer_attribution_scores,
}
"""Per-token methods by name, each a function of :class:`ReferencePieces`."""


def raw_attention(model: nn.Module, inputs: Mapping[str, Any]) -> Tensor:
    """See :func:`raw_attention_scores`."""
    return raw_attention_scores(reference_pieces(model, inputs, lrp=False))


def rollout(model: nn.Module, inputs: Mapping[str, Any], start_layer: int = 0) -> Tensor:
    """See :func:`rollout_scores`."""
    return rollout_scores(reference_pieces(model, inputs, lrp=False), start_layer)


def generic_attention(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> Tensor:
    """See :func:`generic_attention_scores`."""
    return generic_attention_scores(reference_pieces(model, inputs, target, lrp=False))


def attgrad(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> Tensor:
    """See :func:`attgrad_scores`."""
    return attgrad_scores(reference_pieces(model, inputs, target, lrp=False))


def cat(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> Tensor:
    """See :func:`cat_scores`."""
    return cat_scores(reference_pieces(model, inputs, target, lrp=False))


def attncat(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> Tensor:
    """See :func:`attncat_scores`."""
    return attncat_scores(reference_pieces(model, inputs, target, lrp=False))


def chefer_lrp(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> list[Tensor]:
    """R_l [N, H, S, S] for l = 1..L: Chefer, Gur, Wolf (CVPR 2021) LRP, alpha=1, beta=0,
    seeded with the one-hot target at the logits; R_l = A * (S V^T) / 2 at A @ V."""
    return reference_pieces(model, inputs, target).relevances


def partial_lrp(model: nn.Module, inputs: Mapping[str, Any], target: Any = None) -> Tensor:
    """See :func:`partial_lrp_scores`."""
    return partial_lrp_scores(reference_pieces(model, inputs, target))


def transformer_attribution(model: nn.Module, inputs: Mapping[str, Any], target: Any = None,
                            start_layer: int = 0) -> Tensor:
    """See :func:`transformer_attribution_scores`."""
    return transformer_attribution_scores(reference_pieces(model, inputs, target), start_layer)


# --------------------------------------------------------------------------- decoders
# Pieces shared by the causal-LM references (explaining the next token at one position).


def lrp_product(a: Tensor, b: Tensor, relevance: Tensor) -> tuple[Tensor, Tensor]:
    """Chefer et al.'s rule of an elementwise product of two activations z = a * b (a SwiGLU
    gate times the up projection): each operand gets half of its proportional share,
    a * b * (R / z) / 2, which is R / 2 wherever z != 0."""
    half = a * b * safe_divide(relevance, a * b) / 2
    return half, half.clone()


def query_scores(attention_grads: list[Tensor], relevances: list[Tensor],
                 query: int) -> dict[str, Tensor]:
    """Transformer Attribution (rollout of normalise(I + mean_h clamp(G_l * R_l, 0))) and
    partial LRP (mean_h R_L), both read at row `query` of the maps [N, S], its own entry 0."""
    maps = [(g * r).clamp(min=0).mean(1) for g, r in zip(attention_grads, relevances,
                                                          strict=True)]
    scores = {"transformer_attribution": rollout_product(augment(maps))[:, query],
              "partial_lrp": relevances[-1].mean(1)[:, query]}
    for value in scores.values():
        value[:, query] = 0
    return scores
