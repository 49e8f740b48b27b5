"""Chefer et al.'s relevance rules at Resize and through GPT-2's tanh GELU (rules/chefer.py).

Oracles:
- Resize: the z-rule through the interpolation, R_x = x * M^T (R / M x), with M the explicit
  float64 matrix of torch's F.interpolate (applied to unit vectors), for nearest and linear
  modes, up- and downsampling; relevance is conserved (each output's weights sum to 1). The
  LRP rule set (rules/lrp.py, the proportional rule) is held to the same reference.
- GPT-2 (gelu_new exported as 0.5 x (1 + tanh(c (x + 0.044715 Pow(x, 3))))): a float64 torch
  reimplementation of Chefer et al.'s LRP and Transformer Attribution for GPT-2 written from
  the paper (the rules of torch_reference.py, on GPT-2's pre-LayerNorm blocks with a fused
  q/k/v projection and the tied LM head), explaining the next token at the last position.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnxplain
from onnxplain.errors import UnsupportedOpError
from onnxplain.rules.chefer import CHEFER
from onnxplain.rules.lrp import lrp_rules
from onnxplain.runtime.engine import OutputSeed

from ..conftest import require

# (mode, ONNX coordinate_transformation_mode, torch align_corners, input size, output size)
RESIZES = [("nearest", "asymmetric", None, 3, 7), ("nearest", "asymmetric", None, 8, 4),
           ("linear", "half_pixel", False, 3, 7), ("linear", "half_pixel", False, 7, 3),
           ("linear", "align_corners", True, 4, 6)]


def _resize_model(mode: str, transform: str, size_in: int, size_out: int) -> onnx.ModelProto:
    """y = Resize(x) on the last two axes of [N, 2, size, size], sizes given."""
    sizes = numpy_helper.from_array(np.array([1, 2, size_out, size_out], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode=mode,
                            coordinate_transformation_mode=transform,
                            **({"nearest_mode": "floor"} if mode == "nearest" else {}))
    graph = helper.make_graph(
        [node], "resize", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                         [1, 2, size_in, size_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, size_out, size_out])],
        [sizes])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)


def _interpolation_matrix(mode: str, corners, size_in: int, size_out: int) -> np.ndarray:
    """M [outputs, inputs] of F.interpolate over one [2, size, size] sample, float64."""
    torch = require("torch")
    basis = torch.eye(2 * size_in * size_in, dtype=torch.float64).reshape(-1, 2, size_in,
                                                                          size_in)
    options = {"mode": "nearest"} if mode == "nearest" else {
        "mode": "bilinear", "align_corners": corners}
    images = torch.nn.functional.interpolate(basis, size=(size_out, size_out), **options)
    return images.reshape(len(basis), -1).T.numpy()


def _z_rule(m: np.ndarray, x: np.ndarray, r: np.ndarray) -> np.ndarray:
    z = m @ x
    return x * (m.T @ np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, z)))


@pytest.mark.parametrize(("mode", "transform", "corners", "size_in", "size_out"), RESIZES)
def test_resize_relevance_is_the_z_rule_through_the_interpolation(mode, transform, corners,
                                                                   size_in, size_out):
    rng = np.random.default_rng(size_in * 10 + size_out)
    x = rng.uniform(0.5, 2.0, size=(1, 2, size_in, size_in)).astype(np.float32)
    r = rng.uniform(0.0, 1.0, size=(1, 2, size_out, size_out)).astype(np.float32)
    model = _resize_model(mode, transform, size_in, size_out)
    m = _interpolation_matrix(mode, corners, size_in, size_out)
    y = onnxplain.Explainer(model, "cpu").forward({"x": x})["y"]
    np.testing.assert_allclose(y.reshape(-1), m @ x.reshape(-1).astype(np.float64), atol=1e-5)
    total = float(r.astype(np.float64).sum())
    want = _z_rule(m, x.reshape(-1).astype(np.float64), r.reshape(-1).astype(np.float64))
    assert abs(want.sum() - total) < 1e-12 * total  # the rule conserves relevance
    engine = onnxplain.Explainer(model, "cpu").engine
    for rules in (CHEFER, lrp_rules(engine.model, ["x"], "epsilon")):
        got = engine.gradients({"x": x}, OutputSeed(r), ["x"], rules=rules).grads["x"]
        np.testing.assert_allclose(np.asarray(got).reshape(-1), want, rtol=1e-4, atol=1e-6)
        assert abs(float(np.sum(got, dtype=np.float64)) - total) < 1e-5 * total


# ---- GPT-2 -------------------------------------------------------------------------------
def _gelu_new(x):
    torch = require("torch")
    return 0.5 * x * (1.0 + torch.tanh((2.0 / np.pi) ** 0.5 * (x + 0.044715 * x ** 3)))


def _conv1d(layer, x):
    """GPT-2's Conv1D: x @ W + b with W [in, out]."""
    return x @ layer.weight + layer.bias


