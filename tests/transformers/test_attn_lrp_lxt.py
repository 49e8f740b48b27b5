"""AttnLRP against LXT 2.1, the authors' implementation (Achtibat et al., ICML 2024): LXT's own
rule code (its `attnLRP` patch maps for Llama, Qwen2 and GPT-2) on the zoo's torch models in
float64, its relevance taken as its README does: (word embeddings x their gradient) summed
over the hidden axis. The same comparison checks this folder's written-from-the-paper
reference (attn_lrp_reference.py) against LXT.

LXT 2.1 under transformers 5 needs two work-arounds, both outside its rules:
- `lxt.efficient` and `lxt.efficient.models` import every model file, and the BERT one (a
  copy of transformers 4's modeling_bert) fails: "cannot import name
  'find_pruneable_heads_and_indices' from 'transformers.pytorch_utils'". Empty packages
  stand in for those two, so that only the needed files load. BERT is left out: its copied
  classes also read `config.position_embedding_type`, which BertConfig no longer has.
- `patch_attention` replaces a model file's ALL_ATTENTION_FUNCTIONS with a plain dict,
  which has no `get_interface` (transformers 5's attention calls it); its wrapped functions
  go back into an AttentionInterface.
LXT patches classes and module globals: everything it replaces is restored after each run.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import numpy as np
import pytest

import onnxplain

from ..conftest import require
from ..test_zoo_coverage import worst_row_error
from . import attn_lrp_reference as reference
from .test_attn_lrp_oracle import TOLERANCE, _feeds

# Padded (right) where the model has padding: see test_attn_lrp_oracle._feeds.
MODELS = ("llama_tiny_opset23", "llama_tiny_legacy", "qwen2_tiny_opset18", "qwen2_tiny_opset23",
          "gpt2_tiny", "causal_lm")
# LXT's RMSNorm computes in float32 even in a float64 model, so the float64 reference and LXT
# agree to ~1e-7 on Llama and Qwen2 (measured at most 1.6e-7); on GPT-2 they agree exactly.
REFERENCE_TOLERANCE = 1e-6


def lxt_patch_map(model_type: str) -> dict:
    """LXT's AttnLRP patch map for a transformers `model_type` (llama, qwen2, gpt2), loaded
    without lxt.efficient's package imports (see the module docstring)."""
    require("lxt")
    root = Path(importlib.util.find_spec("lxt").submodule_search_locations[0])
    for name in ("lxt.efficient", "lxt.efficient.models"):
        if name not in sys.modules:
            stub = types.ModuleType(name)
            stub.__path__ = [str(root.joinpath(*name.split(".")[1:]))]
            sys.modules[name] = stub
    return importlib.import_module(f"lxt.efficient.models.{model_type}").attnLRP


def lxt_attn_lrp(model, feeds: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """LXT's relevance per token [N, S] of the predicted class (a causal LM: of the predicted
    next token at the row's last real position), and that target [N]."""
    torch = require("torch")
    from transformers import AttentionInterface

    hf = copy.deepcopy(reference.unwrap(model)).double().eval().requires_grad_(False)
    patch_map = lxt_patch_map(hf.config.model_type)
    embeddings = []  # LXT's inputs_embeds.requires_grad_(), as a hook: HF's classifiers
    # find each row's last real token from input_ids, which inputs_embeds would replace

    def leaf(_module, _args, output):
        embeddings.append(output.detach().requires_grad_())
        return embeddings[-1]

    inputs = {k: torch.from_numpy(v) for k, v in feeds.items()}
    with pytest.MonkeyPatch.context() as undo:
        for target, patch in patch_map.items():
            for attribute in ("forward", "eager_attention_forward", "ALL_ATTENTION_FUNCTIONS"):
                if hasattr(target, attribute):
                    undo.setattr(target, attribute, getattr(target, attribute))
            assert patch(target), f"LXT could not patch {target.__name__}"
            if isinstance(target, types.ModuleType):
                interface = AttentionInterface()
                interface.update(target.ALL_ATTENTION_FUNCTIONS)
                target.ALL_ATTENTION_FUNCTIONS = interface
        handle = hf.get_input_embeddings().register_forward_hook(leaf)
        try:
            logits = hf(**inputs).logits
        finally:
            handle.remove()
        if logits.dim() == 3:
            positions = reference._last_real_positions(inputs, *logits.shape[:2])
            logits = logits[torch.arange(len(positions)), positions]
        target = logits.argmax(1)
        logits.gather(1, target[:, None]).sum().backward()
    (words,) = embeddings
    return (words * words.grad).sum(-1).detach().numpy(), target.numpy()


@pytest.fixture(scope="module", params=MODELS)
def case(request, zoo):
    name = request.param
    feeds = _feeds(zoo, name)
    model = zoo.load_torch(name)
    relevance, target = lxt_attn_lrp(model, feeds)
    return name, model, feeds, relevance, target


def test_attn_lrp_matches_lxt(case, zoo):
    name, _, feeds, want, target = case
    assert np.abs(want).max() > 0, "LXT's relevance must not be all zeros"
    result = onnxplain.Explainer(zoo.model_path(name)).explain(feeds, "attn_lrp", target=target)
    np.testing.assert_array_equal(result.target, target)
    assert worst_row_error(result.attributions["input_ids"], want) < TOLERANCE


def test_the_reference_matches_lxt(case):
    _, model, feeds, want, target = case
    got = reference.attn_lrp(model, feeds, target)
    assert worst_row_error(got.input.numpy(), want) < REFERENCE_TOLERANCE
    plain = reference.attn_lrp(model, feeds, target, rules=False)
    assert worst_row_error(plain.input.numpy(), want) > 1e-3, "LXT's rules must matter"


def test_lxt_patches_are_undone(zoo):
    """LXT patches classes, torch's own LayerNorm and Dropout among them: a leak would change
    every later test of the session."""
    torch = require("torch")
    from transformers.models.gpt2 import modeling_gpt2 as gpt2

    def patched():
        return (torch.nn.LayerNorm.forward, torch.nn.Dropout.forward, gpt2.GPT2MLP.forward,
                gpt2.eager_attention_forward, gpt2.ALL_ATTENTION_FUNCTIONS)

    before = patched()
    lxt_attn_lrp(zoo.load_torch("gpt2_tiny"), _feeds(zoo, "gpt2_tiny"))
    assert all(a is b for a, b in zip(patched(), before, strict=True))
