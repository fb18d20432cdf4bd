"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch

from labeler.actors.decode import stack_rows
from labeler.actors.model_stage import ModelStage
from labeler.bank.file import BankFile
from labeler.devices import to_device
from labeler.io.labels import STATUS_OK, Detections, LabelRows
from labeler.io.proposal_payload import decode_proposals, payload_from_columns
from labeler.method import defaults
from labeler.method.detections import ChosenDetections, merge_and_select, rank_on_grid
from labeler.method.scoring import RankedProposals
from labeler.models import load_dinov2
from labeler.models.speedups import compile_modules

if TYPE_CHECKING:
    from ray.actor import ActorHandle


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


@dataclass
class ReceivedProposals:
    """One image's proposals as the scoring stage unpacks them from the hand-off."""

    masks: torch.Tensor  # [P, h, w] boolean low-res masks
    logits: torch.Tensor  # [P, h, w] their logits (exact on the boundary band, labeler.io.proposal_payload)
    iou: torch.Tensor  # [P] SAM2 predicted IoUs
    image_hw: tuple[int, int]  # the original image size


class Dinov2Scorer(ModelStage):
    """Loads the bank and its encoder once per actor; scores batches of images.

    Uses the DINOv2 features the SAM2 stage computed (``dino_features``, with
    ``--prompts matched``) when the batch carries them, else encodes the
    images from their SAM2 inputs (``sam2_pixels``), as the reference does.
    One image's steps are :meth:`received`, :meth:`rank` and :meth:`select`
    (docs/method.md section 3; ``labeler bench`` times each).
    """

    stage = "dinov2"

    def __init__(
        self,
        bank: BankFile,
        device: str = "auto",
        nms_thr: float = defaults.NMS_THR,
        max_dets: int = defaults.MAX_DETS,
        min_score: float | Sequence[float] = 0.0,
        dtype: str = "auto",
        compile: bool = False,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
        tracker: ActorHandle | None = None,
        compile_cache: str | None = None,
    ):
        super().__init__(device, dtype, compile, cpu_threads, storage_options, tracker, compile_cache)
        self.bank = bank.load()
        self.encoder = load_dinov2(self.bank.encoder, self.device, self.bank.input_size)
        self.load_compile_cache({"dinov2": self.bank.encoder, "input_size": self.bank.input_size})
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

    def received(self, batch: dict[str, np.ndarray], row: int) -> ReceivedProposals:
        """One image's proposals from the payload columns of its row."""
        payload = payload_from_columns(batch, row)
        masks, logits = decode_proposals(payload, self.device)
        return ReceivedProposals(masks, logits, torch.from_numpy(payload.iou).to(self.device),
                                 (int(batch["height"][row]), int(batch["width"][row])))

    def rank(self, proposals: ReceivedProposals, features: torch.Tensor) -> RankedProposals:
        """Classes, scores and class-aware NMS on the low-res grid, with the image's ``[g, g, D]`` features."""
        return rank_on_grid(proposals.masks, proposals.iou, features.float(), self.class_prototypes,
                            self.nms_thr, self.max_dets)

    def select(self, ranked: RankedProposals, proposals: ReceivedProposals) -> Detections:
        """The final masks, soft merging and the best ``max_dets``, as label-row detections."""
        chosen = merge_and_select(ranked, proposals.logits, proposals.image_hw, self.max_dets, self.min_score)
        return detections_from_choice(chosen, self.category_ids)

    def _score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[tuple[Detections, int]]:
        features = self.features(batch, rows)
        scored = []
        for k, row in enumerate(rows):
            proposals = self.received(batch, row)
            scored.append((self.select(self.rank(proposals, features[k]), proposals), int(proposals.masks.shape[0])))
        return scored

    def label(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A batch of proposals in, one label row per image out; an image DINOv2 fails on is an error row."""
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        outcomes = self.each_image(lambda rows: self._score_rows(batch, rows),
                                   lambda row: self._score_rows(batch, [row])[0], ok)
        scored = dict(zip(ok.tolist(), outcomes))
        rows = LabelRows()
        for index in range(len(batch["image_id"])):
            image_id, uri = int(batch["image_id"][index]), str(batch["uri"][index])
            transfer_bytes = int(batch["transfer_bytes"][index])
            outcome = scored.get(index, str(batch["error"][index]))
            if isinstance(outcome, str):
                rows.add_error(image_id=image_id, uri=uri, error=outcome, transfer_bytes=transfer_bytes)
                continue
            detections, proposals = outcome
            rows.add_ok(image_id=image_id, uri=uri, width=int(batch["width"][index]),
                        height=int(batch["height"][index]), detections=detections, proposals=proposals,
                        transfer_bytes=transfer_bytes)
        return rows.table()
