"""Proposal selection, NMS and soft merging on hand-made tensors with known answers."""

import math

import pytest
import torch
import torch.nn.functional as F

from labeler.method.proposals import keep_proposals, point_grid
from labeler.method.scoring import (
    boxes_from_masks,
    class_aware_nms,
    classify,
    mask_embeddings,
    nms_boxes,
    rank_proposals,
    select_detections,
    soft_merge,
    upsample_features,
)

from .conftest import overlap_fractions


def box_mask(x0, y0, x1, y1, size=8):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_point_grid_is_edge_to_edge_with_x_slowest():
    """The reference's grid: linspace(0, S - 1, n) + 0.5 per axis, x varying slowest."""
    grid = point_grid(3, 10)
    expected = [[x, y] for x in (0.5, 5.0, 9.5) for y in (0.5, 5.0, 9.5)]
    assert grid.tolist() == expected
    full = point_grid(32, 1024)
    assert full.shape == (1024, 2)
    assert full.min().item() == 0.5 and full.max().item() == 1023.5
    assert torch.equal(full[:32, 0], torch.full((32,), 0.5))  # the first column of points, top to bottom
    assert full[1, 1].item() == 1023 / 31 + 0.5


def test_cell_centre_grid_is_a_named_option():
    grid = point_grid(2, 100, "cell-centres")
    assert grid.tolist() == [[25.0, 25.0], [75.0, 25.0], [25.0, 75.0], [75.0, 75.0]]
    with pytest.raises(ValueError, match="grid layout"):
        point_grid(2, 100, "corners")


def test_pred_iou_filter_is_strict_and_drops_empty_masks():
    logits = torch.full((4, 2, 2), 1.0)
    logits[3] = -1.0
    iou = torch.tensor([0.41, 0.4, 0.39, 0.99])
    assert keep_proposals(logits, iou, 0.4).tolist() == [True, False, False, False]


def test_nms_ranks_by_predicted_iou_not_by_score():
    boxes = torch.tensor([[0.0, 0, 10, 10], [1.0, 1, 10, 10], [0.0, 0, 10, 10]])
    labels = torch.tensor([0, 0, 1])
    predicted_iou = torch.tensor([0.6, 0.9, 0.5])
    # proposal 0 and 1 overlap (IoU 0.81) in class 0: the higher predicted IoU (1) survives;
    # proposal 2 is another class and survives whatever its overlap.
    keep = class_aware_nms(boxes, predicted_iou, labels, 0.5, 800)
    assert keep.tolist() == [1, 2]
    assert class_aware_nms(boxes, predicted_iou, labels, 0.5, 1).tolist() == [1]


def test_nms_inside_ranking_ignores_similarity_scores():
    masks = torch.stack([box_mask(0, 0, 6, 6), box_mask(0, 0, 6, 5)])
    features = torch.zeros(8, 8, 2)
    features[:5, :, 0] = 1.0  # rows 0-4 point along x, row 5 along y
    features[5:, :, 1] = 1.0
    prototypes = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    # mask 1 (rows 0-4) has the higher similarity (1.0) but the lower predicted IoU.
    result = rank_proposals(masks, torch.tensor([0.9, 0.5]), features, prototypes)
    assert result.index.tolist() == [0]


def test_nms_boxes_have_inclusive_far_edges():
    assert nms_boxes(box_mask(2, 1, 5, 3)[None]).tolist() == [[2.0, 1.0, 4.0, 2.0]]
    assert nms_boxes(box_mask(3, 3, 4, 4)[None]).tolist() == [[3.0, 3.0, 3.0, 3.0]]  # one pixel: zero area


def test_inclusive_nms_boxes_decide_what_survives():
    """Columns 0-3 and 1-4 of 10 rows: inclusive boxes have IoU 2/4 = 0.5 (both kept at
    threshold 0.5); boxes one pixel wider would have IoU 3/5 = 0.6 and drop one."""
    masks = torch.stack([box_mask(0, 0, 4, 10, size=10), box_mask(1, 0, 5, 10, size=10)])
    features = torch.zeros(10, 10, 2)
    features[..., 0] = 1.0
    ranked = rank_proposals(masks, torch.tensor([0.9, 0.8]), features, torch.tensor([[1.0, 0.0]]), nms_thr=0.5)
    assert ranked.index.tolist() == [0, 1]
    wider = boxes_from_masks(masks)
    assert class_aware_nms(wider, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5, 800).tolist() == [0]


def test_one_pixel_proposals_are_never_suppressed():
    masks = torch.stack([box_mask(3, 3, 4, 4), box_mask(3, 3, 4, 4)])
    features = torch.zeros(8, 8, 2)
    features[..., 0] = 1.0
    ranked = rank_proposals(masks, torch.tensor([0.9, 0.8]), features, torch.tensor([[1.0, 0.0]]))
    assert ranked.index.tolist() == [0, 1]  # zero-area boxes: IoU 0, as with the reference's boxes


