"""AttnLRP (Achtibat et al., "AttnLRP: Attention-Aware Layer-Wise Relevance Propagation for
Transformers", ICML 2024) as an independent float64 PyTorch oracle, written from the paper.

The rules run in the Gradient x Input form: the explained logit is seeded with gradient 1,
every op passes a (modified) gradient g back, and the relevance of a tensor x is x * g. Each
rule below is the paper's LRP rule rewritten as the gradient that gives that relevance:

- linear layers, residual and bias adds, masks, constant scaling, rotary embeddings,
  reshapes and the softmax keep the ordinary gradient (for the softmax, x * grad is the
  paper's rule R_i = x_i (R_i - s_i sum_j R_j));
- elementwise activations f (GELU, tanh GELU, SiLU, tanh, ReLU): identity rule (eq. 9),
  g_in = g_out * f(x) / (x + 1e-10);
- products of two activations (Q K^T, A @ V, SwiGLU's act(gate) * up, CLIP's image x text
  embeddings): uniform rule (eq. 7), each operand's gradient halved, so Q and K get 1/4 of
  the ordinary gradient, V 1/2; a product with one operand constant (DETR's first
  cross-attention, whose object queries do not depend on the image) is a linear layer and
  keeps the gradient;
- LayerNorm: the standard deviation held constant (the mean subtraction is kept); RMSNorm:
  rsqrt(mean(x^2) + eps) held constant; CLIP's L2 normalisation: the norm held constant.

The relevance of the input is, for token models, the word embeddings (the inputs_embeds)
times their modified gradient, summed over the hidden axis ([N, S]); for image models
pixel_values times its modified gradient (its shape); a KV cache's relevance is summed per
row over its keys and values (``Relevance.cached``).

Models: any Hugging Face model whose attention goes through ``AttentionInterface`` (BERT,
ViT, GPT-2, Llama, Qwen2, Swin, SegFormer, DETR, CLIP, BART in transformers 5), or a
wrapper whose ``.model`` is one. Classifiers explain logit[row, target]; causal LMs
([N, S, V] logits) explain the next-token logit at each row's last non-padding position;
outputs scored per position (token tags, DETR's queries) explain sum(logits * seed); CLIP
(model_zoo's clip_tiny) the logit of image i against text i. Every call works on a deep
copy in the working dtype (torch_reference.PRECISION: float64, or float32 to measure float32
drift) whose modules are patched per instance; the caller's model is never touched.
``cond_cnn`` is the same rules on model_zoo's control-flow CNN.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .torch_reference import PRECISION, _prepare_inputs, _targets, precision

__all__ = ["EPSILON", "Relevance", "attn_lrp", "attn_lrp_model", "cond_cnn", "precision",
           "unwrap", "zero_biases"]

EPSILON = 1e-10  # LXT's stabiliser of f(x) / x in the identity rule
_ATTENTION = "onnxplain_attn_lrp_reference"
_TORCH_ACTIVATIONS = (nn.GELU, nn.Tanh, nn.SiLU, nn.ReLU, nn.Sigmoid, nn.Mish)


# --------------------------------------------------------------------------- rules


class _IdentityRule(torch.autograd.Function):
    """z = f(x) elementwise, with dz/dx replaced by f(x) / x: R_x = x g_in = z g_out."""

    @staticmethod
    def forward(ctx, x: Tensor, fn: Callable[[Tensor], Tensor]) -> Tensor:
        z = fn(x)
        ctx.save_for_backward(z / (x + EPSILON))
        return z

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (ratio,) = ctx.saved_tensors
        return grad * ratio, None


class _HalveGradient(torch.autograd.Function):
    """Identity forward, gradient halved backward. Placed on the output of a bilinear
    product z(a, b) it halves both operands' gradients: a g_a = b g_b = z g / 2."""

    @staticmethod
    def forward(ctx, z: Tensor) -> Tensor:
        return z.view_as(z)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return grad / 2


