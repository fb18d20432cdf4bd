"""One image's proposals to its final detections (docs/method.md section 3): their embeddings on the low-res
grid, then (:func:`labeler.method.scoring.rank_embedded`) their masks at the image's size made once
(:mod:`labeler.method.full_size_masks`), soft merging on those masks, and the best ``max_dets``."""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa
import torch

from labeler.method.full_size_masks import choose_overlap_path, full_size_masks
from labeler.method.graph_diffusion import Diffusion, diffused_ios, diffused_scores
from labeler.method.scoring import RankedProposals, mask_embeddings, select_detections, soft_merge, upsample_features


@dataclass
class ChosenDetections:
    """The final detections of one image, best first."""

    index: torch.Tensor  # [K] positions into the image's proposals
    labels: torch.Tensor  # [K] class rows of the bank
    scores: torch.Tensor  # [K] merged scores in [0, 1]
    boxes: torch.Tensor  # [K, 4] xyxy, exclusive far edges
    areas: torch.Tensor  # [K]
    rle: pa.Array  # [K] compressed COCO RLE strings


def embed_on_grid(masks: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """docs/method.md 3.1-3.2: the ``[g, g, D]`` DINOv2 features onto the ``[P, h, w]`` low-res mask grid,
    then each mask's unit-norm mean feature: ``[P, D]``. These do not depend on the bank."""
    if masks.shape[0] == 0:
        return torch.zeros(0, features.shape[-1], device=masks.device)
    return mask_embeddings(masks, upsample_features(features, tuple(masks.shape[1:])))


def merge_and_select(
    ranked: RankedProposals, logits: torch.Tensor, image_hw: tuple[int, int], max_dets: int,
    min_score: float | torch.Tensor, overlaps: str = "auto", diffusion: Diffusion | None = None,
) -> ChosenDetections:
    """The ranked proposals' masks at the image's size, soft merging with their overlaps (or, with
    ``diffusion``, graph-diffusion rescoring: :mod:`labeler.method.graph_diffusion`), the best ``max_dets``.

    ``overlaps`` picks how the masks are intersected (:func:`labeler.method.full_size_masks.full_size_masks`);
    every way gives the same detections; ``auto`` takes the matrix products for graph diffusion wherever
    their buffer fits. A mask with no pixel left at the image's size is dropped.
    """
    if overlaps == "auto" and diffusion is not None:
        overlaps = choose_overlap_path(logits.device, int(ranked.index.shape[0]), image_hw, dense_on_cpu=True)
    masks = full_size_masks(logits[ranked.index], ranked.labels, image_hw, overlaps)
    present = masks.present
    labels, scores, embeddings = ranked.labels[present], ranked.scores[present], ranked.embeddings[present]
    if diffusion is None:
        merged = soft_merge(masks.overlap, embeddings, labels, scores)
    else:
        merged = diffused_scores(scores, diffused_ios(masks.intersections, masks.areas, labels, diffusion),
                                 diffusion.lamb)
    order = select_detections(merged, max_dets, min_score[labels] if isinstance(min_score, torch.Tensor) else min_score)
    boxes, rle = masks.outputs(order)
    return ChosenDetections(
        index=ranked.index[present][order], labels=labels[order], scores=merged[order].clamp(0.0, 1.0),
        boxes=boxes, areas=masks.areas[order], rle=rle,
    )
