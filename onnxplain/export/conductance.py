"""Conductance as one graph each: the programs `export` saves and methods.layer_conductance
and methods.neuron_conductance run in-process. Integrated Gradients' Loop (export.loop) walks
the path x' + a_s (x - x'), so memory stays that of one iteration however many steps there
are. Layer conductance takes the gradient at the layer y at each point and recomputes y at
the next point (a copy of the nodes y is computed from, fed that point), summing
dS/dy(a_s) (y(a_{s+1}) - y(a_s)) with no table of activations; neuron conductance takes the
gradient at y, keeps one unit's, and takes it back to the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx

from ..autodiff.build import add_gradients
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.layers import resolve_layer
from ..graph.shapes import TensorInfo
from ..graph.walk import ancestors, node_inputs, rename_reads
from ..images import image_inputs
from .graph import ExplainerGraph
from .layer_maps import declare_maps, resized_maps
from .loop import gradient_loop, weighted_blocks
from .methods import (
    baseline_input,
    declare_completeness,
    declare_per_input,
    float_inputs,
    path_points,
    path_walk,
    register_export,
)

LAYER_ATTRIBUTION = "layer_attribution"  # the program's output: conductance per layer unit
READS = ("layer", "n_steps", "rule", "baseline", "baseline_value", "blur_sigma", "seed",
         "internal_batch_size")
_LAST = np.iinfo(np.int64).max


@dataclass(frozen=True)
class LayerPath:
    """The straight path from the baselines to the inputs, and the layer it is read at."""

    layer: str
    inputs: list[str]
    nodes: list[onnx.NodeProto]  # the model's, taken out of the outer graph
    baselines: dict[str, str]
    clean: dict[str, str]  # [x; x'] per model input
    differences: dict[str, str]  # x - x' per input


def layer_path(eg: ExplainerGraph, options: dict, inputs: list[str]) -> LayerPath:
    """The layer, the baselines of `inputs` (inputs, as integrated_gradients takes them) and
    the clean rows of the path's Loop (export.loop)."""
    b = eg.b
    layer = resolve_layer(eg.model, options["layer"])
    nodes = eg.take_model_nodes()
    baselines = {name: baseline_input(eg, name, options) for name in inputs}
    for name, baseline in baselines.items():
        b.infos[baseline] = b.info(name)
    clean = {spec.name: b.concat([spec.name, baselines.get(spec.name, spec.name)], 0)
             for spec in eg.model.inputs}
    differences = {name: b.op("Sub", name, baselines[name]) for name in inputs}
    return LayerPath(layer, inputs, nodes, baselines, clean, differences)


def last_rows(bb: GraphBuilder, tensor: str, count: str) -> str:
    """The last `count` rows of `tensor`: in a Loop body, the points after the clean rows."""
    return bb.slice(tensor, bb.op("Neg", count), [_LAST], [0])


@register_export("layer_conductance", (*READS, "upsample"))
def layer_conductance(eg, options):
    """Cond_j = sum_{s<n} dS_c/dy_j(a_s) (y_j(a_{s+1}) - y_j(a_s)) over the n + 1 points a_s
    of the quadrature `rule` (Captum's LayerConductance: its alphas, no weights), y_j(a) the
    layer's unit j at x' + a (x - x'). Outputs: LAYER_ATTRIBUTION (shaped like the layer),
    the scores at x and x' and the convergence delta (declare_completeness); for a spatial
    layer, the map sum_k Cond_k (over channels) resized to every image input, as Grad-CAM's
    (export.layer_maps)."""
    path = layer_path(eg, options, float_inputs(eg))  # eg.sources: where maps come back
    layer, inputs = path.layer, path.inputs
    prefix = ancestors(path.nodes, [layer])
    _check_reads(eg, prefix, layer, inputs)
    steps = int(options["n_steps"])
    alphas, _ = path_points(steps + 1, options["rule"])
    at_input = layer_copy(eg.b, prefix, eg.model.infos, layer, {name: name for name in inputs})
    walk, following = (path_walk(eg, eg.model, points, np.ones(steps), path.clean,
                                 path.baselines, path.differences)
                       for points in (alphas[:-1], alphas[1:]))

    def contributions(bb, chunk, grads) -> list[str]:
        here = last_rows(bb, layer, bb.op("Mul", chunk.k, eg.rows))
        points = following.feeds(bb, chunk)
        there = layer_copy(bb, prefix, eg.model.infos, layer,
                           {name: points[name] for name in inputs})
        step = bb.op("Mul", grads[layer], bb.op("Sub", there, here))
        return [weighted_blocks(bb, chunk, step, None, at_input)]

    walk = replace(walk, wrt=[layer], contributions=contributions, sums_like=[at_input])
    conductance = gradient_loop(eg, walk, int(options["internal_batch_size"]))[0]
    eg.declare(conductance, LAYER_ATTRIBUTION, f"float [N, ...]: the conductance of each unit "
               f"of layer '{layer}'", eg.b.info(at_input))
    declare_completeness(eg, {at_input: conductance})
    if spatial_maps(eg.model, layer):
        channels = eg.b.reduce("ReduceSum", conductance, [1], True)
        declare_maps(eg, resized_maps(eg, channels, options["upsample"]),
                     "the layer conductance summed over channels")