def _gpt2_forward(gpt2, ids, heads: int, past=None):
    """Logits [N, S, V] of GPT2LMHeadModel in float64, with what the LRP rules read per
    block: (h, ln_1 out, q, k, v, A, merged context, attention out, a, ln_2 out, fc out,
    gelu out, mlp out). `past`: per block the cached (keys, values) [N, heads, P, d], put
    before the new tokens' (k, v and A then cover P + S keys)."""
    torch = require("torch")
    t = gpt2.transformer
    n, s = ids.shape
    cached = 0 if past is None else past[0][0].shape[2]
    h = t.wte(ids) + t.wpe(torch.arange(cached, cached + s))
    causal = torch.ones(s, cached + s, dtype=torch.bool).tril(cached)
    blocked = torch.zeros(s, cached + s, dtype=torch.float64).masked_fill(
        ~causal, torch.finfo(torch.float64).min)
    blocks = []
    for index, block in enumerate(t.h):
        x1 = block.ln_1(h)
        q, k, v = (p.view(n, s, heads, -1).transpose(1, 2)
                   for p in _conv1d(block.attn.c_attn, x1).split(x1.shape[-1], dim=-1))
        if past is not None:
            k, v = (torch.cat([old, new], dim=2) for old, new in zip(past[index], (k, v),
                                                                     strict=True))
        a_map = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5 + blocked, dim=-1)
        merged = (a_map @ v).transpose(1, 2).reshape(n, s, -1)
        o = _conv1d(block.attn.c_proj, merged)
        a = o + h
        x2 = block.ln_2(a)
        f = _conv1d(block.mlp.c_fc, x2)
        g = _gelu_new(f)
        m = _conv1d(block.mlp.c_proj, g)
        blocks.append(dict(h=h, x1=x1, q=q, k=k, v=v, A=a_map, merged=merged, o=o, a=a, x2=x2,
                           f=f, g=g, m=m))
        h = m + a
    top = t.ln_f(h)
    return top @ gpt2.lm_head.weight.T, top, blocks


def _gpt2_relevances(gpt2, top, blocks, seed):
    """R_l of every block's attention map: Chefer et al.'s rules (torch_reference.py) from the
    relevance `seed` [N, S, V] at the logits down; LayerNorm and GELU pass relevance. Cached
    keys and values are inputs: the relevance they get stops there."""
    from .torch_reference import lrp_add, lrp_linear, lrp_matmul

    n, heads, s, keys = blocks[0]["A"].shape
    relevance = lrp_linear(top, gpt2.lm_head.weight, seed)
    maps = []
    for block, p in zip(reversed(gpt2.transformer.h), reversed(blocks), strict=True):
        r_m, r_a = lrp_add(p["m"], p["a"], relevance)
        r_f = lrp_linear(p["g"], block.mlp.c_proj.weight.T, r_m)
        r_a = r_a + lrp_linear(p["x2"], block.mlp.c_fc.weight.T, r_f)
        r_o, r_h = lrp_add(p["o"], p["h"], r_a)
        r_ctx = lrp_linear(p["merged"], block.attn.c_proj.weight.T, r_o)
        r_map, r_v = lrp_matmul(p["A"], p["v"], r_ctx.view(n, s, heads, -1).transpose(1, 2))
        r_q, r_kt = lrp_matmul(p["q"], p["k"].transpose(-1, -2), r_map)
        r_qkv = torch_cat([r[:, :, r.shape[2] - s:].transpose(1, 2).reshape(n, s, -1)
                           for r in (r_q, r_kt.transpose(-1, -2), r_v)])
        relevance = r_h + lrp_linear(p["x1"], block.attn.c_attn.weight.T, r_qkv)
        maps.insert(0, r_map)
    return maps


def torch_cat(parts):
    torch = require("torch")
    return torch.cat(parts, dim=-1)


