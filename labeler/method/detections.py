"""The final detections of one image (docs/method.md 3.3-3.5): proposals ranked on the low-res grid, their
masks at the image's size made once as RLE, soft merging on those masks, and the best ``max_dets``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from labeler.io.coco import coco_rle
from labeler.io.rle import PackedRle, pack_counts, run_areas, run_lengths
from labeler.method.mask_overlaps import rle_overlap_fractions
from labeler.method.proposals import upsample_logits
from labeler.method.scoring import (
    RankedProposals,
    boxes_from_masks,
    rank_proposals,
    select_detections,
    soft_merge,
    upsample_features,
)

#: Pixels of final masks upsampled at once (float32), per device type. It
#: bounds the memory the last step takes on large images (2**26 pixels is
#: 256 MB on a GPU, where fewer, larger chunks mean fewer kernel launches);
#: on the CPU, chunks of 32 MB are reused from the heap instead of being
#: mapped, faulted in and unmapped each time (measured 541 against 736 ms
#: for 100 masks of 1152x864, docs/PERFORMANCE.md).
FINAL_MASK_PIXELS_PER_CHUNK = {"cuda": 1 << 26, "cpu": 1 << 23}


def full_size_masks(
    logits: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PackedRle]:
    """Resize low-res logits to the image (:func:`upsample_logits`), threshold at 0, and measure them.

    Works in chunks of masks on the logits' device; only run boundaries
    reach the host, where all masks are RLE-encoded at once.

    Returns:
        ``present`` (``[K]`` bool: the mask kept any pixel), and for the
        present masks: ``[K', 4]`` xyxy boxes (exclusive far edges), ``[K']``
        areas, packed RLE.
    """
    height, width = image_hw
    chunk_pixels = FINAL_MASK_PIXELS_PER_CHUNK.get(logits.device.type, FINAL_MASK_PIXELS_PER_CHUNK["cpu"])
    step = max(1, chunk_pixels // (height * width))
    present, boxes, counts, runs = [], [], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, logits.shape[0], step):
        masks = upsample_logits(logits[start : start + step, None], image_hw)[:, 0] > 0
        nonempty = masks.flatten(1).any(dim=1)
        masks = masks[nonempty]
        present.append(nonempty)
        boxes.append(boxes_from_masks(masks))
        chunk_counts, chunk_runs = run_lengths(masks)
        counts.append(chunk_counts)
        runs.append(chunk_runs)
    device = logits.device
    counts, runs = np.concatenate(counts), np.concatenate(runs)
    return (
        torch.cat(present) if present else torch.zeros(0, dtype=torch.bool, device=device),
        torch.cat(boxes) if boxes else torch.zeros(0, 4, device=device),
        torch.from_numpy(run_areas(counts, runs)).to(device),
        pack_counts(counts, runs, height, width),
    )


@dataclass
class ChosenDetections:
    """The final detections of one image, best first."""

    index: torch.Tensor  # [K] positions into the image's proposals
    labels: torch.Tensor  # [K] class rows of the bank
    scores: torch.Tensor  # [K] merged scores in [0, 1]
    boxes: torch.Tensor  # [K, 4] xyxy, exclusive far edges
    areas: torch.Tensor  # [K]
    rle: pa.Array  # [K] compressed COCO RLE strings


def rank_on_grid(
    masks: torch.Tensor, iou: torch.Tensor, features: torch.Tensor, class_prototypes: torch.Tensor,
    nms_thr: float, max_dets: int,
) -> RankedProposals:
    """The DINOv2 features onto the low-res mask grid, then :func:`rank_proposals`."""
    grid_features = upsample_features(features, tuple(masks.shape[1:]))
    return rank_proposals(masks, iou, grid_features, class_prototypes, nms_thr=nms_thr, max_dets=max_dets)


def merge_and_select(
    ranked: RankedProposals, logits: torch.Tensor, image_hw: tuple[int, int], max_dets: int,
    min_score: float | torch.Tensor,
) -> ChosenDetections:
    """The ranked proposals' masks at the image's size, made once as RLE; soft merging
    with overlaps from those RLEs (:func:`rle_overlap_fractions`); the best ``max_dets``.

    A mask with no pixel left at the image's size is dropped (the reference would
    give it a NaN score); it overlaps nothing, so no other score changes.
    """
    present, boxes, areas, packed = full_size_masks(logits[ranked.index], image_hw)
    labels, scores, embeddings = ranked.labels[present], ranked.scores[present], ranked.embeddings[present]
    strings = packed.strings()
    rles = [coco_rle(text, *image_hw) for text in strings.to_pylist()]
    overlap = torch.from_numpy(rle_overlap_fractions(rles, labels.cpu().numpy())).to(scores.device)
    merged = soft_merge(overlap, embeddings, labels, scores)
    order = select_detections(merged, max_dets, min_score[labels] if isinstance(min_score, torch.Tensor) else min_score)
    return ChosenDetections(
        index=ranked.index[present][order], labels=labels[order], scores=merged[order].clamp(0.0, 1.0), boxes=boxes[order], areas=areas[order],
        rle=strings.take(pa.array(order.cpu().numpy())),
    )
