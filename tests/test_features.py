"""Feature masks of the perturbation methods: grid cells, superpixels, tokens, columns and
user masks checked element by element, and the perturbed copies apply_features builds."""

from __future__ import annotations

import sys

import numpy as np
import pytest

from onnxplain.errors import InputError
from onnxplain.features import apply_features, feature_mask, row_masks

from .conftest import require


def assert_ids_used(mask: np.ndarray) -> int:
    """Every id 0..F-1 appears; returns F."""
    assert mask.dtype == np.int64
    count = int(mask.max()) + 1
    np.testing.assert_array_equal(np.unique(mask), np.arange(count))
    return count


def test_grid_cells_are_shared_over_channels_and_cover_the_image():
    row = np.zeros((3, 20, 17), dtype=np.float32)  # NCHW row; 20 and 17 not multiples of 8
    mask = feature_mask(row, "grid", cell=8)
    assert mask.shape == row.shape and assert_ids_used(mask) == 3 * 3
    for channel in range(3):
        np.testing.assert_array_equal(mask[channel], mask[0])
    for i, j in [(0, 0), (7, 7), (8, 0), (19, 16), (10, 9)]:
        assert mask[0, i, j] == (i // 8) * 3 + j // 8
    # NHWC rows: the channel axis is last.
    nhwc = feature_mask(np.zeros((16, 12, 3)), "grid", cell=4)
    assert assert_ids_used(nhwc) == 4 * 3
    np.testing.assert_array_equal(nhwc[..., 2], nhwc[..., 0])
    assert nhwc[5, 9, 1] == (5 // 4) * 3 + 9 // 4


def test_auto_picks_grid_tokens_or_columns():
    image = np.zeros((1, 8, 8), dtype=np.float32)
    np.testing.assert_array_equal(feature_mask(image), feature_mask(image, "grid"))
    ids = np.array([101, 7, 7, 102])
    np.testing.assert_array_equal(feature_mask(ids), np.arange(4))  # one per token, even 7, 7
    table = np.zeros((2, 3))
    np.testing.assert_array_equal(feature_mask(table), np.arange(6).reshape(2, 3))
    np.testing.assert_array_equal(feature_mask(np.zeros(5)), np.arange(5))


def test_tokens_follow_the_first_axis():
    embedded = np.zeros((4, 6))  # [S, D]: every vector of a token is one feature
    mask = feature_mask(embedded, "tokens")
    np.testing.assert_array_equal(mask, np.repeat(np.arange(4)[:, None], 6, axis=1))


def test_user_masks_are_broadcast_and_relabelled():
    row = np.zeros((3, 2, 4))
    given = np.array([[[9, 9, 2, 4], [4, 4, 2, 9]]])  # [1, 2, 4]: shared over channels
    mask = feature_mask(row, mask=given)
    assert assert_ids_used(mask) == 3
    # Sorted order: 2 -> 0, 4 -> 1, 9 -> 2; the grouping is kept.
    np.testing.assert_array_equal(mask[1], [[2, 2, 0, 1], [1, 1, 0, 2]])
    np.testing.assert_array_equal(mask[0], mask[2])
    # row_masks accepts the mask as the `features` option.
    masks = row_masks(np.zeros((2, 3, 2, 4)), given)
    np.testing.assert_array_equal(masks[1], mask)


# Three masks over an 8x8 image, ids not from 0: quadrants (4 features), left and right
# halves (2) and bands of 3 rows (3).
PLANE = np.indices((8, 8))
PER_ROW = np.stack([10 + (PLANE[0] // 4) * 2 + PLANE[1] // 4, 7 * (PLANE[1] // 4),
                    3 + PLANE[0] // 3])[:, None]  # [3, 1, 8, 8]


def test_row_masks_take_one_mask_per_row():
    """An array with the batch's rank is one mask per row, each relabelled on its own;
    [1, *row] serves every row, as a mask like one row does."""
    values = np.zeros((3, 1, 8, 8), np.float32)
    masks = row_masks(values, PER_ROW)
    assert [assert_ids_used(mask) for mask in masks] == [4, 2, 3]
    for mask, given in zip(masks, PER_ROW, strict=True):
        np.testing.assert_array_equal(mask, np.unique(given, return_inverse=True)[1]
                                      .reshape(given.shape))
    shared = row_masks(values, PER_ROW[1:2])
    assert len(shared) == 3
    for mask in shared:
        np.testing.assert_array_equal(mask, masks[1])
        np.testing.assert_array_equal(mask, row_masks(values, PER_ROW[1])[0])
    with pytest.raises(InputError, match=r"^a feature mask per row needs one row per input "
                                         r"row \(3\) or one for all, got shape "
                                         r"\(2, 1, 8, 8\)$"):
        row_masks(values, PER_ROW[:2])
    with pytest.raises(InputError, match="holds feature ids >= 0"):
        row_masks(values, PER_ROW - 20)


@pytest.mark.parametrize("method, options", [
    ("feature_ablation", {}),
    ("kernel_shap", {}),
    ("shapley_sampling", {"n_samples": 4}),
    ("lime", {"n_samples": 40}),
])
def test_every_perturbation_method_reads_per_row_masks(zoo, method, options):
    """features=[N, *row]: each row explained with its own mask, as alone with that mask
    (rows of different feature counts run apart), and the masks come back relabelled."""
    import onnxplain

    explainer = onnxplain.Explainer(zoo.model_path("digits_cnn"), providers="cpu",
                                    progress=False)
    x = zoo.sample("digits_cnn")["image"][:3]
    batch = explainer.explain(x, method, target=[1, 4, 7], features=PER_ROW, **options)
    np.testing.assert_array_equal(batch.extras["feature_mask"],
                                  np.stack(row_masks(x, PER_ROW)))
    for row, (target, count) in enumerate(zip((1, 4, 7), (4, 2, 3), strict=True)):
        alone = explainer.explain(x[row:row + 1], method, target=target,
                                  features=PER_ROW[row, 0], **options)
        value = alone["image"][0]
        assert np.abs(value).max() > 0 and len(np.unique(value)) <= count
        np.testing.assert_allclose(batch["image"][row], value, rtol=1e-5,
                                   atol=1e-6 * np.abs(value).max())


@pytest.mark.parametrize("call, message", [
    (lambda: feature_mask(np.zeros(4), "stripes"), "unknown features 'stripes'"),
    (lambda: feature_mask(np.zeros(4), "grid"), "needs an image row"),
    (lambda: feature_mask(np.zeros((1, 8, 8)), "grid", cell=0), "cell >= 1"),
    (lambda: feature_mask(np.zeros(4), mask=np.array([0.0, 1, 1, 2])), "integer ids"),
    (lambda: feature_mask(np.zeros(4), mask=np.array([0, 1, 2])), "does not broadcast"),
    (lambda: feature_mask(np.zeros(4), "columns", mask=np.arange(4)), "not both"),
    (lambda: feature_mask(np.zeros(4), "mask"), "needs a mask"),
])
def test_bad_feature_requests_raise_one_line_input_errors(call, message):
    with pytest.raises(InputError, match=message) as caught:
        call()
    assert "\n" not in str(caught.value)


def two_colour_image(layout: str = "NCHW", edge: int = 16) -> np.ndarray:
    """A 3 x 32 x 32 image: dark red left of column `edge`, bright green from it on."""
    image = np.zeros((3, 32, 32), dtype=np.float32)
    image[0, :, :edge] = 0.6
    image[1, :, edge:] = 0.9
    return image if layout == "NCHW" else np.moveaxis(image, 0, -1)


def crosses(plane: np.ndarray, edge: int) -> bool:
    return bool(set(plane[:, :edge].ravel()) & set(plane[:, edge:].ravel()))


@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_superpixels_follow_colour_edges(layout):
    require("skimage")
    image = two_colour_image(layout)
    mask = feature_mask(image, "superpixels", n_segments=8)
    count = assert_ids_used(mask)
    assert 2 <= count <= 16
    plane = mask[0] if layout == "NCHW" else mask[..., 0]
    for channel in range(3):
        np.testing.assert_array_equal(mask[channel] if layout == "NCHW" else mask[..., channel],
                                      plane)
    assert not crosses(plane, 16)  # no superpixel straddles the colour edge
    # Each row of a batch gets its own segmentation.
    other = two_colour_image(layout, edge=10)
    masks = row_masks(np.stack([image, other]), "superpixels", n_segments=8)
    np.testing.assert_array_equal(masks[0], mask)
    other_plane = masks[1][0] if layout == "NCHW" else masks[1][..., 0]
    assert not crosses(other_plane, 10) and np.any(masks[1] != masks[0])


def test_superpixels_without_scikit_image_name_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage.segmentation", None)  # import fails
    with pytest.raises(InputError, match="pip install scikit-image"):
        feature_mask(two_colour_image(), "superpixels")


def test_apply_features_keeps_present_features_and_fills_the_rest():
    rng = np.random.default_rng(0)
    row = rng.standard_normal((2, 3, 4)).astype(np.float32)
    mask = feature_mask(row, mask=np.array([[0, 0, 1, 1], [2, 2, 3, 3], [4, 4, 5, 5]]))
    present = rng.integers(0, 2, size=(7, 6)).astype(bool)
    baselines = [0.5, rng.standard_normal((3, 4)), rng.standard_normal((7, 2, 3, 4))]
    for baseline in baselines:
        out = apply_features(row, mask, present, baseline)
        assert out.shape == (7, 2, 3, 4) and out.dtype == np.float32
        full = np.broadcast_to(np.asarray(baseline, dtype=np.float32), out.shape)
        for k in range(7):
            for index in np.ndindex(row.shape):
                kept = present[k, mask[index]]
                assert out[(k, *index)] == (row[index] if kept else full[(k, *index)])


def test_apply_features_on_token_ids():
    ids = np.array([101, 7, 8, 102], dtype=np.int64)
    present = np.array([[1, 0, 1, 1], [0, 0, 0, 0]], dtype=bool)
    out = apply_features(ids, feature_mask(ids), present, 0)
    np.testing.assert_array_equal(out, [[101, 0, 8, 102], [0, 0, 0, 0]])
    assert out.dtype == np.int64
    np.testing.assert_array_equal(apply_features(ids, feature_mask(ids), present[:1], 103.0),
                                  [[101, 103, 8, 102]])  # an integral float is an id
    with pytest.raises(InputError, match="integer id"):
        apply_features(ids, feature_mask(ids), present, 0.5)
    with pytest.raises(InputError, match=r"present must be \[K, 4\]"):
        apply_features(ids, feature_mask(ids), present[:, :3], 0)
    with pytest.raises(InputError, match="baseline of shape"):
        apply_features(ids, feature_mask(ids), present, np.zeros(3))


def test_default_grid_has_eight_cells_along_the_shorter_side():
    from onnxplain.features import default_cell, row_masks

    assert default_cell(np.zeros((3, 224, 224))) == 28
    assert default_cell(np.zeros((1, 8, 8))) == 1
    assert default_cell(np.zeros((30, 20, 3))) == 3  # NHWC, shorter side 20
    assert default_cell(np.zeros(6)) == 1
    masks = row_masks(np.zeros((2, 1, 8, 8), np.float32), "grid")
    assert len(masks) == 2 and masks[0].max() == 63
