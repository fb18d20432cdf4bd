"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from labeler.actors.decode import stack_rows
from labeler.actors.isolation import FailureStreak, SystemicFailure, each_image
from labeler.actors.sam2_proposer import payload_from_row
from labeler.actors.worker_setup import prepare_worker
from labeler.bank.file import BankFile
from labeler.devices import to_device
from labeler.io.labels import STATUS_ERROR, STATUS_OK, Detections, LabelRows
from labeler.io.proposal_payload import decode_proposals
from labeler.io.rle import PackedRle, pack_counts, run_areas, run_lengths
from labeler.method.defaults import DEFAULT_MAX_DETS, DEFAULT_NMS_THR
from labeler.method.mask_overlaps import rle_overlap_fractions
from labeler.method.scoring import (
    RankedProposals,
    boxes_from_masks,
    rank_proposals,
    select_detections,
    soft_merge,
    upsample_features,
)
from labeler.models import load_dinov2
from labeler.models.sam2_inference import upsample_logits
from labeler.models.speedups import Speedups, compile_modules
from labeler.run.progress import report, report_fatal

if TYPE_CHECKING:
    from ray.actor import ActorHandle

#: Pixels of final masks upsampled at once (float32), per device type. It
#: bounds the memory the last step takes on large images (2**26 pixels is
#: 256 MB on a GPU, where fewer, larger chunks mean fewer kernel launches);
#: on the CPU, chunks of 32 MB are reused from the heap instead of being
#: mapped, faulted in and unmapped each time (measured 541 against 736 ms
#: for 100 masks of 1152x864, docs/PERFORMANCE.md).
FINAL_MASK_PIXELS_PER_CHUNK = {"cuda": 1 << 26, "cpu": 1 << 23}


def full_size_masks(
    logits: torch.Tensor, image_hw: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, PackedRle]:
    """Resize low-res logits to the image (:func:`upsample_logits`), threshold at 0, and measure them.

    Works in chunks of masks on the logits' device; only run boundaries
    reach the host, where all masks are RLE-encoded at once.

    Returns:
        ``present`` (``[K]`` bool: the mask kept any pixel), and for the
        present masks: ``[K', 4]`` xyxy boxes (exclusive far edges), ``[K']``
        areas, packed RLE.
    """
    height, width = image_hw
    chunk_pixels = FINAL_MASK_PIXELS_PER_CHUNK.get(logits.device.type, FINAL_MASK_PIXELS_PER_CHUNK["cpu"])
    step = max(1, chunk_pixels // (height * width))
    present, boxes, counts, runs = [], [], [np.zeros(0, np.int64)], [np.zeros(0, np.int64)]
    for start in range(0, logits.shape[0], step):
        masks = upsample_logits(logits[start : start + step, None], image_hw)[:, 0] > 0
        nonempty = masks.flatten(1).any(dim=1)
        masks = masks[nonempty]
        present.append(nonempty)
        boxes.append(boxes_from_masks(masks))
        chunk_counts, chunk_runs = run_lengths(masks)
        counts.append(chunk_counts)
        runs.append(chunk_runs)
    device = logits.device
    counts, runs = np.concatenate(counts), np.concatenate(runs)
    return (
        torch.cat(present) if present else torch.zeros(0, dtype=torch.bool, device=device),
        torch.cat(boxes) if boxes else torch.zeros(0, 4, device=device),
        torch.from_numpy(run_areas(counts, runs)).to(device),
        pack_counts(counts, runs, height, width),
    )


@dataclass
class ChosenDetections:
    """The final detections of one image, best first."""

    index: torch.Tensor  # [K] positions into the image's proposals
    labels: torch.Tensor  # [K] class rows of the bank
    scores: torch.Tensor  # [K] merged scores in [0, 1]
    boxes: torch.Tensor  # [K, 4] xyxy, exclusive far edges
    areas: torch.Tensor  # [K]
    rle: pa.Array  # [K] compressed COCO RLE strings


def choose_detections(
    masks: torch.Tensor,
    logits: torch.Tensor,
    iou: torch.Tensor,
    features: torch.Tensor,
    class_prototypes: torch.Tensor,
    image_hw: tuple[int, int],
    nms_thr: float,
    max_dets: int,
    min_score: float | torch.Tensor,
) -> ChosenDetections:
    """docs/method.md section 3 for one image: :func:`rank_on_grid`, then :func:`merge_and_select`.

    Args:
        masks: ``[P, h, w]`` boolean low-res masks.
        logits: ``[P, h, w]`` their logits.
        iou: ``[P]`` SAM2 predicted IoUs.
        features: ``[g, g, D]`` DINOv2 patch features of the image.
        class_prototypes: ``[C, D]`` on the device.
        image_hw: the original image size.
        min_score: one threshold, or ``[C]`` one per class (infinity for a class left out).
    """
    ranked = rank_on_grid(masks, iou, features, class_prototypes, nms_thr, max_dets)
    return merge_and_select(ranked, logits, image_hw, max_dets, min_score)


def rank_on_grid(
    masks: torch.Tensor, iou: torch.Tensor, features: torch.Tensor, class_prototypes: torch.Tensor,
    nms_thr: float, max_dets: int,
) -> RankedProposals:
    """The DINOv2 features onto the low-res mask grid, then :func:`rank_proposals`."""
    grid_features = upsample_features(features, tuple(masks.shape[1:]))
    return rank_proposals(masks, iou, grid_features, class_prototypes, nms_thr=nms_thr, max_dets=max_dets)


def merge_and_select(
    ranked: RankedProposals, logits: torch.Tensor, image_hw: tuple[int, int], max_dets: int,
    min_score: float | torch.Tensor,
) -> ChosenDetections:
    """The ranked proposals' masks at the image's size, made once as RLE; soft merging
    with overlaps from those RLEs (:func:`rle_overlap_fractions`); the best ``max_dets``.

    A mask with no pixel left at the image's size is dropped (the reference would
    give it a NaN score); it overlaps nothing, so no other score changes.
    """
    present, boxes, areas, packed = full_size_masks(logits[ranked.index], image_hw)
    labels, scores, embeddings = ranked.labels[present], ranked.scores[present], ranked.embeddings[present]
    strings = packed.strings()
    rles = [{"size": list(image_hw), "counts": text} for text in strings.to_pylist()]
    overlap = torch.from_numpy(rle_overlap_fractions(rles, labels.cpu().numpy())).to(scores.device)
    merged = soft_merge(overlap, embeddings, labels, scores)
    order = select_detections(merged, max_dets, min_score[labels] if isinstance(min_score, torch.Tensor) else min_score)
    return ChosenDetections(
        index=ranked.index[present][order], labels=labels[order], scores=merged[order].clamp(0.0, 1.0), boxes=boxes[order], areas=areas[order],
        rle=strings.take(pa.array(order.cpu().numpy())),
    )


def detections_from_choice(chosen: ChosenDetections, category_ids: np.ndarray) -> Detections:
    """The chosen detections as label rows' detections; ``category_ids`` maps the bank's
    prototype rows to category ids."""
    boxes = chosen.boxes
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1)
    return Detections(
        category_id=category_ids[chosen.labels.cpu().numpy()].astype(np.int64),
        score=chosen.scores.cpu().numpy().astype(np.float32),
        bbox=xywh.cpu().numpy().astype(np.float32),
        area=chosen.areas.cpu().numpy().astype(np.int64),
        rle=chosen.rle,
    )


