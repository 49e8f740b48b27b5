"""Self-tests of the float64 PyTorch oracles in torch_reference.py.

The oracles are what the ONNX implementations are judged by, so they are checked here
against things they do not compute themselves: hand-worked LRP rule values, Chefer et al.'s
autograd formulation of the rules, conservation of relevance, finite differences of the
logit, the same sentence or image run alone, and Hugging Face's own eager forward.
"""

from __future__ import annotations

import copy

import pytest

from tests.conftest import require

BATCH_LENGTHS = (12, 9, 6)  # row 0 unpadded, rows 1 and 2 right-padded
# A larger init than HF's 0.02 gives peaked attention and O(1) logits, so a wrong index or
# a dropped term shows up well above rounding.
INIT = 0.2


@pytest.fixture(scope="module")
def torch():
    torch = require("torch")
    # The models are tiny: one intra-op thread is fastest, and OpenMP threads spinning on a
    # busy CI machine made these tests tens of times slower. Restored after the module.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def ref(torch):
    require("transformers")
    from tests.transformers import torch_reference

    return torch_reference


def make_bert(layers: int = 2, init: float = INIT):
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=layers,
                        num_attention_heads=4, intermediate_size=128,
                        max_position_embeddings=128, num_labels=2,
                        attn_implementation="eager", initializer_range=init)
    return BertForSequenceClassification(config).eval()


def make_vit(layers: int = 4, init: float = INIT):
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=4, num_channels=3, hidden_size=64,
                       num_hidden_layers=layers, num_attention_heads=4, intermediate_size=128,
                       num_labels=10, attn_implementation="eager", initializer_range=init)
    return ViTForImageClassification(config).eval()


def bert_inputs():
    import torch

    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 1000, (len(BATCH_LENGTHS), max(BATCH_LENGTHS)), generator=generator)
    ids[:, 0] = 2
    mask = torch.zeros_like(ids)
    for row, length in enumerate(BATCH_LENGTHS):
        mask[row, :length] = 1
    return {"input_ids": ids * mask, "attention_mask": mask}


def vit_inputs(n: int = 3):
    import torch

    generator = torch.Generator().manual_seed(1)
    return {"pixel_values": torch.randn(n, 3, 32, 32, generator=generator)}


@pytest.fixture(scope="module")
def bert(ref):
    return make_bert()


@pytest.fixture(scope="module")
def vit(ref):
    return make_vit()


def assert_same(actual, expected, what: str) -> None:
    """atol 1e-10, tightened to 1e-9 relative for methods whose values are themselves tiny."""
    scale = float(expected.abs().max())
    atol = min(1e-10, 1e-9 * scale) if scale > 0 else 1e-12
    error = float((actual - expected).abs().max())
    assert error <= atol, f"{what}: max error {error:.3e} > {atol:.3e} (scale {scale:.3e})"


# --------------------------------------------------------------------------- LRP rules


def test_safe_divide_matches_chefer(ref, torch):
    b = torch.tensor([4.0, -1.0, 0.0, 1e-12], dtype=torch.float64)
    out = ref.safe_divide(torch.full_like(b, 2.0), b)
    expected = torch.tensor([2 / (4 + 1e-9), 2 / (-1 + 1e-9), 0.0, 2 / (1e-9 + 1e-12)],
                            dtype=torch.float64)
    torch.testing.assert_close(out, expected, rtol=1e-15, atol=0)


def test_linear_rule_hand_worked(ref, torch):
    # x+ = [1, 0], x- = [0, -2]; z = [1*1 + (-2)(-1), 1*2] = [3, 2]; S = R / z = [1, 2];
    # S W+ = [5, 6], S W- = [0, -1]; R_x = [1*5, (-2)(-1)] = [5, 2]. The bias plays no part.
    x = torch.tensor([[1.0, -2.0]], dtype=torch.float64)
    weight = torch.tensor([[1.0, -1.0], [2.0, 3.0]], dtype=torch.float64)
    r_x = ref.lrp_linear(x, weight, torch.tensor([[3.0, 4.0]], dtype=torch.float64))
    torch.testing.assert_close(r_x, torch.tensor([[5.0, 2.0]], dtype=torch.float64),
                               rtol=1e-8, atol=0)


