"""How far a fast path's labels are from the plain fp32 path's, on the same images; and the plain path's
proposals, from SAM2's own mask decoder, that the proposal decoder is held to.

Each detection of the plain path is paired with the detection of the fast
path whose mask overlaps it most (mask IoU through pycocotools' RLE). The
figures say whether the decision that matters, the class of each object,
is the same, and how far masks and scores moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils

from labeler.io.labels import detection_rle
from labeler.method.proposals import keep_proposals
from labeler.models.sam2_inference import Sam2Features, decode_prompts


@dataclass(frozen=True)
class LabelAgreement:
    """The fast path's labels measured against the plain path's.

    Attributes:
        images: images compared.
        rows_differ: images whose status or proposal count differs.
        plain_detections, fast_detections: detections in all.
        count_differs: images with another number of detections.
        category_differs: plain detections whose best-overlapping fast
            detection has another class (or that have none).
        min_mask_iou, median_mask_iou: mask IoU of each plain detection with
            its best-overlapping fast detection (1.0 when there is none to
            compare).
        max_score_diff: the largest score gap of those pairs.
    """

    images: int
    rows_differ: int
    plain_detections: int
    fast_detections: int
    count_differs: int
    category_differs: int
    min_mask_iou: float
    median_mask_iou: float
    max_score_diff: float

    @property
    def same_labels(self) -> bool:
        """Same rows, same number of detections, and every class the same."""
        return self.rows_differ == 0 and self.count_differs == 0 and self.category_differs == 0

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "same_labels": self.same_labels}


def _rles(row: dict) -> list[dict]:
    return [detection_rle(row, detection) for detection in row["detections"]]


def compare_labels(plain: list[dict], fast: list[dict]) -> LabelAgreement:
    """Compare two label tables' rows (``pyarrow.Table.to_pylist()``) of the same images, in order."""
    if [row["image_id"] for row in plain] != [row["image_id"] for row in fast]:
        raise ValueError("compare_labels needs the same images in the same order")
    ious: list[float] = []
    score_diffs: list[float] = []
    rows_differ = count_differs = category_differs = 0
    for row, other in zip(plain, fast):
        rows_differ += (row["status"], row["proposals"]) != (other["status"], other["proposals"])
        count_differs += len(row["detections"]) != len(other["detections"])
        if not row["detections"]:
            continue
        if not other["detections"]:
            category_differs += len(row["detections"])
            continue
        overlap = np.asarray(mask_utils.iou(_rles(row), _rles(other), [0] * len(other["detections"])))
        best = overlap.argmax(axis=1)
        for k, detection in enumerate(row["detections"]):
            match = other["detections"][best[k]]
            category_differs += match["category_id"] != detection["category_id"]
            ious.append(float(overlap[k, best[k]]))
            score_diffs.append(abs(match["score"] - detection["score"]))
    return LabelAgreement(
        images=len(plain), rows_differ=rows_differ,
        plain_detections=sum(len(row["detections"]) for row in plain),
        fast_detections=sum(len(row["detections"]) for row in fast),
        count_differs=count_differs, category_differs=category_differs,
        min_mask_iou=min(ious, default=1.0), median_mask_iou=float(np.median(ious)) if ious else 1.0,
        max_score_diff=max(score_diffs, default=0.0),
    )


def sam2_reference_proposals(
    model: torch.nn.Module, features: Sam2Features, points: list[torch.Tensor], pred_iou_thr: float
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """docs/method.md 2.2-2.4 with SAM2's own mask decoder, as the reference runs it: every point of an image
    in one call, the best of the three masks by predicted IoU, the IoU filter, non-empty masks. Returns what
    :func:`labeler.models.sam2_inference.point_proposals` returns (float32 logits and IoUs per image)."""
    results = []
    for index, image_points in enumerate(points):
        image = features.select(index)
        labels = torch.ones(image_points.shape[0], 1, dtype=torch.int32, device=image_points.device)
        low_res, iou = decode_prompts(model, image, image_points[:, None, :], labels, multimask_output=True)
        best = iou.argmax(dim=1)
        rows = torch.arange(iou.shape[0], device=iou.device)
        logits, best_iou = low_res[rows, best].float(), iou[rows, best].float()
        keep = keep_proposals(logits, best_iou, pred_iou_thr)
        results.append((logits[keep], best_iou[keep]))
    return results
