"""Reference crops (METHOD.md 1.2): a square context window around an
instance, resized to the encoder input, and its mask as a weight map on the
feature grid."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

DEFAULT_CONTEXT_RATIO = 0.2


def context_crop_box(
    bbox_xywh: tuple[float, float, float, float],
    image_hw: tuple[int, int],
    context_ratio: float = DEFAULT_CONTEXT_RATIO,
) -> tuple[int, int, int, int]:
    """The crop window of an instance, as integer pixel bounds ``(x0, y0, x1, y1)``.

    A square centred on the box centre, side ``max(w, h) * (1 + context_ratio)``,
    clipped to the image (so it may stop being square at a border). Bounds are
    widened outwards to whole pixels (floor of the start, ceil of the end), and
    the window always holds at least one pixel.
    """
    x, y, w, h = (float(v) for v in bbox_xywh)
    height, width = image_hw
    side = max(w, h) * (1.0 + context_ratio)
    cx, cy = x + w / 2.0, y + h / 2.0
    x0 = max(0, math.floor(cx - side / 2.0))
    y0 = max(0, math.floor(cy - side / 2.0))
    x1 = min(width, math.ceil(cx + side / 2.0))
    y1 = min(height, math.ceil(cy + side / 2.0))
    x0, y0 = min(x0, width - 1), min(y0, height - 1)
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def crop_reference(
    image: torch.Tensor,
    mask: torch.Tensor,
    box: tuple[int, int, int, int],
    input_size: int,
    grid_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a crop out of an image and its instance mask.

    Args:
        image: ``[3, H, W]`` pixels (uint8 or float in 0..255).
        mask: ``[H, W]`` instance mask (bool or float weights).
        box: ``(x0, y0, x1, y1)`` from :func:`context_crop_box`.
        input_size: encoder input side (518).
        grid_size: feature grid side (37).

    Returns:
        The crop resized to ``[3, input_size, input_size]`` (bicubic, antialiased,
        clamped to 0..255), and the mask as ``[grid_size, grid_size]`` weights:
        bilinear to ``input_size``, then nearest to the grid, keeping its
        fractional values.
    """
    x0, y0, x1, y1 = box
    crop = image[:, y0:y1, x0:x1].unsqueeze(0).float()
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False, antialias=True)
    crop = crop.clamp_(0.0, 255.0)[0]
    weights = mask[y0:y1, x0:x1].float()[None, None]
    weights = F.interpolate(weights, size=(input_size, input_size), mode="bilinear", align_corners=False)
    weights = F.interpolate(weights, size=(grid_size, grid_size), mode="nearest")[0, 0]
    return crop, weights
