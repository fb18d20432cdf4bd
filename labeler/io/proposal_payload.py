"""The compact form in which proposals travel from the SAM2 stage to the DINOv2 stage.

Scoring needs each proposal's binary low-res mask; the final masks (and the
overlaps of soft merging) need the low-res logits, resized to the image with
antialiased bilinear interpolation and thresholded at 0. Each output pixel
is a weighted mean of a few low-res pixels (the 2x2 around it when the image
is larger than the low-res grid; a wider window, up to ``2 * scale`` pixels
across, when it is smaller). Where all pixels with a weight share a sign,
the output has that sign whatever their values. So only the logits on the
*boundary band* (pixels within :func:`band_radius` of a pixel of the other
sign) change the final mask. The payload is therefore

* the binary masks as COCO RLE strings, concatenated into one blob,
* the logits on the boundary band as float32, in mask order,
* the predicted IoUs,

and the receiver rebuilds logits equal to the originals on the band and
``+/-32`` (SAM2's own logit clamp) elsewhere. Every output pixel whose
window holds both signs is then computed from the very same numbers, and
every other one keeps its sign: the final masks are bit for bit those of
the float32 logits (``tests/test_proposal_payload.py``), at a fraction of
their bytes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labeler.io.rle import PackedRle, pack_masks, unpack_masks

LOGIT_CLAMP = 32.0


def band_radius(lowres_hw: tuple[int, int], image_hw: tuple[int, int]) -> int:
    """Chebyshev radius of the boundary band for masks resized from ``lowres_hw`` to
    ``image_hw``: 1 when the image is at least as large in both directions (the 2x2
    bilinear window), else ``ceil(2 * scale)`` for the widest antialiasing window."""
    scale = max(lowres_hw[0] / max(image_hw[0], 1), lowres_hw[1] / max(image_hw[1], 1))
    return 1 if scale <= 1 else math.ceil(2 * scale)


def boundary_band(masks: torch.Tensor, radius: int = 1) -> torch.Tensor:
    """Pixels of ``[P, h, w]`` boolean masks with a pixel of the other value within
    ``radius`` (a ``(2 * radius + 1)`` square window, clipped at the edges)."""
    if masks.shape[0] == 0:
        return masks.clone()
    values = masks[:, None].float()
    window = dict(kernel_size=2 * radius + 1, stride=1, padding=radius)
    any_on = F.max_pool2d(values, **window)
    all_on = -F.max_pool2d(-values, **window)
    return (any_on != all_on)[:, 0]


@dataclass
class ProposalPayload:
    """Proposals of one image, ready to cross between actors."""

    rle_blob: bytes
    rle_lengths: np.ndarray  # int32 [P]
    band_logits: np.ndarray  # float32 [B]
    iou: np.ndarray  # float32 [P]
    height: int  # low-res grid
    width: int
    band_radius: int = 1  # :func:`band_radius`

    @property
    def count(self) -> int:
        return int(self.rle_lengths.shape[0])

    def nbytes(self) -> int:
        """Bytes this payload puts on the wire (array and blob contents)."""
        return len(self.rle_blob) + self.rle_lengths.nbytes + self.band_logits.nbytes + self.iou.nbytes

    @classmethod
    def empty(cls) -> ProposalPayload:
        """No proposal (an error row's)."""
        return cls(b"", np.zeros(0, np.int32), np.zeros(0, np.float32), np.zeros(0, np.float32), 0, 0)


def object_column(values: list) -> np.ndarray:
    """A batch column of one object per row (bytes, arrays of different shapes), never stacked."""
    column = np.empty(len(values), dtype=object)
    column[:] = values
    return column


def payload_columns(payloads: list[ProposalPayload]) -> dict[str, np.ndarray]:
    """The batch columns holding ``payloads``, one row each (:func:`payload_from_columns` reads them back)."""

    return {
        "rle_blob": object_column([p.rle_blob for p in payloads]),
        "rle_lengths": object_column([p.rle_lengths for p in payloads]),
        "band_logits": object_column([p.band_logits for p in payloads]),
        "iou": object_column([p.iou for p in payloads]),
        "lowres_height": np.array([p.height for p in payloads], dtype=np.int32),
        "lowres_width": np.array([p.width for p in payloads], dtype=np.int32),
        "band_radius": np.array([p.band_radius for p in payloads], dtype=np.int32),
    }


def join_payloads(payloads: list[ProposalPayload]) -> tuple[ProposalPayload, np.ndarray, np.ndarray]:
    """The payloads of one image's tiles as one (they share the low-res grid and band radius), with each tile's
    proposal and band-logit counts (``int32 [n]``), which :func:`split_payload` takes to cut it again."""
    first = payloads[0]
    joined = ProposalPayload(
        rle_blob=b"".join(p.rle_blob for p in payloads),
        rle_lengths=np.concatenate([p.rle_lengths for p in payloads]),
        band_logits=np.concatenate([p.band_logits for p in payloads]),
        iou=np.concatenate([p.iou for p in payloads]),
        height=first.height, width=first.width, band_radius=first.band_radius,
    )
    return (joined, np.array([p.count for p in payloads], dtype=np.int32),
            np.array([p.band_logits.shape[0] for p in payloads], dtype=np.int32))


def split_payload(payload: ProposalPayload, proposals: np.ndarray, band_logits: np.ndarray) -> list[ProposalPayload]:
    """A joined payload (:func:`join_payloads`) cut into its tiles' payloads."""
    mask_ends = np.cumsum(proposals, dtype=np.int64)
    byte_ends = np.cumsum(payload.rle_lengths, dtype=np.int64)
    band_ends = np.cumsum(band_logits, dtype=np.int64)
    tiles, mask_start, band_start = [], 0, 0
    for mask_end, band_end in zip(mask_ends.tolist(), band_ends.tolist()):
        byte_start = int(byte_ends[mask_start - 1]) if mask_start else 0
        byte_end = int(byte_ends[mask_end - 1]) if mask_end else 0
        tiles.append(ProposalPayload(
            rle_blob=payload.rle_blob[byte_start:byte_end], rle_lengths=payload.rle_lengths[mask_start:mask_end],
            band_logits=payload.band_logits[band_start:band_end], iou=payload.iou[mask_start:mask_end],
            height=payload.height, width=payload.width, band_radius=payload.band_radius,
        ))
        mask_start, band_start = mask_end, band_end
    return tiles


def payload_from_columns(batch: dict[str, np.ndarray], index: int) -> ProposalPayload:
    """Row ``index``'s payload from the columns :func:`payload_columns` made (after Ray Data's hand-off)."""
    return ProposalPayload(
        rle_blob=bytes(batch["rle_blob"][index]),
        rle_lengths=np.asarray(batch["rle_lengths"][index], dtype=np.int32),
        band_logits=np.asarray(batch["band_logits"][index], dtype=np.float32),
        iou=np.asarray(batch["iou"][index], dtype=np.float32),
        height=int(batch["lowres_height"][index]),
        width=int(batch["lowres_width"][index]),
        band_radius=int(batch["band_radius"][index]),
    )


def encode_proposals(logits: torch.Tensor, iou: torch.Tensor, image_hw: tuple[int, int]) -> ProposalPayload:
    """Pack ``[P, h, w]`` low-res logits and their ``[P]`` predicted IoUs, for an image of ``image_hw``."""
    masks = logits > 0
    packed = pack_masks(masks)
    radius = band_radius(tuple(logits.shape[1:]), image_hw)
    band_logits = logits[boundary_band(masks, radius)].float().cpu().numpy()
    return ProposalPayload(
        rle_blob=packed.blob,
        rle_lengths=packed.lengths,
        band_logits=band_logits,
        iou=iou.float().cpu().numpy(),
        height=int(logits.shape[1]),
        width=int(logits.shape[2]),
        band_radius=radius,
    )


def decode_proposals(payload: ProposalPayload, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack to ``[P, h, w]`` boolean masks and equivalent logits on ``device``."""
    masks = unpack_masks(PackedRle(payload.rle_blob, payload.rle_lengths, payload.height, payload.width), device)
    logits = torch.where(masks, LOGIT_CLAMP, -LOGIT_CLAMP).float()
    logits[boundary_band(masks, payload.band_radius)] = torch.from_numpy(payload.band_logits).to(device).float()
    return masks, logits
