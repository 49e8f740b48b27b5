"""Layer-map methods as one graph each (Grad-CAM, Grad-CAM++, Guided Grad-CAM, CAM, activation
maps): the program `export` saves and the in-process methods run (methods._graph), its map at
the layer's resolution an extra output (`layer_map`), resized to every image input by ONNX
Resize as torch's interpolate resizes (Captum's LayerAttribution.interpolate)."""

from __future__ import annotations

from ..autodiff.program import Pass
from ..errors import InputError
from ..graph.heads import dense_head
from ..graph.layers import pre_and_post, resolve_layer, spatial_layer
from ..graph.shapes import TensorInfo
from ..images import image_inputs
from ..maps import MODES as UPSAMPLE_MODES
from ..rules.guided import GUIDED_BACKPROP
from .graph import ExplainerGraph
from .methods import ATTRIBUTION, register_export, resize_like_torch

LAYER_MAP = "layer_map"  # the program's output: the map at the layer's resolution
PRE, POST = "pre_activation", "post_activation"  # activation_maps' outputs, with PARTS
PARTS = ("", ":positive", ":negative")


def _weighted_map(eg: ExplainerGraph, layer: str, weights: str, relu: bool) -> str:
    """sum_k w_k A_k over channels, optionally ReLU'd, declared as `layer_map`."""
    b = eg.b
    cam = b.reduce("ReduceSum", b.op("Mul", weights, layer), [1], True)
    if relu:
        cam = b.op("Relu", cam)
    eg.declare(cam, LAYER_MAP, f"float [N, 1, h, w]: the map at layer '{layer}'",
               TensorInfo(b.dtype(layer), ("N", 1, None, None)))
    return cam


def resized_maps(eg: ExplainerGraph, cam: str, mode: str) -> dict[str, str]:
    """The [N, 1, h, w] map resized to every image input ([N, 1, H, W], or [N, H, W, 1] for
    channels-last inputs), in the input's type; 'none' keeps the layer's size."""
    if mode not in UPSAMPLE_MODES:
        raise InputError(f"unknown upsample mode '{mode}' (choose from "
                         f"{', '.join(UPSAMPLE_MODES)})")
    b, out = eg.b, {}
    for name, layout in image_inputs(eg.model).items():
        spatial = (2, 4) if layout == "NCHW" else (1, 3)
        size = b.concat([b.dims(cam, 0, 2), b.dims(name, *spatial)], axis=0)
        resized = cam if mode == "none" else resize_like_torch(b, cam, size, mode)
        if b.dtype(name) != b.dtype(cam):
            resized = b.op("Cast", resized, to=b.dtype(name))
        out[name] = resized if layout == "NCHW" else b.op("Transpose", resized,
                                                           perm=[0, 2, 3, 1])
    if not out:
        raise InputError("layer maps are resized to image inputs, and the model has none "
                         "(inputs shaped [batch, channels, height, width])")
    return out


def declare_maps(eg: ExplainerGraph, maps: dict[str, str], meaning: str) -> None:
    layouts = image_inputs(eg.model)
    for name, value in maps.items():
        dims = ("N", 1, None, None) if layouts[name] == "NCHW" else ("N", None, None, 1)
        eg.declare(value, ATTRIBUTION + name, f"{meaning}, resized to input '{name}'",
                   TensorInfo(eg.b.dtype(name), dims))


@register_export("grad_cam")
def grad_cam(eg, options):
    """L_c = ReLU(sum_k alpha_k A_k), alpha_k the spatial mean of d S_c / d A_k, resized to
    every image input."""
    layer = spatial_layer(eg.model, options["layer"])
    grads = eg.gradients([layer])
    weights = eg.b.reduce("ReduceMean", grads[layer], [2, 3], True)
    cam = _weighted_map(eg, layer, weights, options["relu"])
    declare_maps(eg, resized_maps(eg, cam, options["upsample"]), "the Grad-CAM map")


@register_export("grad_cam_plus_plus")
def grad_cam_plus_plus(eg, options):
    """w_k = sum_ij a_kij relu(g_kij), a_kij = g^2 / (2 g^2 + sum_ab A_kab g^3) (0 where the
    denominator is 0), L_c = ReLU(sum_k w_k A_k)."""
    b = eg.b
    layer = spatial_layer(eg.model, options["layer"])
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
    cam = _weighted_map(eg, layer, weights, True)
    declare_maps(eg, resized_maps(eg, cam, options["upsample"]), "the Grad-CAM++ map")


@register_export("guided_grad_cam")
def guided_grad_cam(eg, options):
    """Guided Backprop of each image input times the Grad-CAM map resized to it."""
    b = eg.b
    layer = spatial_layer(eg.model, options["layer"])
    if options["upsample"] == "none":
        raise InputError("guided_grad_cam multiplies by the map resized to the image: "
                         "upsample cannot be 'none'")
    images = tuple(image_inputs(eg.model))
    passes = eg.gradient_passes([layer], passes=[Pass("guided", GUIDED_BACKPROP, images)])
    weights = b.reduce("ReduceMean", passes[""][layer], [2, 3], True)
    cam = _weighted_map(eg, layer, weights, True)
    maps = resized_maps(eg, cam, options["upsample"])
    for name, value in maps.items():
        eg.declare(b.op("Mul", passes["guided"][name], value), ATTRIBUTION + name,
                   "guided backpropagation times the resized Grad-CAM map, shaped like "
                   f"input '{name}'", b.info(name))


@register_export("cam")
def cam(eg, options):
    """M_c = sum_k w_ck A_k with w the dense head's weights (the head checked:
    graph.heads.dense_head), for each row's class or output seed. No gradient."""
    b = eg.b
    layer = spatial_layer(eg.model, options["layer"])
    matrix, _ = dense_head(eg.model, layer, eg.output)
    per_class = b.const(matrix.astype(b.np_dtype(layer)), "cam_weights")  # [classes, K]
    per_row = b.op("MatMul", eg.row_weights(b, eg.output), per_class)  # [N, K]
    weights = b.unsqueeze(per_row, [2, 3])
    cam = _weighted_map(eg, layer, weights, False)
    declare_maps(eg, resized_maps(eg, cam, options["upsample"]), "the class activation map")


@register_export("activation_maps", any_output=True)
def activation_maps(eg, options):
    """The layer's pre- and post-activation values (outputs `pre_activation` and
    `post_activation`), each with its positive and negative parts; for a [N, C, h, w] layer,
    the channel sum of the pre-activation resized to every image input. The class is only
    reported (`target_used`, where the output holds class scores), as in-process."""
    b = eg.b
    if eg.scores and eg.seed is None and not eg.dense:
        eg.target()  # explains no class, but reports the predicted (or given) one
    pre, post = pre_and_post(eg.model, resolve_layer(eg.model, options["layer"]))
    for role, tensor in ((PRE, pre), (POST, post)):
        if tensor is None:
            continue
        info = b.info(tensor)
        if not info.is_float:
            raise InputError(f"layer '{tensor}' is not a float tensor")
        parts = (tensor, b.op("Relu", tensor), b.op("Min", tensor, b.scalar(0.0, tensor)))
        for part, value in zip(PARTS, parts, strict=True):
            eg.declare(value, role + part, f"the values of '{tensor}'{part} ({role})", info)
    if b.info(pre).rank == 4:
        total = b.reduce("ReduceSum", pre, [1], True)
        declare_maps(eg, resized_maps(eg, total, options["upsample"]),
                     f"the channel sum of '{pre}'")

