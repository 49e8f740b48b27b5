"""Local heads: a local classifier attached to a layer of an existing model, whose epsilon
neuron rejects inputs unlike the training data (out-of-distribution and adversarial inputs).

The head model keeps every original output and adds, from the features at the chosen layer
(flattened per row):
    local/probabilities  [N, C]    each class's share of the center activations
    local/epsilon        [N]       the epsilon neuron; the input is rejected when it is the
                                   most active neuron (no center is nearer than -epsilon)
    local/nearest_distance [N]     the distance to the nearest center: the score epsilon
                                   thresholds, without the temperature (the epsilon
                                   activation saturates at 1 in float32 far from the data)
    local/prototypes     [N, top]  the most active centers, strongest first
    local/prototype_activations [N, top]
and records in its metadata (key `onnxplain.local_head`, JSON) the layer, the op's
attributes and, per center, the training row it was drawn from and that row's label.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from .._version import __version__
from ..errors import InputError, ModelError
from ..explainer import Explainer
from ..export.methods import register_export
from ..files import save_bytes
from ..graph.builder import GraphBuilder
from ..graph.load import set_runtime_ir_version
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.taps import resolve_taps
from ..graph.weights import standalone
from ..ops import epsilon_softmax as es
from .init import calibrate_epsilon, calibration_check, center_budget, classifier_from_data
from .layer_choice import AUTO, NO_CANDIDATE, choose_layer, head_candidates
from .layers import LocalLayer, declare_output, emit_layer

METADATA_KEY = "onnxplain.local_head"
PREFIX = "local/"
OUTPUTS = ("probabilities", "epsilon", "nearest_distance", "prototypes",
           "prototype_activations")
DEFAULT_REJECT_RATE = 0.05


@dataclass
class LocalHead:
    """A fitted head: the combined model, its local layer and what the metadata records."""

    model: onnx.ModelProto
    layer: LocalLayer
    info: dict

    def save(self, path: str) -> None:
        save_bytes(path, self.model.SerializeToString())


def features(explainer: Explainer, inputs, tensor: str) -> np.ndarray:
    """The tapped tensor for every row, flattened to [N, features], in float32."""
    values = explainer.forward(inputs, taps=[tensor])[tensor]
    if values.ndim < 2:
        raise InputError(f"layer '{tensor}' has shape {values.shape}; a head needs one "
                         "feature vector per row")
    return values.reshape(len(values), -1).astype(np.float32)


def fit_local_head(model, layer: str, inputs, labels=None, *, per_class: int | None = None,
                   distance: str = "l2", temperature="auto", epsilon="auto",
                   reject_rate: float = DEFAULT_REJECT_RATE, holdout: float = 0.2,
                   top: int = 5, seed: int = 0, providers=None, progress: bool = True,
                   calibration=None) -> LocalHead:
    """Fit a local classifier on the features at `layer` and attach it to `model`.

    `layer="auto"` scores the candidate layers on the fitting rows and takes the earliest
    that still groups them by class (local.layer_choice; the choice and every candidate's
    score go into `info["layer_choice"]`). Centers are every fitting row, up to
    init.center_budget (64 MiB of weights; above it as many rows as fit, an equal share per
    class), or `per_class` rows of each class; values are their one-hot labels. Labels
    default to the model's own predictions, so the head then learns where the model has
    seen data. `epsilon="auto"` calibrates it so that `reject_rate` of clean rows are
    rejected: the rows of `calibration` (inputs as `inputs`), or else a held-out `holdout`
    share of `inputs`, never used as centers. `info["calibration"]` is the cross-validated
    calibration error on those rows (init.calibration_check). Rows the model was trained on
    sit closer to the training data than new data does, so calibrating on them rejects more
    new data than asked (7 to 16% for 5% on the zoo's digits models,
    benchmarks/ood_detectors.py): give `calibration` rows the model did not train on, and
    measure the error on test data with local.report.evaluate_head. A number sets epsilon.
    """
    if calibration is not None and epsilon != "auto":
        raise InputError("calibration rows calibrate epsilon='auto'; with a number for "
                         "epsilon there is nothing to calibrate")
    if per_class is not None and per_class < 1:
        raise InputError(f"per_class must be at least 1, got {per_class}")
    explainer = Explainer(model, providers, progress=progress)
    layers = _layer_features(explainer, layer, inputs)
    rows = len(next(iter(layers.values())))
    from_model = labels is None
    if from_model:
        labels, classes = _predictions(explainer, inputs)
    else:
        labels = class_labels(labels, rows)
        classes = int(labels.max()) + 1
    held_out = epsilon == "auto" and calibration is None
    fit_rows, held_rows = _split(rows, holdout if held_out else 0.0, seed)
    choice = None
    if layer == AUTO:
        tensor, choice = choose_layer({name: x[fit_rows] for name, x in layers.items()},
                                      labels[fit_rows], distance, seed)
    else:
        tensor = next(iter(layers))
    x = layers[tensor]
    count = (center_budget(x.shape[1]) if per_class is None
             else per_class * len(np.unique(labels[fit_rows])))
    count = min(len(fit_rows), count)
    local = classifier_from_data(x[fit_rows], labels[fit_rows], count, classes=classes,
                                 distance=distance, temperature=temperature, seed=seed)
    local.sources = fit_rows[local.sources]  # rows of the user's data, not of the fit subset
    calibrated_on = check = None
    if epsilon == "auto":
        clean = x[held_rows] if held_out else features(explainer, calibration, tensor)
        local.epsilon = calibrate_epsilon(local, clean, reject_rate)
        check = calibration_check(local, clean, reject_rate, seed=seed)
        calibrated_on = (f"{len(clean)} held-out rows of the fitting data" if held_out
                         else f"{len(clean)} calibration rows")
    else:
        local.epsilon = float(epsilon)
    info = {"layer": tensor, "layer_choice": choice, "distance": distance,
            "temperature": local.temperature,
            "epsilon": local.epsilon, "reject_rate": reject_rate if epsilon == "auto" else None,
            "calibrated_on": calibrated_on, "calibration": check,
            "classes": classes, "centers": local.size, "features": local.in_features,
            "centers_from": _centers_from(count, len(fit_rows), per_class),
            "sources": local.sources.tolist(), "labels": local.labels.tolist(),
            "labels_from": "model predictions" if from_model else "data",
            "outputs": {key: PREFIX + key for key in OUTPUTS}, "onnxplain": __version__}
    return LocalHead(attach(explainer.model, tensor, local, info, top), local, info)


def _layer_features(explainer: Explainer, layer: str, inputs) -> dict[str, np.ndarray]:
    """Flattened features by tensor: of the one named layer, or of every candidate layer
    (layer_choice.head_candidates) from one run for layer="auto"."""
    if layer != AUTO:
        tensor = _one_tensor(explainer.model, layer)
        return {tensor: features(explainer, inputs, tensor)}
    names = head_candidates(explainer.model)
    if not names:
        raise InputError(NO_CANDIDATE)
    values = explainer.forward(inputs, taps=names)
    return {name: values[name].reshape(len(values[name]), -1).astype(np.float32)
            for name in names}


def _centers_from(count: int, rows: int, per_class: int | None) -> str:
    if per_class is not None:
        return f"{per_class} fitting rows per class"
    if count == rows:
        return "every fitting row"
    return f"{count} of {rows} fitting rows, an equal share per class (center budget)"


def attach(model: Model, tensor: str, layer: LocalLayer, info: dict, top: int = 5
           ) -> onnx.ModelProto:
    """A copy of `model` with the head reading `tensor`, outputs and metadata added."""
    proto = onnx.ModelProto()
    proto.CopyFrom(standalone(model.proto))  # a file's weights embedded (graph.weights)
    taken = {o.name for o in proto.graph.output}
    clash = [PREFIX + key for key in OUTPUTS if PREFIX + key in taken]
    if clash:
        raise ModelError(f"the model already has outputs {', '.join(clash)}: it has a head")
    b = GraphBuilder(proto, model.infos, prefix="onnxplain/local")
    rows = b.op("Flatten", tensor, axis=1)
    if b.dtype(tensor) != TensorProto.FLOAT:
        rows = b.op("Cast", rows, to=TensorProto.FLOAT)
    shape = b.info(tensor).shape
    b.infos[rows] = TensorInfo(TensorProto.FLOAT, (shape[0] if shape else None,
                                                   layer.in_features))
    centers = b.initializer(layer.centers, "local/centers")
    emitted = emit_layer(b, rows, layer, "local", top=top, centers=centers)
    emitted["probabilities"] = emitted.pop("output")
    nearest = b.reduce("ReduceMin", es.emit_distances(b, rows, centers, layer.distance), [1],
                       False)
    b.infos[nearest] = b.infos[emitted["epsilon"]]
    emitted["nearest_distance"] = nearest
    for key in OUTPUTS:
        declare_output(b, emitted[key], PREFIX + key)
    onnx.helper.set_model_props(proto, {**{p.key: p.value for p in proto.metadata_props},
                                        METADATA_KEY: json.dumps(info)})
    set_runtime_ir_version(proto)
    onnx.checker.check_model(proto)
    return proto


def head_info(model: onnx.ModelProto) -> dict:
    for prop in model.metadata_props:
        if prop.key == METADATA_KEY:
            return json.loads(prop.value)
    raise ModelError("the model has no local head (fit one with 'onnxplain local-head fit')")


def _one_tensor(model: Model, layer: str) -> str:
    found = resolve_taps(model.proto, [layer])
    floats = [name for name in found if model.infos.get(name) and model.infos[name].is_float]
    if len(floats) != 1:
        raise InputError(f"'{layer}' names {len(floats)} float tensors; name one tensor")
    return floats[0]


def _predictions(explainer: Explainer, inputs) -> tuple[np.ndarray, int]:
    """The model's predicted class per row, and its number of classes."""
    scores = explainer.forward(inputs)[explainer.output]
    if scores.ndim != 2:
        raise InputError(f"output '{explainer.output}' has shape {scores.shape}; a head needs "
                         "a [batch, classes] output or labels")
    return scores.argmax(axis=1), scores.shape[1]


