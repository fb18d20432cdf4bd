"""COCO segmentations to masks, through pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError
from labeler.io.coco import check_segmentation, coco_rle
from labeler.io.rle import PackedRle, unpack_counts


def _checked_rle(segmentation: dict, height: int, width: int, where: str) -> dict:
    """A pycocotools RLE whose run lengths cover exactly ``height * width`` pixels.

    pycocotools decodes without bounds checks: counts that sum past the image
    write past its buffer.
    """
    counts = segmentation["counts"]
    if isinstance(counts, list):
        total, rle = sum(counts), mask_utils.frPyObjects(segmentation, height, width)
    else:
        try:
            blob = counts.encode("ascii")
            values, _ = unpack_counts(PackedRle(blob, np.array([len(blob)], np.int32), height, width))
        except (UnicodeEncodeError, ValueError, IndexError, RuntimeError):
            raise LabelerError(f"{where}: RLE 'counts' is not a COCO compressed string") from None
        if (values < 0).any():
            raise LabelerError(f"{where}: RLE 'counts' decodes to negative run lengths")
        total, rle = int(values.sum()), coco_rle(blob, height, width)
    if total != height * width:
        raise LabelerError(f"{where}: RLE runs cover {total} pixels, not the image's {height}x{width}")
    return rle


def segmentation_to_rle(segmentation: Any, height: int, width: int, *, where: str) -> dict:
    """A COCO segmentation as one pycocotools RLE of an ``height x width`` image.

    Accepts polygons (a list of flat coordinate lists), uncompressed RLE
    (``counts`` a list) and compressed RLE (``counts`` a string), checked first
    (:func:`labeler.io.coco.check_segmentation`, and run lengths covering the
    image exactly). Any problem is a :class:`LabelerError` naming ``where``.
    """
    check_segmentation(segmentation, where, (height, width))
    try:
        if isinstance(segmentation, list):
            return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        return _checked_rle(segmentation, height, width, where)
    except LabelerError:
        raise
    except Exception as error:  # pycocotools raises bare ValueError/TypeError on malformed input
        raise LabelerError(f"{where}: malformed segmentation ({error})") from None


def segmentation_to_mask(segmentation: Any, height: int, width: int, *, where: str) -> np.ndarray:
    """Decode a COCO segmentation to an ``[H, W]`` uint8 mask (:func:`segmentation_to_rle`)."""
    rle = segmentation_to_rle(segmentation, height, width, where=where)
    try:
        return mask_utils.decode(rle).astype(np.uint8)
    except Exception as error:  # noqa: BLE001 - pycocotools on a malformed string
        raise LabelerError(f"{where}: malformed segmentation ({error})") from None


def box_to_mask(bbox_xywh: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """The filled box as an ``[H, W]`` uint8 mask (pixels whose centre lies inside)."""
    x, y, w, h = bbox_xywh
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside_x = (cols >= x) & (cols <= x + w)
    inside_y = (rows >= y) & (rows <= y + h)
    return (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)
