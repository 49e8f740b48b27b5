"""Greedy generation with a causal language model, explaining every generated token.

Each step runs the model on the prompt plus the tokens generated so far, takes the most
likely next token (greedy decoding, no KV cache: the whole context is run again) and explains
its logit at the last position over every token of that context, as inseq does for Hugging
Face models. One step is exactly one `Explainer.explain` call on that prefix.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from .attribution import Attribution
from .errors import InputError, OnnxplainError
from .explainer import Explainer
from .inputs import Inputs, prepare_inputs
from .objective import NEXT_TOKEN, mask_inputs, output_form, token_inputs
from .vocab import Vocabulary, ids_as_tokens

__all__ = ["Generation", "GenerationStep", "generate"]


@dataclass(frozen=True)
class GenerationStep:
    """One generated token: its id, its logit, and the attribution of that logit to each
    token of the context it was predicted from (prompt + earlier generated tokens)."""

    token: int
    score: float
    scores: np.ndarray
    result: Attribution


@dataclass(frozen=True)
class Generation:
    method: str
    input: str  # the token-id input
    prompt: np.ndarray  # token ids [P] (padding removed)
    steps: list[GenerationStep]

    @property
    def tokens(self) -> np.ndarray:
        """The generated token ids, in order."""
        return np.array([step.token for step in self.steps], dtype=np.int64)

    def context(self, step: int) -> np.ndarray:
        """The ids step `step` was predicted from."""
        return np.concatenate([self.prompt, self.tokens[:step]])

    def as_json(self, vocabulary: Vocabulary | None = None) -> dict:
        """Plain JSON: the prompt and continuation as ids and strings, and per step the
        generated token, its logit and one score per context token."""
        def strings(ids: np.ndarray) -> list[str]:
            return vocabulary.tokens_for(ids) if vocabulary else ids_as_tokens(ids)

        return {
            "method": self.method, "input": self.input,
            "prompt": {"ids": self.prompt.tolist(), "tokens": strings(self.prompt)},
            "generated": {"ids": self.tokens.tolist(), "tokens": strings(self.tokens)},
            "steps": [{"step": i, "position": len(self.prompt) + i - 1,
                       "token_id": step.token, "token": strings(np.array([step.token]))[0],
                       "score": step.score,
                       "context": strings(self.context(i)),
                       "attribution": [float(v) for v in step.scores]}
                      for i, step in enumerate(self.steps)],
        }


def generate(explainer: Explainer, inputs: Inputs, steps: int, method: str = "saliency",
             **options) -> Generation:
    """Generate `steps` tokens greedily after the prompt `inputs` (one row of token ids,
    with its attention mask if the model takes one, or a 1-D array of ids) and explain each
    with `method` and its `options` (see `onnxplain.METHODS`), over the prompt and the
    tokens generated before it.

    Padding (0 in the attention mask) is removed from the prompt first; the model must be a
    causal language model (next-token logits [batch, sequence, vocabulary]) whose inputs are
    token ids and attention masks only.
    """
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise InputError(f"steps must be a whole number of at least 1, got {steps!r}")
    ids_name, masks = _token_roles(explainer)
    prompt = _prompt(explainer, inputs, ids_name, masks)
    done: list[GenerationStep] = []
    context = prompt
    for _ in range(int(steps)):
        feeds = {ids_name: context[None]} | {name: np.ones_like(context)[None] for name in masks}
        result = _explain_step(explainer, feeds, method, options, len(done))
        token = int(result.target[0])
        score = float(result.target_score[0]) if result.target_score is not None else np.nan
        done.append(GenerationStep(token, score, _row(result, ids_name, len(context)), result))
        context = np.append(context, token)
    return Generation(done[0].result.method, ids_name, prompt, done)


def _explain_step(explainer: Explainer, feeds: dict, method: str, options: dict,
                  step: int) -> Attribution:
    """One step's explain call; a failure after the first step says where generation
    stopped (a longer context than the model takes: learned positions run out)."""
    try:
        return explainer.explain(feeds, method=method, **options)
    except OnnxplainError as err:
        if step == 0:
            raise
        length = next(iter(feeds.values())).shape[1]
        raise InputError(f"generation stopped at step {step + 1}, on a context of {length} "
                         f"tokens (the model may take fewer positions): {err}") from err


def _token_roles(explainer: Explainer) -> tuple[str, tuple[str, ...]]:
    """(the token-id input, the attention-mask inputs); InputError unless the model is a
    causal language model fed by nothing else."""
    model = explainer.model
    if output_form(model, explainer.output) != NEXT_TOKEN:
        raise InputError(f"generation needs a causal language model, but output "
                         f"{model.output(explainer.output).describe()} is not next-token "
                         "logits [batch, sequence, vocabulary]")
    masks = tuple(name for name in mask_inputs(model) if name in token_inputs(model))
    ids = [name for name in token_inputs(model) if name not in masks]
    others = [spec.name for spec in model.inputs if spec.name not in (*ids, *masks)]
    if len(ids) != 1 or others:
        listing = ", ".join(spec.describe() for spec in model.inputs)
        raise InputError("generation feeds one token-id input and its attention mask only; "
                         f"this model's inputs are: {listing}")
    return ids[0], masks


def _prompt(explainer: Explainer, inputs: Inputs, ids_name: str,
            masks: tuple[str, ...]) -> np.ndarray:
    """The prompt's token ids as one row, its padding removed (a 1-D integer array is the
    token ids themselves; a missing attention mask means every token is real)."""
    if isinstance(inputs, np.ndarray) and inputs.ndim == 1 and inputs.dtype.kind in "iu":
        inputs = {ids_name: inputs[None]}
    if isinstance(inputs, Mapping) and ids_name in inputs:
        ids = np.asarray(inputs[ids_name])
        # A prompt without its mask is all real tokens.
        inputs = {name: np.ones_like(ids) for name in masks} | dict(inputs)
    feeds = prepare_inputs(explainer.model, inputs)
    ids = feeds[ids_name]
    if ids.shape[0] != 1:
        raise InputError(f"generation takes one prompt (one row of {ids_name}), got "
                         f"{ids.shape[0]} rows")
    real = np.ones(ids.shape[1], dtype=bool)
    for name in masks:
        real &= feeds[name][0] != 0
    if not real.any():
        raise InputError("the prompt is all padding: its attention mask has no non-zero entry")
    return ids[0, real].astype(np.int64)


def _row(result: Attribution, ids_name: str, length: int) -> np.ndarray:
    """The step's one score per context token."""
    values = result.attributions.get(ids_name)
    if values is None or values.shape != (1, length):
        raise InputError(f"method {result.method} gives no score per token of input "
                         f"'{ids_name}', so generated tokens cannot be explained with it")
    return values[0]
