"""COCO segmentations to masks, through pycocotools."""

from __future__ import annotations

from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labeler.errors import LabelerError


def segmentation_to_mask(segmentation: Any, height: int, width: int, *, where: str) -> np.ndarray:
    """Decode a COCO segmentation to an ``[H, W]`` uint8 mask.

    Accepts polygons (a list of flat coordinate lists), uncompressed RLE
    (``counts`` a list) and compressed RLE (``counts`` a string). An RLE whose
    size disagrees with the image is an error naming ``where``.
    """
    try:
        if isinstance(segmentation, list):
            polygons = [p for p in segmentation if isinstance(p, list) and len(p) >= 6]
            if not polygons:
                raise LabelerError(f"{where}: polygon segmentation has no polygon with at least 3 points")
            rle = mask_utils.merge(mask_utils.frPyObjects(polygons, height, width))
        elif isinstance(segmentation, dict):
            size = segmentation.get("size")
            counts = segmentation.get("counts")
            if not (isinstance(size, list) and len(size) == 2) or counts is None:
                raise LabelerError(f"{where}: RLE needs 'size' [h, w] and 'counts'")
            if list(size) != [height, width]:
                raise LabelerError(f"{where}: RLE size {size} differs from the image size [{height}, {width}]")
            if isinstance(counts, list):
                rle = mask_utils.frPyObjects(segmentation, height, width)
            elif isinstance(counts, str):
                rle = {"size": size, "counts": counts.encode("ascii")}
            else:
                raise LabelerError(f"{where}: RLE 'counts' must be a list or a string")
        else:
            raise LabelerError(f"{where}: unsupported segmentation type {type(segmentation).__name__}")
        return mask_utils.decode(rle).astype(np.uint8)
    except LabelerError:
        raise
    except Exception as error:  # pycocotools raises bare ValueError/TypeError on malformed input
        raise LabelerError(f"{where}: malformed segmentation ({error})") from None


def box_to_mask(bbox_xywh: tuple[float, float, float, float], height: int, width: int) -> np.ndarray:
    """The filled box as an ``[H, W]`` uint8 mask (pixels whose centre lies inside)."""
    x, y, w, h = bbox_xywh
    cols = np.arange(width) + 0.5
    rows = np.arange(height) + 0.5
    inside_x = (cols >= x) & (cols <= x + w)
    inside_y = (rows >= y) & (rows <= y + h)
    return (inside_y[:, None] & inside_x[None, :]).astype(np.uint8)
