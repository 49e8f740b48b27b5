"""Methods baked into the explainer graph: everything after the user's inputs (copies,
targets, gradients, reductions, resizing) is ONNX, so any ONNX Runtime computes the
attribution with no onnxplain and no Python."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from onnx import TensorProto

from ..autodiff.build import add_gradients
from ..autodiff.program import Pass
from ..autodiff.registry import GRADIENT
from ..errors import InputError
from ..graph.layers import resolve_layer
from ..graph.shapes import TensorInfo
from ..graph.stem import affine_stem
from ..maps import MODES as UPSAMPLE_MODES
from ..methods._tokens import cached_inputs
from ..methods.integrated_gradients import path_points
from ..rules.deeplift import deeplift_rules
from ..rules.guided import DECONVNET, GUIDED_BACKPROP
from ..rules.lrp import LrpParams, lrp_rules
from .graph import ExplainerGraph
from .loop import Walk, aliases, gradient_loop, per_block, repeated, weighted_blocks

ATTRIBUTION = "attribution/"
Build = Callable[[ExplainerGraph, dict], None]


@dataclass(frozen=True)
class ExportSpec:
    """A method's graph builder. Its options are the method's own declarations
    (methods.MethodSpec.options); `reads` names those the graph reads (None: all of them),
    so a default, a range or a help line is written once."""

    name: str
    build: Build
    reads: tuple[str, ...] | None = None


EXPORTS: dict[str, ExportSpec] = {}


def register_export(name: str, reads: tuple[str, ...] | None = None):
    def register(build: Build) -> Build:
        EXPORTS[name] = ExportSpec(name, build, reads)
        return build
    return register


def declare_per_input(eg: ExplainerGraph, values: dict[str, str], meaning: str,
                      at: dict[str, str] | None = None) -> None:
    """`values` by input as outputs ATTRIBUTION + input, shaped like the input or like the
    tensor `at` maps it to (where its attribution was taken)."""
    for name, tensor in values.items():
        like = (at or {}).get(name, name)
        where = f"input '{name}'" if like == name else f"'{like}' (input '{name}')"
        eg.declare(tensor, ATTRIBUTION + name, f"{meaning}, shaped like {where}",
                   eg.b.info(like))


def attributed(eg: ExplainerGraph) -> dict[str, str]:
    """Input -> the tensor the gradient methods attribute: the graph's sources where given
    (in-process: token ids at their embedding), else each float input as the nodes see it."""
    if eg.sources is not None:
        return dict(eg.sources)
    return {name: eg.feeds[name] for name in float_inputs(eg)}


@register_export("saliency")
def saliency(eg, options):
    """|d S / d x| (or signed): methods.saliency's graph, in-process and exported."""
    at = attributed(eg)
    grads = eg.gradients(list(at.values()))
    values = {name: grads[tensor] for name, tensor in at.items()}
    if options["abs"]:
        values = {name: eg.b.op("Abs", g) for name, g in values.items()}
    declare_per_input(eg, values, "|d score / d input|" if options["abs"] else
                      "d score / d input", at)


@register_export("input_x_gradient")
def input_x_gradient(eg, options):
    """x * d S / d x: methods.input_x_gradient's graph, in-process and exported."""
    at = attributed(eg)
    grads = eg.gradients(list(at.values()))
    declare_per_input(eg, {name: eg.b.op("Mul", tensor, grads[tensor])
                           for name, tensor in at.items()}, "input * d score / d input", at)


def _modified_gradient(rules, meaning: str):
    def build(eg, options):
        at = attributed(eg)
        grads = eg.gradients(list(at.values()), rules)
        declare_per_input(eg, {name: grads[tensor] for name, tensor in at.items()}, meaning,
                          at)
    return build


register_export("guided_backprop")(_modified_gradient(
    GUIDED_BACKPROP, "guided backpropagation (ReLUs pass positive signals where the input "
    "was positive)"))
register_export("deconvnet")(_modified_gradient(
    DECONVNET, "deconvnet signal (ReLUs pass positive signals)"))


@register_export("integrated_gradients", ("n_steps", "rule", "baseline", "baseline_value",
                                         "internal_batch_size"))
