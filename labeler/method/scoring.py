"""Scoring proposals against the prototypes (docs/method.md section 3), as tensor functions."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from sam2.utils.amg import batched_mask_to_box
from torchvision.ops import batched_nms

from labeler.method import defaults

NMS_KEEP_FACTOR = 8


def upsample_features(features: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``[g, g, D]`` patch features to ``[h, w, D]`` on the mask grid (bilinear, antialias)."""
    grid = features.permute(2, 0, 1)[None].float()
    resized = F.interpolate(grid, size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized[0].permute(1, 2, 0)


def mask_embeddings(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """L2-normalised mean feature inside each binary mask.

    Args:
        masks: ``[P, h, w]`` boolean masks, none empty.
        features: ``[h, w, D]`` features on the same grid.

    Returns:
        ``[P, D]`` unit-norm embeddings.
    """
    flat = masks.flatten(1).to(features.dtype)
    sums = flat @ features.reshape(-1, features.shape[-1])
    means = sums / flat.sum(dim=1, keepdim=True).clamp_min(1.0)
    return F.normalize(means, dim=1)


@dataclass
class NegativePrototypes:
    """Negative references of a bank: what each class is not (docs/method.md, "Negative references")."""

    prototypes: torch.Tensor  # [M, D] unit-norm instance prototypes
    classes: torch.Tensor  # [M] the class row each is a "not" of
    sigma: float = defaults.NEGATIVE_SIGMA


def classify(
    embeddings: torch.Tensor, class_prototypes: torch.Tensor, negatives: NegativePrototypes | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Label = the most similar class, score = that cosine similarity clamped at 0.

    With ``negatives``, the reference code's rule first (its ``_compute_sim_global_avg_with_neg``): each
    class's similarity ``s`` becomes ``s * exp(-max(0, n - s) / sigma)``, where ``n`` is the largest
    cosine (clamped at 0) with that class's negatives, 0 for a class without any.
    """
    similarity = (embeddings @ class_prototypes.T.to(embeddings.dtype)).clamp_min(0.0)
    if negatives is not None:
        against = (embeddings @ negatives.prototypes.T.to(embeddings.dtype)).clamp_min(0.0)
        nearest = torch.zeros_like(similarity).scatter_reduce(
            1, negatives.classes.expand(embeddings.shape[0], -1), against, reduce="amax", include_self=True)
        similarity = similarity * torch.exp(-(nearest - similarity).clamp_min(0.0) / negatives.sigma)
    scores, labels = similarity.max(dim=1)
    return labels, scores


def boxes_from_masks(masks: torch.Tensor) -> torch.Tensor:
    """``[P, 4]`` (x0, y0, x1, y1) boxes of non-empty boolean masks, with exclusive far
    edges (COCO's, as pycocotools' ``toBbox``): the boxes labeler writes."""
    return batched_mask_to_box(masks).float() + torch.tensor([0.0, 0.0, 1.0, 1.0], device=masks.device)


def nms_boxes(masks: torch.Tensor) -> torch.Tensor:
    """``[P, 4]`` float boxes NMS compares: ``sam2.utils.amg.batched_mask_to_box``, whose far
    edges are inclusive (a one-pixel mask has a zero-area box), as the reference uses."""
    return batched_mask_to_box(masks).float()


def class_aware_nms(
    boxes: torch.Tensor, ranking: torch.Tensor, labels: torch.Tensor, iou_threshold: float, max_keep: int
) -> torch.Tensor:
    """Indices kept by per-class NMS, in decreasing ``ranking`` order, at most ``max_keep``.

    The ranking is SAM2's predicted IoU, not the similarity score.
    """
    keep = batched_nms(boxes.float(), ranking.float(), labels, iou_threshold)
    return keep[:max_keep]


@dataclass
class RankedProposals:
    """The proposals of one image that survive NMS with a positive score, in NMS rank order."""

    index: torch.Tensor  # [K] positions into the image's proposals
    labels: torch.Tensor  # [K] class rows of the bank
    scores: torch.Tensor  # [K] similarity scores, > 0
    embeddings: torch.Tensor  # [K, D] unit-norm mask embeddings


def rank_embedded(
    masks: torch.Tensor,
    iou_predictions: torch.Tensor,
    embeddings: torch.Tensor,
    class_prototypes: torch.Tensor,
    *,
    nms_thr: float = defaults.NMS_THR,
    max_dets: int = defaults.MAX_DETS,
    negatives: NegativePrototypes | None = None,
) -> RankedProposals:
    """docs/method.md 3.3-3.4, the steps that depend on the bank: classify every proposal by its
    embedding (:func:`classify`, with the bank's ``negatives`` if any), class-aware NMS ranked by predicted
    IoU on :func:`nms_boxes`, keep at most ``8 * max_dets``, then drop score 0.

    Args:
        masks: ``[P, h, w]`` boolean low-res proposal masks (non-empty).
        iou_predictions: ``[P]`` SAM2 predicted IoUs.
        embeddings: ``[P, D]`` unit-norm mask embeddings (:func:`mask_embeddings`).
        class_prototypes: ``[C, D]`` unit-norm prototypes.
    """
    device = masks.device
    if masks.shape[0] == 0:
        none = torch.zeros(0, dtype=torch.long, device=device)
        return RankedProposals(none, none, torch.zeros(0, device=device), torch.zeros(0, embeddings.shape[-1], device=device))
    labels, scores = classify(embeddings, class_prototypes, negatives)
    keep = class_aware_nms(nms_boxes(masks), iou_predictions, labels, nms_thr, NMS_KEEP_FACTOR * max_dets)
    keep = keep[scores[keep] > 0]
    return RankedProposals(index=keep, labels=labels[keep], scores=scores[keep], embeddings=embeddings[keep])


def rank_proposals(
    masks: torch.Tensor,
    iou_predictions: torch.Tensor,
    features: torch.Tensor,
    class_prototypes: torch.Tensor,
    *,
    nms_thr: float = defaults.NMS_THR,
    max_dets: int = defaults.MAX_DETS,
) -> RankedProposals:
    """docs/method.md 3.2-3.4: embed every proposal (:func:`mask_embeddings` on ``[h, w, D]`` features on
    the mask grid), then :func:`rank_embedded`."""
    if masks.shape[0] == 0:
        embeddings = torch.zeros(0, features.shape[-1], device=masks.device)
    else:
        embeddings = mask_embeddings(masks, features)
    return rank_embedded(masks, iou_predictions, embeddings, class_prototypes, nms_thr=nms_thr, max_dets=max_dets)


def soft_merge(overlap: torch.Tensor, embeddings: torch.Tensor, labels: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Semantic-aware soft merging (docs/method.md 3.5), proposals given in NMS rank order (best first).

    ``ios_i = max_{j < i, label_j = label_i} overlap_ij * max(0, cos(e_i, e_j))`` and
    ``score_i * (1 - ios_i) ** 0.5``, with ``ios`` clamped to ``[0, 1]`` (a cosine
    of unit vectors can round above 1, where the reference's power gives NaN).

    Args:
        overlap: ``[K, K]``, row i: ``|m_i & m_j| / |m_i|`` of the masks at the
            original image size (:mod:`labeler.method.full_size_masks`).
        embeddings: ``[K, D]`` unit-norm mask embeddings.
        labels: ``[K]`` class labels.
        scores: ``[K]`` scores.

    Returns:
        ``[K]`` merged scores.
    """
    count = scores.shape[0]
    if count == 0:
        return scores
    cosine = (embeddings @ embeddings.T).clamp_min(0.0)
    higher_ranked = torch.ones(count, count, dtype=torch.bool, device=scores.device).tril(diagonal=-1)
    same_class = labels[:, None] == labels[None, :]
    weighted = overlap.to(cosine.dtype) * cosine
    ios = torch.where(higher_ranked & same_class, weighted, torch.zeros_like(weighted)).amax(dim=1)
    return scores * (1.0 - ios.clamp(0.0, 1.0)).sqrt()


def select_detections(
    merged: torch.Tensor, max_dets: int = defaults.MAX_DETS, min_score: float | torch.Tensor = 0.0
) -> torch.Tensor:
    """Positions of the final detections: the ``max_dets`` best merged scores, best first
    (ties in rank order). Merged scores of 0 stay, as in the reference.

    ``min_score`` is one threshold, or one per candidate (``[N]``, from per-class
    thresholds; infinity for a class left out): candidates below theirs are
    dropped before the best ``max_dets`` are taken. With one threshold that is
    the same as dropping them after.
    """
    order = torch.argsort(merged, descending=True, stable=True)
    if isinstance(min_score, torch.Tensor):
        order = order[merged[order] >= min_score[order]]
    elif min_score > 0:
        order = order[merged[order] >= min_score]
    return order[:max_dets]
