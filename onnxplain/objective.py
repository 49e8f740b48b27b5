"""What an explanation explains, decided once from the form of the explained output, with
one rule for every method family.

- Class scores: [N, C], where axes of size 1 after the class axis do not count, so the
  [N, C, 1, 1] outputs of the classic ONNX model zoo's SqueezeNet and DenseNet are
  classifiers too. A class per row is explained (the predicted one by default).
- One value per row: [N]. The value itself is explained; a class target is an error.
- Class labels: an integer [N] or [N, k] output (an ArgMax or TopK head). Perturbation
  methods explain whether the target class was chosen; gradient methods need scores.
- Anything else (a segmentation map, a sequence of logits) has no single score per row:
  every family refuses it unless the user weights the output with an output seed.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .errors import InputError
from .graph.model import Model

CLASS, VALUE, LABELS, OTHER = "class", "value", "labels", "other"
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
    return {2: CLASS, 1: VALUE}.get(rank, OTHER)


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
    }.get(objective, objective)