def integrated_gradients(eg, options):
    """IG_i = (x_i - x'_i) sum_s w_s d S_c(x' + a_s (x - x')) / d x_i.

    The path's points run in a Loop, about `internal_batch_size` rows per iteration
    (export.loop), so memory does not grow with n_steps; its first iteration also runs
    [x; x'] (the original outputs and the convergence delta). As in-process, a one-input
    model walks the path at the output of its input's affine stem L and maps the summed
    gradient back through L's adjoint once."""
    b, inputs = eg.b, float_inputs(eg)
    alphas, weights = path_points(int(options["n_steps"]), options["rule"])
    per_run = int(options["internal_batch_size"])
    if per_run < 1:
        raise InputError(f"internal_batch_size must be at least 1, got {per_run}")
    nodes = eg.take_model_nodes()
    baselines = {name: _baseline(b, name, options) for name in inputs}
    for name, baseline in baselines.items():
        b.infos[baseline] = b.info(name)
    single = len(eg.model.inputs) == 1 and not eg.model.rows_coupled
    stem = affine_stem(eg.model, inputs[0]) if single else None
    if stem is None:
        body = eg.model
        clean = {spec.name: b.concat([spec.name, baselines.get(spec.name, spec.name)], 0)
                 for spec in body.inputs}
        starts, ends = baselines, {name: name for name in inputs}
    else:
        body, x = stem.suffix, stem.input
        eg.put_back_stem(stem, nodes, b.concat([x, baselines[x]], 0))
        clean = {stem.frontier: stem.frontier}
        ends, starts = ({stem.frontier: eg.block(stem.frontier, i)} for i in (0, 1))
        for block in (ends, starts):
            b.infos[block[stem.frontier]] = b.info(stem.frontier)
    differences = {name: b.op("Sub", ends[name], starts[name]) for name in ends}
    walk = path_walk(eg, body, alphas, weights, clean, starts, differences)
    sums = dict(zip(ends, gradient_loop(eg, walk, per_run), strict=True))
    if stem is None:
        values = {name: b.op("Mul", differences[name], sums[name]) for name in inputs}
    else:
        values = {x: _through_stem(eg, stem, sums[stem.frontier], baselines[x])}
    declare_per_input(eg, values, "integrated gradients")
    declare_delta(eg, values, target_change(eg, 0, 1))


def path_walk(eg: ExplainerGraph, body, alphas: np.ndarray, weights: np.ndarray,
               clean: dict[str, str], starts: dict[str, str], differences: dict[str, str]
               ) -> Walk:
    """`body` at start + a_s difference for each input in `starts` (its other inputs
    repeated), summing w_s times the gradients there."""
    names = list(starts)
    others = aliases(eg, [spec.name for spec in body.inputs if spec.name not in starts])

    def feeds(bb, chunk) -> dict[str, str]:
        path = _gathered(bb, alphas, chunk, starts[names[0]])
        made = {name: repeated(bb, chunk, alias) for name, alias in others.items()}
        for name in names:
            start = starts[name]
            points = bb.op("Add", bb.unsqueeze(start, [0]),
                           bb.op("Mul", per_block(bb, path, start),
                                 bb.unsqueeze(differences[name], [0])))
            made[name] = bb.reshape(points, bb.concat([bb.ints([-1]), bb.dims(start, 1)], 0))
        return made

    def contributions(bb, chunk, grads) -> list[str]:
        weight = _gathered(bb, weights, chunk, starts[names[0]])
        return [weighted_blocks(bb, chunk, grads[name], weight, starts[name])
                for name in names]

    return Walk(body, len(alphas), clean, 2, names, feeds, contributions,
                [starts[name] for name in names])


def _gathered(bb, table: np.ndarray, chunk, like: str) -> str:
    """table[chunk.index] in `like`'s type, [k]."""
    return bb.op("Gather", bb.const(table.astype(bb.np_dtype(like))), chunk.index, axis=0)


def _through_stem(eg: ExplainerGraph, stem, summed: str, baseline: str) -> str:
    """(x - x') L^T summed: the stem's adjoint, seeded on x's block of [x; x']."""
    b = eg.b
    both = eg.feeds[stem.input]
    seed = b.concat([summed, b.zeros_like(summed)], 0)
    adjoint = add_gradients(b, {stem.frontier: seed}, [both], GRADIENT)[both]
    return b.op("Mul", b.op("Sub", stem.input, baseline), eg.block(adjoint, 0))


def target_change(eg: ExplainerGraph, clean: int, other: int) -> str:
    """S_c(block clean) - S_c(block other) per row [N], each score read as a dot product with
    the one-hot of c (GatherElements needs opset 11), or with the output seed."""
    b, scores = eg.b, eg.batched(eg.output)
    hot = eg.row_weights(b, eg.output)
    change = b.op("Sub", eg.block(scores, clean), eg.block(scores, other))
    return b.reduce("ReduceSum", b.op("Mul", change, hot),
                    list(range(1, b.info(eg.output).rank or 2)), False)