def test_mask_embeddings_and_classify():
    features = torch.zeros(2, 2, 2)
    features[0, 0] = torch.tensor([3.0, 0.0])
    features[1, 1] = torch.tensor([0.0, 1.0])
    masks = torch.tensor([[[True, False], [False, False]], [[True, False], [False, True]]])
    embeddings = mask_embeddings(masks, features)
    assert torch.allclose(embeddings, F.normalize(torch.tensor([[3.0, 0.0], [1.5, 0.5]]), dim=1))
    prototypes = torch.tensor([[0.0, 1.0], [-1.0, 0.0]])
    labels, scores = classify(embeddings, prototypes)
    assert labels.tolist() == [0, 0]  # class 1 is negative for both: clamped to 0
    assert torch.allclose(scores, torch.tensor([0.0, 0.5 / math.hypot(1.5, 0.5)]))


def merge(masks, embeddings, labels, scores):
    return soft_merge(overlap_fractions(masks, labels), embeddings, labels, scores)


def test_soft_merge_known_numbers():
    m0 = box_mask(0, 0, 4, 4)  # 16 px
    m1 = box_mask(2, 0, 6, 4)  # 16 px, 8 shared with m0
    m2 = box_mask(0, 0, 4, 4)  # same pixels as m0 but another class
    masks = torch.stack([m0, m1, m2])
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.7])
    merged = merge(masks, e, labels, scores)
    # mask 1: ios = (8 / 16) * cos = 0.5 * 0.6 = 0.3 -> 0.8 * sqrt(0.7)
    assert torch.allclose(merged, torch.tensor([0.9, 0.8 * math.sqrt(0.7), 0.7]))


def test_soft_merge_uses_only_higher_ranked_and_clamps_negative_cosine():
    m0 = box_mask(0, 0, 2, 2)  # 4 px, inside m1
    m1 = box_mask(0, 0, 4, 4)  # 16 px
    masks = torch.stack([m0, m1])
    same = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=1)
    merged = merge(masks, same, torch.tensor([0, 0]), torch.tensor([0.5, 0.5]))
    # m0 is first: untouched; m1: overlap 4/16 with cos 1 -> 0.5 * sqrt(0.75)
    assert torch.allclose(merged, torch.tensor([0.5, 0.5 * math.sqrt(0.75)]))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(merge(masks.flip(0), opposite, torch.tensor([0, 0]), torch.tensor([0.5, 0.5])),
                          torch.tensor([0.5, 0.5]))


def test_a_mask_inside_a_same_class_twin_merges_to_zero():
    """m1 lies inside m0 with the same embedding: ios = 1 and its merged score is 0."""
    masks = torch.stack([box_mask(0, 0, 6, 6), box_mask(1, 1, 3, 3)])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    merged = merge(masks, same, torch.tensor([0, 0]), torch.tensor([0.9, 0.8]))
    assert merged.tolist() == [pytest.approx(0.9), 0.0]


def test_identical_boxes_are_suppressed_before_merging():
    masks = torch.stack([box_mask(0, 0, 4, 4), box_mask(0, 0, 4, 4), box_mask(5, 5, 8, 8)])
    features = torch.zeros(8, 8, 2)
    features[..., 0] = 1.0
    prototypes = torch.tensor([[1.0, 0.0]])
    result = rank_proposals(masks, torch.tensor([0.9, 0.8, 0.7]), features, prototypes)
    assert result.index.tolist() == [0, 2] and torch.allclose(result.scores, torch.ones(2))


def test_zero_proposals_give_zero_detections():
    result = rank_proposals(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0), torch.zeros(8, 8, 4),
                            torch.eye(2, 4))
    assert result.index.numel() == result.labels.numel() == result.scores.numel() == 0
    assert result.embeddings.shape == (0, 4)


def test_zero_similarity_proposals_are_dropped_before_merging():
    features = torch.zeros(8, 8, 2)
    features[..., 1] = 1.0
    result = rank_proposals(box_mask(0, 0, 3, 3)[None], torch.tensor([0.9]), features, torch.tensor([[1.0, 0.0]]))
    assert result.index.numel() == 0


def test_selection_keeps_zero_merged_scores_and_sorts_stably():
    merged = torch.tensor([0.0, 0.7, 0.0, 0.9, 0.7])
    assert select_detections(merged).tolist() == [3, 1, 4, 0, 2]  # merged score 0 stays, as in the reference
    assert select_detections(merged, max_dets=3).tolist() == [3, 1, 4]
    assert select_detections(merged, min_score=0.7).tolist() == [3, 1, 4]
    assert select_detections(torch.zeros(0)).numel() == 0


def test_boxes_from_masks_have_exclusive_far_edges():
    assert boxes_from_masks(box_mask(2, 1, 5, 3)[None]).tolist() == [[2.0, 1.0, 5.0, 3.0]]


def test_upsample_features_shape_and_constant_field():
    features = torch.ones(4, 4, 3) * torch.tensor([1.0, 2.0, 3.0])
    resized = upsample_features(features, (16, 16))
    assert resized.shape == (16, 16, 3) and torch.allclose(resized, torch.ones(16, 16, 3) * torch.tensor([1.0, 2.0, 3.0]))
