"""Which labelled images a person should check first, under a budget.

Two shares, both chosen in one pass over the shards with memory bounded by
the budget, whatever the number of images:

* **random** (``random_fraction`` of ``n``): the ok images with the smallest
  hash of ``seed`` and image id, a seeded uniform sample. The labels a
  reviewer corrects there estimate the run's precision and recall without
  bias (``labeler review merge`` reports them on this share alone).
* **uncertain** (the rest): the highest uncertainty, from what the run
  already holds (:func:`image_uncertainty`).
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass

from pycocotools import mask as mask_utils

from labeler.io.coco import coco_rle
from labeler.io.labels import STATUS_OK
from labeler.label_filter import LabelFilter
from labeler.outdir.shards import iter_label_rows

#: A detection within this distance of its class threshold is "near the threshold".
NEAR_THRESHOLD = 0.1
#: Mask IoU from which two detections are taken for one object.
SAME_OBJECT_IOU = 0.5
#: Mask IoU from which two kept detections of one class are a likely duplicate or part.
DUPLICATE_IOU = 0.3
#: Uncertainty of an image without any kept detection: a miss, or a true background image.
EMPTY_IMAGE_UNCERTAINTY = 0.5
DEFAULT_RANDOM_FRACTION = 0.25


@dataclass(frozen=True)
class Uncertainty:
    """How unsure the labels of one image are (0 sure .. 1 unsure), and the sign that says so most."""

    score: float
    reason: str


def _pair_ious(detections: list[dict], height: int, width: int):
    rles = [coco_rle(d["rle"], height, width) for d in detections]
    return mask_utils.iou(rles, rles, [0] * len(rles))


def image_uncertainty(detections: list[dict], height: int, width: int, label_filter: LabelFilter) -> Uncertainty:
    """The uncertainty of one image's labels: the largest of

    * ``near threshold``: ``1 - |score - threshold| / 0.1`` over detections
      within 0.1 of their class threshold (a coin flip whether they are kept);
    * ``class confusion``: ``1 - |s1 - s2|`` over pairs of different classes
      whose masks overlap (IoU >= 0.5), one of them kept: the top-two class
      margin of one object;
    * ``duplicate``: the mask IoU (>= 0.3) of two kept detections of one class,
      a double or a part counted as a whole;
    * ``no detection``: 0.5 when nothing is kept, a miss or a true background.
    """
    kept = [label_filter.keeps(d["category_id"], d["score"]) for d in detections]
    candidates = [Uncertainty(0.0, "confident")]
    if not any(kept):
        candidates.append(Uncertainty(EMPTY_IMAGE_UNCERTAINTY, "no detection"))
    for d in detections:
        gap = abs(d["score"] - label_filter.threshold(d["category_id"]))
        if gap < NEAR_THRESHOLD:
            candidates.append(Uncertainty(1.0 - gap / NEAR_THRESHOLD, "near threshold"))
    if len(detections) > 1 and any(kept):
        ious = _pair_ious(detections, height, width)
        for i in range(len(detections)):
            for j in range(i + 1, len(detections)):
                a, b = detections[i], detections[j]
                if a["category_id"] != b["category_id"] and ious[i][j] >= SAME_OBJECT_IOU and (kept[i] or kept[j]):
                    candidates.append(Uncertainty(1.0 - abs(a["score"] - b["score"]), "class confusion"))
                elif a["category_id"] == b["category_id"] and ious[i][j] >= DUPLICATE_IOU and kept[i] and kept[j]:
                    candidates.append(Uncertainty(float(ious[i][j]), "duplicate"))
    return max(candidates, key=lambda u: u.score)


def sample_key(image_id: int, seed: int) -> int:
    """The seeded hash that orders images for the random share (smallest first)."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{image_id}".encode(), digest_size=8).digest(), "big")


@dataclass(frozen=True)
class Chosen:
    """An image chosen for review, and why."""

    image_id: int
    uri: str
    file_name: str
    width: int
    height: int
    share: str  # "random" or "uncertain"
    uncertainty: float
    reason: str


def choose_for_review(pred: str, n: int, label_filter: LabelFilter, *, random_fraction: float = DEFAULT_RANDOM_FRACTION,
                      seed: int = 0) -> list[Chosen]:
    """Up to ``n`` ok images of the run in ``pred``: the random share, then the most uncertain (module doc)."""
    random_n = round(n * random_fraction)
    uncertain_n = n - random_n
    by_hash: list[tuple[int, int, Chosen]] = []  # max-heap on the hash (negated): the random_n smallest
    by_doubt: list[tuple[float, int, Chosen]] = []  # min-heap: the n most uncertain (some may be drawn at random)
    columns = ["image_id", "uri", "file_name", "width", "height", "status", "detections"]
    for row in iter_label_rows(pred, columns):
        if row["status"] != STATUS_OK:
            continue
        doubt = image_uncertainty(row["detections"], row["height"], row["width"], label_filter)
        key = sample_key(row["image_id"], seed)
        entry = (row["image_id"], row["uri"], row["file_name"], row["width"], row["height"])
        if random_n:
            item = (-key, row["image_id"], Chosen(*entry, "random", doubt.score, doubt.reason))
            if len(by_hash) < random_n:
                heapq.heappush(by_hash, item)
            elif item > by_hash[0]:
                heapq.heapreplace(by_hash, item)
        item = (doubt.score, -key, Chosen(*entry, "uncertain", doubt.score, doubt.reason))
        if len(by_doubt) < n:
            heapq.heappush(by_doubt, item)
        elif item > by_doubt[0]:
            heapq.heapreplace(by_doubt, item)
    drawn = sorted((c for _, _, c in by_hash), key=lambda c: sample_key(c.image_id, seed))
    taken = {c.image_id for c in drawn}
    ranked = [c for _, _, c in sorted(by_doubt, reverse=True) if c.image_id not in taken]
    return drawn + ranked[:uncertain_n]