@dataclass(frozen=True)
class _Rules:
    on: bool  # False: every rule is the ordinary gradient (the reference's self-check)

    def identity(self, fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
        return _IdentityRule.apply(x, fn) if self.on else fn(x)

    def uniform(self, product: Tensor, *operands: Tensor) -> Tensor:
        """The uniform rule where every operand depends on the input; with one (DETR's
        first cross-attention: constant object queries against the image's keys) the
        product is a linear layer, whose rule is the gradient."""
        active = all(t.requires_grad for t in operands)
        return _HalveGradient.apply(product) if self.on and active else product

    def constant(self, t: Tensor) -> Tensor:
        return t.detach() if self.on else t


# --------------------------------------------------------------------------- patches


def _layer_norm_forward(module: nn.LayerNorm, rules: _Rules) -> Callable[[Tensor], Tensor]:
    if len(module.normalized_shape) != 1:
        raise NotImplementedError("LayerNorm over more than the last axis")

    def forward(x: Tensor) -> Tensor:
        centred = x - x.mean(-1, keepdim=True)
        std = (centred.pow(2).mean(-1, keepdim=True) + module.eps).sqrt()
        y = centred / rules.constant(std)
        if module.weight is not None:
            y = y * module.weight
        return y if module.bias is None else y + module.bias
    return forward


def _rms_norm_forward(module: nn.Module, rules: _Rules) -> Callable[[Tensor], Tensor]:
    # Also drops HF's float32 upcast, which would cap a float64 reference at ~1e-7.
    def forward(x: Tensor) -> Tensor:
        scale = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + module.variance_epsilon)
        return module.weight * (x * rules.constant(scale))
    return forward


def _activation_forward(module: nn.Module, rules: _Rules) -> Callable[[Tensor], Tensor]:
    original = module.forward
    return lambda x: rules.identity(original, x)


def _gated_mlp_forward(module: nn.Module, rules: _Rules) -> Callable[[Tensor], Tensor]:
    # module.act_fn is patched on its own (identity rule); the gate product is uniform.
    def forward(x: Tensor) -> Tensor:
        gate, up = module.act_fn(module.gate_proj(x)), module.up_proj(x)
        gated = rules.uniform(gate * up, gate, up)
        return module.down_proj(gated)
    return forward


def _tanh_head_forward(module: nn.Module, rules: _Rules) -> Callable[[Tensor], Tensor]:
    # BART's classification head calls torch.tanh, not a module (eval: no dropout).
    return lambda x: module.out_proj(rules.identity(torch.tanh, module.dense(x)))


def _is_activation(module: nn.Module) -> bool:
    from transformers import activations

    return (isinstance(module, _TORCH_ACTIVATIONS)
            or type(module).__module__ == activations.__name__)


