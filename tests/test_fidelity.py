"""Where labeler follows the authors' reference implementation to the number (docs/fidelity.md)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from labeler.actors.decode import decode_one
from labeler.io.rle import decode_masks
from labeler.method.detections import merge_and_select
from labeler.method.full_size_masks import rle_overlap_fractions
from labeler.method.proposals import upsample_logits
from labeler.method.scoring import RankedProposals
from labeler.models import load_dinov2, load_sam2
from labeler.models.dinov2_encoder import IMAGENET_MEAN, IMAGENET_STD
from labeler.models.sam2_inference import encode_images, sam2_input

from .conftest import encode_masks, overlap_fractions


def column_logits(profile: list[float], rows: int = 4) -> torch.Tensor:
    """``[rows, len(profile)]`` low-res logits with the same value down each column."""
    return torch.tensor(profile).expand(rows, -1).clone()


def test_masks_overlapping_only_at_full_size():
    """Low-res columns 1 and 2: disjoint. Upsampled 2x (output x samples source
    (x + 0.5) / 2 - 0.5), A is on at x = 1..4 and B at x = 3..6: they share x = 3, 4."""
    a, b = column_logits([-1, 5, -1, -1]), column_logits([-1, -1, 5, -1])
    low = torch.stack([a, b]) > 0
    full = upsample_logits(torch.stack([a, b])[:, None], (8, 8))[:, 0] > 0
    assert full[0, 0].nonzero().flatten().tolist() == [1, 2, 3, 4]
    assert full[1, 0].nonzero().flatten().tolist() == [3, 4, 5, 6]
    labels = torch.tensor([0, 0])
    assert overlap_fractions(low, labels).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    assert overlap_fractions(full, labels).tolist() == [[0.0, 0.5], [0.5, 0.0]]


def test_masks_overlapping_only_at_low_resolution():
    """Both on in low-res column 2 with a logit of 0.1; at full size that column's
    pixels go to whichever side's strong logit is nearer: A is on at x = 2..4, B at x = 5..7."""
    a, b = column_logits([-9, 9, 0.1, -9]), column_logits([-9, -9, 0.1, 9])
    low = torch.stack([a, b]) > 0
    full = upsample_logits(torch.stack([a, b])[:, None], (8, 8))[:, 0] > 0
    assert full[0, 0].nonzero().flatten().tolist() == [2, 3, 4]
    assert full[1, 0].nonzero().flatten().tolist() == [5, 6, 7]
    labels = torch.tensor([0, 0])
    assert overlap_fractions(low, labels).tolist() == [[0.0, 0.5], [0.5, 0.0]]
    assert overlap_fractions(full, labels).tolist() == [[0.0, 0.0], [0.0, 0.0]]


def test_overlaps_known_numbers_and_classes():
    masks = torch.zeros(3, 4, 4, dtype=torch.bool)
    masks[0, :2, :2] = True  # 4 px
    masks[1, :2, :] = True  # 8 px, holds mask 0
    masks[2, :2, :2] = True  # mask 0's pixels, another class
    fractions = overlap_fractions(masks, torch.tensor([0, 0, 1]))
    assert fractions.tolist() == [[0.0, 1.0, 0.0], [0.5, 0.0, 0.0], [0.0, 0.0, 0.0]]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rle_overlaps_equal_the_direct_ones(seed):
    """pycocotools on RLE, pairs with intersecting boxes only, equals the dense product."""
    generator = torch.Generator().manual_seed(seed)
    logits = F.interpolate(torch.randn(40, 1, 6, 7, generator=generator) * 4, size=(61, 83), mode="bilinear")[:, 0]
    masks = logits > 1.0
    masks[3] = False  # an empty mask overlaps nothing
    labels = torch.randint(0, 4, (40,), generator=generator)
    direct = overlap_fractions(masks, labels).numpy()
    fast = rle_overlap_fractions(encode_masks(masks), labels.numpy())
    assert (direct > 0).sum() > 20
    assert np.array_equal(direct, fast)


def ranked(count: int, labels: list[int], scores: list[float], embeddings: torch.Tensor) -> RankedProposals:
    return RankedProposals(index=torch.arange(count), labels=torch.tensor(labels), scores=torch.tensor(scores),
                           embeddings=embeddings)


@pytest.mark.parametrize("overlaps", ["dense", "rle"])
def test_soft_merging_uses_the_full_size_overlap(overlaps):
    """The masks of test_masks_overlapping_only_at_full_size, same class, same embedding:
    B (ranked second) shares 2 of its 4 columns with A, so its score becomes
    0.8 * sqrt(1 - 0.5); on the low-res masks it would stay 0.8."""
    logits = torch.stack([column_logits([-1, 5, -1, -1]), column_logits([-1, -1, 5, -1])])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    chosen = merge_and_select(ranked(2, [0, 0], [0.9, 0.8], same), logits, (8, 8), max_dets=100, min_score=0.0,
                             overlaps=overlaps)
    assert chosen.scores.tolist() == pytest.approx([0.9, 0.8 * 0.5 ** 0.5])
    assert chosen.boxes.tolist() == [[1.0, 0.0, 5.0, 8.0], [3.0, 0.0, 7.0, 8.0]]
    assert chosen.areas.tolist() == [32, 32]
    masks = decode_masks(chosen.rle.to_pylist(), 8, 8)
    assert np.array_equal(masks, (upsample_logits(logits[:, None], (8, 8))[:, 0] > 0).numpy())


