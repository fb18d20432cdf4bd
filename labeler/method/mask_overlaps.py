"""Overlaps soft merging needs (docs/method.md 3.5): ``|m_i & m_j| / |m_i|`` for same-class
pairs of masks at the original image size.

Two exact ways to the same numbers. :func:`overlap_fractions` multiplies the
binary masks, which needs every mask at full size at once (the reference's
way: ``K x H x W``, 800 masks of a 12-megapixel image are 9.6 GB). The
production path, :func:`rle_overlap_fractions`, works on the masks' COCO
run-length encodings with pycocotools: for each class it compares only the
pairs whose boxes intersect (its ``iou`` with every mask marked crowd is
exactly the intersection over the first mask's area), walking the runs of
the two masks, so its cost follows the masks' outlines, not their pixels.
"""

from __future__ import annotations

import numpy as np
import torch
from pycocotools import mask as mask_utils


def overlap_fractions(masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Direct: ``[K, K]`` float64, row i: ``|m_i & m_j| / |m_i|`` where ``labels`` agree and
    ``i != j``, else 0; an empty ``m_i`` has row 0.

    Args:
        masks: ``[K, H, W]`` boolean masks.
        labels: ``[K]`` class labels.
    """
    flat = masks.flatten(1).double()
    intersection = flat @ flat.T
    areas = flat.sum(dim=1)
    fractions = torch.where(areas[:, None] > 0, intersection / areas.clamp_min(1.0)[:, None], 0.0)
    same_class = labels[:, None] == labels[None, :]
    same_class.fill_diagonal_(False)
    return torch.where(same_class.to(fractions.device), fractions, 0.0)


def rle_overlap_fractions(rles: list[dict], labels: np.ndarray) -> np.ndarray:
    """:func:`overlap_fractions` of masks given as COCO RLEs (``{"size", "counts"}``), with
    pycocotools, class by class: ``[K, K]`` float64."""
    labels = np.asarray(labels)
    fractions = np.zeros((len(rles), len(rles)), dtype=np.float64)
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        if members.size < 2:
            continue
        group = [rles[i] for i in members]
        # iou(dt, gt, crowd) = |dt & gt| / |dt| for crowd gt (0 when the boxes are apart).
        fractions[np.ix_(members, members)] = mask_utils.iou(group, group, [1] * members.size)
    np.fill_diagonal(fractions, 0.0)
    return fractions
