"""Chefer et al.'s relevance rules on normalisations as the legacy torch exporter writes them
(rules/lrp_norms.py, rules/chefer.py), against float64 torch reimplementations:

- llama_tiny_legacy: RMSNorm as x * Div(1, Sqrt(ReduceMean(Pow(x, 2)) + eps)), the SwiGLU
  MLP down(silu(gate(x)) * up(x)), rotary positions and grouped-query heads. The reference
  is Chefer et al.'s LRP written from the paper for Llama's pre-norm blocks (the helpers of
  torch_reference.py): RMSNorm and the SiLU gate pass relevance, the gate's product with the
  up projection halves it between the two (a product of two activations), the rotary
  q cos + rotate_half(q) sin is a sum of two activations (Neg passes relevance unchanged),
  and the repeated key/value heads add up. The next token at the last position is explained.
- clip_tiny: the embeddings' L2 normalisation x / Pow(ReduceSum(x^2), 0.5) before the
  logit-scale dot product, the norm held as a constant scale (LayerNorm's rule), against a
  float64 reimplementation of both towers, scores read over either tower's tokens.
- Inline models: x / ||x|| with ||x|| as Pow(., 0.5), Sqrt(. + eps) or F.normalize's
  Expand(Clip(ReduceL2(x))) passes R unchanged; a norm read elsewhere is refused.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest

import onnxplain

from ..conftest import require

METHODS = ("transformer_attribution", "partial_lrp")


# ---- Llama, legacy exporter ---------------------------------------------------------------
def _rotate_back(r):
    """The relevance of x from that of rotate_half(x) = cat(-x2, x1): Neg passes it."""
    torch = require("torch")
    half = r.shape[-1] // 2
    return torch.cat((r[..., half:], r[..., :half]), dim=-1)


def _llama_forward(lm, ids):
    """Logits [N, S, V] of LlamaForCausalLM in float64 and, per block, what the LRP rules
    read (repeated key/value heads as [N, H, S, d], rotary terms before their sum)."""
    torch = require("torch")
    base, n, s = lm.model, *ids.shape
    config = lm.config
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    d = config.hidden_size // heads
    h = base.embed_tokens(ids)
    cos, sin = (t.unsqueeze(1) for t in base.rotary_emb(h, torch.arange(s)[None]))
    blocked = torch.zeros(s, s, dtype=torch.float64).masked_fill(
        ~torch.ones(s, s, dtype=torch.bool).tril(), torch.finfo(torch.float64).min)
    blocks = []
    for block in base.layers:
        att = block.self_attn
        x1 = block.input_layernorm(h)
        q, k, v = (p(x1).view(n, s, -1, d).transpose(1, 2)
                   for p in (att.q_proj, att.k_proj, att.v_proj))
        rotary = {name: (t * cos, _rotate(t) * sin) for name, t in (("q", q), ("k", k))}
        qr, kr = (sum(rotary[name]) for name in ("q", "k"))
        kr, vr = (t.repeat_interleave(heads // kv_heads, dim=1) for t in (kr, v))
        a_map = torch.softmax(qr @ kr.transpose(-1, -2) * d ** -0.5 + blocked, dim=-1)
        merged = (a_map @ vr).transpose(1, 2).reshape(n, s, -1)
        o = att.o_proj(merged)
        a = o + h
        x2 = block.post_attention_layernorm(a)
        gate, up = block.mlp.gate_proj(x2), block.mlp.up_proj(x2)
        silu = torch.nn.functional.silu(gate)
        m = block.mlp.down_proj(silu * up)
        blocks.append(dict(h=h, x1=x1, rotary=rotary, q=qr, k=kr, v=vr, A=a_map, merged=merged,
                           o=o, a=a, x2=x2, silu=silu, up=up, m=m))
        h = m + a
    top = base.norm(h)
    return lm.lm_head(top), top, blocks


def _rotary_relprop(terms, relevance):
    """Relevance of q (or k) from that of q cos + rotate_half(q) sin (Chefer's sum rule)."""
    from .torch_reference import lrp_add

    r_cos, r_sin = lrp_add(*terms, relevance)
    return r_cos + _rotate_back(r_sin)


def _llama_block_relprop(block, p, relevance, kv_heads: int):
    """(R of the block input, R_A) from the relevance of the block output."""
    from .torch_reference import lrp_add, lrp_linear, lrp_matmul, lrp_product

    n, heads, s, _ = p["A"].shape
    att, mlp = block.self_attn, block.mlp
    r_m, r_a = lrp_add(p["m"], p["a"], relevance)
    r_silu, r_up = lrp_product(p["silu"], p["up"], lrp_linear(p["silu"] * p["up"],
                                                             mlp.down_proj.weight, r_m))
    r_a = (r_a + lrp_linear(p["x2"], mlp.gate_proj.weight, r_silu)  # the SiLU gate passes R
           + lrp_linear(p["x2"], mlp.up_proj.weight, r_up))
    r_o, r_h = lrp_add(p["o"], p["h"], r_a)
    r_ctx = lrp_linear(p["merged"], att.o_proj.weight, r_o)
    r_map, r_v = lrp_matmul(p["A"], p["v"], r_ctx.view(n, s, heads, -1).transpose(1, 2))
    r_q, r_kt = lrp_matmul(p["q"], p["k"].transpose(-1, -2), r_map)

    def shared(r):  # the repeated key/value heads add up
        return r.view(n, kv_heads, heads // kv_heads, s, -1).sum(2)

    r_q = _rotary_relprop(p["rotary"]["q"], r_q)
    r_k = _rotary_relprop(p["rotary"]["k"], shared(r_kt.transpose(-1, -2)))
    for proj, r in ((att.q_proj, r_q), (att.k_proj, r_k), (att.v_proj, shared(r_v))):
        r_h = r_h + lrp_linear(p["x1"], proj.weight, r.transpose(1, 2).reshape(n, s, -1))
    return r_h, r_map


def llama_scores(module, ids: np.ndarray, target: np.ndarray) -> dict[str, np.ndarray]:
    """Transformer Attribution and partial LRP of logits[row, last, target[row]], float64."""
    torch = require("torch")
    from .torch_reference import lrp_linear, query_scores

    lm = module.model.double().eval()
    ids_t = torch.from_numpy(ids)
    logits, top, blocks = _llama_forward(lm, ids_t)
    with torch.no_grad():
        want = lm(input_ids=ids_t, use_cache=False).logits
    # The reimplementation is the Llama (measured 3.7e-8: transformers' rotary tables go
    # through float32 either way, rounded differently).
    assert torch.allclose(logits, want, atol=1e-6)
    last = ids.shape[1] - 1
    seed = torch.zeros_like(logits)
    seed[torch.arange(len(ids)), last, torch.from_numpy(target)] = 1.0
    grads = torch.autograd.grad((logits * seed).sum(), [p["A"] for p in blocks])
    with torch.no_grad():
        relevance, maps = lrp_linear(top.detach(), lm.lm_head.weight, seed), []
        for block, p in zip(reversed(lm.model.layers), reversed(blocks), strict=True):
            p = {k: _detached(v) for k, v in p.items()}
            relevance, r_map = _llama_block_relprop(block, p, relevance,
                                                    lm.config.num_key_value_heads)
            maps.insert(0, r_map)
        scores = query_scores(list(grads), maps, last)
    return {name: value.numpy() for name, value in scores.items()}


def _rotate(x):
    torch = require("torch")
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _detached(value):
    if isinstance(value, dict):
        return {k: tuple(t.detach() for t in v) for k, v in value.items()}
    return value.detach()


@pytest.mark.parametrize("method", METHODS)
def test_legacy_llama_chefer_methods_match_torch(zoo, method):
    """RMSNorm's Div(1, Sqrt(..)) is held as the statistic it is, the SwiGLU product halves
    relevance, and the scores match the float64 reference."""
    ops = [n for n in onnx.load(zoo.model_path("llama_tiny_legacy")).graph.node]
    assert "SimplifiedLayerNormalization" not in {n.op_type for n in ops}
    assert any(n.op_type == "Div" and "layernorm" in n.name for n in ops)
    feeds = zoo.sample("llama_tiny_legacy")
    explainer = onnxplain.Explainer(str(zoo.model_path("llama_tiny_legacy")), "cpu",
                                    progress=False)
    result = explainer.explain(feeds, method)
    assert result.extras["query"] == feeds["input_ids"].shape[1] - 1
    want = llama_scores(zoo.load_torch("llama_tiny_legacy"), feeds["input_ids"],
                        np.asarray(result.target))[method]
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert scale.min() > 0
    error = np.abs(result.tensors["tokens"] - want).max(axis=1, keepdims=True) / scale
    assert error.max() < 1e-5, error.ravel()  # measured 8.3e-7


# ---- CLIP, both towers ---------------------------------------------------------------------
def _clip_tower(layers, h, mask=None):
    """The final stream of a CLIP tower in float64 and, per block, what the LRP rules read (a
    pre-norm block with quick-GELU x * sigmoid(1.702 x)); `mask` is added to the scores."""
    torch = require("torch")
    n, s, _ = h.shape
    blocks = []
    for layer in layers:
        att, heads = layer.self_attn, layer.self_attn.num_heads
        x1 = layer.layer_norm1(h)
        q, k, v = (p(x1).view(n, s, heads, -1).transpose(1, 2)
                   for p in (att.q_proj, att.k_proj, att.v_proj))
        scores = q @ k.transpose(-1, -2) * att.scale
        a_map = torch.softmax(scores if mask is None else scores + mask, dim=-1)
        merged = (a_map @ v).transpose(1, 2).reshape(n, s, -1)
        o = att.out_proj(merged)
        a = o + h
        x2 = layer.layer_norm2(a)
        f = layer.mlp.fc1(x2)
        g = f * torch.sigmoid(1.702 * f)
        m = layer.mlp.fc2(g)
        blocks.append(dict(h=h, x1=x1, q=q, k=k, v=v, A=a_map, merged=merged, o=o, a=a,
                           x2=x2, g=g, m=m))
        h = m + a
    return h, blocks


def _clip_towers(clip, feeds):
    """(images' embeddings, texts' embeddings, per tower: (pooled, blocks, pooled position))
    in float64; the text tower is causal and pools at the end-of-text token."""
    torch = require("torch")
    ids = torch.from_numpy(feeds["input_ids"])
    vision, text = clip.vision_model, clip.text_model
    h, v_blocks = _clip_tower(vision.encoder.layers, vision.pre_layrnorm(
        vision.embeddings(torch.from_numpy(feeds["pixel_values"]).double())))
    v_pooled = vision.post_layernorm(h[:, 0])
    s = ids.shape[1]
    causal = torch.zeros(s, s, dtype=torch.float64).masked_fill(
        ~torch.ones(s, s, dtype=torch.bool).tril(), torch.finfo(torch.float64).min)
    assert np.all(feeds["attention_mask"] == 1)
    h, t_blocks = _clip_tower(text.encoder.layers, text.embeddings(input_ids=ids), causal)
    eos = (ids == clip.config.text_config.eos_token_id).int().argmax(-1)
    t_pooled = text.final_layer_norm(h)[torch.arange(len(ids)), eos]
    return (clip.visual_projection(v_pooled), clip.text_projection(t_pooled),
            {"vision": (v_pooled, v_blocks, torch.zeros_like(eos)),
             "text": (t_pooled, t_blocks, eos)})


def _clip_block_relprop(layer, p, relevance):
    """(R of the block input, R_A): LayerNorm and the quick-GELU gate pass relevance."""
    from .torch_reference import lrp_add, lrp_linear, lrp_matmul

    n, heads, s, _ = p["A"].shape
    att = layer.self_attn
    r_m, r_a = lrp_add(p["m"], p["a"], relevance)
    r_f = lrp_linear(p["g"], layer.mlp.fc2.weight, r_m)
    r_a = r_a + lrp_linear(p["x2"], layer.mlp.fc1.weight, r_f)
    r_o, r_h = lrp_add(p["o"], p["h"], r_a)
    r_ctx = lrp_linear(p["merged"], att.out_proj.weight, r_o)
    r_map, r_v = lrp_matmul(p["A"], p["v"], r_ctx.view(n, s, heads, -1).transpose(1, 2))
    r_q, r_kt = lrp_matmul(p["q"], p["k"].transpose(-1, -2), r_map)
    for proj, r in ((att.q_proj, r_q), (att.k_proj, r_kt.transpose(-1, -2)),
                    (att.v_proj, r_v)):
        r_h = r_h + lrp_linear(p["x1"], proj.weight, r.transpose(1, 2).reshape(n, s, -1))
    return r_h, r_map


def _tower_relprop(tower, pieces, projection, relevance) -> list:
    """R_A of each of a tower's layers from the relevance of its projected embedding."""
    torch = require("torch")
    from .torch_reference import lrp_linear

    pooled, blocks, position = pieces
    stream = torch.zeros_like(blocks[-1]["h"])
    stream[torch.arange(len(stream)), position] = lrp_linear(pooled.detach(),
                                                             projection.weight, relevance)
    maps = []
    for layer, p in zip(reversed(tower.encoder.layers), reversed(blocks), strict=True):
        stream, r_map = _clip_block_relprop(layer, {k: v.detach() for k, v in p.items()},
                                            stream)
        maps.insert(0, r_map)
    return maps


def _normalised(x):
    return x / x.pow(2).sum(-1, keepdim=True).pow(0.5)


def clip_scores(module, feeds: dict, tower: str) -> dict[str, np.ndarray]:
    """Transformer Attribution and partial LRP of the logit of image i against text i over one
    tower's tokens (the class token's row of the vision maps, the end-of-text token's of the
    text maps), float64: the scaled dot product of the L2-normalised embeddings halves
    relevance between the towers (a product of two activations), the logit scale and the L2
    normalisation pass it (the norm held constant)."""
    torch = require("torch")
    from .torch_reference import lrp_matmul, query_scores

    clip = module.model.double().eval()
    image, text, towers = _clip_towers(clip, feeds)
    images, texts = _normalised(image), _normalised(text)
    logits = clip.logit_scale.exp() * (texts @ images.T).T
    with torch.no_grad():
        want = module(*(torch.from_numpy(v) for v in feeds.values()))
    # The reimplementation is CLIP (transformers' softmax runs in float32: ~1e-7); the model
    # gives logits_per_image's diagonal, which the identity seed explains.
    assert torch.allclose(torch.diagonal(logits), want, atol=1e-5)
    seed = torch.eye(len(logits), dtype=logits.dtype)
    pooled, blocks, position = towers[tower]
    grads = torch.autograd.grad((logits * seed).sum(), [p["A"] for p in blocks])
    with torch.no_grad():
        r_texts, r_images = lrp_matmul(texts.detach(), images.detach().T, seed.T)
        model, projection, relevance = {
            "vision": (clip.vision_model, clip.visual_projection, r_images.T),
            "text": (clip.text_model, clip.text_projection, r_texts)}[tower]
        maps = _tower_relprop(model, towers[tower], projection, relevance)
        assert bool(torch.all(position == position[0]))
        scores = query_scores(list(grads), maps, int(position[0]))
    return {name: value.numpy() for name, value in scores.items()}


# Worst row's error relative to its largest score, float32 ONNX Runtime against float64
# torch, measured: vision 5.5e-6 and 2.9e-6, text partial LRP 9.2e-6, text Transformer
# Attribution 9.0e-4 in row 0, where the reference itself run in float32 drifts by 2.4e-3
# (Chefer's rule divides by Q K^T, whose entries near 0 float32 rounds by a large share).
# Without the halving at the towers' dot product the errors would be 0.75 to 0.96.
CLIP_TOLERANCE = {("vision", "transformer_attribution"): 3e-5, ("vision", "partial_lrp"): 3e-5,
                  ("text", "transformer_attribution"): 5e-3, ("text", "partial_lrp"): 5e-5}


@pytest.mark.parametrize("tower", ["vision", "text"])
@pytest.mark.parametrize("method", METHODS)
def test_clip_l2_normalisation_passes_relevance(zoo, method, tower):
    """Each image against its own text (rows independent), over either tower's layers
    (named: by default the text tower's, the last in the graph, are read)."""
    ops = {n.op_type for n in onnx.load(zoo.model_path("clip_tiny")).graph.node}
    assert {"Pow", "ReduceSum", "Div"} <= ops
    feeds = zoo.sample("clip_tiny")
    explainer = onnxplain.Explainer(str(zoo.model_path("clip_tiny")), "cpu", progress=False)
    layers = [f"/model/{tower}_model/encoder/layers.{i}/self_attn/Softmax_output_0"
              for i in range(2)]
    result = explainer.explain(feeds, method, attention=layers)
    want = clip_scores(zoo.load_torch("clip_tiny"), feeds, tower)[method]
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert scale.min() > 0
    error = np.abs(result.tensors["tokens"] - want).max(axis=1, keepdims=True) / scale
    assert error.max() < CLIP_TOLERANCE[tower, method], error.ravel()


# ---- the L2 normalisation's chain ----------------------------------------------------------
def _l2_model(root: str, tapped: bool = False) -> onnx.ModelProto:
    """y = x / root(ReduceSum(x^2)) over the last axis of [1, 4], root "pow" (Pow 0.5),
    "sqrt" (Sqrt of the sum plus eps) or "normalize" (torch's F.normalize as the legacy
    exporter writes it: Expand(Clip(ReduceL2(x), eps)));
    `tapped`: the norm is also added to y."""
    from onnx import TensorProto, helper, numpy_helper

    constants = [numpy_helper.from_array(np.array(v, np.float32), name)
                 for name, v in (("two", 2.0), ("half", 0.5), ("eps", 1e-6))]
    constants.append(numpy_helper.from_array(np.array([-1], np.int64), "axes"))
    squares = [helper.make_node("Pow", ["x", "two"], ["sq"]),
               helper.make_node("ReduceSum", ["sq", "axes"], ["sum"])]
    nodes = {"pow": [*squares, helper.make_node("Pow", ["sum", "half"], ["norm"])],
             "sqrt": [*squares, helper.make_node("Add", ["sum", "eps"], ["var"]),
                      helper.make_node("Sqrt", ["var"], ["norm"])],
             "normalize": [helper.make_node("ReduceL2", ["x", "axes"], ["l2"]),  # F.normalize
                           helper.make_node("Clip", ["l2", "eps"], ["clipped"]),
                           helper.make_node("Shape", ["x"], ["shape"]),
                           helper.make_node("Expand", ["clipped", "shape"], ["norm"])]}[root]
    nodes.append(helper.make_node("Div", ["x", "norm"], ["unit" if tapped else "y"]))
    if tapped:
        nodes.append(helper.make_node("Add", ["unit", "norm"], ["y"]))
    graph = helper.make_graph(
        nodes, "l2", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], constants)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


@pytest.mark.parametrize("root", ["pow", "sqrt", "normalize"])
def test_l2_normalisation_passes_relevance_to_x(root):
    """The norm held constant: R_x = R, exactly, whatever the norm."""
    from onnxplain.rules.chefer import CHEFER
    from onnxplain.runtime.engine import OutputSeed

    x = np.array([[0.5, -2.0, 1.5, 3.0]], np.float32)
    r = np.array([[0.1, 0.7, -0.2, 0.4]], np.float32)
    engine = onnxplain.Explainer(_l2_model(root), "cpu").engine
    got = engine.gradients({"x": x}, OutputSeed(r), ["x"], rules=CHEFER).grads["x"]
    np.testing.assert_allclose(got, r, rtol=1e-6)


@pytest.mark.parametrize("root", ["pow", "normalize"])
def test_l2_norm_read_elsewhere_is_refused(root):
    """A norm that also feeds the output would get relevance the rule drops: refused."""
    from onnxplain.rules.chefer import CHEFER
    from onnxplain.runtime.engine import OutputSeed

    x = np.ones((1, 4), np.float32)
    engine = onnxplain.Explainer(_l2_model(root, tapped=True), "cpu").engine
    with pytest.raises(onnxplain.UnsupportedOpError, match="Div"):
        engine.gradients({"x": x}, OutputSeed(x), ["x"], rules=CHEFER)
