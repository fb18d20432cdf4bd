"""COCO run-length encoding of mask batches.

Run boundaries are found with tensor ops on the masks' own device (the GPU
in production), so only the boundary positions travel to the host; the
compressed COCO strings are then made by pycocotools in one call.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def encode_masks(masks: torch.Tensor) -> list[dict]:
    """Encode ``[K, H, W]`` boolean masks as COCO compressed RLE dicts.

    Returns ``[{"size": [H, W], "counts": str}, ...]``, equal to
    ``pycocotools.mask.encode`` of the same masks.
    """
    count, height, width = masks.shape
    if count == 0:
        return []
    pixels = height * width
    flat = masks.transpose(1, 2).reshape(count, pixels)  # column-major, as COCO
    changes = (flat[:, 1:] != flat[:, :-1]).nonzero()
    first_on = flat[:, 0].cpu().numpy()
    changes = changes.cpu().numpy()
    per_mask = np.bincount(changes[:, 0], minlength=count)
    boundaries = np.split(changes[:, 1] + 1, np.cumsum(per_mask)[:-1])
    uncompressed = []
    for k in range(count):
        edges = np.concatenate(([0], boundaries[k], [pixels]))
        counts = np.diff(edges)
        if first_on[k]:
            counts = np.concatenate(([0], counts))
        uncompressed.append({"size": [height, width], "counts": counts.tolist()})
    compressed = mask_utils.frPyObjects(uncompressed, height, width)
    return [{"size": [height, width], "counts": rle["counts"].decode("ascii")} for rle in compressed]


def decode_masks(counts: list[str] | list[bytes], height: int, width: int) -> np.ndarray:
    """Decode compressed RLE counts (one image size) to ``[K, H, W]`` uint8 masks."""
    if not counts:
        return np.zeros((0, height, width), dtype=np.uint8)
    rles = [{"size": [height, width], "counts": c if isinstance(c, bytes) else c.encode("ascii")} for c in counts]
    return np.ascontiguousarray(mask_utils.decode(rles).transpose(2, 0, 1))
