"""What an explanation explains, decided once from the form of the explained output, with
one rule for every method family.

- Class scores: [N, C], where axes of size 1 after the class axis do not count, so the
  [N, C, 1, 1] outputs of the classic ONNX model zoo's SqueezeNet and DenseNet are
  classifiers too. A class per row is explained (the predicted one by default).
- One value per row: [N]. The value itself is explained; a class target is an error.
- Class labels: an integer [N] or [N, k] output (an ArgMax or TopK head). Perturbation
  methods explain whether the target class was chosen; gradient methods need scores.
- Next-token logits: a float [N, T, V] output of a model with integer [N, T] inputs (a
  causal language model; checked on the run that T is the token ids' length). The logit of the
  next token at the last non-padding position of each row is explained (the predicted
  token unless a target names one); padding is read from the attention-mask inputs. It is
  resolved once on the clean forward run into an output seed (a one-hot at [row, position,
  token]) that every family already applies.
- Anything else (a segmentation map) has no single score per row: every family refuses it
  unless the user weights the output with an output seed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from .errors import InputError, OnnxplainError
from .graph.attention import find_attention
from .graph.model import Model
from .graph.sources import embedding_rows
from .inputs import prepare_target

CLASS, VALUE, LABELS, OTHER = "class", "value", "labels", "other"
NEXT_TOKEN = "next_token"  # [N, T, V] logits: the next token at the last real position
UNKNOWN = "unknown"  # no shape facts: decided on the arrays a run returns


def class_axes(dims: Sequence) -> tuple:
    """`dims` without the axes of size 1 that follow the class axis (axis 1)."""
    dims = tuple(dims)
    end = len(dims)
    while end > 2 and dims[end - 1] == 1:
        end -= 1
    return dims[:end]


def output_form(model: Model, output: str) -> str:
    """CLASS, VALUE, LABELS, OTHER or UNKNOWN for the declared (or inferred) shape of
    `output`."""
    info = model.infos.get(output)
    if info is None or info.shape is None:
        return UNKNOWN
    rank = len(class_axes(info.shape))
    if info.dtype is not None and not info.is_float and info.numpy_dtype.kind in "iub":
        return LABELS if rank in (1, 2) else OTHER
    if rank == 3 and _over_the_vocabulary(model, info.shape[-1]):
        return NEXT_TOKEN  # a language model's logits per position
    return {2: CLASS, 1: VALUE}.get(rank, OTHER)


def _over_the_vocabulary(model: Model, classes) -> bool:
    """Whether an [N, T, V] output scores the token vocabulary (V = the rows of the table the
    token ids look up): a language model. A token classifier's [N, T, C] is not one."""
    return isinstance(classes, int) and any(
        embedding_rows(model, name) == classes for name in token_inputs(model))


def token_inputs(model: Model) -> list[str]:
    """Integer inputs shaped [batch, sequence]: token ids (or their mask)."""
    return [spec.name for spec in model.inputs
            if spec.info.dtype is not None and spec.numpy_dtype.kind in "iu"
            and spec.dims is not None and len(spec.dims) == 2]


def class_count(model: Model, output: str) -> int | None:
    """The static number of classes of a CLASS output, else None."""
    info = model.infos.get(output)
    if info is None or output_form(model, output) != CLASS:
        return None
    count = class_axes(info.certain or info.shape)[1]
    return count if isinstance(count, int) else None


def require_objective(model: Model, output: str, *, seeded: bool, targeted: bool) -> str:
    """The output's form, or an InputError saying what to do when it has no score per row
    (`seeded`: an output seed is given; `targeted`: explicit classes are)."""
    form = output_form(model, output)
    if seeded:
        return form
    spec = model.output(output)
    if form == OTHER:
        raise InputError(f"output {spec.describe()} is neither class scores [batch, classes] "
                         "nor one value per row, so no score per row can be explained: pass "
                         "an output seed (--output-seed w.npy: explains sum(w * output)) or "
                         "choose another output with --output")
    if form == VALUE and targeted:
        raise InputError(f"output {spec.describe()} has one value per row and no class axis: "
                         "leave the target unset (the value itself is explained)")
    return form


def class_scores(output: np.ndarray) -> np.ndarray | None:
    """The [N, C] view of a class-score array (trailing axes of size 1 dropped), else None."""
    if output.dtype.kind != "f" or output.ndim < 2:
        return None
    core = class_axes(output.shape)
    return output.reshape(core) if len(core) == 2 else None


def describe_objective(objective: str, output: str) -> str:
    """One plain sentence: what was differentiated or scored, for the console and summary."""
    return {
        "class": f"the score of the target class in output '{output}'",
        "labels": f"whether output '{output}' chose the target class",
        "output_seed": f"sum(output_seed * {output}) per row",
        "sum": f"the value of output '{output}' per row",
        "next_token": f"the logit of the next token at the last non-padding position in "
                      f"output '{output}'",
    }.get(objective, objective)


@dataclass(frozen=True)
class NextToken:
    """The next-token objective resolved on the clean forward run: per row the explained
    position and token, and the one-hot seed [N, T, V] that selects their logit."""

    positions: np.ndarray
    tokens: np.ndarray
    seed: np.ndarray


def mask_inputs(model: Model) -> tuple[str, ...]:
    """Graph inputs that mask padding: those the attention masks are computed from, else
    inputs named like an attention mask."""
    try:
        names = {name for layer in find_attention(model) for name in layer.mask_inputs}
    except OnnxplainError:  # fused attention: no maps to read the masks from
        names = set()
    if not names:
        names = {spec.name for spec in model.inputs if "attention_mask" in spec.name.lower()}
    return tuple(sorted(names))


def last_positions(feeds: Mapping[str, np.ndarray], masks: Sequence[str], rows: int,
                   length: int) -> np.ndarray:
    """The last non-padding position of each row (padding: 0 in a [rows, length] mask
    input), else length - 1."""
    real = np.ones((rows, length), dtype=bool)
    for name in masks:
        value = feeds.get(name)
        if value is not None and value.shape == (rows, length):
            real &= value != 0
    empty = np.flatnonzero(~real.any(axis=1))
    if len(empty):
        raise InputError(f"row {int(empty[0])} is all padding: its attention mask has no "
                         "non-zero entry, so there is no next token to explain")
    return (length - 1 - np.argmax(real[:, ::-1], axis=1)).astype(np.int64)


def next_token(model: Model, feeds: Mapping[str, np.ndarray], logits: np.ndarray,
               target) -> NextToken:
    """The next-token objective of [N, T, V] `logits`: position = last non-padding one,
    token = `target` (one id, or one per row) or the argmax of the logits there."""
    rows, length, vocab = logits.shape
    if not any(feeds[name].shape == (rows, length) for name in token_inputs(model)):
        raise InputError(f"the explained output is [batch, {length}, {vocab}] but no "
                         f"token-id input has {length} positions, so it holds no next-token "
                         "logits: pass an output seed (--output-seed w.npy)")
    positions = last_positions(feeds, mask_inputs(model), rows, length)
    at = logits[np.arange(rows), positions]
    tokens = (at.argmax(axis=1).astype(np.int64) if target is None
              else prepare_target(target, rows, vocab))
    seed = np.zeros(logits.shape, dtype=logits.dtype)
    seed[np.arange(rows), positions, tokens] = 1
    return NextToken(positions, tokens, seed)
