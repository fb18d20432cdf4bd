"""Mask proposals from SAM2 outputs (METHOD.md section 2), as tensor functions."""

from __future__ import annotations

import torch
from sam2.utils.amg import build_point_grid

DEFAULT_POINTS_PER_SIDE = 32
DEFAULT_POINTS_PER_BATCH = 256
DEFAULT_PRED_IOU_THR = 0.4


def point_grid(points_per_side: int, input_size: int) -> torch.Tensor:
    """The regular prompt grid in the model's input frame: ``[n*n, 2]`` (x, y) pixels.

    Cell centres of an ``n`` x ``n`` grid, as ``sam2.utils.amg.build_point_grid``.
    """
    return torch.from_numpy(build_point_grid(points_per_side)).float() * input_size


def best_of_three(low_res_logits: torch.Tensor, iou_predictions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per prompt, the multimask output with the highest predicted IoU.

    Args:
        low_res_logits: ``[N, K, h, w]`` mask logits (K = 3).
        iou_predictions: ``[N, K]``.

    Returns:
        ``[N, h, w]`` logits and ``[N]`` predicted IoUs of the chosen masks.
    """
    best = iou_predictions.argmax(dim=1)
    rows = torch.arange(low_res_logits.shape[0], device=low_res_logits.device)
    return low_res_logits[rows, best], iou_predictions[rows, best]


def keep_proposals(logits: torch.Tensor, iou_predictions: torch.Tensor, pred_iou_thr: float) -> torch.Tensor:
    """Boolean ``[N]``: predicted IoU above the threshold and a non-empty mask (logit > 0)."""
    non_empty = (logits > 0).flatten(1).any(dim=1)
    return (iou_predictions > pred_iou_thr) & non_empty