def class_labels(labels, rows: int) -> np.ndarray:
    """`rows` class indices as int64, from indices or one-hot/score rows (their argmax);
    one-line InputError otherwise. Shared by the local head and decoder probes."""
    labels = np.asarray(labels)
    if labels.ndim == 2:  # one-hot or scores
        labels = labels.argmax(axis=1)
    if labels.shape != (rows,) or labels.dtype.kind not in "iu" or labels.min() < 0:
        raise InputError(f"labels must be {rows} non-negative class indices, got "
                         f"{labels.dtype} {labels.shape}")
    return labels.astype(np.int64)


def _split(rows: int, holdout: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if not 0 <= holdout < 1:
        raise InputError(f"holdout must be in [0, 1), got {holdout}")
    order = np.random.default_rng(seed).permutation(rows)
    held = int(round(rows * holdout))
    if holdout and (held < 1 or rows - held < 2):
        raise InputError(f"{rows} rows are too few to hold out {holdout:.0%} for calibrating "
                         "epsilon")
    return np.sort(order[held:]), np.sort(order[:held])


@register_export("prototypes", ())
def prototypes(eg, options):
    """For a model with a local head (onnxplain local-head fit): the training row and label
    behind each reported prototype, and whether the epsilon neuron rejects the row."""
    b = eg.b
    info = head_info(eg.proto)
    centers = eg.batched(PREFIX + "prototypes")
    for key, meaning in (("sources", "training row"), ("labels", "label of the training row")):
        table = b.const(np.asarray(info[key], np.int64), key)
        eg.declare(b.op("Gather", table, centers, axis=0), f"{PREFIX}prototype_{key}",
                   f"int64 [N, top]: the {meaning} each prototype was drawn from",
                   TensorInfo(TensorProto.INT64, ("N", None)))
    strongest = b.squeeze(b.slice(eg.batched(PREFIX + "prototype_activations"), [0], [1], [1]),
                          [1])
    eg.declare(b.op("Greater", eg.batched(PREFIX + "epsilon"), strongest), PREFIX + "rejected",
               "bool [N]: the epsilon neuron is the most active one (the input is unlike "
               "the training data)", TensorInfo(TensorProto.BOOL, ("N",)))
