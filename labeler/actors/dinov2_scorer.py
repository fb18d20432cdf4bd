"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from labeler.actors.decode import stack_rows
from labeler.actors.isolation import FailureStreak, SystemicFailure, each_image
from labeler.actors.sam2_proposer import payload_from_row
from labeler.actors.worker_setup import prepare_worker
from labeler.bank import BankFile
from labeler.devices import to_device
from labeler.io.labels import STATUS_ERROR, STATUS_OK, Detections, LabelRows
from labeler.io.proposal_payload import decode_proposals
from labeler.io.rle import PackedRle, pack_counts, run_lengths
from labeler.method.scoring import (
    DEFAULT_MAX_DETS,
    DEFAULT_NMS_THR,
    ScoredProposals,
    boxes_from_masks,
    score_proposals,
    upsample_features,
)
from labeler.models import load_dinov2
from labeler.models.sam2_inference import upsample_logits
from labeler.models.speedups import Speedups, compile_modules
from labeler.progress import report, report_fatal

if TYPE_CHECKING:
    from ray.actor import ActorHandle

#: Pixels of final masks upsampled at once (float32), per device type. It
#: bounds the memory the last step takes on large images (2**26 pixels is
#: 256 MB on a GPU, where fewer, larger chunks mean fewer kernel launches);
#: on the CPU, chunks of 32 MB are reused from the heap instead of being
#: mapped, faulted in and unmapped each time (measured 541 against 736 ms
#: for 100 masks of 1152x864, docs/PERFORMANCE.md).
FINAL_MASK_PIXELS_PER_CHUNK = {"cuda": 1 << 26, "cpu": 1 << 23}