def _patch(hf: nn.Module, rules: _Rules) -> None:
    """Give every norm, activation and gated MLP of ``hf`` (a copy) its rule."""
    for module in hf.modules():
        if isinstance(module, nn.LayerNorm):
            module.forward = _layer_norm_forward(module, rules)
        elif type(module).__name__.endswith("RMSNorm"):
            module.forward = _rms_norm_forward(module, rules)
        elif _is_activation(module):
            module.forward = _activation_forward(module, rules)
        elif all(hasattr(module, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn")):
            module.forward = _gated_mlp_forward(module, rules)
        elif type(module).__name__.endswith("ClassificationHead"):
            if not all(hasattr(module, n) for n in ("dense", "out_proj")):
                raise NotImplementedError(f"{type(module).__name__}'s activation")
            module.forward = _tanh_head_forward(module, rules)
    for module in _attention_modules(hf):
        module._attn_lrp_rules = rules  # read by _attention, which gets the module
    hf._attn_lrp_rules = rules  # read by model-level products (_clip_pairs)


# --------------------------------------------------------------------------- attention


def _attention(module: nn.Module, query: Tensor, key: Tensor, value: Tensor,
               attention_mask: Tensor | None, scaling: float | None = None,
               dropout: float = 0.0, **kwargs: Any) -> tuple[Tensor, Tensor]:
    """Eager attention in the working dtype, with the uniform rule on both products.

    Grouped-query heads are repeated as HF's repeat_kv does (a copy: gradients add up)."""
    if module.training or dropout:
        raise RuntimeError("the reference attention runs in eval mode only")
    rules, trace = module._attn_lrp_rules, module._attn_lrp_trace
    groups = getattr(module, "num_key_value_groups", 1)
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = rules.uniform(query @ key.transpose(-1, -2), query, key) * scaling
    masked = scores if attention_mask is None else scores + attention_mask
    probs = torch.softmax(masked, dim=-1)
    context = rules.uniform(probs @ value, probs, value)
    trace.append((scores, probs))
    return context.transpose(1, 2).contiguous(), probs


def _register_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    # A key of its own beside "eager"; its mask creator too, or transformers builds none.
    AttentionInterface.register(_ATTENTION, _attention)
    AttentionMaskInterface.register(_ATTENTION, ALL_MASK_ATTENTION_FUNCTIONS["eager"])


def unwrap(model: nn.Module) -> nn.Module:
    """The Hugging Face model: ``model`` itself or its ``.model`` attribute."""
    from transformers import PreTrainedModel

    hf = model if isinstance(model, PreTrainedModel) else getattr(model, "model", None)
    if not isinstance(hf, PreTrainedModel):
        raise TypeError(f"expected a transformers model or a module whose .model is one, "
                        f"got {type(model).__name__}")
    return hf


def attn_lrp_model(model: nn.Module, rules: bool = True) -> nn.Module:
    """An eval-mode deep copy in the working dtype with the AttnLRP rules (``rules=False``:
    the same patched code with ordinary gradients)."""
    hf = copy.deepcopy(unwrap(model)).to(PRECISION["dtype"]).eval()
    hf.requires_grad_(False)  # so that requires_grad marks what depends on the input
    _register_attention()
    hf.config._attn_implementation = _ATTENTION
    _patch(hf, _Rules(rules))
    return hf


# --------------------------------------------------------------------------- relevance


@dataclass
class Relevance:
    """One AttnLRP explanation (every tensor detached, in the working dtype)."""

    maps: dict[str, Tensor]  # per attributed input: [N, S] per token, or like pixel_values
    score: Tensor  # [N] the explained score (the relevance put in)
    target: Tensor  # [N] (empty under a seed)
    positions: Tensor | None  # [N] the explained position of a causal LM, else None
    # [N] sum over every attention softmax of (relevance out - relevance in), that is
    # sum p * g_p - sum x * g_x with x the scaled scores before the mask is added: what the
    # softmax rule does not conserve (the bias term of its first-order Taylor expansion).
    softmax_deficit: Tensor
    cached: Tensor | None = None  # [N] a KV cache's relevance, summed over its tensors

    @property
    def input(self) -> Tensor:
        """The map of the one attributed input."""
        (only,) = self.maps.values()
        return only


def _last_real_positions(inputs: Mapping[str, Tensor], n: int, s: int) -> Tensor:
    mask = inputs.get("attention_mask")
    if mask is None:
        return torch.full((n,), s - 1, dtype=torch.long)
    return s - 1 - mask.flip(1).to(torch.long).argmax(1)


def attn_lrp(model: nn.Module, inputs: Mapping[str, Any], target: Any = None,
             rules: bool = True, seed: Any = None) -> Relevance:
    """AttnLRP relevance of the inputs for logit[row, target[row]] (a causal LM: the logit
    of token target[row] at the row's last non-padding position; with ``seed``, an array
    shaped like the logits: sum(logits * seed) per row, the dense objective of sequence
    outputs).

    ``inputs``: token ids (``input_ids`` [N, S], ``attention_mask``, ``token_type_ids``),
    ``pixel_values`` [N, C, H, W], or both (CLIP); a KV cache as ``past_key_<layer>`` and
    ``past_value_<layer>`` [N, heads, P, head size], whose relevance is summed into
    ``cached``. ``target``: class (or next token) per row, one int for all rows, or None
    for the argmax. ``rules=False``: plain input x gradient.
    """
    inputs = _prepare_inputs(inputs)
    leaves, logits, traces = _run(attn_lrp_model(model, rules), inputs)
    positions = None
    if seed is not None or logits.dim() == 1:  # a seed, or one value per row (CLIP)
        target = torch.zeros(0, dtype=torch.long)
        weights = torch.ones(()) if seed is None else torch.as_tensor(seed)
        score = (logits * weights.to(logits.dtype)).reshape(len(logits), -1).sum(1)
    else:
        if logits.dim() == 3:  # a causal LM: the next token at the last real position
            positions = _last_real_positions(inputs, *logits.shape[:2])
            logits = logits[torch.arange(len(positions)), positions]
        target = _targets(target, logits.detach())
        score = logits.gather(1, target[:, None])[:, 0]
    scores, probs = zip(*traces, strict=True)
    names = list(leaves)
    # None (no gradient) for the scores and probabilities of an attention whose queries
    # and keys are constants (DETR's first decoder self-attention).
    wrt = [*leaves.values(), *scores, *probs]
    found = iter(torch.autograd.grad(score.sum(), [t for t in wrt if t.requires_grad]))
    grads = [next(found) if t.requires_grad else None for t in wrt]
    relevance = {n: leaves[n] * g for n, g in zip(names, grads, strict=False)}
    grads = grads[len(names):]
    maps = {n: (r if n == "pixel_values" else r.sum(-1)).detach()
            for n, r in relevance.items() if not n.startswith("past_")}
    rows = len(score)
    cached = [_row_sum(r, rows) for n, r in relevance.items() if n.startswith("past_")]
    deficit = sum((_row_sum(p * gp, rows) - _row_sum(s * gs, rows) for s, p, gs, gp in zip(
        scores, probs, grads[:len(scores)], grads[len(scores):], strict=True)
        if gs is not None and gp is not None), torch.zeros_like(score))
    return Relevance(maps=maps, score=score.detach(), target=target, positions=positions,
                     softmax_deficit=deficit.detach(),
                     cached=sum(cached).detach() if cached else None)


def _run(hf: nn.Module, inputs: dict[str, Tensor]
         ) -> tuple[dict[str, Tensor], Tensor, list[tuple[Tensor, Tensor]]]:
    """The input leaves (word embeddings as "input_ids", pixels, cached keys and values),
    the logits and each attention's (scaled scores before the mask, probabilities), from
    one forward."""
    leaves: dict[str, Tensor] = {}
    lookups: list[Tensor] = []

    def leaf_embeddings(_module, _args, output: Tensor) -> Tensor:
        lookups.append(output.detach().requires_grad_())
        leaves["input_ids"] = lookups[-1]
        return lookups[-1]

    kwargs = {k: v for k, v in inputs.items() if not k.startswith("past_")}
    if "pixel_values" in inputs:
        leaves["pixel_values"] = kwargs["pixel_values"] = inputs["pixel_values"].requires_grad_()
    past = sorted(k for k in inputs if k.startswith("past_"))
    if past:
        from transformers import DynamicCache

        cache = DynamicCache()
        for layer in range(len(past) // 2):
            for kind in ("key", "value"):
                name = f"past_{kind}_{layer}"
                leaves[name] = inputs[name].requires_grad_()
            cache.update(leaves[f"past_key_{layer}"], leaves[f"past_value_{layer}"], layer)
        kwargs.update(past_key_values=cache, use_cache=True)
    handles = []
    if "input_ids" in inputs:
        handles.append(_word_embeddings(hf).register_forward_hook(leaf_embeddings))
    modules = _attention_modules(hf)
    traces: list[list[tuple[Tensor, Tensor]]] = [[] for _ in modules]
    for module, trace in zip(modules, traces, strict=True):
        module._attn_lrp_trace = trace
    try:
        with torch.enable_grad():
            out = hf(**kwargs)
            logits = _clip_pairs(hf, out) if hasattr(hf, "logit_scale") else out.logits
    finally:
        for handle in handles:
            handle.remove()
        for module in modules:
            del module._attn_lrp_trace
    if len(lookups) != ("input_ids" in inputs) or any(len(t) != 1 for t in traces):
        raise RuntimeError("the input and each attention must run exactly once")
    order = sorted(leaves, key=lambda n: n.startswith("past_"))  # maps first, then the cache
    return {n: leaves[n] for n in order}, logits, [t[0] for t in traces]


def _word_embeddings(hf: nn.Module) -> nn.Module:
    """The token lookup that the ONNX graph's attributed Gather is: CLIP's text tower's;
    an encoder-decoder's encoder's (BART's decoder looks the shifted tokens up again in a
    module of its own sharing the table: that lookup is not attributed, as in the graph)."""
    if hasattr(hf, "text_model"):
        return hf.text_model.embeddings.token_embedding
    if hf.config.is_encoder_decoder:
        return hf.get_encoder().embed_tokens
    return hf.get_input_embeddings()


def _clip_pairs(hf: nn.Module, out: Any) -> Tensor:
    """CLIP's logit of image i against text i (model_zoo's clip_tiny): the projected pooled
    outputs L2-normalised with the norm held constant (the identity rule of a
    normalisation), their product under the uniform rule, times exp(logit_scale)."""
    rules = hf._attn_lrp_rules

    def unit(x: Tensor) -> Tensor:
        return x / rules.constant(x.norm(dim=-1, keepdim=True))

    image = unit(out.vision_model_output.pooler_output)  # projected already
    text = unit(out.text_model_output.pooler_output)
    return hf.logit_scale.exp() * rules.uniform(image * text, image, text).sum(-1)


def _attention_modules(hf: nn.Module) -> list[nn.Module]:
    """The modules that call the attention function: the ones with q / k / v projections
    (or GPT-2's fused c_attn)."""
    names = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("c_attn",))
    found = [m for m in hf.modules()
             if any(all(isinstance(getattr(m, n, None), nn.Module) for n in group)
                    for group in names)]
    if not found:
        raise TypeError(f"no attention module found in {type(hf).__name__}")
    return found


def _row_sum(t: Tensor, rows: int) -> Tensor:
    """Per row of the batch (Swin's windows are batched as rows x windows)."""
    return t.reshape(rows, -1).sum(1)


def zero_biases(model: nn.Module) -> nn.Module:
    """A copy with every bias, LayerNorm beta and additive embedding (positions, token
    types, ViT's CLS token) zeroed: all that is left are weights, norms' scales and RoPE,
    so the relevance put in must come out at the inputs (less the softmax deficit)."""
    hf = copy.deepcopy(unwrap(model))
    words = hf.get_input_embeddings()
    with torch.no_grad():
        for name, parameter in hf.named_parameters():
            module = hf.get_submodule(name.rsplit(".", 1)[0]) if "." in name else hf
            additive = (isinstance(module, nn.Embedding) and module is not words) or \
                name.endswith(("cls_token", "position_embeddings"))
            if name.endswith(".bias") or additive:
                parameter.zero_()
    return hf


def cond_cnn(model: nn.Module, image: Any, target: Any = None) -> Relevance:
    """AttnLRP on model_zoo's cond_cnn (no transformer: a conv stem, then the head that
    torch.cond picks by the sign of the batch's mean): the stem keeps its gradient (convs,
    ReLU, average pooling), `bright` = 3 tanh(linear) takes the identity rule on tanh,
    `dark` = linear(f * f) the uniform rule on f * f."""
    rules = _Rules(True)
    module = copy.deepcopy(model).to(PRECISION["dtype"]).eval().requires_grad_(False)
    x = torch.as_tensor(image).to(PRECISION["dtype"]).requires_grad_()
    features = module.stem(x)
    if x.mean() >= 0:
        logits = 3.0 * rules.identity(torch.tanh, module.bright(features))
    else:
        logits = module.dark(rules.uniform(features * features, features, features))
    target = _targets(target, logits.detach())
    score = logits.gather(1, target[:, None])[:, 0]
    (g,) = torch.autograd.grad(score.sum(), [x])
    return Relevance(maps={"image": (x * g).detach()}, score=score.detach(), target=target,
                     positions=None, softmax_deficit=torch.zeros_like(score))
