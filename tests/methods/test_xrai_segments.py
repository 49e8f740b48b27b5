"""XRAI's candidate regions: dilated_labels (one pass over the footprint) equals
scikit-image's dilation of each label's mask, which PAIR runs mask by mask, on label images
of several shapes with labels at the borders and labels missing; segments() of a batch
run in threads equals it run image by image."""

from __future__ import annotations

import numpy as np
import pytest

from onnxplain.methods.xrai import DILATION, _segmented, dilated_labels, segments

from ..conftest import require


@pytest.mark.parametrize("shape, count", [((64, 64), 40), ((10, 37), 6), ((3, 5), 9),
                                          ((1, 1), 2)])
def test_dilated_labels_equal_skimage_dilation_per_label(shape, count):
    morphology = require("skimage.morphology")
    footprint = morphology.disk(DILATION)
    labels = np.random.default_rng(count).integers(0, count, shape)
    labels[labels == count // 2] = 0  # a label with no pixel: an empty mask, as PAIR's
    got = dilated_labels(labels, footprint)
    assert got.shape == (labels.max() + 1, *shape)
    for label in range(labels.max() + 1):
        want = morphology.dilation(labels == label, footprint=footprint)
        np.testing.assert_array_equal(got[label], want, err_msg=str(label))
    assert got.any()


def test_threads_segment_as_one_image_at_a_time():
    require("skimage")
    images = np.random.default_rng(0).uniform(0, 1, (3, 20, 24, 3)).astype(np.float32)
    together = _segmented(images, threads=3)
    for image, regions in zip(images, together, strict=True):
        np.testing.assert_array_equal(regions, segments(image))
