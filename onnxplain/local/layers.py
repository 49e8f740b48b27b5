"""Local layers: a distance layer with an epsilon-softmax, followed by a value table.

    [A, e] = EpsilonSoftmax(x, W)          activations of K centers and of the epsilon neuron
    MLP:        Y = [A, e] . V             V [K + 1, M]: a value per center, the last row for e
    residual:   Y = x + [A, e] . V         V [K + 1, D]: a shift per center
    classifier: Y = [A, e] . V             V one-hot class rows (epsilon row zero), so Y holds
                                           each class's share of the activation and sums with
                                           e to 1

(Sapkota, "On my search for locally activating neurons", equations 1-3.) Each layer has a
numpy forward (the reference) and an ONNX emission through the GraphBuilder.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.shapes import TensorInfo
from ..ops import epsilon_softmax as es

KINDS = ("classifier", "mlp", "residual")
INPUT = "x"
OUTPUT = "output"


@dataclass
class LocalLayer:
    """One local layer. `sources` is the training row each center was drawn from (-1 when it
    was not) and `labels` that row's label, kept for prototype explanations."""

    kind: str
    centers: np.ndarray
    values: np.ndarray
    distance: str = "l2"
    temperature: float = 1.0
    epsilon: float = float("-inf")
    sources: np.ndarray | None = None
    labels: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise InputError(f"unknown local layer kind '{self.kind}'; choose one of "
                             f"{', '.join(KINDS)}")
        self.centers = np.asarray(self.centers, np.float32)
        self.values = np.asarray(self.values, np.float32)
        es.check_attributes(self.distance, self.temperature, self.epsilon)
        if self.centers.ndim != 2 or self.centers.shape[0] == 0:
            raise InputError(f"centers must be a non-empty [K, D] array, got shape "
                             f"{self.centers.shape}")
        count = self.centers.shape[0]
        if self.values.ndim != 2 or self.values.shape[0] != count + 1:
            raise InputError(f"values must be [K + 1, M] = [{count + 1}, M] (a row per center "
                             f"and one for the epsilon neuron), got {self.values.shape}")
        if self.kind == "residual" and self.values.shape[1] != self.in_features:
            raise InputError(f"a residual layer's values must have as many columns as the "
                             f"input has features ({self.in_features}), got "
                             f"{self.values.shape[1]}")
        for name in ("sources", "labels"):
            value = getattr(self, name)
            if value is not None:
                value = np.asarray(value, np.int64)
                if value.shape != (count,):
                    raise InputError(f"{name} must have one entry per center ({count}), got "
                                     f"shape {value.shape}")
                setattr(self, name, value)

    @property
    def in_features(self) -> int:
        return int(self.centers.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.values.shape[1])

    @property
    def size(self) -> int:
        return int(self.centers.shape[0])

    def activations(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Numpy reference of the epsilon-softmax: (A [N, K], e [N])."""
        return es.reference(self._rows(x), self.centers, distance=self.distance,
                            temperature=self.temperature, epsilon=self.epsilon)

    def forward(self, x: np.ndarray) -> np.ndarray:
        x = self._rows(x)
        a, e = self.activations(x)
        y = np.concatenate([a, e[:, None]], axis=1) @ self.values
        return (x + y if self.kind == "residual" else y).astype(np.float32)

    def distances(self, x: np.ndarray) -> np.ndarray:
        return es.distances(self._rows(x).astype(np.float64),
                            self.centers.astype(np.float64), self.distance)

    def rejected(self, x: np.ndarray) -> np.ndarray:
        """True where the epsilon neuron has the highest activation: every similarity -d is
        below epsilon."""
        return -self.distances(x).min(axis=1) < self.epsilon

    def _rows(self, x: np.ndarray) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise InputError(f"expected inputs of shape [N, {self.in_features}], got {x.shape}")
        return x


@dataclass
class LocalNetwork:
    """Local layers applied one after the other; only the last may be a classifier."""

    layers: list[LocalLayer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.layers:
            raise InputError("a local network needs at least one layer")
        for i, (before, after) in enumerate(zip(self.layers, self.layers[1:], strict=False)):
            if before.kind == "classifier":
                raise InputError(f"layer {i} is a classifier; only the last layer may be one")
            if before.out_features != after.in_features:
                raise InputError(f"layer {i} gives {before.out_features} features but layer "
                                 f"{i + 1} takes {after.in_features}")

    def forward(self, x: np.ndarray) -> np.ndarray:
        for layer in self.layers:
            x = layer.forward(x)
        return x

    def to_onnx(self, opset: int = 18, top: int = 5) -> onnx.ModelProto:
        """A model x [N, D] -> `output`, and per layer i `layer{i}/activations`,
        `layer{i}/epsilon` and `layer{i}/prototypes` (indices of the `top` most active
        centers)."""
        first = self.layers[0]
        graph = helper.make_graph([], "local_network", [helper.make_tensor_value_info(
            INPUT, TensorProto.FLOAT, ["N", first.in_features])], [])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                                  producer_name="onnxplain")
        b = GraphBuilder(model, {INPUT: TensorInfo(TensorProto.FLOAT, ("N", first.in_features))})
        x = INPUT
        for i, layer in enumerate(self.layers):
            emitted = emit_layer(b, x, layer, f"layer{i}", top=top)
            for key in ("activations", "epsilon", "prototypes"):
                declare_output(b, emitted[key], f"layer{i}/{key}")
            x = emitted["output"]
        declare_output(b, x, OUTPUT)
        return model


def emit_layer(b: GraphBuilder, x: str, layer: LocalLayer, name: str, *, top: int = 5,
               centers: str | None = None, values: str | None = None) -> dict[str, str]:
    """Append one local layer reading the [N, D] tensor x. Centers and values become
    initializers unless tensor names are given (parameters fed as inputs when training).
    Returns the tensors 'activations', 'epsilon', 'output', and 'prototypes' with
    'prototype_activations' (the `top` most active centers and their activations)."""
    es.add_function(b.model, layer.distance)
    centers = centers or b.initializer(layer.centers, f"{name}/centers")
    values = values or b.initializer(layer.values, f"{name}/values")
    dtype = b.dtype(x)
    batch = b.info(x).shape[0] if b.info(x).shape else None
    activations, epsilon = b.fresh(f"{name}_activations"), b.fresh(f"{name}_epsilon")
    b.graph.node.append(es.make_node(x, centers, activations, epsilon, distance=layer.distance,
                                     temperature=layer.temperature, epsilon=layer.epsilon,
                                     name=b.fresh(f"{name}_epsilon_softmax")))
    b.infos[activations] = TensorInfo(dtype, (batch, layer.size))
    b.infos[epsilon] = TensorInfo(dtype, (batch,))
    full = b.concat([activations, b.unsqueeze(epsilon, [1])], axis=1)
    output = b.op("MatMul", full, values)
    if layer.kind == "residual":
        output = b.op("Add", x, output)
    b.infos[output] = TensorInfo(dtype, (batch, layer.out_features))
    count = min(top, layer.size)
    strongest, prototypes = b.node("TopK", [activations, b.ints([count])], 2, axis=1)
    b.infos[strongest] = TensorInfo(dtype, (batch, count))
    b.infos[prototypes] = TensorInfo(TensorProto.INT64, (batch, count))
    return {"activations": activations, "epsilon": epsilon, "output": output,
            "prototypes": prototypes, "prototype_activations": strongest}


def declare_output(b: GraphBuilder, tensor: str, name: str) -> str:
    """Expose `tensor` as graph output `name` (through an Identity)."""
    b.graph.node.append(helper.make_node("Identity", [tensor], [name],
                                         name=b.fresh("output_identity")))
    info = b.info(tensor)
    b.graph.output.append(helper.make_tensor_value_info(
        name, info.dtype, None if info.shape is None else list(info.shape)))
    b.infos[name] = info
    return name


def stack_values(one_hot_labels: np.ndarray) -> np.ndarray:
    """Values for center rows plus a zero row for the epsilon neuron."""
    rows = np.asarray(one_hot_labels, np.float32)
    return np.concatenate([rows, np.zeros((1, rows.shape[1]), np.float32)])