def chefer_linear(x, weight, relevance):
    """Chefer et al.'s Linear.relprop (alpha=1, beta=0) as written there, with autograd."""
    import torch
    from torch.nn import functional as F

    from tests.transformers.torch_reference import safe_divide

    x1 = x.clamp(min=0).requires_grad_()
    x2 = x.clamp(max=0).requires_grad_()
    z1, z2 = F.linear(x1, weight.clamp(min=0)), F.linear(x2, weight.clamp(max=0))
    s = safe_divide(relevance, z1 + z2)
    c1 = x1 * torch.autograd.grad(z1, x1, s)[0]
    c2 = x2 * torch.autograd.grad(z2, x2, s)[0]
    return (c1 + c2).detach()


def test_linear_rule_conserves_and_matches_autograd_form(ref, torch):
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 5, 7, dtype=torch.float64, generator=generator)
    weight = torch.randn(4, 7, dtype=torch.float64, generator=generator)
    relevance = torch.randn(2, 5, 4, dtype=torch.float64, generator=generator)
    r_x = ref.lrp_linear(x, weight, relevance)
    torch.testing.assert_close(r_x, chefer_linear(x, weight, relevance), rtol=1e-12, atol=1e-14)
    # Every term of z is >= 0, so relevance is conserved wherever z > 0, whatever the signs:
    # sum R_x = sum S z exactly, = sum R but for the 1e-9 stabiliser.
    z = x.clamp(min=0) @ weight.clamp(min=0).T + x.clamp(max=0) @ weight.clamp(max=0).T
    assert bool((z > 0).all())
    exact = (ref.safe_divide(relevance, z) * z).sum(-1)
    torch.testing.assert_close(r_x.sum(-1), exact, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(r_x.sum(-1), relevance.sum(-1), rtol=1e-6, atol=0)
    # alpha=1, beta=0 on non-negative inputs keeps non-negative relevance non-negative
    # (the plain z-rule would not).
    r_pos = ref.lrp_linear(x.abs(), weight, relevance.abs())
    assert bool((r_pos >= 0).all())


def test_add_rule_conserves_per_row(ref, torch):
    generator = torch.Generator().manual_seed(4)
    a = torch.randn(3, 6, 8, dtype=torch.float64, generator=generator)
    b = torch.randn(3, 6, 8, dtype=torch.float64, generator=generator)
    relevance = torch.randn(3, 6, 8, dtype=torch.float64, generator=generator)
    relevance[1] *= 100  # rows of very different size: a whole-batch sum would mix them
    r_a, r_b = ref.lrp_add(a, b, relevance)
    torch.testing.assert_close((r_a + r_b).sum((1, 2)), relevance.sum((1, 2)), rtol=1e-7, atol=0)
    for row in range(3):
        alone = ref.lrp_add(a[row:row + 1], b[row:row + 1], relevance[row:row + 1])
        torch.testing.assert_close(r_a[row:row + 1], alone[0], rtol=1e-12, atol=0)
        torch.testing.assert_close(r_b[row:row + 1], alone[1], rtol=1e-12, atol=0)
    # The shares follow |sum a * R/z| : |sum b * R/z|.
    s = ref.safe_divide(relevance, a + b)
    share = (a * s).sum((1, 2)).abs() / ((a * s).sum((1, 2)).abs() + (b * s).sum((1, 2)).abs())
    torch.testing.assert_close(r_a.sum((1, 2)), share * relevance.sum((1, 2)), rtol=1e-7, atol=0)


def test_matmul_rule_splits_in_halves(ref, torch):
    generator = torch.Generator().manual_seed(5)
    attention = torch.softmax(torch.randn(2, 4, 6, 6, dtype=torch.float64,
                                          generator=generator), -1)
    value = torch.randn(2, 4, 6, 16, dtype=torch.float64, generator=generator)
    relevance = torch.randn(2, 4, 6, 16, dtype=torch.float64, generator=generator)
    r_a, r_v = ref.lrp_matmul(attention, value, relevance)
    z = attention @ value
    # Exact up to rounding: each half carries sum(S * Z) / 2, S = safe_divide(R, Z) ...
    total = (ref.safe_divide(relevance, z) * z).sum()
    torch.testing.assert_close(r_a.sum(), total / 2, rtol=1e-12, atol=0)
    torch.testing.assert_close(r_v.sum(), total / 2, rtol=1e-12, atol=0)
    # ... which is sum(R) but for the 1e-9 stabiliser (relative to Z entries near 1e-3).
    torch.testing.assert_close(r_a.sum() + r_v.sum(), relevance.sum(), rtol=1e-5, atol=0)
    # Chefer et al.'s form: X_i * grad(Z, X_i, S), then both halved in the attention relprop.
    left, right = attention.clone().requires_grad_(), value.clone().requires_grad_()
    z = left @ right
    grads = torch.autograd.grad(z, [left, right], ref.safe_divide(relevance, z.detach()))
    torch.testing.assert_close(r_a, attention * grads[0] / 2, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(r_v, value * grads[1] / 2, rtol=1e-12, atol=1e-15)


METHODS = ("raw_attention", "rollout", "generic_attention", "attgrad", "cat", "attncat",
           "partial_lrp", "transformer_attribution")


@pytest.fixture(scope="module")
def bert_runs(ref, bert):
    """Pieces of the padded batch, and of each sentence run alone without padding."""
    inputs = bert_inputs()
    singles = [ref.reference_pieces(bert, {
        "input_ids": inputs["input_ids"][row:row + 1, :length],
        "attention_mask": inputs["attention_mask"][row:row + 1, :length]})
        for row, length in enumerate(BATCH_LENGTHS)]
    return ref.reference_pieces(bert, inputs), singles


@pytest.fixture(scope="module")
def vit_runs(ref, vit):
    inputs = vit_inputs(2)
    singles = [ref.reference_pieces(vit, {"pixel_values": image[None]})
               for image in inputs["pixel_values"]]
    return ref.reference_pieces(vit, inputs), singles


# --------------------------------------------------------------------------- whole models


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_lrp_conserves_relevance_through_one_layer(ref, torch, name):
    model = make_bert(layers=1) if name == "bert" else make_vit(layers=1)
    inputs = bert_inputs() if name == "bert" else vit_inputs()
    pieces = ref.reference_pieces(model, inputs)
    ones = torch.ones(len(pieces.target), dtype=torch.float64)
    top = pieces.stream_relevances[-1]
    assert float(top[:, 1:].abs().max()) == 0  # the head reads the CLS token only
    for level, stream in enumerate(pieces.stream_relevances):
        torch.testing.assert_close(stream.sum((1, 2)), ones, rtol=1e-6, atol=0,
                                   msg=lambda m, level=level: f"level {level}: {m}")
        pads = (pieces.mask == 0)
        assert float(stream[pads].abs().sum()) == 0
    (steps,) = pieces.lrp_steps

    def total(key):
        return steps[key].sum(tuple(range(1, steps[key].dim())))

    # Sub-block by sub-block: the o projection, A @ V and Q @ K^T each pass on all they get.
    torch.testing.assert_close(total("context"), total("attention_out"), rtol=1e-6, atol=0)
    torch.testing.assert_close(total("attention") + total("v"), total("context"),
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(total("q") + total("k"), total("attention"), rtol=1e-6, atol=0)
    # Only the CLS query row carries relevance in the last layer, so only token 0's query.
    assert float(steps["q"][:, 1:].abs().sum()) == 0
    assert float(steps["attention"][:, :, 1:].abs().sum()) == 0
    assert float(steps["k"][:, 1:].abs().sum()) > 0
    (r_attention,) = pieces.relevances
    pads = pieces.mask == 0
    assert float(r_attention.transpose(1, 3)[pads].abs().sum()) == 0  # padded keys
    assert float(r_attention.abs().sum()) > 0


def test_attention_relprop_matches_chefer_autograd_chain(ref, torch, bert, bert_runs):
    """R_A, R_Q, R_K, R_V of every layer from R_ctx, the way Chefer et al. write it: Q, K, V
    recomputed from h_l and the weights, X_i * grad(Z, X_i, R / Z) / 2 at each product."""
    batch, _ = bert_runs
    hf = copy.deepcopy(bert).double()
    mask = (1 - batch.mask)[:, None, None, :] * torch.finfo(torch.float64).min
    for layer, block in enumerate(hf.bert.encoder.layer):
        attention, steps = block.attention.self, batch.lrp_steps[layer]
        h = batch.hidden[layer]
        n, s, width = h.shape
        heads = attention.num_attention_heads

        def split(t, n=n, s=s, heads=heads):
            return t.view(n, s, heads, -1).transpose(1, 2)

        def merge(t, n=n, s=s, width=width):
            return t.transpose(1, 2).reshape(n, s, width)

        with torch.no_grad():
            q, k, v = (split(proj(h)) for proj in (attention.query, attention.key, attention.value))
        probs = torch.softmax(q @ k.transpose(-1, -2) * attention.scaling + mask, -1)
        torch.testing.assert_close(probs, batch.attentions[layer], rtol=0, atol=1e-14)
        a, v = probs.requires_grad_(), v.requires_grad_()
        z = a @ v
        c_a, c_v = torch.autograd.grad(z, [a, v], ref.safe_divide(split(steps["context"]), z))
        r_a, r_v = (a * c_a / 2).detach(), (v * c_v / 2).detach()
        q, k = q.requires_grad_(), k.requires_grad_()
        z = q @ k.transpose(-1, -2)
        c_q, c_k = torch.autograd.grad(z, [q, k], ref.safe_divide(r_a, z))
        expected = {"attention": r_a, "v": merge(r_v), "q": merge((q * c_q / 2).detach()),
                    "k": merge((k * c_k / 2).detach())}
        for key, value in expected.items():
            assert_same(steps[key], value, f"layer {layer + 1} {key}")
        assert float(expected["k"].abs().max()) > 0


def chefer_add(a, b, relevance):
    """Chefer et al.'s Add.relprop in its autograd form, row by row (they run batch 1)."""
    import torch

    from tests.transformers.torch_reference import safe_divide

    a, b = a.detach().requires_grad_(), b.detach().requires_grad_()
    z = a + b
    c_a, c_b = torch.autograd.grad(z, [a, b], safe_divide(relevance, z.detach()))
    a_rel, b_rel = a.detach() * c_a, b.detach() * c_b
    rows_a, rows_b = [], []
    for ra, rb, r in zip(a_rel, b_rel, relevance, strict=True):
        sa, sb = ra.sum(), rb.sum()
        a_fact = safe_divide(sa.abs(), sa.abs() + sb.abs()) * r.sum()
        b_fact = safe_divide(sb.abs(), sa.abs() + sb.abs()) * r.sum()
        rows_a.append(ra * safe_divide(a_fact, sa))
        rows_b.append(rb * safe_divide(b_fact, sb))
    return torch.stack(rows_a), torch.stack(rows_b)


def chefer_matmul(left, right, relevance):
    """Chefer et al.'s matmul relprop (autograd form), halved as in their attention."""
    import torch

    from tests.transformers.torch_reference import safe_divide

    left, right = left.detach().requires_grad_(), right.detach().requires_grad_()
    z = left @ right
    c_l, c_r = torch.autograd.grad(z, [left, right], safe_divide(relevance, z.detach()))
    return left.detach() * c_l / 2, right.detach() * c_r / 2


def lrp_by_hand(torch, hf, pieces, kind: str):
    """The whole LRP again, along a forward written out from the weights (from h_1 on).

    The forward is checked against the logits, so its operands are the model's; the rules
    are Chefer et al.'s autograd forms. Returns R_l and the relevance at h_1 .. h_L.
    """
    F = torch.nn.functional
    h = pieces.hidden[0]
    n, s, width = h.shape
    heads = pieces.attentions[0].shape[1]
    bert = kind == "bert"
    blocks = hf.bert.encoder.layer if bert else hf.vit.layers
    mask = (1 - pieces.mask)[:, None, None, :] * torch.finfo(torch.float64).min

    def norm(module, x):
        return F.layer_norm(x, (width,), module.weight, module.bias, module.eps)

    def split(t):
        return t.view(n, s, heads, -1).transpose(1, 2)

    def merge(t):
        return t.transpose(1, 2).reshape(n, s, width)

    saved = []
    with torch.no_grad():
        for block in blocks:
            if bert:
                att, dense_o = block.attention.self, block.attention.output.dense
                q_proj, k_proj, v_proj = att.query, att.key, att.value
                fc1, fc2 = block.intermediate.dense, block.output.dense
                x = h
            else:
                att, dense_o = block.attention, block.attention.o_proj
                q_proj, k_proj, v_proj = att.q_proj, att.k_proj, att.v_proj
                fc1, fc2 = block.mlp.fc1, block.mlp.fc2
                x = norm(block.layernorm_before, h)
            q, k, v = split(q_proj(x)), split(k_proj(x)), split(v_proj(x))
            probs = torch.softmax(q @ k.transpose(-1, -2) * att.scaling + mask, -1)
            context = merge(probs @ v)
            o = dense_o(context)
            a = norm(block.attention.output.LayerNorm, o + h) if bert else o + h
            y = a if bert else norm(block.layernorm_after, a)
            inner = F.gelu(fc1(y))
            y2 = fc2(inner)
            out = norm(block.output.LayerNorm, y2 + a) if bert else y2 + a
            saved.append(dict(h=h, x=x, q=q, k=k, v=v, probs=probs, context=context, o=o,
                              a=a, y=y, inner=inner, y2=y2, modules=(q_proj, k_proj, v_proj,
                                                                     dense_o, fc1, fc2)))
            h = out
        if bert:
            pooled = torch.tanh(hf.bert.pooler.dense(h[:, 0]))
            logits = hf.classifier(pooled)
        else:
            cls = norm(hf.vit.layernorm, h)[:, 0]
            logits = hf.classifier(cls)
    torch.testing.assert_close(logits, pieces.logits, rtol=0, atol=1e-12)

    relevance = F.one_hot(pieces.target, logits.shape[-1]).to(torch.float64)
    if bert:
        relevance = chefer_linear(pooled, hf.classifier.weight, relevance)
        relevance = chefer_linear(h[:, 0], hf.bert.pooler.dense.weight, relevance)
    else:
        relevance = chefer_linear(cls, hf.classifier.weight, relevance)
    stream = torch.zeros_like(h)
    stream[:, 0] = relevance
    maps, streams = [], [stream]
    for act in reversed(saved):
        q_proj, k_proj, v_proj, dense_o, fc1, fc2 = act["modules"]
        r_y2, r_a = chefer_add(act["y2"], act["a"], stream)
        r_inner = chefer_linear(act["inner"], fc2.weight, r_y2)
        r_a = r_a + chefer_linear(act["y"], fc1.weight, r_inner)
        r_o, r_h = chefer_add(act["o"], act["h"], r_a)
        r_context = chefer_linear(act["context"], dense_o.weight, r_o)
        r_probs, r_v = chefer_matmul(act["probs"], act["v"], split(r_context))
        r_q, r_kt = chefer_matmul(act["q"], act["k"].transpose(-1, -2), r_probs)
        for proj, r in ((q_proj, r_q), (k_proj, r_kt.transpose(-1, -2)), (v_proj, r_v)):
            r_h = r_h + chefer_linear(act["x"], proj.weight, merge(r))
        stream = r_h
        maps.insert(0, r_probs)
        streams.insert(0, stream)
    return maps, streams


@pytest.mark.parametrize("name", ["bert", "vit"])
def test_lrp_matches_a_second_derivation(ref, torch, bert_runs, vit_runs, bert, vit, name):
    pieces = (bert_runs if name == "bert" else vit_runs)[0]
    hf = ref.float64_model(bert if name == "bert" else vit)
    maps, streams = lrp_by_hand(torch, hf, pieces, name)
    for layer, (mine, theirs) in enumerate(zip(pieces.relevances, maps, strict=True)):
        assert_same(mine, theirs, f"R_{layer + 1}")
    for level, (mine, theirs) in enumerate(zip(pieces.stream_relevances, streams, strict=True)):
        assert_same(mine, theirs, f"stream relevance {level}")


@pytest.mark.parametrize("method", METHODS)
def test_padded_batch_equals_sentences_alone(ref, bert_runs, method):
    batch, singles = bert_runs
    scores = ref.SCORES[method](batch)
    assert scores.shape == batch.mask.shape
    for row, (length, alone) in enumerate(zip(BATCH_LENGTHS, singles, strict=True)):
        assert_same(scores[row:row + 1, :length], ref.SCORES[method](alone),
                    f"{method} row {row}")
        assert float(scores[row, length:].abs().sum()) == 0
        assert float(scores[row, 0]) == 0
    assert float(scores.abs().max()) > 0


@pytest.mark.parametrize("method", METHODS)
def test_image_batch_equals_images_alone(ref, vit_runs, method):
    batch, singles = vit_runs
    scores = ref.SCORES[method](batch)
    for row, alone in enumerate(singles):
        assert_same(scores[row:row + 1], ref.SCORES[method](alone), f"{method} image {row}")


def test_padded_batch_pieces_equal_sentences_alone(bert_runs):
    batch, singles = bert_runs
    for row, (n, alone) in enumerate(zip(BATCH_LENGTHS, singles, strict=True)):
        assert_same(batch.logits[row:row + 1], alone.logits, "logits")
        assert int(batch.target[row]) == int(alone.target[0])
        for layer in range(len(batch.attentions)):
            for name in ("attentions", "attention_grads", "relevances"):
                got = getattr(batch, name)[layer][row:row + 1, :, :n, :n]
                assert_same(got, getattr(alone, name)[layer], f"{name}[{layer}] row {row}")
            for name in ("hidden", "hidden_grads"):
                got = getattr(batch, name)[layer][row:row + 1, :n]
                assert_same(got, getattr(alone, name)[layer], f"{name}[{layer}] row {row}")


def test_scores_match_formulas_written_as_loops(ref, bert_runs):
    """CAT, AttnCAT, generic attention and AttGrad of one padded row, entry by entry."""
    import numpy as np

    batch, _ = bert_runs
    row, n = 1, BATCH_LENGTHS[1]
    heads = batch.attentions[0].shape[1]
    d = batch.hidden[0].shape[-1] // heads
    attentions = [a[row].numpy() for a in batch.attentions]
    grads = [g[row].numpy() for g in batch.attention_grads]
    cat, attncat = np.zeros(n), np.zeros(n)
    for a, h, g in zip(attentions, batch.hidden, batch.hidden_grads, strict=True):
        h, g = h[row].numpy(), g[row].numpy()
        for i in range(n):
            for head in range(heads):
                part = sum(g[i, k] * h[i, k] for k in range(head * d, (head + 1) * d))
                cat[i] += part / heads
                attncat[i] += a[head, 0, i] * part / heads
    generic, product = np.eye(n), np.eye(n)
    for a, g in zip(attentions, grads, strict=True):
        clamped, plain = np.zeros((n, n)), np.zeros((n, n))
        for i in range(n):
            for j in range(n):
                for head in range(heads):
                    clamped[i, j] += max(g[head, i, j] * a[head, i, j], 0.0) / heads
                    plain[i, j] += g[head, i, j] * a[head, i, j] / heads
        generic = generic + clamped @ generic
        product = plain @ product
    expected = {"cat": cat, "attncat": attncat, "generic_attention": generic[0],
                "attgrad": product[0]}
    for method, values in expected.items():
        scores = ref.SCORES[method](batch)[row].numpy()
        np.testing.assert_allclose(scores[1:n], values[1:], rtol=1e-10, atol=1e-15,
                                   err_msg=method)


def test_model_level_functions_match_pieces(ref, torch):
    model, inputs = make_bert(layers=1), bert_inputs()
    pieces = ref.reference_pieces(model, inputs, target=1)
    for method in METHODS:
        args = () if method in ("raw_attention", "rollout") else (1,)
        torch.testing.assert_close(getattr(ref, method)(model, inputs, *args),
                                   ref.SCORES[method](pieces), rtol=0, atol=0)
    lrp = ref.chefer_lrp(model, inputs, 1)
    torch.testing.assert_close(lrp, pieces.relevances, rtol=0, atol=0)


def directional_derivative(torch, hf, layers, inputs, target, layer, direction, where, eps):
    """(y(+eps) - y(-eps)) / 2 eps, with the perturbation put in by forward hooks.

    "attention": A_l -> A_l + eps D, applied as ctx -> ctx + eps D @ V at the input of the
    output projection (V from the value projection's output); "stream": h_l -> h_l + eps D.
    """
    block, value_proj, out_proj = layers[layer]

    def objective(step: float):
        seen = {}

        def keep_value(module, args, output):
            seen["v"] = output

        def perturb_context(module, args):
            (context,) = args
            n, s, width = context.shape
            heads = direction.shape[1]
            v = seen["v"].view(n, s, heads, width // heads).transpose(1, 2)
            return (context + step * (direction @ v).transpose(1, 2).reshape(n, s, width),)

        def perturb_stream(module, args, kwargs):
            return (args[0] + step * direction, *args[1:]), kwargs

        if where == "attention":
            handles = [value_proj.register_forward_hook(keep_value),
                       out_proj.register_forward_pre_hook(perturb_context)]
        else:
            handles = [block.register_forward_pre_hook(perturb_stream, with_kwargs=True)]
        try:
            with torch.no_grad():
                logits = hf(**inputs).logits
        finally:
            for handle in handles:
                handle.remove()
        return logits.gather(1, target[:, None]).sum()

    return (objective(eps) - objective(-eps)) / (2 * eps)


@pytest.mark.parametrize("name", ["bert", "vit"])
@pytest.mark.parametrize("where", ["attention", "stream"])
def test_gradients_match_finite_differences(ref, torch, bert, vit, name, where):
    if name == "bert":
        model, inputs, layer = bert, bert_inputs(), 0
        # HF's own eager BERT in float64, untouched by the reference's attention function.
        hf = copy.deepcopy(model).double().eval()
        layers = [(b, b.attention.self.value, b.attention.output.dense)
                  for b in hf.bert.encoder.layer]
    else:
        model, inputs, layer = vit, vit_inputs(2), 1
        # HF's eager ViT runs its softmax in float32, too coarse for finite differences.
        hf = ref.float64_model(model)
        layers = [(b, b.attention.v_proj, b.attention.o_proj) for b in hf.vit.layers]
    target = torch.tensor([1] * len(next(iter(inputs.values()))))
    pieces = ref.reference_pieces(model, inputs, target, lrp=False)
    generator = torch.Generator().manual_seed(9)
    if where == "attention":
        grad = pieces.attention_grads[layer]
    else:
        grad = pieces.hidden_grads[layer]
    direction = torch.randn(grad.shape, dtype=torch.float64, generator=generator)
    inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    numeric = directional_derivative(torch, hf, layers, inputs64, target, layer, direction,
                                     where, eps=1e-6)
    analytic = (grad * direction).sum()
    assert abs(float(analytic)) > 1e-3
    assert abs(float(numeric - analytic)) <= 1e-7 * abs(float(analytic)) + 1e-12, (
        f"finite difference {float(numeric):.12e} vs gradient {float(analytic):.12e}")


def test_rollout_matrices_are_row_stochastic(ref, torch, bert, vit):
    for model, inputs in ((bert, bert_inputs()), (vit, vit_inputs(2))):
        pieces = ref.reference_pieces(model, inputs)
        for maps in ([a.mean(1) for a in pieces.attentions],
                     [(g * r).clamp(min=0).mean(1)
                      for r, g in zip(pieces.relevances, pieces.attention_grads, strict=True)]):
            augmented = ref.augment(maps)
            for matrix in augmented:
                torch.testing.assert_close(matrix.sum(-1), torch.ones_like(matrix[..., 0]),
                                           rtol=0, atol=1e-14)
                assert bool((matrix >= 0).all())
            joint = ref.rollout_product(augmented)
            torch.testing.assert_close(joint.sum(-1), torch.ones_like(joint[..., 0]),
                                       rtol=0, atol=1e-13)
    # The later layer multiplies from the left: rollout([M1, M2, M3], 1) = M3 @ M2.
    generator = torch.Generator().manual_seed(6)
    mats = [torch.rand(1, 4, 4, dtype=torch.float64, generator=generator) for _ in range(3)]
    torch.testing.assert_close(ref.rollout_product(mats, 1), mats[2] @ mats[1])
    assert not torch.allclose(mats[2] @ mats[1], mats[1] @ mats[2])


def test_rollout_matches_explicit_formula(ref, torch, vit):
    inputs = vit_inputs(2)
    pieces = ref.reference_pieces(vit, inputs, lrp=False)
    s = pieces.mask.shape[1]
    eye = torch.eye(s, dtype=torch.float64)
    hats = [(eye + a.mean(1)) / (eye + a.mean(1)).sum(-1, keepdim=True)
            for a in pieces.attentions]
    expected = hats[3] @ hats[2] @ hats[1]
    scores = ref.rollout(vit, inputs, start_layer=1)
    torch.testing.assert_close(scores[:, 1:], expected[:, 0, 1:], rtol=1e-12, atol=0)


def test_reference_forward_is_hf_eager(ref, torch, bert, vit):
    """The float64 reference attention reproduces HF's eager forward, maps and states."""
    for model, inputs, atol in ((bert, bert_inputs(), 1e-12), (vit, vit_inputs(2), 1e-5)):
        # ViT's eager softmax is float32 even in a float64 model: hence its looser bound.
        hf = copy.deepcopy(model).double().eval()
        inputs64 = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
        with torch.no_grad():
            out = hf(**inputs64, output_attentions=True, output_hidden_states=True)
        pieces = ref.reference_pieces(model, inputs, lrp=False)
        torch.testing.assert_close(pieces.logits, out.logits, rtol=0, atol=atol)
        assert len(pieces.attentions) == len(out.attentions)
        for mine, theirs in zip(pieces.attentions, out.attentions, strict=True):
            torch.testing.assert_close(mine, theirs, rtol=0, atol=atol)
        for layer, mine in enumerate(pieces.hidden):
            torch.testing.assert_close(mine, out.hidden_states[layer], rtol=0, atol=atol)
        assert all(float(g.abs().max()) > 0 for g in pieces.attention_grads)


def test_wrapper_accepted_and_model_untouched(ref, torch, bert):
    class Logits(torch.nn.Module):
        def __init__(self, model) -> None:
            super().__init__()
            self.model = model

    inputs = bert_inputs()
    wrapped = ref.transformer_attribution(Logits(bert), inputs)
    torch.testing.assert_close(wrapped, ref.transformer_attribution(bert, inputs), rtol=0, atol=0)
    assert bert.classifier.weight.dtype == torch.float32
    assert bert.config._attn_implementation == "eager"
    with pytest.raises(TypeError, match="BertForSequenceClassification"):
        ref.rollout(torch.nn.Linear(2, 2), inputs)


def test_target_selects_the_logit(ref, torch, bert):
    inputs = bert_inputs()
    predicted = ref.reference_pieces(bert, inputs, lrp=False)
    assert torch.equal(predicted.target, predicted.logits.argmax(-1))
    other = 1 - predicted.target
    flipped = ref.reference_pieces(bert, inputs, other)
    assert torch.equal(flipped.target, other)
    assert not torch.allclose(flipped.attention_grads[0], predicted.attention_grads[0])
