"""`layer="auto"` for local heads: which of the model's candidate layers a head reads.

Candidates are the layers `onnxplain inspect` lists (the last spatial conv-block outputs,
graph.layers.conv_candidates) and the inputs of the last dense layers (what the classifier
and the layer before it read). Each is scored without out-of-distribution data, by the
leave-one-out nearest-neighbour agreement of rows with their labels: every row of a sample is
classified by its nearest other row at that layer, which is the head's own local classifier
with every row a center. The head takes the earliest candidate whose agreement is within
ACCURACY_TOLERANCE of the best.

Why the earliest and not the best: later layers are trained to keep only what tells the
classes apart, so they score highest on agreement but drop the evidence that an input is
unusual (an adversarial example is made to look like its target class exactly there); earlier
layers keep more of what the input looks like, which is what a distance to the training rows
can detect, as long as the training rows still group by class there (the agreement says so).
On the zoo's digits models (benchmarks/ood_detectors.py) the last conv block and the MLP's
first hidden layer beat the pooled penultimate layer on adversarial inputs and held-out classes.
"""

from __future__ import annotations

import numpy as np

from ..errors import InputError
from ..graph.layers import conv_candidates
from ..graph.model import Model
from ..graph.op_kinds import DENSE
from ..ops import epsilon_softmax as es

AUTO = "auto"
# Half a point of agreement: about twice its sampling error on 1000 rows near 99%; the
# digits CNN's block before the last agrees 1.2 points less and detects weak attacks worse.
ACCURACY_TOLERANCE = 0.005
SCORE_ROWS = 2000          # rows sampled to score a layer (a [rows, rows] distance matrix)
DENSE_LAYERS = 2           # inputs of the last dense layers taken as candidates
NO_CANDIDATE = ("layer='auto' found no candidate layer (no conv block, no dense layer with "
                "constant weights); name one with --layer TENSOR")


def head_candidates(model: Model) -> list[str]:
    """Float tensors a head could read, earliest in the graph first: inspect's conv
    candidates and the inputs of the last DENSE_LAYERS dense layers with constant weights.
    A conv candidate read only by the next candidate (a block's convolution before its
    batch norm and activation) is left out: it is the same layer, and the head reads the
    block's output, what the next layer reads (on the zoo's batch-norm CNN the output beats
    the convolution on most OOD sets, by up to 0.04 AUROC with cosine distance)."""
    conv = [entry["tensor"] for entry in conv_candidates(model)]
    found = [t for t in conv if not _feeds_only(model, t, conv)]
    dense = 0
    for node in reversed(model.proto.graph.node):
        if dense == DENSE_LAYERS:
            break
        if (node.op_type in DENSE and len(node.input) > 1
                and node.input[1] in model.constants and node.input[0] not in model.constants):
            dense += 1
            found.append(node.input[0])
    order = {out: i for i, node in enumerate(model.proto.graph.node) for out in node.output}
    usable = {t for t in found if t in order and model.infos.get(t) is not None
              and model.infos[t].is_float and model.infos[t].rank != 1}
    return sorted(usable, key=order.__getitem__)


def _feeds_only(model: Model, tensor: str, others: list[str]) -> bool:
    users = model.consumers.get(tensor, [])
    return len(users) == 1 and any(out in others for out in users[0].output)


def neighbour_agreement(x: np.ndarray, labels: np.ndarray, distance: str = "l2",
                        rows: int = SCORE_ROWS, seed: int = 0) -> float:
    """Share of (a sample of) rows whose nearest other row has the same label."""
    picked = np.sort(np.random.default_rng(seed).permutation(len(x))[:rows])
    sample = np.asarray(x[picked], np.float64)
    d = es.distances(sample, sample, distance)
    np.fill_diagonal(d, np.inf)
    return float(np.mean(labels[picked][d.argmin(axis=1)] == labels[picked]))


def choose_layer(layers: dict[str, np.ndarray], labels: np.ndarray, distance: str = "l2",
                 seed: int = 0) -> tuple[str, dict]:
    """The earliest layer (the dict's order) whose neighbour agreement is within
    ACCURACY_TOLERANCE of the best, and a record of the choice for the head's metadata."""
    if not layers:
        raise InputError(NO_CANDIDATE)
    if len(labels) < 2:
        raise InputError("layer='auto' needs at least 2 rows to score layers")
    scores = {name: neighbour_agreement(x, labels, distance, seed=seed)
              for name, x in layers.items()}
    best = max(scores.values())
    chosen = next(name for name, s in scores.items() if s >= best - ACCURACY_TOLERANCE)
    why = (f"earliest of {len(scores)} candidates whose leave-one-out nearest-neighbour "
           f"agreement ({scores[chosen]:.3f}) is within {ACCURACY_TOLERANCE:g} of the best "
           f"({best:.3f})")
    record = {"chosen": chosen, "why": why,
              "candidates": [{"layer": name, "features": int(layers[name].shape[1]),
                              "agreement": round(score, 4)} for name, score in scores.items()]}
    return chosen, record
