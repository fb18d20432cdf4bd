"""Vectorised COCO RLE: equal to pycocotools string for string, exact round trips."""

import numpy as np
import pyarrow as pa
import pytest
import torch
from pycocotools import mask as mask_utils

from labeler.io.labels import Detections, LabelRows
from labeler.io.rle import PackedRle, pack_masks, run_areas, run_lengths, unpack_masks


def reference_strings(masks: np.ndarray) -> list[str]:
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [r["counts"].decode() for r in encoded]


def edge_case_masks(seed: int) -> np.ndarray:
    """Random sizes and densities, plus empty, full, first-pixel-on and last-pixel-only masks."""
    rng = np.random.default_rng(seed)
    height, width = int(rng.integers(1, 30)), int(rng.integers(1, 30))
    masks = rng.random((6, height, width)) < rng.random()
    masks[0] = False
    masks[1] = True
    masks[2, 0, 0], masks[2, -1, -1] = True, False
    masks[3] = False
    masks[3, -1, -1] = True
    return masks


@pytest.mark.parametrize("seed", range(20))
def test_pack_equals_pycocotools_and_round_trips(seed):
    masks = edge_case_masks(seed)
    packed = pack_masks(torch.from_numpy(masks))
    assert packed.strings().to_pylist() == reference_strings(masks)
    assert torch.equal(unpack_masks(packed), torch.from_numpy(masks))


def test_long_runs_and_negative_deltas():
    """Counts needing 5-6 characters, and deltas (counts[i] - counts[i-2]) below zero."""
    masks = np.zeros((3, 2000, 1500), dtype=bool)
    masks[0, 1000:, 700:] = True
    masks[1, :5, :] = True
    masks[2, -1, -1] = True
    packed = pack_masks(torch.from_numpy(masks))
    assert packed.strings().to_pylist() == reference_strings(masks)
    assert torch.equal(unpack_masks(packed), torch.from_numpy(masks))


@pytest.mark.parametrize("seed", range(5))
def test_areas_from_run_lengths_equal_pycocotools(seed):
    masks = edge_case_masks(seed)
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    assert run_areas(*run_lengths(torch.from_numpy(masks))).tolist() == mask_utils.area(encoded).tolist()


def test_no_masks():
    packed = pack_masks(torch.zeros(0, 4, 5, dtype=torch.bool))
    assert packed.count == 0 and packed.strings().to_pylist() == []
    assert unpack_masks(PackedRle(b"", np.zeros(0, np.int32), 4, 5)).shape == (0, 4, 5)
    assert run_areas(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)).shape == (0,)


def test_columnar_detections_make_the_same_table_as_dicts():
    masks = torch.from_numpy(edge_case_masks(3)[:2])
    packed = pack_masks(masks)
    dicts = [{"category_id": 7, "score": 0.5, "bbox": [1.0, 2.0, 3.0, 4.0], "area": 9, "rle": text}
             for text in packed.strings().to_pylist()]
    columnar = Detections(np.array([7, 7]), np.array([0.5, 0.5], np.float32),
                          np.array([[1, 2, 3, 4]] * 2, np.float32), np.array([9, 9]), packed.strings())
    tables = []
    for detections in (Detections.from_dicts(dicts), columnar):
        rows = LabelRows()
        rows.add_ok(image_id=1, uri="a.jpg", width=5, height=4, detections=detections, proposals=2)
        rows.add_error(image_id=2, uri="b.jpg", error="read failed")
        tables.append(rows.table())
    assert tables[0].equals(tables[1])
    assert tables[1].column("detections").to_pylist()[0] == [
        {**d, "category": None, "score": pytest.approx(0.5)} for d in dicts  # names are set when a shard is written
    ]
    assert tables[1].column("detections").to_pylist()[1] == []
    assert isinstance(packed.strings(), pa.StringArray)


@pytest.mark.parametrize("masks", [
    np.zeros((2, 3, 4), bool),  # one run each: no delta-coded values at all
    np.ones((1, 3, 4), bool),  # a zero-length first run, then one run
    np.array([[[0, 1], [0, 0]]], bool),  # three runs: one odd-chain value
])
def test_masks_with_few_runs(masks):
    packed = pack_masks(torch.from_numpy(masks))
    assert packed.strings().to_pylist() == reference_strings(masks)
    assert torch.equal(unpack_masks(packed), torch.from_numpy(masks))
