"""SAM2 proposal stage (GPU actors): batches of images -> compact proposal payloads."""

from __future__ import annotations

import numpy as np

from labeler.actors.worker_setup import prepare_worker
from labeler.io.labels import STATUS_OK
from labeler.io.proposal_payload import ProposalPayload, encode_proposals
from labeler.method.proposals import DEFAULT_POINTS_PER_BATCH, DEFAULT_POINTS_PER_SIDE, DEFAULT_PRED_IOU_THR, point_grid
from labeler.models import load_sam2
from labeler.models.sam2_inference import encode_images, grid_proposals, sam2_input

FIXED_ROW_BYTES = 64  # ids, sizes, status and offsets of a row, roughly


def row_nbytes(batch: dict[str, np.ndarray], index: int) -> int:
    """Bytes one row of a SAM2-stage output batch carries to the next stage."""
    total = FIXED_ROW_BYTES + len(str(batch["uri"][index])) + len(str(batch["error"][index]))
    for column in ("dino_pixels", "rle_lengths", "band_logits", "iou"):
        total += np.asarray(batch[column][index]).nbytes
    return total + len(batch["rle_blob"][index])


class Sam2Proposer:
    """Encodes a batch of images at once, then decodes each image's grid prompts
    in batches of ``points_per_batch``. Replaces ``sam2_pixels`` with the
    proposal payload columns (:mod:`labeler.io.proposal_payload`)."""

    def __init__(
        self,
        sam2: str,
        device: str = "auto",
        points_per_side: int = DEFAULT_POINTS_PER_SIDE,
        points_per_batch: int = DEFAULT_POINTS_PER_BATCH,
        pred_iou_thr: float = DEFAULT_PRED_IOU_THR,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
    ):
        self.device = prepare_worker(device, cpu_threads, storage_options)
        self.model = load_sam2(sam2, self.device)
        self.grid = point_grid(points_per_side, self.model.image_size).to(self.device)
        self.points_per_batch = points_per_batch
        self.pred_iou_thr = pred_iou_thr

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def propose(self, resized: np.ndarray) -> list[ProposalPayload]:
        """Payloads for ``[B, S, S, 3]`` uint8 images."""
        features = encode_images(self.model, sam2_input(resized, self.device))
        payloads = []
        for index in range(resized.shape[0]):
            logits, iou = grid_proposals(
                self.model, features.select(index), self.grid, self.points_per_batch, self.pred_iou_thr
            )
            payloads.append(encode_proposals(logits, iou))
        return payloads

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels = batch.pop("sam2_pixels")
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        size = len(batch["image_id"])
        empty = ProposalPayload(b"", np.zeros(0, np.int32), np.zeros(0, np.float16), np.zeros(0, np.float32), 0, 0)
        payloads = [empty] * size
        if ok.size:
            for index, payload in zip(ok, self.propose(pixels[ok])):
                payloads[index] = payload
        batch["rle_blob"] = np.array([p.rle_blob for p in payloads], dtype=object)
        batch["rle_lengths"] = _ragged([p.rle_lengths for p in payloads])
        batch["band_logits"] = _ragged([p.band_logits for p in payloads])
        batch["iou"] = _ragged([p.iou for p in payloads])
        batch["lowres_height"] = np.array([p.height for p in payloads], dtype=np.int32)
        batch["lowres_width"] = np.array([p.width for p in payloads], dtype=np.int32)
        batch["transfer_bytes"] = np.array([row_nbytes(batch, i) for i in range(size)], dtype=np.int64)
        return batch


def _ragged(arrays: list[np.ndarray]) -> np.ndarray:
    """An object array of 1-D arrays of different lengths (a ragged column)."""
    column = np.empty(len(arrays), dtype=object)
    column[:] = arrays
    return column


def payload_from_row(batch: dict[str, np.ndarray], index: int) -> ProposalPayload:
    """Read back one image's payload from a batch."""
    return ProposalPayload(
        rle_blob=bytes(batch["rle_blob"][index]),
        rle_lengths=np.asarray(batch["rle_lengths"][index], dtype=np.int32),
        band_logits=np.asarray(batch["band_logits"][index], dtype=np.float16),
        iou=np.asarray(batch["iou"][index], dtype=np.float32),
        height=int(batch["lowres_height"][index]),
        width=int(batch["lowres_width"][index]),
    )
