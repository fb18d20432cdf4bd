"""Proposal selection, NMS and soft merging on hand-made tensors with known answers."""

import math

import torch
import torch.nn.functional as F

from labeler.method.proposals import best_of_three, keep_proposals, point_grid
from labeler.method.scoring import (
    boxes_from_masks,
    class_aware_nms,
    classify,
    mask_embeddings,
    score_proposals,
    soft_merge,
    upsample_features,
)


def box_mask(x0, y0, x1, y1, size=8):
    mask = torch.zeros(size, size, dtype=torch.bool)
    mask[y0:y1, x0:x1] = True
    return mask


def test_point_grid_is_cell_centres():
    grid = point_grid(2, 100)
    assert torch.allclose(grid, torch.tensor([[25.0, 25.0], [75.0, 25.0], [25.0, 75.0], [75.0, 75.0]]))
    assert point_grid(32, 1024).shape == (1024, 2)


def test_best_of_three_picks_highest_predicted_iou_per_prompt():
    logits = torch.arange(2 * 3, dtype=torch.float32).reshape(2, 3, 1, 1)
    iou = torch.tensor([[0.2, 0.9, 0.5], [0.7, 0.1, 0.8]])
    chosen, chosen_iou = best_of_three(logits, iou)
    assert chosen.flatten().tolist() == [1.0, 5.0]
    assert torch.equal(chosen_iou, torch.tensor([0.9, 0.8]))


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


def test_nms_inside_scoring_ignores_similarity_scores():
    masks = torch.stack([box_mask(0, 0, 6, 6), box_mask(0, 0, 6, 5)])
    features = torch.zeros(8, 8, 2)
    features[:5, :, 0] = 1.0  # rows 0-4 point along x, row 5 along y
    features[5:, :, 1] = 1.0
    prototypes = F.normalize(torch.tensor([[1.0, 0.0]]), dim=1)
    # mask 1 (rows 0-4) has the higher similarity (1.0) but the lower predicted IoU.
    result = score_proposals(masks, torch.tensor([0.9, 0.5]), features, prototypes)
    assert result.index.tolist() == [0]


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


def test_soft_merge_known_numbers():
    m0 = box_mask(0, 0, 4, 4)  # 16 px
    m1 = box_mask(2, 0, 6, 4)  # 16 px, 8 shared with m0
    m2 = box_mask(0, 0, 4, 4)  # same pixels as m0 but another class
    masks = torch.stack([m0, m1, m2])
    e = F.normalize(torch.tensor([[1.0, 0.0], [0.6, 0.8], [1.0, 0.0]]), dim=1)
    labels = torch.tensor([0, 0, 1])
    scores = torch.tensor([0.9, 0.8, 0.7])
    merged = soft_merge(masks, e, labels, scores)
    # mask 1: ios = (8 / 16) * cos = 0.5 * 0.6 = 0.3 -> 0.8 * sqrt(0.7)
    assert torch.allclose(merged, torch.tensor([0.9, 0.8 * math.sqrt(0.7), 0.7]))


def test_soft_merge_uses_only_higher_ranked_and_clamps_negative_cosine():
    m0 = box_mask(0, 0, 2, 2)  # 4 px, inside m1
    m1 = box_mask(0, 0, 4, 4)  # 16 px
    masks = torch.stack([m0, m1])
    same = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.0]]), dim=1)
    merged = soft_merge(masks, same, torch.tensor([0, 0]), torch.tensor([0.5, 0.5]))
    # m0 is first: untouched; m1: overlap 4/16 with cos 1 -> 0.5 * sqrt(0.75)
    assert torch.allclose(merged, torch.tensor([0.5, 0.5 * math.sqrt(0.75)]))
    opposite = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])
    assert torch.allclose(soft_merge(masks.flip(0), opposite, torch.tensor([0, 0]), torch.tensor([0.5, 0.5])),
                          torch.tensor([0.5, 0.5]))


def test_a_mask_covered_by_an_identical_one_scores_zero_and_is_dropped():
    masks = torch.stack([box_mask(0, 0, 4, 4), box_mask(0, 0, 4, 4), box_mask(5, 5, 8, 8)])
    features = torch.zeros(8, 8, 2)
    features[..., 0] = 1.0
    prototypes = torch.tensor([[1.0, 0.0]])
    # Identical boxes: NMS removes the second before merging; the third stays.
    result = score_proposals(masks, torch.tensor([0.9, 0.8, 0.7]), features, prototypes)
    assert result.index.tolist() == [0, 2] and torch.allclose(result.scores, torch.ones(2))


def test_zero_proposals_give_zero_detections():
    result = score_proposals(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0), torch.zeros(8, 8, 4),
                             torch.eye(2, 4))
    assert result.index.numel() == result.labels.numel() == result.scores.numel() == 0


def test_zero_similarity_proposals_are_dropped():
    features = torch.zeros(8, 8, 2)
    features[..., 1] = 1.0
    result = score_proposals(box_mask(0, 0, 3, 3)[None], torch.tensor([0.9]), features, torch.tensor([[1.0, 0.0]]))
    assert result.index.numel() == 0


def test_max_dets_and_min_score_and_sorted_output():
    masks = torch.stack([box_mask(i, i, i + 1, i + 1) for i in range(6)])
    features = torch.zeros(8, 8, 2)
    for i in range(6):
        features[i, i] = torch.tensor([1.0, 0.2 * i])
    prototypes = torch.tensor([[1.0, 0.0]])
    full = score_proposals(masks, torch.full((6,), 0.9), features, prototypes)
    assert full.index.tolist() == [0, 1, 2, 3, 4, 5]
    assert torch.all(full.scores[:-1] >= full.scores[1:])
    assert score_proposals(masks, torch.full((6,), 0.9), features, prototypes, max_dets=2).index.tolist() == [0, 1]
    threshold = float(full.scores[2])
    assert score_proposals(masks, torch.full((6,), 0.9), features, prototypes, min_score=threshold).index.tolist() == [0, 1, 2]


def test_boxes_from_masks_have_exclusive_far_edges():
    assert boxes_from_masks(box_mask(2, 1, 5, 3)[None]).tolist() == [[2.0, 1.0, 5.0, 3.0]]


def test_upsample_features_shape_and_constant_field():
    features = torch.ones(4, 4, 3) * torch.tensor([1.0, 2.0, 3.0])
    resized = upsample_features(features, (16, 16))
    assert resized.shape == (16, 16, 3) and torch.allclose(resized, torch.ones(16, 16, 3) * torch.tensor([1.0, 2.0, 3.0]))
