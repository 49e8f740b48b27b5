"""Fine-tuning local networks in ONNX Runtime, and growing and pruning their neurons.

Fine-tuning builds one training graph per network: x, the targets and every trained
parameter are graph inputs, the loss is an output, and onnxplain's own autodiff adds
d(loss)/d(parameter) as standard ops. Adam (Kingma and Ba 2015) runs in numpy:

    m = b1 m + (1 - b1) g,   v = b2 v + (1 - b2) g^2,
    p = p - lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)

Losses, with Y the last layer's output:
    cross_entropy: -mean_n log(max(Y[n, label_n], 1e-7))   (a classifier's Y is a class share)
    mse:           mean_{n, m} (Y[n, m] - T[n, m])^2

Neuron addition puts new centers on the rows the layer fits worst, valued as the data
initialisation values them; pruning drops the centers the data never activates (the seed's
"repetitive local neuron addition and pruning").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..autodiff import differentiate
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..runtime.session import Session, resolve_providers
from .layers import INPUT, LocalLayer, LocalNetwork, declare_output, emit_layer

LOSSES = ("cross_entropy", "mse")
PARTS = ("centers", "values")
TARGET = "target"
LOSS = "loss"
# Floor on the true class's share before the log: a row no center of its class reaches
# would otherwise give log(0).
PROBABILITY_FLOOR = 1e-7


@dataclass
class TrainingGraph:
    """The differentiated training model. `params` maps each parameter input to its
    (layer index, 'centers' or 'values'); `grads` maps it to its gradient output."""

    model: onnx.ModelProto
    params: dict[str, tuple[int, str]]
    grads: dict[str, str]
    seed: str


@dataclass
class FineTuneResult:
    network: LocalNetwork
    history: list[float]  # per epoch, the mean mini-batch loss


def default_loss(network: LocalNetwork) -> str:
    return "cross_entropy" if network.layers[-1].kind == "classifier" else "mse"


def default_parts(layer: LocalLayer) -> tuple[str, ...]:
    # A classifier keeps its one-hot values so that its outputs stay class shares.
    return ("centers",) if layer.kind == "classifier" else PARTS


def training_graph(network: LocalNetwork, loss: str, train: Sequence[str] | None = None,
                   dtype=np.float32, opset: int = 18) -> TrainingGraph:
    """Inputs x [N, D], `target` (int64 [N] labels or float [N, M]) and the trained
    parameters `layer{i}/centers|values`; output `loss` (a scalar) and its gradients."""
    check_loss(network, loss)
    parts = _check_parts(train)
    tt = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    first, last = network.layers[0], network.layers[-1]
    target_type = TensorProto.INT64 if loss == "cross_entropy" else tt
    target_shape = ["N"] if loss == "cross_entropy" else ["N", last.out_features]
    inputs = [helper.make_tensor_value_info(INPUT, tt, ["N", first.in_features]),
              helper.make_tensor_value_info(TARGET, target_type, target_shape)]
    model = helper.make_model(helper.make_graph([], "local_training", inputs, []),
                              opset_imports=[helper.make_opsetid("", opset)],
                              producer_name="onnxplain")
    b = GraphBuilder(model, {INPUT: TensorInfo(tt, ("N", first.in_features)),
                             TARGET: TensorInfo(target_type, tuple(target_shape))})
    params: dict[str, tuple[int, str]] = {}
    h = INPUT
    for i, layer in enumerate(network.layers):
        names = {part: _parameter(b, layer, i, part, part in (parts or default_parts(layer)),
                                  dtype, params) for part in PARTS}
        h = emit_layer(b, h, layer, f"layer{i}", top=1, **names)["output"]
    declare_output(b, _emit_loss(b, h, loss), LOSS)
    diff = differentiate(model, list(params), outputs=[LOSS])
    return TrainingGraph(diff.model, params, diff.grads, diff.seeds[LOSS])


def _parameter(b: GraphBuilder, layer: LocalLayer, index: int, part: str, trained: bool,
               dtype, params: dict[str, tuple[int, str]]) -> str:
    """A trained parameter is a graph input (recorded in params), a fixed one an initializer
    of the training dtype."""
    value, name = getattr(layer, part).astype(dtype), f"layer{index}/{part}"
    if not trained:
        return b.initializer(value, name)
    tt = helper.np_dtype_to_tensor_dtype(value.dtype)
    b.graph.input.append(helper.make_tensor_value_info(name, tt, list(value.shape)))
    b.infos[name] = TensorInfo(tt, value.shape)
    params[name] = (index, part)
    return name


def _emit_loss(b: GraphBuilder, y: str, loss: str) -> str:
    if loss == "cross_entropy":
        share = b.op("GatherElements", y, b.unsqueeze(TARGET, [1]), axis=1)
        logs = b.op("Log", b.op("Max", share, b.scalar(PROBABILITY_FLOOR, y)))
        value = b.op("Neg", b.reduce("ReduceMean", logs, None, False))
    else:
        error = b.op("Sub", y, TARGET)
        value = b.reduce("ReduceMean", b.op("Mul", error, error), None, False)
    b.infos[value] = TensorInfo(b.dtype(y), ())
    return value


def fine_tune(network: LocalNetwork, x: np.ndarray, targets: np.ndarray, *,
              loss: str | None = None, epochs: int = 20, batch_size: int = 64,
              lr: float = 1e-2, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
              train: Sequence[str] | None = None, seed: int = 0, providers=None
              ) -> FineTuneResult:
    """Adam on mini-batches (shuffled with `seed`), gradients from the ONNX training graph.
    `train` picks 'centers' and/or 'values' for every layer; by default a classifier trains
    its centers, an MLP or residual layer both. The input network is left unchanged."""
    loss = loss or default_loss(network)
    x, targets = check_data(network, x, targets, loss)
    _check_schedule(epochs, batch_size, lr, betas)
    tg = training_graph(network, loss, train)
    session = Session(tg.model, resolve_providers(providers))
    params = {name: getattr(network.layers[i], part).astype(np.float64)
              for name, (i, part) in tg.params.items()}
    adam = Adam(params, lr, betas, eps)

    def feeds_for(rows: np.ndarray) -> dict[str, np.ndarray]:
        feeds = {INPUT: x[rows], TARGET: targets[rows], tg.seed: np.ones((), np.float32)}
        return feeds | {name: p.astype(np.float32) for name, p in params.items()}

    history = adam_epochs(session, [LOSS] + [tg.grads[name] for name in params], LOSS,
                          len(x), epochs, batch_size, seed, feeds_for,
                          lambda result: adam.step({name: result[tg.grads[name]]
                                                    for name in params}))
    layers = [_copy(layer) for layer in network.layers]
    for name, (i, part) in tg.params.items():
        layers[i] = _copy(layers[i], **{part: params[name].astype(np.float32)})
    return FineTuneResult(LocalNetwork(layers), history)


def adam_epochs(session: Session, outputs: list[str], loss: str, count: int, epochs: int,
                batch_size: int, seed: int, feeds_for: Callable[[np.ndarray], dict],
                step: Callable[[dict], None]) -> list[float]:
    """Mini-batch epochs over `count` rows, shuffled with `seed`: each batch's feeds_for(rows)
    run for `outputs`, the result handed to `step` (the optimiser's); returns the mean batch
    `loss` per epoch."""
    rng, history, size = np.random.default_rng(seed), [], min(batch_size, count)
    for _ in range(epochs):
        order, total = rng.permutation(count), 0.0
        for first in range(0, count, size):
            rows = order[first:first + size]
            result = session.run(outputs, feeds_for(rows))
            total += float(result[loss]) * len(rows)
            step(result)
        history.append(total / count)
    return history


class Adam:
    """Adam over float64 master copies of the parameters, updated in place."""

    def __init__(self, params: dict[str, np.ndarray], lr: float,
                 betas: tuple[float, float], eps: float):
        self.params, self.lr, self.betas, self.eps, self.t = params, lr, betas, eps, 0
        self.moments = {name: (np.zeros_like(p), np.zeros_like(p)) for name, p in params.items()}

    def step(self, grads: dict[str, np.ndarray]) -> None:
        self.t += 1
        b1, b2 = self.betas
        for name, p in self.params.items():
            m, v = self.moments[name]
            g = grads[name].astype(np.float64)
            m[:] = b1 * m + (1 - b1) * g
            v[:] = b2 * v + (1 - b2) * g * g
            m_hat, v_hat = m / (1 - b1 ** self.t), v / (1 - b2 ** self.t)
            p -= self.lr * m_hat / (np.sqrt(v_hat) + self.eps)


def _copy(layer: LocalLayer, **changes) -> LocalLayer:
    """A layer with its own arrays (replace alone would share them with the original)."""
    fields = {name: None if getattr(layer, name) is None else np.array(getattr(layer, name))
              for name in ("centers", "values", "sources", "labels")}
    return dataclasses.replace(layer, **(fields | changes))


def row_losses(model: LocalNetwork | LocalLayer, x: np.ndarray, targets: np.ndarray,
               loss: str | None = None) -> np.ndarray:
    """Numpy per-row loss [N]: -log(max(Y[n, label_n], 1e-7)) or mean_m (Y[n, m] - T[n, m])^2."""
    network = model if isinstance(model, LocalNetwork) else LocalNetwork([model])
    loss = loss or default_loss(network)
    x, targets = check_data(network, x, targets, loss)
    y = network.forward(x).astype(np.float64)
    if loss == "cross_entropy":
        share = y[np.arange(len(y)), targets]
        return -np.log(np.maximum(share, PROBABILITY_FLOOR))
    return ((y - targets) ** 2).mean(axis=1)


def add_neurons(layer: LocalLayer, x: np.ndarray, targets: np.ndarray, count: int,
                labels: np.ndarray | None = None) -> LocalLayer:
    """`count` new centers at the rows of x with the highest row loss, skipping rows that are
    already a center's source. Their values are as in the data initialisation: the one-hot
    label (classifier; targets are labels), the target (mlp) or target - x (residual). New
    `sources` index the rows of x, new `labels` are the targets (classifier) or `labels`."""
    if not isinstance(count, int | np.integer) or count < 1:
        raise InputError(f"count must be a positive integer, got {count}")
    single = LocalNetwork([layer])
    x, targets = check_data(single, x, targets, default_loss(single))
    if labels is not None and np.shape(labels) != (len(x),):
        raise InputError(f"labels must have one entry per row ({len(x)}), got shape "
                         f"{np.shape(labels)}")
    losses = row_losses(single, x, targets)
    free = np.ones(len(x), bool)
    if layer.sources is not None:
        free[layer.sources[(layer.sources >= 0) & (layer.sources < len(x))]] = False
    candidates = np.flatnonzero(free)
    if not len(candidates):
        raise InputError("every row of x is already the source of a center")
    rows = candidates[np.argsort(-losses[candidates], kind="stable")[:count]]
    if layer.kind == "classifier":
        new_values, labels = np.eye(layer.out_features)[targets[rows]], targets
    else:
        new_values = targets[rows] - (x[rows] if layer.kind == "residual" else 0)
    sources = layer.sources if layer.sources is not None else np.full(layer.size, -1)
    new_labels = None
    if layer.labels is not None or labels is not None:
        old = layer.labels if layer.labels is not None else np.full(layer.size, -1)
        added = np.asarray(labels)[rows] if labels is not None else np.full(len(rows), -1)
        new_labels = np.concatenate([old, added])
    return _copy(layer, centers=np.concatenate([layer.centers, x[rows]]),
                 values=np.concatenate([layer.values[:-1], new_values, layer.values[-1:]]),
                 sources=np.concatenate([sources, rows]), labels=new_labels)


def prune(layer: LocalLayer, x: np.ndarray, min_activation: float = 1e-2,
          min_wins: int = 0) -> LocalLayer:
    """Drop centers whose highest activation over x is below `min_activation` or that are
    the most active center for fewer than `min_wins` rows; the most active center stays if
    none would. Values, sources and labels keep their rows in step; epsilon's row stays last.
    A dropped center's share moves to the rest, so outputs change by at most about twice the
    dropped activation times the largest value."""
    activations, _ = layer.activations(x)
    peak = activations.max(axis=0)
    wins = np.bincount(activations.argmax(axis=1), minlength=layer.size)
    keep = (peak >= min_activation) & (wins >= min_wins)
    if not keep.any():
        keep[int(peak.argmax())] = True
    return _copy(layer, centers=layer.centers[keep],
                 values=np.concatenate([layer.values[:-1][keep], layer.values[-1:]]),
                 sources=None if layer.sources is None else layer.sources[keep],
                 labels=None if layer.labels is None else layer.labels[keep])


# ---- checks ------------------------------------------------------------------------------
def check_loss(network: LocalNetwork, loss: str) -> None:
    if loss not in LOSSES:
        raise InputError(f"unknown loss '{loss}'; choose one of {', '.join(LOSSES)}")
    if loss == "cross_entropy" and network.layers[-1].kind != "classifier":
        raise InputError(f"cross_entropy needs a classifier as the last layer, not a "
                         f"{network.layers[-1].kind} layer (use mse)")


def check_data(network: LocalNetwork, x: np.ndarray, targets: np.ndarray, loss: str
               ) -> tuple[np.ndarray, np.ndarray]:
    """x as float32 [N, D] and targets as int64 labels [N] or float32 [N, M]."""
    check_loss(network, loss)
    x, targets = np.asarray(x), np.asarray(targets)
    first, last = network.layers[0], network.layers[-1]
    if x.ndim != 2 or x.dtype.kind != "f" or x.shape[1] != first.in_features or not len(x):
        raise InputError(f"x must be a non-empty float [N, {first.in_features}] array, got "
                         f"{x.dtype} {x.shape}")
    if loss == "cross_entropy":
        if targets.shape != (len(x),) or targets.dtype.kind not in "iu":
            raise InputError(f"cross_entropy targets must be integer labels of shape "
                             f"[{len(x)}], got {targets.dtype} {targets.shape}")
        if targets.min() < 0 or targets.max() >= last.out_features:
            raise InputError(f"labels must lie in [0, {last.out_features}), got "
                             f"{targets.min()}..{targets.max()}")
        return x.astype(np.float32), targets.astype(np.int64)
    if targets.shape != (len(x), last.out_features) or targets.dtype.kind != "f":
        raise InputError(f"mse targets must be a float [{len(x)}, {last.out_features}] "
                         f"array, got {targets.dtype} {targets.shape}")
    return x.astype(np.float32), targets.astype(np.float32)


def _check_parts(train: Sequence[str] | None) -> tuple[str, ...] | None:
    if train is None:
        return None
    parts = (train,) if isinstance(train, str) else tuple(train)
    if not parts or any(p not in PARTS for p in parts):
        raise InputError(f"train must name some of {', '.join(PARTS)}, got {train!r}")
    return parts


def _check_schedule(epochs: int, batch_size: int, lr: float, betas: tuple[float, float]
                    ) -> None:
    if not isinstance(epochs, int | np.integer) or epochs < 1:
        raise InputError(f"epochs must be a positive integer, got {epochs}")
    if not isinstance(batch_size, int | np.integer) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size}")
    if not lr > 0:
        raise InputError(f"lr must be positive, got {lr}")
    if not all(0 <= beta < 1 for beta in betas):
        raise InputError(f"betas must lie in [0, 1), got {betas}")
