"""How far a fast path's labels are from the plain fp32 path's, on the same images.

Each detection of the plain path is paired with the detection of the fast
path whose mask overlaps it most (mask IoU through pycocotools' RLE). The
figures say whether the decision that matters, the class of each object,
is the same, and how far masks and scores moved.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from labeler.io.labels import detection_rle


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
