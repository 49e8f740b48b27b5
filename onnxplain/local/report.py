"""What a local head says about inputs: evaluation on labelled data, and prototype
explanations (the centers that fired, and the training rows they came from)."""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..explainer import Explainer
from .head import PREFIX, head_info


def head_outputs(model, inputs, providers=None, progress: bool = False
                 ) -> tuple[dict[str, np.ndarray], dict, str]:
    """Every output of the head model for `inputs`, the head's metadata and the name of the
    model's own explained output."""
    explainer = Explainer(model, providers, progress=progress)
    info = head_info(explainer.model.proto)
    own = [o.name for o in explainer.model.outputs if not o.name.startswith(PREFIX)]
    output = explainer.output if explainer.output in own else (own[0] if own else "")
    return explainer.forward(inputs), info, output


def rejected(outputs: dict[str, np.ndarray]) -> np.ndarray:
    """The epsilon neuron is the most active neuron (ties go to the centers)."""
    strongest = outputs[PREFIX + "prototype_activations"][:, 0]
    return outputs[PREFIX + "epsilon"] > strongest


def evaluate_head(model, inputs, labels=None, providers=None, progress: bool = False) -> dict:
    """Rejection rate, accuracy of the model and of the local classifier (all rows and
    accepted rows), and how rejection splits between rows the model gets right and wrong.
    Without labels the model's predictions stand in for them. On clean data the head did not
    fit on, `calibration_error` = rejection rate - the rate epsilon was calibrated to ask
    (None for an epsilon set by hand)."""
    outputs, info, own = head_outputs(model, inputs, providers, progress)
    local = outputs[PREFIX + "probabilities"].argmax(axis=1)
    model_pred = _argmax(outputs.get(own))
    rows = len(local)
    if labels is None:
        if model_pred is None:
            raise InputError("no labels given and the model has no [batch, classes] output")
        truth, truth_from = model_pred, "model predictions"
    else:
        truth, truth_from = np.asarray(labels).reshape(-1), "labels"
        if truth.shape != (rows,):
            raise InputError(f"expected {rows} labels, got {truth.shape[0]}")
    out = rejected(outputs)
    asked = info.get("reject_rate")
    result = {"rows": rows, "truth": truth_from, "epsilon": info["epsilon"],
              "rejection_rate": float(out.mean()), "asked_rejection_rate": asked,
              "calibration_error": None if asked is None else float(out.mean()) - asked,
              "local_accuracy": _rate(local == truth),
              "local_accuracy_accepted": _rate((local == truth)[~out]),
              "rejected_by_class": _counts(truth[out])}
    if model_pred is not None:
        right = model_pred == truth
        result.update({
            "model_accuracy": _rate(right),
            "model_accuracy_accepted": _rate(right[~out]),
            "rejected": {"model_right": int((out & right).sum()),
                         "model_wrong": int((out & ~right).sum())},
            "accepted": {"model_right": int((~out & right).sum()),
                         "model_wrong": int((~out & ~right).sum())},
            "rejection_rate_when_model_wrong": _rate(out[~right])})
    return result


def explain_prototypes(model, inputs, providers=None) -> list[dict]:
    """Per row: the local prediction, the epsilon activation, whether the row is rejected,
    and the centers that fired most with their activation, source row and label."""
    outputs, info, _ = head_outputs(model, inputs, providers)
    sources, labels = info.get("sources"), info.get("labels")
    refused = rejected(outputs)
    rows = []
    for i, probabilities in enumerate(outputs[PREFIX + "probabilities"]):
        centers = outputs[PREFIX + "prototypes"][i]
        strengths = outputs[PREFIX + "prototype_activations"][i]
        rows.append({
            "row": i, "predicted": int(probabilities.argmax()),
            "probability": float(probabilities.max()),
            "epsilon_activation": float(outputs[PREFIX + "epsilon"][i]),
            "rejected": bool(refused[i]),
            "prototypes": [{"center": int(c), "activation": float(a),
                            "source_row": None if sources is None else int(sources[c]),
                            "label": None if labels is None else int(labels[c])}
                           for c, a in zip(centers, strengths, strict=True)]})
    return rows


def _argmax(scores) -> np.ndarray | None:
    return scores.argmax(axis=1) if scores is not None and scores.ndim == 2 else None


def _rate(mask: np.ndarray) -> float | None:
    return float(mask.mean()) if mask.size else None


def _counts(values: np.ndarray) -> dict[str, int]:
    found, counts = np.unique(values, return_counts=True)
    return {str(int(v)): int(c) for v, c in zip(found, counts, strict=True)}
