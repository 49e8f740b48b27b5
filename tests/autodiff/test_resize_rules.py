import numpy as np
import pytest

from onnxplain.autodiff import differentiate
from onnxplain.errors import UnsupportedOpError

from .cases import Const, OpCase, ints, r
from .gradcheck import build_model, check_case


def scales(*values: float) -> Const:
    """Resize and Upsample take float32 scales, in a float64 model too."""
    return Const(np.array(values, dtype=np.float32), keep_dtype=True)


EMPTY = Const(np.zeros(0, dtype=np.float32))  # as roi: the model's float type
NO_SCALES = scales()
X = r(2, 3, 4, 5)

CASES = [
    # Upsample (opset 9) and Resize-10: scales only.
    OpCase("upsample-nearest", "Upsample", [X, scales(1, 1, 2, 3)], {"mode": "nearest"},
           opset=9),
    OpCase("upsample-linear", "Upsample", [X, scales(1, 1, 2, 1.5)], {"mode": "linear"},
           opset=9),
    OpCase("resize10-nearest", "Resize", [X, scales(1, 1, 1.5, 2)], opset=10),
    OpCase("resize10-linear-down", "Resize", [X, scales(1, 1, 0.5, 0.6)], {"mode": "linear"},
           opset=10),
    # Opset 11 and 13: roi, scales or sizes, coordinate transformations, nearest modes.
    OpCase("resize11-linear-align-corners-sizes", "Resize",
           [X, EMPTY, NO_SCALES, ints(2, 3, 7, 3)],
           {"mode": "linear", "coordinate_transformation_mode": "align_corners"}, opset=11),
    OpCase("resize11-cubic", "Resize", [X, EMPTY, scales(1, 1, 2, 2)], {"mode": "cubic"},
           opset=11),
    OpCase("resize11-nearest-asymmetric-floor", "Resize", [X, EMPTY, scales(1, 1, 1.7, 0.8)],
           {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
           opset=11),
    OpCase("resize11-crop-and-resize", "Resize",
           [X, Const(np.array([0, 0, 0.2, 0.1, 1, 1, 0.9, 1.2])), scales(1, 1, 1.5, 1.2)],
           {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
            "extrapolation_value": 1.5}, opset=11),
    OpCase("resize13-nearest-ceil-down", "Resize", [X, None, scales(1, 1, 0.75, 0.5)],
           {"nearest_mode": "ceil", "coordinate_transformation_mode": "half_pixel"},
           opset=13),
    OpCase("resize13-nearest-round-floor-sizes", "Resize", [X, None, None, ints(2, 3, 6, 7)],
           {"nearest_mode": "round_prefer_floor"}, opset=13),
    OpCase("resize13-linear-pytorch-half-pixel", "Resize", [X, None, None, ints(2, 3, 1, 8)],
           {"mode": "linear", "coordinate_transformation_mode": "pytorch_half_pixel"},
           opset=13),
    OpCase("resize13-cubic-exclude-outside", "Resize", [X, None, scales(1, 1, 1.25, 0.8)],
           {"mode": "cubic", "cubic_coeff_a": -0.5, "exclude_outside": 1}, opset=13),
    OpCase("resize13-runtime-sizes", "Resize", [X, None, None, np.array([2, 3, 5, 3])],
           {"mode": "linear"}, opset=13),
    OpCase("resize13-runtime-roi", "Resize",
           [X, np.array([0, 0, 0.1, 0.3, 1, 1, 0.8, 0.9]), scales(1, 1, 2, 1.6)],
           {"mode": "cubic", "coordinate_transformation_mode": "tf_crop_and_resize"},
           opset=13, wrt=(0,)),
    OpCase("resize13-channels-resized", "Resize", [X, None, scales(1, 2, 1, 1)], opset=13),
    OpCase("resize13-trilinear", "Resize", [r(1, 2, 3, 2, 4), None, scales(1, 1, 2, 1.5, 0.5)],
           {"mode": "linear"}, opset=13),
    OpCase("resize13-rank3", "Resize", [r(2, 3, 5), None, scales(1, 1, 1.6)],
           {"mode": "linear"}, opset=13),
    # Nearest with integer scales where outputs just repeat inputs (sum of repeats), and
    # near misses that must take the matrix path.
    OpCase("resize13-nearest-x2-x3", "Resize", [X, None, scales(1, 1, 2, 3)], opset=13),
    OpCase("resize13-nearest-pytorch-ceil", "Resize", [X, None, scales(1, 3, 1, 2)],
           {"coordinate_transformation_mode": "pytorch_half_pixel",
            "nearest_mode": "round_prefer_ceil"}, opset=13),
    OpCase("resize11-nearest-asymmetric-floor-x2", "Resize", [X, EMPTY, scales(1, 1, 2, 2)],
           {"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"},
           opset=11),
    OpCase("resize13-nearest-asymmetric-round-x4", "Resize", [X, None, scales(1, 1, 4, 1)],
           {"coordinate_transformation_mode": "asymmetric",
            "nearest_mode": "round_prefer_ceil"}, opset=13),
    OpCase("resize13-nearest-half-pixel-floor-x2", "Resize", [X, None, scales(1, 1, 1, 2)],
           {"nearest_mode": "floor"}, opset=13),
    OpCase("resize19-nearest-symmetric-x2", "Resize", [X, None, scales(3, 2)],
           {"coordinate_transformation_mode": "half_pixel_symmetric", "axes": [2, 3]},
           opset=19),
    # Opset 18/19: axes, antialias, half_pixel_symmetric.
    # (tf_crop_and_resize cases keep in * scale integral and every axis resized: the
    # reference evaluator and ONNX Runtime disagree on the forward pass otherwise.)
    OpCase("resize18-axes", "Resize", [X, None, scales(2, 0.5)],
           {"mode": "linear", "axes": [-1, 2]}, opset=18),
    OpCase("resize18-antialias-linear", "Resize", [X, None, scales(1, 1, 0.5, 0.4)],
           {"mode": "linear", "antialias": 1}, opset=18),
    OpCase("resize18-antialias-cubic-sizes", "Resize", [X, None, None, ints(2, 3)],
           {"mode": "cubic", "antialias": 1, "axes": [2, 3]}, opset=18),
    OpCase("resize18-crop-axes", "Resize", [X, Const(np.array([0.1, 0.3, 0.9, 0.8])), None,
                                            ints(3, 6)],
           {"mode": "linear", "coordinate_transformation_mode": "tf_crop_and_resize",
            "axes": [3, 2]}, opset=18),
    OpCase("resize18-stretch-sizes", "Resize", [X, None, None, ints(6, 2)],
           {"mode": "nearest", "axes": [2, 3], "keep_aspect_ratio_policy": "stretch"},
           opset=18),
    OpCase("resize19-half-pixel-symmetric", "Resize", [X, None, scales(1, 1, 1.5, 0.7)],
           {"mode": "linear", "coordinate_transformation_mode": "half_pixel_symmetric"},
           opset=19),
]


# onnx's checker rejects a forward Resize whose run-time sizes input has a symbolic length,
# so that case only exists with static shapes.
PAIRS = [(case, symbolic) for case in CASES for symbolic in (False, True)
         if not (symbolic and case.id == "resize13-runtime-sizes")]


@pytest.mark.parametrize("case, symbolic", PAIRS,
                         ids=[f"{c.id}-{'symbolic' if s else 'static'}" for c, s in PAIRS])
def test_rule_matches_finite_differences(case, symbolic):
    check_case(case, symbolic)


def test_keep_aspect_ratio_with_sizes_is_rejected():
    case = OpCase("r", "Resize", [X, None, None, ints(6, 8)],
                  {"axes": [2, 3], "keep_aspect_ratio_policy": "not_larger"}, opset=18)
    model, _ = build_model(case, np.float32, False)
    with pytest.raises(UnsupportedOpError, match="keep_aspect_ratio_policy='not_larger'"):
        differentiate(model, ["in0"])


@pytest.mark.parametrize("case_id, matrices", [
    ("upsample-nearest", 0), ("resize10-nearest", 1), ("resize13-nearest-x2-x3", 0),
    ("resize13-nearest-pytorch-ceil", 0), ("resize11-nearest-asymmetric-floor-x2", 0),
    ("resize13-nearest-asymmetric-round-x4", 1), ("resize13-nearest-half-pixel-floor-x2", 1),
    ("resize19-nearest-symmetric-x2", 0),
])
def test_nearest_repeats_are_summed_without_a_matrix(case_id, matrices):
    case = next(case for case in CASES if case.id == case_id)
    model, _ = build_model(case, np.float32, True)
    ops = [node.op_type for node in differentiate(model, ["in0"]).model.graph.node]
    assert ops.count("MatMul") == matrices


def test_untouched_axes_cost_nothing():
    """Axes with scale 1 get no interpolation matrix: only the two spatial axes do."""
    case = OpCase("r", "Resize", [X, None, scales(1, 1, 2, 2)], {"mode": "linear"}, opset=13)
    model, _ = build_model(case, np.float32, True)
    ops = [node.op_type for node in differentiate(model, ["in0"]).model.graph.node]
    assert ops.count("Resize") == 3 and ops.count("MatMul") == 2