def gpt2_scores(module, ids: np.ndarray, target: np.ndarray, heads: int,
                past: list | None = None) -> dict:
    """Chefer et al.'s Transformer Attribution (rollout of normalise(I + mean_h clamp(G_l *
    R_l, 0))) and partial LRP (mean_h R_L) of logits[row, last, target[row]] over the
    prompt, read at the last row (the explained position), its own entry 0. With `past`
    (per block the cached keys and values, arrays) the scores cover the P cached positions
    first: each map gets P rows for them, identity rows once I is added and rows
    renormalised (inputs of this step), and the row read is P + last."""
    torch = require("torch")
    from .torch_reference import augment, rollout_product

    gpt2 = module.model.double().eval()
    ids_t = torch.from_numpy(ids)
    cache = None if past is None else [tuple(torch.from_numpy(x) for x in kv) for kv in past]
    logits, top, blocks = _gpt2_forward(gpt2, ids_t, heads, cache)
    with torch.no_grad():
        want = gpt2(input_ids=ids_t, **_cache_kwargs(cache)).logits
    assert torch.allclose(logits, want, atol=1e-10)  # the reimplementation is GPT-2
    rows, last = torch.arange(len(ids)), ids.shape[1] - 1
    seed = torch.zeros_like(logits)
    seed[rows, last, torch.from_numpy(target)] = 1.0
    grads = torch.autograd.grad((logits * seed).sum(), [p["A"] for p in blocks])
    with torch.no_grad():
        relevances = _gpt2_relevances(gpt2, top.detach(), [
            {k: v.detach() for k, v in p.items()} for p in blocks], seed)
        maps = [_cached_rows((g * r).clamp(min=0).mean(1))
                for g, r in zip(grads, relevances, strict=True)]
        cached = maps[0].shape[-1] - ids.shape[1]
        scores = {"transformer_attribution": rollout_product(augment(maps))[:, cached + last],
                  "partial_lrp": relevances[-1].mean(1)[:, last]}
    for value in scores.values():
        value[:, cached + last] = 0
    return {name: value.numpy() for name, value in scores.items()}


def _cache_kwargs(cache: list | None) -> dict:
    """GPT-2's own arguments for the same cache (copies: the model appends to it)."""
    if cache is None:
        return {"use_cache": False}
    from transformers import DynamicCache

    own = DynamicCache()
    for layer, (keys, values) in enumerate(cache):
        own.update(keys.clone(), values.clone(), layer)
    return {"past_key_values": own, "use_cache": True}


def _cached_rows(m):
    """[N, P + S, P + S] from a map [N, S, P + S]: P zero rows on top for the cached keys."""
    torch = require("torch")
    n, s, keys = m.shape
    return torch.cat([m.new_zeros(n, keys - s, keys), m], dim=1)


@pytest.mark.parametrize("method", ["transformer_attribution", "partial_lrp"])
@pytest.mark.parametrize("name", ["gpt2_tiny", "gpt2_tiny_ort"])
def test_gpt2_chefer_methods_match_torch(zoo, name, method):
    """gelu_new as exported (Pow(x, 3) inside the gate) passes relevance as GELU does, and as
    the optimizer's FastGelu op (gpt2_tiny_ort, the same weights) does."""
    if name == "gpt2_tiny":
        ops = {n.op_type for n in onnx.load(zoo.model_path(name)).graph.node}
        assert {"Pow", "Tanh"} <= ops and "Gelu" not in ops
    feeds = zoo.sample(name)
    assert np.all(feeds["attention_mask"] == 1)
    explainer = onnxplain.Explainer(str(zoo.model_path(name)), "cpu", progress=False)
    result = explainer.explain(feeds, method)
    assert result.extras["query"] == feeds["input_ids"].shape[1] - 1
    want = gpt2_scores(zoo.load_torch("gpt2_tiny"), feeds["input_ids"],
                       np.asarray(result.target), heads=2)[method]
    assert np.abs(want).max() > 0
    # float32 ONNX Runtime against float64 torch: measured 2.7e-6 of each row's largest score.
    scale = np.abs(want).max(axis=1, keepdims=True)
    assert np.abs(result.tensors["tokens"] - want).max() < 1e-4 * scale.min()


def test_a_pow_outside_a_gate_is_still_refused():
    """Only f of a gate x * f(x) may hold a Pow: elsewhere relevance would be made up."""
    three = numpy_helper.from_array(np.array(3.0, np.float32), "three")
    graph = helper.make_graph(
        [helper.make_node("Pow", ["x", "three"], ["cube"]),
         helper.make_node("Add", ["cube", "x"], ["y"])], "cube",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [three])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=9)
    engine = onnxplain.Explainer(model, "cpu").engine
    x = np.ones((1, 4), np.float32)
    with pytest.raises(UnsupportedOpError, match="no relevance rule for Pow"):
        engine.gradients({"x": x}, OutputSeed(x), ["x"], rules=CHEFER)