def declare_delta(eg: ExplainerGraph, values: dict[str, str], change: str) -> None:
    """sum of the attributions - change of the score, per row: completeness's gap."""
    b = eg.b
    total = b.add_all([b.reduce("ReduceSum", v, list(range(1, b.rank(name))), False)
                       for name, v in values.items()])
    delta = b.op("Sub", b.op("Cast", total, to=b.dtype(change)), change)
    eg.declare(delta, "convergence_delta", "float [N]: sum of the attributions minus the "
               "change of the target score from the baseline (0 when complete)",
               TensorInfo(b.dtype(change), ("N",)))


@register_export("deeplift", ("baseline", "baseline_value", "eps"))
def deeplift(eg, options):
    """C_i = (x_i - x'_i) m_i with DeepLIFT's Rescale multipliers: the model runs on
    [x; x'] and the rules read the reference half (onnxplain.rules.deeplift)."""
    b, inputs = eg.b, float_inputs(eg)
    starts = {}

    def reference(b, name: str) -> str:
        starts[name] = _baseline(b, name, options)
        return starts[name]

    eg.run_on_copies(1, {name: reference for name in inputs}, clean_first=True)
    grads = eg.gradients([eg.feeds[name] for name in inputs],
                         deeplift_rules(float(options["eps"])))
    values = {name: b.op("Mul", b.op("Sub", name, starts[name]),
                         eg.block(grads[eg.feeds[name]], 0)) for name in inputs}
    declare_per_input(eg, values, "DeepLIFT contributions (Rescale rule)")
    declare_delta(eg, values, target_change(eg, 0, 1))


@register_export("lrp", ("composite", "epsilon", "gamma", "alpha", "beta", "stabilizer",
                        "merge_batch_norm"))
def lrp(eg, options):
    """Relevance of each input value under the `composite`'s rules, from R = y_c."""
    inputs = float_inputs(eg)
    params = LrpParams(float(options["epsilon"]), float(options["gamma"]),
                       float(options["alpha"]), float(options["beta"]), None, None,
                       float(options["stabilizer"]))
    rules = lrp_rules(eg.model, inputs, str(options["composite"]), params,
                      bool(options["merge_batch_norm"]))
    grads = eg.gradients(inputs, rules, times_output=True)
    declare_per_input(eg, {name: grads[name] for name in inputs},
                      f"LRP relevance ({options['composite']})")


def _baseline(b, name: str, options: dict) -> str:
    baseline = options["baseline"]
    dtype = b.np_dtype(name)
    if isinstance(baseline, np.ndarray):
        array = baseline.astype(dtype)
        if array.ndim == b.rank(name) - 1:
            array = array[None]
        if array.ndim != b.rank(name) or array.shape[0] != 1:
            raise InputError(f"an exported baseline must be shaped like one row of "
                             f"'{name}' (got {baseline.shape})")
        return b.op("Expand", b.const(array, "baseline"), b.shape(name))
    if isinstance(baseline, float) or baseline in ("zeros", "constant"):
        value = (baseline if isinstance(baseline, float) else
                 0.0 if baseline == "zeros" else float(options["baseline_value"]))
        return b.op("Expand", b.scalar(value, name), b.shape(name))
    what = f"baseline '{baseline}'" if isinstance(baseline, str) else "a baseline dict"
    raise InputError(f"{what} cannot be exported; use zeros, constant (with baseline_value), "
                     "a number or an array shaped like one row")


def _layer(eg: ExplainerGraph, layer) -> str:
    tensor = resolve_layer(eg.model, layer)
    if eg.b.info(tensor).rank != 4:
        raise InputError(f"layer '{tensor}' is not a [batch, channels, height, width] tensor")
    return tensor


def _cam(eg: ExplainerGraph, layer: str, weights: str, relu: bool) -> str:
    """sum_k w_k A_k over channels, optionally ReLU'd, declared as `layer_map`."""
    b = eg.b
    cam = b.reduce("ReduceSum", b.op("Mul", weights, layer), [1], True)
    if relu:
        cam = b.op("Relu", cam)
    eg.declare(cam, "layer_map", f"float [N, 1, h, w]: the map at layer '{layer}'",
               TensorInfo(b.dtype(layer), ("N", 1, None, None)))
    return cam


def _resized(eg: ExplainerGraph, cam: str, mode: str) -> dict[str, str]:
    """The map resized to every image input (none when mode is 'none')."""
    if mode not in UPSAMPLE_MODES:
        raise InputError(f"unknown upsample mode '{mode}' (choose from "
                         f"{', '.join(UPSAMPLE_MODES)})")
    b = eg.b
    if mode == "none":
        return {}
    images = [name for name in float_inputs(eg) if b.rank(name) == 4]
    return {name: resize_like_torch(b, cam, b.concat([b.dims(cam, 0, 2), b.dims(name, 2, 4)],
                                                     axis=0), mode) for name in images}


