"""Training a decoder in ONNX Runtime, with gradients from onnxplain.autodiff.

Loss over a batch of B rows, with x_hat = D(a) the reconstruction of target x:
    L = mean((x_hat - x)^2) + ridge * ||W||^2 + classifier_weight * mean_n CE(f(x_hat_n), y_n)
where W is the linear decoder's weight (the conv decoder is not penalised) and f the model from the
target on (the classifier-aware variant of Schneider & Vlachos 2022): CE is
logsumexp(z) - z_y on logits, or -log(max(p_y, 1e-7)) when the model ends in a Softmax.
The model's nodes are copied into the training graph reading x_hat where they read x
(its weights shared as constants); other inputs they read (an attention mask) are fed.
On token models the squared error's mean runs over the real positions only (`real`, as the
closed form leaves padding out); the model's cross-entropy sees every position, as the
model masks padding itself. Adam is local.train's, one per parameter tensor for its own
step size (step_scales).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..autodiff import differentiate
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.layer_copy import layer_copy
from ..graph.load import set_runtime_ir_version
from ..graph.model import Model
from ..graph.shapes import TensorInfo
from ..graph.walk import ancestors, node_inputs
from ..graph.weights import standalone
from ..local.layers import declare_output
from ..local.train import PROBABILITY_FLOOR, Adam, adam_epochs
from ..runtime.session import Session, resolve_providers
from .decoders import Decoder, emit_decoder

ACTIVATION = "probe/activation"
TARGET = "probe/target"
LABEL = "probe/label"
REAL = "probe/real"  # float [N, T]: 1 at positions that are not padding
LOSS = "probe/loss"
RECONSTRUCTION = "probe/reconstruction"
PARAM = "probe/param/"
DECODER_OPSET = 18
# The weights the ridge penalty covers: the linear decoder's, as in its closed form. The
# conv decoder goes unpenalised: at the same strength, sum ||W||^2 over its ~20k weights
# outweighs the reconstruction error and pulls deep layers' decoders to the mean image.
PENALISED = {"linear": ("weight",), "conv": ()}


@dataclass
class Classifier:
    """The model applied to the reconstruction: its output scores (logits or a Softmax's
    shares), the weight of its cross-entropy, and per-row feeds for the other inputs it
    reads (rows aligned with the activations)."""

    model: Model
    target: str
    output: str
    weight: float
    labels: np.ndarray                # int64 [N]
    feeds: dict[str, np.ndarray]      # model inputs (those the copied nodes read are fed)


@dataclass
class Schedule:
    epochs: int
    batch_size: int
    lr: float
    ridge: float
    seed: int
    opset: int = DECODER_OPSET  # the model's: its decoders are emitted at that opset too


@dataclass
class Trained:
    """A training run: the decoder kept, the mean batch loss per epoch, and the loss over all
    rows at the starting and at the trained weights (`kept`: which of the two is shipped,
    the one of lower loss: training must not end worse than its start)."""

    decoder: Decoder
    history: list[float]
    start_loss: float
    trained_loss: float
    kept: str   # "trained" or "start"


def train(decoder: Decoder, activations: np.ndarray, targets: np.ndarray, schedule: Schedule,
          classifier: Classifier | None = None, providers=None,
          real: np.ndarray | None = None) -> Trained:
    """Adam on shuffled mini-batches from `decoder`'s weights; keeps the trained weights
    unless their loss over all rows is above the start's. `real` (bool [N, T], per-position
    decoders) leaves padding positions out of the squared error."""
    model, names = training_model(decoder, classifier, schedule.opset,
                                  masked=real is not None)
    diff = differentiate(model, list(names.values()), outputs=[LOSS])
    session = Session(diff.model, resolve_providers(providers))
    read = {value.name for value in diff.model.graph.input}  # the model inputs copied nodes read
    weights = None if real is None else real.astype(np.float32)
    start = {key: value.astype(np.float64) for key, value in decoder.params.items()}
    params = {key: value.copy() for key, value in start.items()}
    scales = step_scales(decoder, float(np.sqrt((activations.astype(np.float64) ** 2).mean())),
                         float(targets.std()))
    optimisers = [Adam({key: params[key]}, schedule.lr * scales[key], (0.9, 0.999), 1e-8)
                  for key in params]
    outputs = [LOSS] + [diff.grads[name] for name in names.values()]
    ridge = np.array(schedule.ridge, np.float32)
    size = min(schedule.batch_size, len(activations))

    def feeds_for(rows: np.ndarray, values: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {ACTIVATION: activations[rows], TARGET: targets[rows],
                 diff.seeds[LOSS]: np.ones((), np.float32), "probe/ridge": ridge}
        feeds |= {names[key]: p.astype(np.float32) for key, p in values.items()}
        if weights is not None:
            feeds[REAL] = weights[rows]
        if classifier is not None:
            feeds[LABEL] = classifier.labels[rows]
            feeds |= {name: value[rows] for name, value in classifier.feeds.items()
                      if name in read}
        return feeds

    def loss_at(values: dict[str, np.ndarray]) -> float:
        batches = [np.arange(i, min(i + size, len(activations)))
                   for i in range(0, len(activations), size)]
        return sum(float(session.run([LOSS], feeds_for(rows, values))[LOSS]) * len(rows)
                   for rows in batches) / len(activations)

    def step(result: dict[str, np.ndarray]) -> None:
        for adam in optimisers:
            adam.step({key: result[diff.grads[names[key]]] for key in adam.params})

    history = adam_epochs(session, outputs, LOSS, len(activations), schedule.epochs,
                          schedule.batch_size, schedule.seed,
                          lambda rows: feeds_for(rows, params), step)
    start_loss, trained_loss = loss_at(start), loss_at(params)
    kept = "trained" if trained_loss <= start_loss else "start"
    chosen = params if kept == "trained" else start
    return Trained(replace(decoder, params={k: p.astype(np.float32) for k, p in chosen.items()}),
                   history, start_loss, trained_loss, kept)


def step_scales(decoder: Decoder, rms: float, spread: float) -> dict[str, float]:
    """Each parameter's Adam step relative to lr, so that lr is a share of the target's
    spread (standard deviation) whatever the units: spread / (sqrt(fan_in) * input scale)
    for weights, spread for biases. Adam moves every weight by about its step, so an output
    summing fan_in inputs of root mean square `rms` moves by up to step * fan_in * rms when
    the steps agree in sign (they do on a ReLU layer's positive activations): unscaled, the
    flattened linear decoder of the digits CNN's 4x4x64 layer jumped by ~5 a step at lr 1e-3,
    and BERT's embeddings (spread ~0.05) left the closed form at once. The conv decoder's
    hidden layer has a scale near 1 (its input conv is scaled to the data)."""
    rms, spread = rms or 1.0, spread or 1.0
    scales = {key: spread for key in decoder.params}
    for key, value in decoder.params.items():
        if key.startswith("weight"):
            fan_in = value.shape[0] if decoder.kind == "linear" else int(np.prod(value.shape[1:]))
            scale = rms if key in ("weight", "weight1") else 1.0
            scales[key] = spread / (np.sqrt(fan_in) * scale)
    return scales


def training_model(decoder: Decoder, classifier: Classifier | None,
                   opset: int = DECODER_OPSET, masked: bool = False
                   ) -> tuple[onnx.ModelProto, dict[str, str]]:
    """The loss graph; returns it and the graph input of each decoder parameter. `masked`
    (per-position decoders): the squared error is averaged over the positions where input
    `probe/real` [N, T] is 1."""
    opsets = (list(classifier.model.proto.opset_import) if classifier is not None
              else [helper.make_opsetid("", opset)])
    names = {key: PARAM + key for key in decoder.params}
    infos = {ACTIVATION: TensorInfo(TensorProto.FLOAT, ("N", *decoder.layer_shape)),
             TARGET: TensorInfo(TensorProto.FLOAT, ("N", *decoder.target_shape)),
             "probe/ridge": TensorInfo(TensorProto.FLOAT, ())}
    if masked:
        infos[REAL] = TensorInfo(TensorProto.FLOAT, ("N", decoder.target_shape[0]))
    infos |= {names[key]: TensorInfo(TensorProto.FLOAT, value.shape)
              for key, value in decoder.params.items()}
    inputs = [helper.make_tensor_value_info(name, info.dtype, list(info.shape))
              for name, info in infos.items()]
    model = helper.make_model(helper.make_graph([], "probe_training", inputs, []),
                              opset_imports=opsets, producer_name="onnxplain")
    prefix = None
    if classifier is not None:
        prefix = _model_nodes(classifier)
        _add_model_inputs(model, classifier, prefix, infos)
    b = GraphBuilder(model, infos, prefix="probe")
    x_hat = emit_decoder(b, ACTIVATION, decoder, "probe/decoder", params=names)
    b.infos[x_hat] = infos[TARGET]
    error = b.op("Sub", x_hat, TARGET)
    terms = [_mean_square(b, error, decoder.target_shape[-1] if masked else None)]
    squares = [b.reduce("ReduceSum", b.op("Mul", names[k], names[k]), None, False)
               for k in PENALISED[decoder.kind]]
    if squares:
        terms.append(b.op("Mul", "probe/ridge", b.add_all(squares)))
    if classifier is not None:
        scores = layer_copy(b, prefix, classifier.model.infos, classifier.output,
                            {classifier.target: x_hat})
        ce = _cross_entropy(b, scores, _ends_in_softmax(classifier))
        terms.append(b.op("Mul", ce, b.scalar(classifier.weight, ce)))
    loss = b.add_all(terms)
    b.infos[loss] = TensorInfo(TensorProto.FLOAT, ())
    declare_output(b, loss, LOSS)
    set_runtime_ir_version(model)
    return model, names


def _mean_square(b: GraphBuilder, error: str, width: int | None) -> str:
    """mean(error^2); with `width` (E), over the real positions of error [N, T, E]:
    sum(real * error^2) / (E * sum(real))."""
    square = b.op("Mul", error, error)
    if width is None:
        return b.reduce("ReduceMean", square, None, False)
    kept = b.reduce("ReduceSum", b.op("Mul", square, b.unsqueeze(REAL, [2])), None, False)
    count = b.op("Mul", b.reduce("ReduceSum", REAL, None, False), b.scalar(float(width), REAL))
    return b.op("Div", kept, count)


def _model_nodes(classifier: Classifier) -> list[onnx.NodeProto]:
    """The nodes the output is computed from, down to the target (which x_hat replaces)."""
    nodes = ancestors(classifier.model.proto.graph.node, [classifier.output],
                      stop=[classifier.target])
    if not any(classifier.target in node_inputs(node) for node in nodes):
        raise InputError(f"output '{classifier.output}' is not computed from "
                         f"'{classifier.target}'; the classifier-aware loss needs it")
    return nodes


def _add_model_inputs(model: onnx.ModelProto, classifier: Classifier,
                      nodes: list[onnx.NodeProto], infos: dict[str, TensorInfo]) -> None:
    """The model's weights the copied nodes read, the labels, and the model inputs they read
    besides the target (fed per batch)."""
    reads = {name for node in nodes for name in node_inputs(node)}
    weights = standalone(classifier.model.proto).graph.initializer
    model.graph.initializer.extend(init for init in weights if init.name in reads)
    extra = {spec.name: spec.info for spec in classifier.model.inputs
             if spec.name in reads and spec.name != classifier.target}
    infos[LABEL] = TensorInfo(TensorProto.INT64, ("N",))
    for name, info in {**extra, LABEL: infos[LABEL]}.items():
        dims = None if info.shape is None else [d if isinstance(d, int) else None
                                                for d in info.shape]
        model.graph.input.append(helper.make_tensor_value_info(name, info.dtype, dims))
        infos[name] = info


def _ends_in_softmax(classifier: Classifier) -> bool:
    producer = classifier.model.node_by_output.get(classifier.output)
    return producer is not None and producer.op_type == "Softmax"


def _cross_entropy(b: GraphBuilder, scores: str, shares: bool) -> str:
    """mean_n -log p[n, y_n]: from class shares directly, from logits via logsumexp."""
    b.infos[scores] = TensorInfo(TensorProto.FLOAT, ("N", None))
    picked = b.op("GatherElements", scores, b.unsqueeze(LABEL, [1]), axis=1)
    if shares:
        per_row = b.op("Neg", b.op("Log", b.op("Max", picked, b.scalar(PROBABILITY_FLOOR,
                                                                       picked))))
    else:
        per_row = b.op("Sub", b.reduce("ReduceLogSumExp", scores, [1], True), picked)
    return b.reduce("ReduceMean", per_row, None, False)


def decoder_model(decoder: Decoder, opset: int = DECODER_OPSET) -> onnx.ModelProto:
    """The decoder alone: `probe/activation` [N, *layer_shape] -> `probe/reconstruction`."""
    info = TensorInfo(TensorProto.FLOAT, ("N", *decoder.layer_shape))
    inputs = [helper.make_tensor_value_info(ACTIVATION, info.dtype, list(info.shape))]
    model = helper.make_model(helper.make_graph([], "probe_decoder", inputs, []),
                              opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnxplain")
    b = GraphBuilder(model, {ACTIVATION: info}, prefix="probe")
    x_hat = emit_decoder(b, ACTIVATION, decoder, "probe/decoder")
    b.infos[x_hat] = TensorInfo(TensorProto.FLOAT, ("N", *decoder.target_shape))
    declare_output(b, x_hat, RECONSTRUCTION)
    set_runtime_ir_version(model)
    return model


def reconstruct(decoder: Decoder, activations: np.ndarray, providers=None,
                batch_size: int = 512, opset: int = DECODER_OPSET) -> np.ndarray:
    """The decoder's reconstruction of every row, [N, *target_shape] float32."""
    session = Session(decoder_model(decoder, opset), resolve_providers(providers))
    parts = [session.run([RECONSTRUCTION], {ACTIVATION: activations[i:i + batch_size]})
             [RECONSTRUCTION] for i in range(0, len(activations), batch_size)]
    return np.concatenate(parts).astype(np.float32)