@pytest.mark.parametrize("overlaps", ["dense", "rle"])
def test_detections_merged_to_zero_stay_in_the_output(overlaps):
    """B lies inside A at full size with the same embedding: ios 1, merged score 0, still output last."""
    logits = torch.stack([column_logits([5, 5, 5, 5]), column_logits([-5, 5, 5, -5])])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    chosen = merge_and_select(ranked(2, [0, 0], [0.6, 0.9], same), logits, (8, 8), max_dets=100, min_score=0.0,
                             overlaps=overlaps)
    assert chosen.scores.tolist() == pytest.approx([0.6, 0.0])
    assert chosen.labels.tolist() == [0, 0] and len(chosen.rle) == 2
    dropped = merge_and_select(ranked(2, [0, 0], [0.6, 0.9], same), logits, (8, 8), max_dets=100, min_score=0.1,
                             overlaps=overlaps)
    assert dropped.scores.tolist() == pytest.approx([0.6])


@pytest.mark.parametrize("overlaps", ["dense", "rle"])
def test_a_proposal_with_no_pixel_at_full_size_is_dropped_without_touching_others(overlaps):
    """One weakly positive low-res pixel vanishes when upsampled 2x (the reference gave it a NaN score)."""
    weak = torch.full((4, 4), -9.0)
    weak[1, 1] = 0.1
    logits = torch.stack([column_logits([5, 5, -5, -5]), weak])
    same = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    chosen = merge_and_select(ranked(2, [0, 0], [0.9, 0.8], same), logits, (8, 8), max_dets=100, min_score=0.0,
                             overlaps=overlaps)
    assert chosen.scores.tolist() == pytest.approx([0.9])


def test_targets_reach_dinov2_as_the_sam2_input_resized_bicubic(tmp_path):
    """The SAM2 input is Pillow's bicubic resize of the decoded image; the DINOv2 input is
    that uint8 image / 255, resized to 518 with bicubic interpolation, no antialiasing,
    no clamping, then ImageNet-normalised."""
    generator = np.random.default_rng(0)
    pixels = (generator.random((90, 120, 3)) * 255).astype(np.uint8)
    Image.fromarray(pixels).save(tmp_path / "target.png")
    decoded = decode_one(str(tmp_path / "target.png"), sam2_size=64, max_pixels=10**6)
    assert np.array_equal(decoded.sam2_pixels, np.asarray(Image.fromarray(pixels).resize((64, 64), Image.BICUBIC)))

    encoder = load_dinov2("random:tiny")
    seen = []
    encoder.model.register_forward_pre_hook(lambda module, args, kwargs: seen.append(kwargs["pixel_values"]),
                                            with_kwargs=True)
    encoder.target_features(torch.from_numpy(decoded.sam2_pixels.copy())[None])
    unit = torch.from_numpy(decoded.sam2_pixels.astype(np.float64) / 255.0).to(torch.float32).permute(2, 0, 1)[None]
    resized = F.interpolate(unit, size=(518, 518), mode="bicubic", align_corners=False)
    assert resized.min() < 0 or resized.max() > 1  # random pixels overshoot: nothing clamps them
    expected = (resized - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    assert torch.equal(seen[0], expected)


def test_target_features_skip_no_mem_embed():
    """The reference encodes targets without SAM2's no_mem_embed; box prompts of references may add it."""
    model = load_sam2("random:tiny")
    batch = sam2_input(np.zeros((1, model.image_size, model.image_size, 3), np.uint8), "cpu")
    plain = encode_images(model, batch)
    added = encode_images(model, batch, add_no_mem_embed=True)
    assert torch.allclose(added.image_embed - plain.image_embed, model.no_mem_embed.reshape(1, -1, 1, 1), atol=1e-6)
    assert not torch.equal(added.image_embed, plain.image_embed)


def test_the_proposer_prompts_the_reference_grid_unless_told_otherwise():
    from labeler.actors.sam2_proposer import Sam2Proposer
    from labeler.method.proposals import point_grid

    default = Sam2Proposer("random:tiny", device="cpu", points_per_side=4)
    assert torch.equal(default.grid, point_grid(4, default.image_size))
    assert default.grid.min().item() == 0.5
    cells = Sam2Proposer("random:tiny", device="cpu", points_per_side=4, grid_layout="cell-centres")
    assert torch.equal(cells.grid, point_grid(4, cells.image_size, "cell-centres"))
