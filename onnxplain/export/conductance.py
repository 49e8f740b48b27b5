"""Conductance as one graph each: the programs `export` saves and methods.layer_conductance
and methods.neuron_conductance run in-process. Integrated Gradients' Loop (export.loop) walks
the path x' + a_s (x - x'), so memory stays that of one iteration however many steps there
are; as there, a one-input model walks it after the input's affine stem when the layer
comes after that (export.methods.straight_path). Layer conductance reads the layer y and
the gradient at it at each of the n + 1 points and sums dS/dy(a_s) (y(a_{s+1}) - y(a_s))
over consecutive points: within a chunk of points, and across chunks from the previous
chunk's last point, which the Loop carries (Walk.state_like), so the model runs once per
point with no table of activations. Neuron conductance takes the gradient at y, keeps one
unit's, and takes it back to the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..autodiff.build import add_gradients
from ..errors import InputError
from ..graph.builder import GraphBuilder
from ..graph.layer_copy import copied, layer_copy
from ..graph.layers import resolve_layer
from ..graph.shapes import TensorInfo
from ..graph.walk import ancestors, node_inputs
from ..images import image_inputs
from .graph import ExplainerGraph
from .layer_maps import declare_maps, resized_maps
from .loop import Walk, gradient_loop, per_block, weighted_blocks
from .methods import (
    StraightPath,
    baseline_input,
    declare_completeness,
    declare_per_input,
    float_inputs,
    path_points,
    path_values,
    path_walk,
    register_export,
    straight_path,
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
    prefix: list[onnx.NodeProto]  # the nodes the layer is computed from (copies)
    path: StraightPath  # after the input's affine stem where the layer is

    def walk(self, eg: ExplainerGraph, alphas: np.ndarray, weights: np.ndarray) -> Walk:
        path = self.path
        return replace(path_walk(eg, path.body, alphas, weights, path.clean, path.starts,
                                 path.differences), clean_blocks=path.clean_blocks)


def layer_path(eg: ExplainerGraph, options: dict, inputs: list[str], both_ends: bool
               ) -> LayerPath:
    """The layer and the path from the baselines of `inputs` (inputs, as
    integrated_gradients takes them), at the output of the input's affine stem where the
    layer comes after it (export.methods.straight_path); its Loop's clean rows are [x; x']
    with `both_ends` (the scores at both ends of the path), else x alone."""
    layer = resolve_layer(eg.model, options["layer"])
    nodes = eg.take_model_nodes()
    prefix = [copied(node) for node in ancestors(nodes, [layer])]  # as they read x
    baselines = {name: baseline_input(eg, name, options) for name in inputs}
    path = straight_path(eg, inputs, baselines, nodes, both_ends, keep=layer)
    return LayerPath(layer, inputs, prefix, path)


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
    # eg.sources: where maps come back; both ends: the completeness delta.
    path = layer_path(eg, options, float_inputs(eg), both_ends=True)
    layer, inputs, prefix = path.layer, path.inputs, path.prefix
    _check_reads(eg, prefix, layer, inputs)
    steps = int(options["n_steps"])
    alphas, _ = path_points(steps + 1, options["rule"])
    layer_zeros = _layer_zeros(eg, prefix, layer, inputs)
    walk = path.walk(eg, alphas, np.ones(steps + 1))  # its weighted sums: not read

    def contributions(bb, chunk, grads) -> list[str]:
        at_points = bb.op("Mul", chunk.k, eg.rows)
        here = last_rows(bb, layer, at_points)
        # Each point pairs with the one before it: the first with the previous chunk's last
        # (the state; zeros before the path's first point make its pair 0).
        before, flow_before = chunk.state
        values = bb.concat([before, here], 0)
        flows = bb.concat([flow_before, grads[layer]], 0)
        change = bb.op("Sub", bb.slice(values, eg.rows, [_LAST], [0]),
                       bb.slice(values, [0], at_points, [0]))
        step = bb.op("Mul", bb.slice(flows, [0], at_points, [0]), change)
        return [weighted_blocks(bb, chunk, step, None, layer_zeros),
                last_rows(bb, here, eg.rows), last_rows(bb, grads[layer], eg.rows)]

    walk = replace(walk, wrt=[layer], contributions=contributions, sums_like=[layer_zeros],
                   state_like=[layer_zeros, layer_zeros])
    conductance = gradient_loop(eg, walk, int(options["internal_batch_size"]))[0]
    eg.declare(conductance, LAYER_ATTRIBUTION, f"float [N, ...]: the conductance of each unit "
               f"of layer '{layer}'", eg.b.info(layer_zeros))
    declare_completeness(eg, {layer_zeros: conductance})
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
    gradient at the layer, kept at unit j and times w_s, is taken back to the inputs."""
    # x alone in the clean rows: no score at x' is wanted.
    path = layer_path(eg, options, list(eg.sources or float_inputs(eg)), both_ends=False)
    layer = path.layer
    alphas, weights = path_points(int(options["n_steps"]), options["rule"])
    walk = path.walk(eg, alphas, weights)
    walked = list(walk.wrt)  # the inputs, or the stem's frontier
    unit = _unit(eg, layer, options["neuron"])

    def contributions(bb, chunk, grads) -> list[str]:
        dtype = bb.np_dtype(grads[layer])
        kept = bb.op("Mul", grads[layer], bb.const(unit.astype(dtype)))
        # The quadrature's weights scale the seed at the layer, a smaller tensor than the
        # gradients at the inputs.
        weight = bb.op("Gather", bb.const(weights.astype(dtype)), chunk.index, axis=0)
        blocks = bb.reshape(kept, bb.concat([chunk.k, bb.ints([-1]), bb.dims(layer, 1)], 0))
        kept = bb.reshape(bb.op("Mul", blocks, per_block(bb, weight, layer)),
                          bb.shape(grads[layer]))
        clean_rows = bb.op("Sub", bb.dims(layer, 0, 1), bb.op("Mul", chunk.k, eg.rows))
        unseeded = bb.op("Expand", bb.scalar(0.0, kept),
                         bb.concat([clean_rows, bb.dims(layer, 1)], 0))
        through = add_gradients(bb, {layer: bb.concat([unseeded, kept], 0)}, walked)
        # All blocks of N rows summed: the clean rows (x's block, in the first iteration)
        # were not seeded, their gradients are zeros.
        return [_blocks_summed(bb, through[name], eg.rows) for name in walked]

    walk = replace(walk, wrt=[layer], contributions=contributions)
    sums = gradient_loop(eg, walk, int(options["internal_batch_size"]))
    declare_per_input(eg, path_values(eg, path.path, dict(zip(walked, sums, strict=True))),
                      f"neuron conductance through unit {options['neuron']} of '{layer}'")


