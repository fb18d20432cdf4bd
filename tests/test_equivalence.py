"""compare_labels on hand-made label rows: exact counts, IoUs and score gaps."""

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from labeler.bench.equivalence import compare_labels


def rle(box: tuple[int, int, int, int], height: int = 10, width: int = 10) -> str:
    mask = np.zeros((height, width), dtype=np.uint8, order="F")
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask_utils.encode(mask)["counts"].decode()


def row(image_id: int, *detections: tuple[int, float, tuple], proposals: int = 5) -> dict:
    return {"image_id": image_id, "status": "ok", "proposals": proposals, "height": 10, "width": 10,
            "detections": [{"category_id": c, "score": s, "rle": rle(b)} for c, s, b in detections]}


def test_identical_rows_agree_exactly():
    rows = [row(1, (1, 0.9, (0, 0, 4, 4)), (2, 0.5, (5, 5, 10, 10))), row(2)]
    agreement = compare_labels(rows, rows)
    assert agreement.same_labels
    assert (agreement.min_mask_iou, agreement.median_mask_iou, agreement.max_score_diff) == (1.0, 1.0, 0.0)
    assert (agreement.plain_detections, agreement.fast_detections) == (2, 2)


def test_moved_mask_changed_class_and_score_are_measured():
    plain = [row(1, (1, 0.9, (0, 0, 4, 4)), (2, 0.5, (5, 5, 10, 10)))]
    # first mask loses one column of four (IoU 12/16), second changes class, scores move 0.25 and 0.1
    fast = [row(1, (1, 0.65, (0, 0, 3, 4)), (3, 0.6, (5, 5, 10, 10)))]
    agreement = compare_labels(plain, fast)
    assert agreement.category_differs == 1 and not agreement.same_labels
    assert agreement.min_mask_iou == pytest.approx(0.75)
    assert agreement.median_mask_iou == pytest.approx(0.875)
    assert agreement.max_score_diff == pytest.approx(0.25)


def test_missing_detections_and_other_rows_count_as_differences():
    plain = [row(1, (1, 0.9, (0, 0, 4, 4))), row(2, (1, 0.9, (0, 0, 4, 4)))]
    fast = [row(1, proposals=4), row(2, (1, 0.9, (0, 0, 4, 4)), (1, 0.3, (6, 6, 8, 8)))]
    agreement = compare_labels(plain, fast)
    assert (agreement.rows_differ, agreement.count_differs, agreement.category_differs) == (1, 2, 1)
    with pytest.raises(ValueError):
        compare_labels(plain, fast[::-1])
