"""The compact form in which proposals travel from the SAM2 stage to the DINOv2 stage.

Scoring needs each proposal's binary low-res mask; the final masks need the
low-res logits, upsampled bilinearly and thresholded at 0. Bilinear
interpolation reads the 2x2 low-res pixels around each output pixel: where
those four share a sign, the output has that sign whatever their values.
So only the logits on the *boundary band* (pixels with a 3x3 neighbour of
the other sign) change the final mask. The payload is therefore

* the binary masks as COCO RLE strings, concatenated into one blob,
* the logits on the boundary band as float16, in mask order,
* the predicted IoUs,

and the receiver rebuilds logits that equal the originals (to float16
precision, sign kept from the exact binary mask) on the band and ``+/-32``
(SAM2's own logit clamp) elsewhere. Binary low-res masks, and so all
scoring, are exact; final masks can differ from upsampling the float32
logits only at pixels whose interpolated logit is within float16 rounding
of 0 (``tests/test_proposal_payload.py`` bounds it), at a fraction of the
bytes of float16 logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from labeler.io.rle import PackedRle, pack_masks, unpack_masks

LOGIT_CLAMP = 32.0
SMALLEST_POSITIVE = 1e-7


def _window3(masks: torch.Tensor, combine) -> torch.Tensor:
    """``combine`` (``|`` or ``&``) over each pixel's 3x3 window, edges replicated;
    separable, on boolean tensors."""
    rows = F.pad(masks[:, None].to(torch.uint8), (1, 1, 0, 0), mode="replicate")[:, 0].bool()
    across = combine(combine(rows[:, :, :-2], rows[:, :, 1:-1]), rows[:, :, 2:])
    cols = F.pad(across[:, None].to(torch.uint8), (0, 0, 1, 1), mode="replicate")[:, 0].bool()
    return combine(combine(cols[:, :-2], cols[:, 1:-1]), cols[:, 2:])


def boundary_band(masks: torch.Tensor) -> torch.Tensor:
    """Pixels of ``[P, h, w]`` boolean masks with a 3x3 neighbour of the other value."""
    return _window3(masks, torch.bitwise_or) != _window3(masks, torch.bitwise_and)


@dataclass
class ProposalPayload:
    """Proposals of one image, ready to cross between actors."""

    rle_blob: bytes
    rle_lengths: np.ndarray  # int32 [P]
    band_logits: np.ndarray  # float16 [B]
    iou: np.ndarray  # float32 [P]
    height: int  # low-res grid
    width: int

    @property
    def count(self) -> int:
        return int(self.rle_lengths.shape[0])

    def nbytes(self) -> int:
        """Bytes this payload puts on the wire (array and blob contents)."""
        return len(self.rle_blob) + self.rle_lengths.nbytes + self.band_logits.nbytes + self.iou.nbytes


def encode_proposals(logits: torch.Tensor, iou: torch.Tensor) -> ProposalPayload:
    """Pack ``[P, h, w]`` low-res logits and their ``[P]`` predicted IoUs."""
    masks = logits > 0
    packed = pack_masks(masks)
    band_logits = logits[boundary_band(masks)].half().cpu().numpy()
    return ProposalPayload(
        rle_blob=packed.blob,
        rle_lengths=packed.lengths,
        band_logits=band_logits,
        iou=iou.float().cpu().numpy(),
        height=int(logits.shape[1]),
        width=int(logits.shape[2]),
    )


def decode_proposals(payload: ProposalPayload, device: torch.device | str) -> tuple[torch.Tensor, torch.Tensor]:
    """Unpack to ``[P, h, w]`` boolean masks and equivalent logits on ``device``."""
    masks = unpack_masks(PackedRle(payload.rle_blob, payload.rle_lengths, payload.height, payload.width), device)
    logits = torch.where(masks, LOGIT_CLAMP, -LOGIT_CLAMP).float()
    band = boundary_band(masks)
    values = torch.from_numpy(payload.band_logits).to(device).float()
    inside = masks[band]
    # float16 can round a tiny logit to 0: keep the sign the exact mask says.
    values = torch.where(inside, values.clamp_min(SMALLEST_POSITIVE), values.clamp_max(0.0))
    logits[band] = values
    return masks, logits