def _blocks_summed(bb: GraphBuilder, value: str, rows: str) -> str:
    """The sum of `value`'s blocks of `rows` rows."""
    blocks = bb.reshape(value, bb.concat([bb.ints([-1]), rows, bb.dims(value, 1)], 0))
    return bb.reduce("ReduceSum", blocks, [0], False)


def _row_dims(eg: ExplainerGraph, layer: str) -> tuple | None:
    """The dims of one row of the layer (None: unknown; a name: symbolic)."""
    info = eg.model.infos.get(layer)
    return None if info is None or info.shape is None else tuple(info.shape[1:])


def _fixed(dims: tuple | None) -> bool:
    return dims is not None and all(isinstance(d, int) for d in dims)


def _layer_zeros(eg: ExplainerGraph, prefix, layer: str, inputs: list[str]) -> str:
    """Zeros shaped like the layer at the N rows, where the Loop's sum and state start: from
    its fixed unit dims, else from a copy of its nodes run on x (one more forward there)."""
    b, dims = eg.b, _row_dims(eg, layer)
    if not _fixed(dims):
        return b.zeros_like(layer_copy(b, prefix, eg.model.infos, layer,
                                       {name: name for name in inputs}))
    dtype = eg.model.infos[layer].dtype
    zero = numpy_helper.from_array(np.zeros(1, helper.tensor_dtype_to_np_dtype(dtype)))
    zeros = b.op("ConstantOfShape", b.concat([eg.rows, b.ints(dims)], 0), value=zero)
    b.infos[zeros] = TensorInfo(dtype, (None, *dims))
    return zeros


def _unit(eg: ExplainerGraph, layer: str, neuron) -> np.ndarray:
    """The one-hot of unit `neuron` over one row of the layer, [1, *unit dims]."""
    dims = _row_dims(eg, layer)
    if not _fixed(dims):
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
    """The layer must be computed from the attributed (float) inputs alone: the path moves
    those."""
    names = {spec.name for spec in eg.model.inputs}
    read = {name for node in prefix for name in node_inputs(node)} & names
    if not read:
        raise InputError(f"layer '{layer}' is not computed from the model's inputs")
    if read - set(inputs):
        raise InputError(f"layer '{layer}' reads inputs that are not attributed "
                         f"({', '.join(sorted(read - set(inputs)))}); layer_conductance "
                         "needs a layer computed from the float inputs alone")
