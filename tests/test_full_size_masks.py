"""The two ways to the full-size masks (labeler.method.full_size_masks) agree bit for bit: the int8
matrix products of the dense path against pycocotools on RLE, down to the detections."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from labeler.io.rle import decode_masks
from labeler.method import full_size_masks as fsm
from labeler.method.detections import merge_and_select
from labeler.method.proposals import upsample_logits
from labeler.method.scoring import RankedProposals
from labeler.synthetic import proposal_logits

from .conftest import overlap_fractions


def both_ways(logits, labels, image_hw, chunk_pixels=None):
    dense = fsm.dense_full_size_masks(logits, labels, image_hw, chunk_pixels)
    rle = fsm.rle_full_size_masks(logits, labels, image_hw, chunk_pixels)
    return dense, rle


def assert_same(dense, rle):
    assert torch.equal(dense.present, rle.present)
    assert torch.equal(dense.intersections, rle.intersections)
    assert torch.equal(dense.overlap, rle.overlap)
    assert dense.overlap.dtype == torch.float64
    assert torch.equal(dense.areas, rle.areas)
    everything = torch.arange(int(dense.present.sum()))
    dense_boxes, dense_strings = dense.outputs(everything)
    rle_boxes, rle_strings = rle.outputs(everything)
    assert torch.equal(dense_boxes, rle_boxes)
    assert dense_strings.to_pylist() == rle_strings.to_pylist()


def test_known_numbers_with_an_empty_mask_and_a_lone_class():
    """Masks at 8x8 from 4x4 logits (2x): A on at x = 1..4, B at x = 3..6 (same class), C = A in
    another class, D weak enough to vanish."""
    def columns(profile):
        return torch.tensor(profile, dtype=torch.float32).expand(4, -1)

    weak = torch.full((4, 4), -9.0)
    weak[1, 1] = 0.1
    logits = torch.stack([columns([-1, 5, -1, -1]), columns([-1, -1, 5, -1]), columns([-1, 5, -1, -1]), weak])
    dense, rle = both_ways(logits, torch.tensor([0, 0, 1, 0]), (8, 8))
    assert dense.present.tolist() == [True, True, True, False]
    assert dense.overlap.tolist() == [[0.0, 0.5, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]
    assert dense.areas.tolist() == [32, 32, 32]
    boxes, strings = dense.outputs(torch.tensor([1, 0, 2]))
    assert boxes.tolist() == [[3.0, 0.0, 7.0, 8.0], [1.0, 0.0, 5.0, 8.0], [1.0, 0.0, 5.0, 8.0]]
    assert_same(dense, rle)
    masks = decode_masks(strings.to_pylist()[:2], 8, 8)
    assert np.array_equal(masks, (upsample_logits(logits[[1, 0], None], (8, 8))[:, 0] > 0).numpy())


@pytest.mark.parametrize("count, classes, image_hw, seed", [
    (100, 1, (150, 203), 0),   # one class: every pair a same-class pair
    (300, 3, (96, 120), 1),    # upsampled by 1.5 and 1.875
    (57, 3, (37, 29), 2),      # smaller than the low-res grid: antialiased downsampling
    (40, 7, (64, 64), 3),      # classes of a few masks, blocks read past their own rows
])
def test_sam_like_proposals_give_the_same_overlaps_both_ways(count, classes, image_hw, seed):
    logits = proposal_logits(count, (64, 64), seed, regions=12)
    labels = torch.randint(0, classes, (count,), generator=torch.Generator().manual_seed(seed))
    dense, rle = both_ways(logits, labels, image_hw)
    assert (dense.overlap > 0).sum() > count // 3  # many same-class pairs overlap
    assert_same(dense, rle)
    expected = overlap_fractions(upsample_logits(logits[:, None], image_hw)[:, 0] > 0, labels)
    assert torch.equal(dense.overlap, expected[dense.present][:, dense.present])


def test_chunks_of_one_mask_change_nothing():
    logits = proposal_logits(30, (64, 64), 5, regions=6)
    labels = torch.arange(30) % 2
    whole = fsm.dense_full_size_masks(logits, labels, (80, 90))
    assert_same(fsm.dense_full_size_masks(logits, labels, (80, 90), chunk_pixels=1), whole)


def test_no_proposal():
    dense, rle = both_ways(torch.zeros(0, 64, 64), torch.zeros(0, dtype=torch.long), (50, 60))
    assert dense.overlap.shape == (0, 0) and dense.outputs(torch.zeros(0, dtype=torch.long))[1].to_pylist() == []
    assert_same(dense, rle)


@pytest.mark.parametrize("classes", [1, 3])
def test_the_detections_are_the_same_both_ways(classes):
    count = 200
    generator = torch.Generator().manual_seed(classes)
    logits = proposal_logits(count, (64, 64), classes, regions=16)
    owner = torch.randint(0, 16, (count,), generator=generator)
    embeddings = F.normalize(torch.randn(16, 32, generator=generator)[owner] + 0.3 * torch.randn(count, 32, generator=generator), dim=1)
    ranked = RankedProposals(index=torch.arange(count), labels=owner % classes,
                             scores=0.3 + 0.6 * torch.rand(count, generator=generator), embeddings=embeddings)
    dense = merge_and_select(ranked, logits, (120, 160), 100, 0.0, overlaps="dense")
    rle = merge_and_select(ranked, logits, (120, 160), 100, 0.0, overlaps="rle")
    assert len(dense.index) == 100
    for name in ("index", "labels", "scores", "boxes", "areas"):
        assert torch.equal(getattr(dense, name), getattr(rle, name)), name
    assert dense.rle.to_pylist() == rle.rle.to_pylist()
    # soft merging changed the order, so the overlaps were used
    assert not torch.equal(dense.index, torch.argsort(ranked.scores, descending=True)[:100])


def test_the_path_is_chosen_by_device_and_buffer_size():
    assert fsm.choose_overlap_path(torch.device("cpu"), 800, (864, 1152)) == "rle"
    assert fsm.choose_overlap_path(torch.device("cuda"), 800, (864, 1152)) == "dense"
    assert fsm.dense_buffer_bytes(800, (864, 1152)) == 824 * 864 * 1152
    assert fsm.choose_overlap_path(torch.device("cuda"), 800, (3000, 4000)) == "rle"  # 9.7 GB
    with pytest.raises(ValueError, match="overlaps"):
        fsm.full_size_masks(torch.zeros(0, 4, 4), torch.zeros(0, dtype=torch.long), (4, 4), overlaps="fast")