class Dinov2Scorer:
    """Loads the bank and its encoder once per actor; scores batches of images.

    Uses the DINOv2 features the SAM2 stage computed (``dino_features``, with
    ``--prompts matched``) when the batch carries them, else encodes the
    images from their SAM2 inputs (``sam2_pixels``), as the reference does.
    """

    def __init__(
        self,
        bank: BankFile,
        device: str = "auto",
        nms_thr: float = DEFAULT_NMS_THR,
        max_dets: int = DEFAULT_MAX_DETS,
        min_score: float | Sequence[float] = 0.0,
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
        self.nms_thr, self.max_dets = nms_thr, max_dets
        self.min_score = min_score if isinstance(min_score, (int, float)) else torch.tensor(
            list(min_score), dtype=torch.float32, device=self.device)

    def features(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> torch.Tensor:
        """``[len(rows), g, g, D]`` float32 DINOv2 features of those rows."""
        if "dino_features" in batch:
            return to_device(stack_rows(batch["dino_features"], rows), self.device).float()
        pixels = to_device(stack_rows(batch["sam2_pixels"], rows), self.device)
        with self.speedups.autocast(self.device):
            return self.encoder.target_features(pixels)

    def detections(self, batch: dict[str, np.ndarray], row: int, features: torch.Tensor) -> tuple[Detections, int]:
        """One image's detections from its proposal payload and ``[g, g, D]`` features, and its proposal count."""
        payload = payload_from_row(batch, row)
        masks, logits = decode_proposals(payload, self.device)
        iou = torch.from_numpy(payload.iou).to(self.device)
        image_hw = (int(batch["height"][row]), int(batch["width"][row]))
        chosen = choose_detections(masks, logits, iou, features, self.class_prototypes, image_hw, self.nms_thr,
                                   self.max_dets, self.min_score)
        return detections_from_choice(chosen, self.category_ids), payload.count

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