def spatial_maps(model, layer: str) -> bool:
    """Whether the layer's conductance also comes back as maps at the image inputs: a
    [N, C, H, W] layer of a model with image inputs."""
    info = model.infos.get(layer)
    return info is not None and info.rank == 4 and bool(image_inputs(model))


@register_export("neuron_conductance", (*READS, "neuron"))
def neuron_conductance(eg, options):
    """NC_i = (x_i - x'_i) sum_s w_s dS_c/dy_j(a_s) dy_j/dx_i(a_s), y_j the layer's unit
    `neuron` (a flat index into one row of the layer) at x' + a_s (x - x'), with the
    quadrature `rule`'s points and weights (Captum's NeuronConductance). At each point the
    gradient at the layer, kept at unit j, is taken back to the inputs."""
    path = layer_path(eg, options, list(eg.sources or float_inputs(eg)))
    layer, inputs = path.layer, path.inputs
    alphas, weights = path_points(int(options["n_steps"]), options["rule"])
    summed = path_walk(eg, eg.model, alphas, weights, path.clean, path.baselines,
                       path.differences)  # its contributions: the weighted sums at the inputs
    unit = _unit(eg, layer, options["neuron"])

    def contributions(bb, chunk, grads) -> list[str]:
        at_points = bb.op("Mul", chunk.k, eg.rows)
        kept = bb.op("Mul", grads[layer], bb.const(unit.astype(bb.np_dtype(grads[layer]))))
        clean_rows = bb.op("Sub", bb.dims(layer, 0, 1), at_points)
        unseeded = bb.op("Expand", bb.scalar(0.0, kept),
                         bb.concat([clean_rows, bb.dims(layer, 1)], 0))
        through = add_gradients(bb, {layer: bb.concat([unseeded, kept], 0)}, inputs)
        return summed.contributions(bb, chunk, {name: last_rows(bb, through[name], at_points)
                                              for name in inputs})

    walk = replace(summed, wrt=[layer], contributions=contributions)
    sums = gradient_loop(eg, walk, int(options["internal_batch_size"]))
    declare_per_input(eg, {name: eg.b.op("Mul", path.differences[name], total)
                           for name, total in zip(inputs, sums, strict=True)},
                      f"neuron conductance through unit {options['neuron']} of '{layer}'")


def _unit(eg: ExplainerGraph, layer: str, neuron) -> np.ndarray:
    """The one-hot of unit `neuron` over one row of the layer, [1, *unit dims]."""
    info = eg.model.infos.get(layer)
    dims = None if info is None or info.shape is None else info.shape[1:]
    if dims is None or not all(isinstance(d, int) for d in dims):
        raise InputError(f"neuron_conductance needs the layer's unit dims fixed; '{layer}' "
                         f"has {dims}")
    count = int(np.prod(dims, dtype=np.int64))
    if neuron is None or not 0 <= int(neuron) < count:
        raise InputError(f"neuron must be a unit index from 0 to {count - 1} of layer "
                         f"'{layer}' (one row: {list(dims)}, flattened), got {neuron}")
    unit = np.zeros(count)
    unit[int(neuron)] = 1.0
    return unit.reshape(1, *dims)


def _check_reads(eg: ExplainerGraph, prefix, layer: str, inputs: list[str]) -> None:
    """The layer must be computed from the attributed (float) inputs alone: the copy that
    recomputes it at the next point is fed those."""
    names = {spec.name for spec in eg.model.inputs}
    read = {name for node in prefix for name in node_inputs(node)} & names
    if not read:
        raise InputError(f"layer '{layer}' is not computed from the model's inputs")
    if read - set(inputs):
        raise InputError(f"layer '{layer}' reads inputs that are not attributed "
                         f"({', '.join(sorted(read - set(inputs)))}); layer_conductance "
                         "needs a layer computed from the float inputs alone")


def layer_copy(b: GraphBuilder, prefix: list[onnx.NodeProto], infos: dict[str, TensorInfo],
               layer: str, fed: dict[str, str]) -> str:
    """Append a copy of `prefix` (the nodes `layer` is computed from) reading `fed` in place
    of the model inputs, every tensor under a fresh name; return the copy's layer tensor."""
    copies, renamed = [], dict(fed)
    for node in prefix:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.name = b.fresh("layer_copy_node")
        for out in copy.output:
            if out:
                renamed[out] = b.fresh("layer_copy")
        copies.append(copy)
    rename_reads(copies, renamed)
    for copy in copies:
        for index, out in enumerate(copy.output):
            if out:
                copy.output[index] = renamed[out]
                b.infos[renamed[out]] = _any_rows(infos.get(out))
    b.graph.node.extend(copies)
    return renamed[layer]


def _any_rows(info: TensorInfo | None) -> TensorInfo:
    """`info` with its rows unknown: the copies run on other row counts."""
    if info is None or not info.shape:
        return info or TensorInfo(None, None)
    return TensorInfo(info.dtype, (None, *info.shape[1:]))
