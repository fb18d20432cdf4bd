"""Quality of detections against ground truth: matches, a per-class score threshold for a
target precision, and which classes are confused with which.

A detection is a true positive when it is matched, COCO's way: per image and
class, detections in decreasing score order each take the unmatched
ground-truth instance they overlap most, from mask IoU 0.5 (box IoU where
masks are missing). Crowd annotations are left out of the ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from pycocotools import mask as mask_utils

MATCH_IOU = 0.5
#: The class of a detection matched to no ground-truth instance, and of an instance no detection found.
BACKGROUND = "(background)"
MISSED = "(missed)"


def _rle(segmentation, height: int, width: int):
    if isinstance(segmentation, list):
        return mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
    if isinstance(segmentation, dict) and isinstance(segmentation.get("counts"), list):
        return mask_utils.frPyObjects(segmentation, height, width)
    return segmentation


def pairwise_iou(detections: list[dict], truths: list[dict], height: int, width: int) -> np.ndarray:
    """``[D, T]`` IoU of detections and ground-truth annotations (COCO dicts): of masks when
    all have one, else of boxes."""
    if not detections or not truths:
        return np.zeros((len(detections), len(truths)))
    if all(a.get("segmentation") for a in detections + truths):
        rles = [_rle(a["segmentation"], height, width) for a in detections + truths]
        return np.asarray(mask_utils.iou(rles[:len(detections)], rles[len(detections):], [0] * len(truths)))
    return np.asarray(mask_utils.iou([a["bbox"] for a in detections], [a["bbox"] for a in truths], [0] * len(truths)))


def match_image(detections: list[dict], truths: list[dict], height: int, width: int) -> np.ndarray:
    """``bool [D]``: which detections of one image are true positives (module doc)."""
    ious = pairwise_iou(detections, truths, height, width)
    matched = np.zeros(len(detections), dtype=bool)
    taken = np.zeros(len(truths), dtype=bool)
    for d in sorted(range(len(detections)), key=lambda k: -detections[k]["score"]):
        candidates = [(ious[d, t], t) for t in range(len(truths))
                      if not taken[t] and truths[t]["category_id"] == detections[d]["category_id"]
                      and ious[d, t] >= MATCH_IOU]
        if candidates:
            taken[max(candidates)[1]] = True
            matched[d] = True
    return matched


@dataclass(frozen=True)
class ThresholdChoice:
    """The score threshold of one class, and what it gives on the held-out images."""

    threshold: float
    precision: float
    recall: float
    reached: bool  # whether the target precision is met


def choose_threshold(scores: np.ndarray, true_positive: np.ndarray, truths: int, target: float) -> ThresholdChoice | None:
    """The lowest threshold (most recall) whose precision is at least ``target``.

    A threshold keeps every detection scoring at least it, so it can only cut
    between different scores. Where no cut reaches the target, the cut of
    best precision (the lowest such) with ``reached=False``; where no
    detection is right at all, a threshold above every score (keeps none).
    None without detections.
    """
    if scores.size == 0:
        return None
    order = np.argsort(-scores, kind="stable")
    ordered, hits = scores[order], np.cumsum(true_positive[order])
    precision = hits / np.arange(1, scores.size + 1)
    cuts = np.append(ordered[1:] != ordered[:-1], True)  # after the last of each run of equal scores
    meeting = np.flatnonzero(cuts & (precision >= target))
    if meeting.size:
        at, reached = int(meeting[-1]), True
    else:
        best = precision[cuts].max()
        if best == 0:
            return ThresholdChoice(min(1.0, float(np.nextafter(ordered[0], np.inf))), 0.0, 0.0, False)
        at, reached = int(np.flatnonzero(cuts & (precision == best))[-1]), False
    return ThresholdChoice(float(ordered[at]), float(precision[at]),
                           float(hits[at] / truths) if truths else 0.0, reached)


def confusion_counts(detections: list[dict], truths: list[dict], height: int, width: int,
                     names: dict[int, str]) -> dict[tuple[str, str], int]:
    """``(true class, detected class) -> count`` on one image, over kept detections and every class.

    Each instance goes to the detection that overlaps it most (IoU >= 0.5, any
    class, each detection used once, best pairs first); an instance without one
    is ``(class, MISSED)``, a detection without one ``(BACKGROUND, class)``.
    """
    ious = pairwise_iou(detections, truths, height, width)
    pairs = sorted(((ious[d, t], d, t) for d in range(len(detections)) for t in range(len(truths))
                    if ious[d, t] >= MATCH_IOU), reverse=True)
    counts: dict[tuple[str, str], int] = {}
    used_d, used_t = set(), set()

    def count(key: tuple[str, str]) -> None:
        counts[key] = counts.get(key, 0) + 1

    for _, d, t in pairs:
        if d not in used_d and t not in used_t:
            used_d.add(d)
            used_t.add(t)
            count((names[truths[t]["category_id"]], names[detections[d]["category_id"]]))
    for t in range(len(truths)):
        if t not in used_t:
            count((names[truths[t]["category_id"]], MISSED))
    for d in range(len(detections)):
        if d not in used_d:
            count((BACKGROUND, names[detections[d]["category_id"]]))
    return counts
