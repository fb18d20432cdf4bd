"""RLE of mask batches and the SAM2 -> DINOv2 payload: exact round trips."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from labeler.io.proposal_payload import band_radius, boundary_band, decode_proposals, encode_proposals
from labeler.io.rle import decode_masks
from labeler.method.proposals import upsample_logits

from .conftest import encode_masks


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


def band_by_definition(masks: torch.Tensor, radius: int) -> torch.Tensor:
    """Pixel by pixel: some pixel of the other value within ``radius`` (inside the image)."""
    count, height, width = masks.shape
    band = torch.zeros_like(masks)
    for k in range(count):
        for y in range(height):
            for x in range(width):
                window = masks[k, max(0, y - radius) : y + radius + 1, max(0, x - radius) : x + radius + 1]
                band[k, y, x] = bool((window != masks[k, y, x]).any())
    return band


@pytest.mark.parametrize("radius", [1, 3])
@pytest.mark.parametrize("shape", [(2, 1, 1), (2, 1, 9), (2, 9, 1), (3, 17, 23)])
def test_boundary_band_equals_its_definition(shape, radius):
    masks = torch.rand(shape, generator=torch.Generator().manual_seed(1)) < 0.5
    assert torch.equal(boundary_band(masks, radius), band_by_definition(masks, radius))


def test_boundary_band_of_a_square():
    mask = torch.zeros(1, 6, 6, dtype=torch.bool)
    mask[0, 2:4, 2:4] = True
    band = boundary_band(mask)[0]
    assert band.sum() == 16 and band[1:5, 1:5].all()  # the square and its one-pixel ring


def test_band_radius_follows_the_resize_filter():
    assert band_radius((256, 256), (480, 640)) == 1
    assert band_radius((256, 256), (256, 256)) == 1
    assert band_radius((256, 256), (128, 640)) == 4  # 2x smaller: the filter reads 2 pixels each side
    assert band_radius((256, 256), (300, 100)) == 6  # 2.56x smaller


@pytest.mark.parametrize("target", [(50, 70), (300, 200), (64, 64), (13, 9), (40, 200)])
def test_payload_rebuilds_the_full_size_masks_bit_for_bit(target):
    """Upsampled or downsampled (antialiased) to the image, the rebuilt logits give
    exactly the masks of the float32 originals."""
    generator = torch.Generator().manual_seed(1)
    logits = F.interpolate(torch.randn(6, 1, 9, 9, generator=generator) * 8, size=(64, 64), mode="bicubic")[:, 0]
    iou = torch.rand(6, generator=generator)
    payload = encode_proposals(logits, iou, target)
    masks, rebuilt = decode_proposals(payload, "cpu")
    assert torch.equal(masks, logits > 0)
    assert torch.equal(torch.from_numpy(payload.iou), iou)
    assert torch.equal(upsample_logits(logits[:, None], target) > 0, upsample_logits(rebuilt[:, None], target) > 0)
    if min(target) >= 64:
        assert payload.nbytes() < logits.numel() * 2  # smaller than even fp16 logits


def test_a_tiny_positive_logit_stays_positive():
    logits = torch.full((1, 4, 4), -5.0)
    logits[0, 1, 1] = 1e-9
    masks, rebuilt = decode_proposals(encode_proposals(logits, torch.ones(1), (8, 8)), "cpu")
    assert masks[0, 1, 1] and rebuilt[0, 1, 1].item() == pytest.approx(1e-9)


def test_empty_payload():
    payload = encode_proposals(torch.zeros(0, 8, 8), torch.zeros(0), (16, 16))
    masks, logits = decode_proposals(payload, "cpu")
    assert payload.count == 0 and masks.shape == (0, 8, 8) and logits.shape == (0, 8, 8)
