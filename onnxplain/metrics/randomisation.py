"""Sanity check by model-parameter randomisation (Adebayo et al. 2018, "Sanity Checks for
Saliency Maps", NeurIPS, arXiv:1810.03292).

The weights of the model's layers are re-initialised at random, cascading from the top (the
layer nearest the output first, then the one below it, keeping the earlier ones random),
and the same method explains the same inputs and target again. An explanation that
depends on what the model learned changes: its Spearman rank correlation with the original,

    rho_l = corr(R(A), R(A_l)) per row,   R = ranks (ties averaged),

falls towards 0 as layers l are randomised; a method that passes shows low correlation. A
"layer" is a weighted node (Conv, ConvTranspose, Gemm, MatMul) with float initializer
weights, with its bias (a MatMul's bias is the Add right after it), in topological order.
The user's model is never modified: each step explains a copy.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from ..attribution import Attribution
from ..errors import InputError
from ..explainer import Explainer
from ..graph.op_kinds import CONVOLUTIONS, WEIGHTED
from ..graph.weights import tensor_value
from ..inputs import Inputs, prepare_inputs
from ..runtime.progress import progress_bar
from ._common import check_output, row_values, spearman


@dataclass(frozen=True)
class Layer:
    """A weighted node: its name, op type, the initializers it owns (weight first) and the
    fan-in of its weight (inputs summed into one output value)."""

    node: str
    op_type: str
    weights: tuple[str, ...]
    fan_in: int


# randomise(layer, {initializer name: array}, rng) -> new arrays (same names and shapes).
Randomiser = Callable[[Layer, Mapping[str, np.ndarray], np.random.Generator],
                      Mapping[str, np.ndarray]]


@dataclass
class Randomisation:
    """Correlations [layers, rows] of the original attribution with the attribution of each
    randomisation step (`layers[l]` the layer randomised at step l)."""

    layers: list[Layer]
    order: str
    spearman: np.ndarray
    spearman_abs: np.ndarray  # of |A|, as Adebayo et al. also report


def weighted_layers(model: onnx.ModelProto) -> list[Layer]:
    """The model's weighted nodes with float initializer weights, in topological order."""
    graph = model.graph
    inits = {init.name: init for init in graph.initializer}
    floats = {name for name, init in inits.items()
              if init.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.DOUBLE,
                                    onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16)}
    users: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            users.setdefault(name, []).append(node)
    layers = []
    for index, node in enumerate(graph.node):
        if node.op_type not in WEIGHTED:
            continue
        weights = _owned(node, floats, users)
        if not weights:
            continue
        name = node.name or f"{node.op_type}_{index}"
        layers.append(Layer(name, node.op_type, weights, _fan_in(node, weights[0], inits)))
    return layers


def reinitialise(layer: Layer, weights: Mapping[str, np.ndarray], rng: np.random.Generator
                 ) -> dict[str, np.ndarray]:
    """Every array of the layer drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)): the
    distribution torch's reset_parameters gives Conv and Linear weights (Kaiming uniform,
    a = sqrt(5)) and biases. Adebayo et al. drew truncated normals; either removes what
    was learned."""
    bound = 1.0 / np.sqrt(max(layer.fan_in, 1))
    return {name: rng.uniform(-bound, bound, value.shape).astype(value.dtype)
            for name, value in weights.items()}


def randomised_models(model: onnx.ModelProto, layers: Sequence[Layer], *, seed: int = 0,
                      order: str = "cascading", randomise: Randomiser = reinitialise
                      ) -> Iterator[tuple[Layer, onnx.ModelProto]]:
    """For each layer in `layers` (given top first): a copy of `model` with that layer's
    weights randomised, and with "cascading" also those of every layer before it;
    "independent" randomises one layer at a time. `model` is left as it is."""
    if order not in ("cascading", "independent"):
        raise InputError(f"order must be 'cascading' or 'independent', got {order!r}")
    original = {init.name: tensor_value(init) for init in model.graph.initializer}
    current: dict[str, np.ndarray] = {}
    for step, layer in enumerate(layers):
        if order == "independent":
            current = {}
        # Weights shared by several layers are randomised once, by the first (top) one.
        mine = {name: original[name] for name in layer.weights if name not in current}
        rng = np.random.default_rng([int(seed), step])
        new = randomise(layer, mine, rng)
        for name, value in new.items():
            value = np.asarray(value)
            if name not in mine or value.shape != mine[name].shape:
                raise InputError(f"the randomiser returned '{name}' of shape {value.shape}; "
                                 f"layer {layer.node} owns {list(mine)}")
            current[name] = value.astype(mine[name].dtype, copy=False)
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        for init in copy.graph.initializer:
            if init.name in current:
                init.CopyFrom(numpy_helper.from_array(current[init.name], init.name))
        yield layer, copy


