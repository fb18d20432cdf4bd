"""Reference crops (docs/method.md 1.2): a square context window around an
instance, resized to the encoder input, and its mask as a weight map on the
feature grid."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from labeler.method import defaults


def context_crop_box(
    bbox_xywh: tuple[float, float, float, float],
    image_hw: tuple[int, int],
    context_ratio: float = defaults.CONTEXT_RATIO,
) -> tuple[int, int, int, int]:
    """The crop window of an instance, as integer pixel bounds ``(x0, y0, x1, y1)``.

    As the reference computes it: the box corners truncated with ``int()``, a
    square of side ``max(w, h) * (1 + context_ratio)`` around their midpoint,
    its bounds truncated with ``int()`` and clipped to the image (so it may stop
    being square at a border). Where the reference's window would be empty (a
    box under one pixel), it holds one pixel.
    """
    x, y, w, h = (float(v) for v in bbox_xywh)
    height, width = image_hw
    left, top, right, bottom = int(x), int(y), int(x + w), int(y + h)
    side = max(right - left, bottom - top) * (1.0 + context_ratio)
    mid_x, mid_y = (left + right) * 0.5, (top + bottom) * 0.5
    x0 = min(max(0, int(mid_x - side * 0.5)), width - 1)
    y0 = min(max(0, int(mid_y - side * 0.5)), height - 1)
    x1 = min(width, int(mid_x + side * 0.5))
    y1 = min(height, int(mid_y + side * 0.5))
    return x0, y0, max(x1, x0 + 1), max(y1, y0 + 1)


def crop_reference(
    image: torch.Tensor,
    mask: torch.Tensor,
    box: tuple[int, int, int, int],
    input_size: int,
    grid_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a crop out of an image and its instance mask, as the reference resizes them.

    Args:
        image: ``[3, H, W]`` uint8 pixels.
        mask: ``[H, W]`` instance mask (bool or float weights).
        box: ``(x0, y0, x1, y1)`` from :func:`context_crop_box`.
        input_size: encoder input side (518).
        grid_size: feature grid side (37).

    Returns:
        The crop as ``[3, input_size, input_size]`` floats on the 0..1 scale:
        bicubic without antialiasing and without clamping (so values may
        overshoot 0..1 at edges); and the mask as ``[grid_size, grid_size]``
        weights: bilinear (no antialiasing) to ``input_size``, then nearest to
        the grid, keeping its fractional values.
    """
    x0, y0, x1, y1 = box
    crop = (image[:, y0:y1, x0:x1].float() / 255.0).unsqueeze(0)
    crop = F.interpolate(crop, size=(input_size, input_size), mode="bicubic", align_corners=False)[0]
    weights = mask[y0:y1, x0:x1].float()[None, None]
    weights = F.interpolate(weights, size=(input_size, input_size), mode="bilinear", align_corners=False)
    weights = F.interpolate(weights, size=(grid_size, grid_size), mode="nearest")[0, 0]
    return crop, weights