def final_masks(
    logits: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PackedRle]:
    """Upsample chosen low-res logits to the image, threshold at 0, and measure them.

    Works in chunks of masks on the logits' device; only run boundaries
    reach the host, where all masks are RLE-encoded at once.

    Returns:
        ``present`` (``[K]`` bool: the mask kept any pixel), and for the
        present masks: ``[K', 4]`` xyxy boxes, ``[K']`` areas, packed RLE.
    """
    height, width = image_hw
    chunk_pixels = FINAL_MASK_PIXELS_PER_CHUNK.get(logits.device.type, FINAL_MASK_PIXELS_PER_CHUNK["cpu"])
    step = max(1, chunk_pixels // (height * width))
    present, boxes, areas, counts, runs = [], [], [], [], []
    for start in range(0, logits.shape[0], step):
        masks = upsample_logits(logits[start : start + step, None], image_hw)[:, 0] > 0
        nonempty = masks.flatten(1).any(dim=1)
        masks = masks[nonempty]
        present.append(nonempty)
        boxes.append(boxes_from_masks(masks))
        areas.append(masks.flatten(1).sum(dim=1))
        chunk_counts, chunk_runs = run_lengths(masks)
        counts.append(chunk_counts)
        runs.append(chunk_runs)
    packed = pack_counts(np.concatenate(counts), np.concatenate(runs), height, width)
    return torch.cat(present), torch.cat(boxes), torch.cat(areas), packed


def choose_detections(
    masks: torch.Tensor,
    iou: torch.Tensor,
    features: torch.Tensor,
    class_prototypes: torch.Tensor,
    nms_thr: float,
    max_dets: int,
    min_score: float,
) -> ScoredProposals:
    """METHOD.md section 3 for one image: features onto the mask grid, then
    classify, NMS, soft-merge and select (:func:`score_proposals`).

    Args:
        masks: ``[P, h, w]`` boolean low-res masks.
        iou: ``[P]`` SAM2 predicted IoUs.
        features: ``[g, g, D]`` DINOv2 patch features of the image.
        class_prototypes: ``[C, D]`` on the device.
    """
    grid_features = upsample_features(features, tuple(masks.shape[1:]))
    return score_proposals(
        masks, iou, grid_features, class_prototypes, nms_thr=nms_thr, max_dets=max_dets, min_score=min_score
    )


def detections_from_choice(
    logits: torch.Tensor, chosen: ScoredProposals, category_ids: np.ndarray, image_hw: tuple[int, int]
) -> Detections:
    """The chosen proposals as detections: final masks at ``image_hw`` from the
    ``[P, h, w]`` low-res logits, boxes, areas, RLE; ``category_ids`` maps the
    bank's prototype rows to category ids."""
    if chosen.index.numel() == 0:
        return Detections.empty()
    present, boxes, areas, packed = final_masks(logits[chosen.index], image_hw)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    return Detections(
        category_id=category_ids[chosen.labels[present].cpu().numpy()].astype(np.int64),
        score=chosen.scores[present].cpu().numpy().astype(np.float32),
        bbox=xywh.cpu().numpy().astype(np.float32),
        area=areas.cpu().numpy().astype(np.int64),
        rle=packed.strings(),
    )


class Dinov2Scorer:
    """Loads the bank and its encoder once per actor; scores batches of images.

    Uses the DINOv2 features the SAM2 stage computed (``dino_features``, with
    ``--prompts matched``) when the batch carries them, else encodes
    ``dino_pixels`` itself.
    """

    def __init__(
        self,
        bank: BankFile,
        device: str = "auto",
        nms_thr: float = DEFAULT_NMS_THR,
        max_dets: int = DEFAULT_MAX_DETS,
        min_score: float = 0.0,
        dtype: str = "auto",
        compile: bool = False,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
        tracker: ActorHandle | None = None,
    ):
        self.tracker = tracker
        self.failures = FailureStreak("DINOv2")
        self.device = prepare_worker(device, cpu_threads, storage_options)
        self.speedups = Speedups.resolve(dtype, compile, self.device)
        self.bank = bank.load()
        self.encoder = load_dinov2(self.bank.encoder, self.device, self.bank.input_size)
        if self.speedups.compile:
            compile_modules(self.encoder.model)
        self.class_prototypes = self.bank.class_prototypes.to(self.device)
        self.category_ids = np.asarray(self.bank.category_ids, dtype=np.int64)
        self.nms_thr, self.max_dets, self.min_score = nms_thr, max_dets, min_score

    def features(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> torch.Tensor:
        """``[len(rows), g, g, D]`` float32 DINOv2 features of those rows."""
        if "dino_features" in batch:
            return to_device(stack_rows(batch["dino_features"], rows), self.device).float()
        pixels = to_device(stack_rows(batch["dino_pixels"], rows), self.device).permute(0, 3, 1, 2)
        with self.speedups.autocast(self.device):
            return self.encoder.patch_features(pixels)

    def detections(self, batch: dict[str, np.ndarray], row: int, features: torch.Tensor) -> tuple[Detections, int]:
        """One image's detections from its proposal payload and ``[g, g, D]`` features, and its proposal count."""
        payload = payload_from_row(batch, row)
        masks, logits = decode_proposals(payload, self.device)
        iou = torch.from_numpy(payload.iou).to(self.device)
        chosen = choose_detections(masks, iou, features, self.class_prototypes, self.nms_thr, self.max_dets,
                                   self.min_score)
        image_hw = (int(batch["height"][row]), int(batch["width"][row]))
        return detections_from_choice(logits, chosen, self.category_ids, image_hw), payload.count

    def _score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[tuple[Detections, int]]:
        features = self.features(batch, rows)
        return [self.detections(batch, row, features[k]) for k, row in enumerate(rows)]

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A batch of proposals in, one label row per image out; an image DINOv2 fails on is an error row."""
        try:
            return self._label(batch)
        except SystemicFailure as failure:
            report_fatal(self.tracker, "dinov2", failure)
            raise

    def _label(self, batch: dict[str, np.ndarray]) -> pa.Table:
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        outcomes = each_image(
            lambda rows: self._score_rows(batch, rows), lambda row: self._score_rows(batch, [row])[0], ok, "DINOv2"
        )
        scored = dict(zip(ok.tolist(), outcomes))
        rows = LabelRows()
        for index in range(len(batch["image_id"])):
            image_id, uri = int(batch["image_id"][index]), str(batch["uri"][index])
            transfer_bytes = int(batch["transfer_bytes"][index])
            outcome = scored.get(index, str(batch["error"][index]))
            if isinstance(outcome, str):
                if index in scored:
                    self.failures.record(outcome)
                rows.add(image_id, uri, 0, 0, STATUS_ERROR, outcome, transfer_bytes=transfer_bytes)
                continue
            self.failures.record(None)
            detections, proposals = outcome
            rows.add(image_id, uri, int(batch["width"][index]), int(batch["height"][index]), STATUS_OK, None,
                     detections, proposals=proposals, transfer_bytes=transfer_bytes)
        report(self.tracker, "dinov2", len(batch["image_id"]))
        return rows.table()