def _declare_maps(eg: ExplainerGraph, maps: dict[str, str], mode: str, layer: str) -> None:
    for name, resized in maps.items():
        eg.declare(resized, ATTRIBUTION + name, f"the map resized to input '{name}' ({mode})",
                   TensorInfo(eg.b.dtype(layer), ("N", 1, None, None)))


@register_export("grad_cam")
def grad_cam(eg, options):
    """L_c = ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of d S_c / d A_k, resized to
    every image input."""
    layer = _layer(eg, options["layer"])
    grads = eg.gradients([layer])
    weights = eg.b.reduce("ReduceMean", grads[layer], [2, 3], True)
    cam = _cam(eg, layer, weights, options["relu"])
    _declare_maps(eg, _resized(eg, cam, options["upsample"]), options["upsample"], layer)


@register_export("grad_cam_plus_plus")
def grad_cam_plus_plus(eg, options):
    """w_k = sum_ij a_kij relu(g_kij), a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3) (0 where the
    denominator is 0), L_c = ReLU(sum_k w_k A_k)."""
    b = eg.b
    layer = _layer(eg, options["layer"])
    g = eg.gradients([layer])[layer]
    square = b.op("Mul", g, g)
    mass = b.reduce("ReduceSum", layer, [2, 3], True)
    denominator = b.op("Add", b.op("Add", square, square),
                       b.op("Mul", mass, b.op("Mul", square, g)))
    zero = b.equal(denominator, b.scalar(0.0, g))
    safe = b.where(zero, b.op("Add", denominator, b.scalar(1.0, g)), denominator)
    alpha = b.op("Mul", b.op("Div", square, safe), b.op("Cast", b.op("Not", zero),
                                                          to=b.dtype(g)))
    weights = b.reduce("ReduceSum", b.op("Mul", alpha, b.op("Relu", g)), [2, 3], True)
    cam = _cam(eg, layer, weights, True)
    _declare_maps(eg, _resized(eg, cam, options["upsample"]), options["upsample"], layer)


@register_export("guided_grad_cam")
def guided_grad_cam(eg, options):
    """Guided Backprop of each image input times the Grad-CAM map resized to it."""
    b = eg.b
    layer = _layer(eg, options["layer"])
    images = [name for name in float_inputs(eg) if b.rank(name) == 4]
    passes = eg.gradient_passes([layer], passes=[Pass("guided", GUIDED_BACKPROP,
                                                      tuple(images))])
    weights = b.reduce("ReduceMean", passes[""][layer], [2, 3], True)
    cam = _cam(eg, layer, weights, True)
    maps = _resized(eg, cam, options["upsample"])
    if not maps:
        raise InputError("guided_grad_cam multiplies by the map resized to the image: "
                         "upsample cannot be 'none'")
    declare_per_input(eg, {name: b.op("Mul", passes["guided"][name], maps[name])
                            for name in maps}, "guided backpropagation times the resized "
                       "Grad-CAM map")


def resize_like_torch(b, x: str, sizes: str, mode: str) -> str:
    """As torch's interpolate: bilinear without corner alignment, or floor-nearest."""
    attrs = ({"mode": "linear", "coordinate_transformation_mode": "half_pixel"}
             if mode == "bilinear" else
             {"mode": "nearest", "coordinate_transformation_mode": "asymmetric",
              "nearest_mode": "floor"})
    if b.opset >= 13:
        return b.op("Resize", x, "", "", sizes, **attrs)
    empty = b.const(np.zeros(0, np.float32), "empty")
    return b.op("Resize", x, empty, empty, sizes, **attrs)


def float_inputs(eg: ExplainerGraph) -> list[str]:
    """Float graph inputs: what the exported gradient methods attribute."""
    cached = cached_inputs(eg.model)  # a KV cache is no input to attribute
    found = [spec.name for spec in eg.model.inputs if spec.is_float and spec.name not in cached]
    if not found:
        besides = " besides its KV cache" if cached else ""
        raise InputError(f"the model has no float input{besides}; exported gradient methods "
                         "explain float inputs (token models: layer_integrated_gradients or "
                         "an attention method)")
    return found


def metadata(method: str, options: dict, eg: ExplainerGraph) -> dict[str, str]:
    import json

    from .._version import __version__

    def jsonable(value):
        return value.tolist() if isinstance(value, np.ndarray) else value

    return {"onnxplain.method": method,
            "onnxplain.options": json.dumps({k: jsonable(v) for k, v in options.items()}),
            "onnxplain.version": __version__,
            "onnxplain.explained_output": eg.output,
            "onnxplain.added": json.dumps(eg.added)}



@register_export("prototypes", ())
def prototypes(eg, options):
    """For a model with a local head (onnxplain local-head fit): the training row and label
    behind each reported prototype, and whether the epsilon neuron rejects the row."""
    from ..local.head import PREFIX, head_info

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
