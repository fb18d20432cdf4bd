"""Mask proposals from SAM2 outputs (docs/method.md section 2), as tensor functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from sam2.utils.amg import build_point_grid

from labeler.method import defaults


def point_grid(points_per_side: int, input_size: int, layout: str = defaults.GRID_LAYOUT) -> torch.Tensor:
    """The regular prompt grid in the model's ``input_size`` square frame: ``[n*n, 2]`` (x, y) pixels.

    ``edge-to-edge`` (the reference's): ``n`` values ``linspace(0, S - 1, n) + 0.5``
    per axis, so the outer points sit half a pixel inside the image border, in
    the reference's order (x varies slowest: ``meshgrid`` with ``ij`` indexing).
    ``cell-centres``: the centres of an ``n`` x ``n`` tiling, as
    ``sam2.utils.amg.build_point_grid`` (y varies slowest); it keeps
    ``S / 2n`` pixels off every border, so fewer prompts land on objects cut
    by the image edge.
    """
    if layout == "cell-centres":
        return torch.from_numpy(build_point_grid(points_per_side)).float() * input_size
    if layout != "edge-to-edge":
        raise ValueError(f"grid layout must be one of {', '.join(defaults.GRID_LAYOUTS)}, got {layout!r}")
    steps = torch.linspace(0, input_size - 1, points_per_side)
    x, y = torch.meshgrid(steps, steps, indexing="ij")
    return torch.stack((x.reshape(-1), y.reshape(-1)), dim=-1) + 0.5


def keep_proposals(logits: torch.Tensor, iou_predictions: torch.Tensor, pred_iou_thr: float) -> torch.Tensor:
    """Boolean ``[N]``: predicted IoU above the threshold and a non-empty mask (logit > 0).

    The reference keeps empty masks too; they can never become a detection
    (their score is NaN there, and ``NaN > 0`` drops them after NMS), and
    their ``[0, 0, 0, 0]`` box has IoU 0 with every box, so dropping them here
    changes no label unless more than ``8 * max_dets`` proposals survive NMS.
    """
    non_empty = (logits > 0).flatten(1).any(dim=1)
    return (iou_predictions > pred_iou_thr) & non_empty


def upsample_logits(low_res: torch.Tensor, image_hw: tuple[int, int]) -> torch.Tensor:
    """Resize ``[N, K, h, w]`` mask logits to the original image size as the reference
    does: bilinear with antialiasing (which differs from plain bilinear by float
    rounding when upsampling, and widens the filter when the image is smaller)."""
    return F.interpolate(low_res.float(), size=image_hw, mode="bilinear", align_corners=False, antialias=True)
