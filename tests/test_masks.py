"""Every COCO segmentation kind decodes to the same mask."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError
from labeler.io.masks import box_to_mask, segmentation_to_mask
from labeler.synthetic import _segmentation


@pytest.fixture
def ring():
    mask = np.zeros((30, 40), dtype=np.uint8)
    mask[5:25, 8:30] = 1
    mask[10:20, 15:22] = 0  # a hole
    return mask


@pytest.mark.parametrize("kind", ["rle", "rle-uncompressed"])
def test_rle_kinds_round_trip(ring, kind):
    segmentation = _segmentation(kind, [], ring)
    assert np.array_equal(segmentation_to_mask(segmentation, 30, 40, where="t"), ring)


def test_uncompressed_rle_starting_with_foreground():
    mask = np.zeros((4, 4), dtype=np.uint8)
    mask[0, 0] = 1
    segmentation = _segmentation("rle-uncompressed", [], mask)
    assert segmentation["counts"][0] == 0
    assert np.array_equal(segmentation_to_mask(segmentation, 4, 4, where="t"), mask)


def test_polygon_matches_pycocotools():
    polygon = [2.0, 2.0, 20.0, 2.0, 20.0, 12.0, 2.0, 12.0]
    expected = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects([polygon], 16, 24)))
    decoded = segmentation_to_mask([polygon], 16, 24, where="t")
    assert np.array_equal(decoded, expected) and decoded.sum() == expected.sum() > 0


def test_several_polygons_are_merged():
    a = [1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0]
    b = [10.0, 10.0, 14.0, 10.0, 14.0, 14.0, 10.0, 14.0]
    both = segmentation_to_mask([a, b], 16, 16, where="t")
    assert both.sum() == segmentation_to_mask([a], 16, 16, where="t").sum() + segmentation_to_mask([b], 16, 16, where="t").sum()


def test_rle_size_mismatch_names_the_item(ring):
    with pytest.raises(LabelerError, match="annotation 5: RLE size \\[30, 40\\] differs"):
        segmentation_to_mask(_segmentation("rle", [], ring), 40, 30, where="annotation 5")


@pytest.mark.parametrize("bad", [[[1.0, 2.0]], {"counts": "x"}, {"size": [2, 2], "counts": 3}])
def test_malformed_segmentations(bad):
    with pytest.raises(LabelerError, match="^a7: "):
        segmentation_to_mask(bad, 2, 2, where="a7")


def test_box_mask_is_the_filled_box():
    mask = box_to_mask((2, 1, 3, 2), 5, 8)
    assert mask.sum() == 6 and mask[1:3, 2:5].all()
