"""RLE of mask batches and the SAM2 -> DINOv2 payload: exact round trips."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from labeler.io.proposal_payload import boundary_band, decode_proposals, encode_proposals
from labeler.io.rle import decode_masks, encode_masks


def random_masks(count, height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    blobs = F.interpolate(torch.randn(count, 1, height // 4 + 1, width // 4 + 1, generator=generator),
                          size=(height, width), mode="bilinear")[:, 0]
    return blobs > 0.3


@pytest.mark.parametrize("shape", [(5, 17, 23), (3, 1, 1), (2, 64, 64)])
def test_rle_matches_pycocotools(shape):
    masks = random_masks(*shape)
    masks[0] = True  # starts with foreground
    if shape[0] > 2:
        masks[1] = False  # empty
    ours = encode_masks(masks)
    reference = mask_utils.encode(np.asfortranarray(masks.numpy().transpose(1, 2, 0).astype(np.uint8)))
    assert [r["counts"] for r in ours] == [r["counts"].decode() for r in reference]
    assert np.array_equal(decode_masks([r["counts"] for r in ours], *shape[1:]), masks.numpy().astype(np.uint8))


def test_rle_of_no_masks():
    assert encode_masks(torch.zeros(0, 4, 4, dtype=torch.bool)) == []
    assert decode_masks([], 4, 5).shape == (0, 4, 5)


@pytest.mark.parametrize("shape", [(4, 1, 1), (4, 1, 9), (4, 9, 1), (6, 17, 23), (3, 64, 64)])
def test_boundary_band_equals_its_definition(shape):
    """Dilation differs from erosion over the 3x3 window (max pooling of the
    float masks, out-of-image pixels ignored): the boolean separable version is exact."""
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    as_float = masks[:, None].float()
    dilated = F.max_pool2d(as_float, 3, stride=1, padding=1)
    eroded = -F.max_pool2d(-as_float, 3, stride=1, padding=1)
    assert torch.equal(boundary_band(masks), (dilated != eroded)[:, 0])


def test_boundary_band_of_a_square():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True
    band = boundary_band(mask)[0]
    assert band.sum() == 16 and band[1:5, 1:5].all()  # the square and its one-pixel ring


@pytest.mark.parametrize("target", [(50, 70), (300, 200), (64, 64), (13, 9)])
def test_payload_rebuilds_the_final_masks(target):
    generator = torch.Generator().manual_seed(1)
    logits = F.interpolate(torch.randn(6, 1, 9, 9, generator=generator) * 8, size=(64, 64), mode="bicubic")[:, 0]
    iou = torch.rand(6, generator=generator)
    payload = encode_proposals(logits, iou)
    masks, rebuilt = decode_proposals(payload, "cpu")
    assert torch.equal(masks, logits > 0)
    assert torch.equal(torch.from_numpy(payload.iou), iou)
    original = F.interpolate(logits[:, None], size=target, mode="bilinear", align_corners=False) > 0
    again = F.interpolate(rebuilt[:, None], size=target, mode="bilinear", align_corners=False) > 0
    # Exact but where an interpolated logit is within float16 rounding of 0.
    differing = (original != again).sum().item()
    assert differing <= max(1, original.numel() // 10_000)
    # With the band sent at full precision the rebuild is exact: the band argument holds.
    exact = torch.where(logits > 0, 32.0, -32.0)
    band = boundary_band(logits > 0)
    exact[band] = logits[band]
    assert torch.equal(original, F.interpolate(exact[:, None], size=target, mode="bilinear", align_corners=False) > 0)
    assert payload.nbytes() < logits.numel() * 2  # smaller than even fp16 logits


def test_float16_rounding_to_zero_keeps_the_mask_sign():
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, 1, 1] = 1e-9  # rounds to 0 in float16
    masks, rebuilt = decode_proposals(encode_proposals(logits, torch.ones(1)), "cpu")
    assert masks[0, 1, 1] and rebuilt[0, 1, 1] > 0


def test_empty_payload():
    payload = encode_proposals(torch.zeros(0, 8, 8), torch.zeros(0))
    masks, logits = decode_proposals(payload, "cpu")
    assert payload.count == 0 and masks.shape == (0, 8, 8) and logits.shape == (0, 8, 8)