def parameter_randomisation(explainer, inputs: Inputs, attribution: Attribution, *,
                            layers: int | Sequence[str] | None = None, seed: int = 0,
                            order: str = "cascading", randomise: Randomiser = reinitialise,
                            output_seed=None, batch_size: int | None = None) -> Randomisation:
    """Re-explain `inputs` with the attribution's method, options and target on copies of
    the explainer's model with randomised layers; the Spearman correlations per step.

    `layers`: None for every weighted layer, N for the top N, or node names; they are
    randomised top first. `randomise` draws new weights (default: reinitialise).
    """
    check_output(explainer, attribution)
    chosen = _choose(weighted_layers(explainer.model.proto), layers)
    feeds = prepare_inputs(explainer.model, inputs)
    original = row_values(attribution, feeds)
    target = None if attribution.objective != "class" else attribution.target
    if attribution.seed is not None:  # a dense objective: the clean run's weights (and place)
        output_seed = attribution.seed
    attribute_at = {s.input: s.tensor for s in explainer.sources if s.tensor != s.input}
    correlations, absolute = [], []
    with progress_bar(getattr(explainer.engine, "progress", True), len(chosen),
                      "randomised layers", "layer") as bar:
        for layer, model in randomised_models(explainer.model.proto, chosen, seed=seed,
                                              order=order, randomise=randomise):
            bar.set_postfix_str(layer.node, refresh=False)
            random_explainer = Explainer(
                model, explainer.providers, output=explainer.output, attribute_at=attribute_at,
                optimization=explainer.engine.optimization,
                memory_budget_mb=explainer.memory_budget_mb,
                progress=getattr(explainer.engine, "progress", True))
            with warnings.catch_warnings():
                # Convergence and conservation warnings would be about the random model.
                warnings.simplefilter("ignore")
                again = random_explainer.explain(feeds, attribution.method, target,
                                                 output_seed=output_seed,
                                                 batch_size=batch_size, **attribution.options)
            values = row_values(again, feeds)
            correlations.append(spearman(original, values))
            absolute.append(spearman(np.abs(original), np.abs(values)))
            bar.update(1)
    return Randomisation(chosen, order, np.array(correlations), np.array(absolute))


def _choose(found: list[Layer], layers: int | Sequence[str] | None) -> list[Layer]:
    """The layers to randomise, top (nearest the output) first."""
    if not found:
        raise InputError("the model has no weighted layers to randomise (Conv, "
                         "ConvTranspose, Gemm or MatMul with initializer weights)")
    top_first = found[::-1]
    if layers is None:
        return top_first
    if isinstance(layers, int | np.integer):
        if layers < 1:
            raise InputError(f"layers must be at least 1, got {layers}")
        return top_first[:int(layers)]
    names = [str(name) for name in layers]
    known = {layer.node: layer for layer in top_first}
    missing = [name for name in names if name not in known]
    if missing:
        raise InputError(f"no weighted layer named '{missing[0]}' (layers: "
                         f"{', '.join(known)})")
    return [layer for layer in top_first if layer.node in names]


def _owned(node: onnx.NodeProto, floats: set[str], users: dict) -> tuple[str, ...]:
    """The float initializers a weighted node owns: its weight (and bias) inputs; for a
    MatMul also the bias of an Add that alone consumes its output."""
    if node.op_type != "MatMul":  # Conv, ConvTranspose, Gemm: weight and bias inputs
        owned = [name for name in node.input[1:3] if name in floats]
        return tuple(owned) if node.input[1] in floats else ()
    weight = next((name for name in node.input if name in floats), None)
    if weight is None:
        return ()
    after = users.get(node.output[0], [])
    if len(after) == 1 and after[0].op_type == "Add":
        bias = [name for name in after[0].input if name in floats and name != weight]
        return (weight, *bias[:1])
    return (weight,)


def _fan_in(node: onnx.NodeProto, weight: str, inits: dict) -> int:
    shape = list(inits[weight].dims)
    if not shape:
        return 1
    if node.op_type in CONVOLUTIONS:
        return int(np.prod(shape[1:]))
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return int(shape[1] if trans_b and len(shape) > 1 else shape[0])
    if len(shape) == 1:
        return int(shape[0])
    # MatMul: x @ W sums over W's rows; W @ x over its columns.
    return int(shape[-2] if node.input[1] == weight else shape[-1])
