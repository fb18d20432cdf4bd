"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import torch

from labeler.actors.sam2_proposer import payload_from_row
from labeler.actors.worker_setup import prepare_worker
from labeler.bank import PrototypeBank, load_bank
from labeler.io.labels import STATUS_ERROR, STATUS_OK, LabelRows
from labeler.io.proposal_payload import decode_proposals
from labeler.io.rle import encode_masks
from labeler.method.scoring import (
    DEFAULT_MAX_DETS,
    DEFAULT_NMS_THR,
    boxes_from_masks,
    score_proposals,
    upsample_features,
)
from labeler.models import load_dinov2
from labeler.models.sam2_inference import upsample_logits


def detections_for_image(
    logits: torch.Tensor,
    masks: torch.Tensor,
    iou: torch.Tensor,
    features: torch.Tensor,
    bank: PrototypeBank,
    class_prototypes: torch.Tensor,
    image_hw: tuple[int, int],
    nms_thr: float,
    max_dets: int,
    min_score: float,
) -> list[dict]:
    """Score one image's proposals and turn the chosen ones into detections.

    Args:
        logits: ``[P, h, w]`` low-res logits; ``masks`` their binary form.
        iou: ``[P]`` SAM2 predicted IoUs.
        features: ``[g, g, D]`` DINOv2 patch features of the image.
        bank: the bank (for category ids); ``class_prototypes`` on the device.
        image_hw: original image size.

    Returns:
        Detection dicts in decreasing score order (the Parquet struct layout).
    """
    grid_features = upsample_features(features, tuple(masks.shape[1:]))
    chosen = score_proposals(
        masks, iou, grid_features, class_prototypes, nms_thr=nms_thr, max_dets=max_dets, min_score=min_score
    )
    if chosen.index.numel() == 0:
        return []
    final = upsample_logits(logits[chosen.index][:, None], image_hw)[:, 0] > 0
    present = final.flatten(1).any(dim=1)
    final, labels, scores = final[present], chosen.labels[present], chosen.scores[present]
    boxes = boxes_from_masks(final)
    xywh = torch.cat([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], dim=1).cpu().numpy()
    areas = final.flatten(1).sum(dim=1).cpu().numpy()
    rles = encode_masks(final)
    category_ids = np.asarray(bank.category_ids)[labels.cpu().numpy()]
    return [
        {"category_id": int(c), "score": float(s), "bbox": [float(v) for v in b], "area": int(a), "rle": r["counts"]}
        for c, s, b, a, r in zip(category_ids, scores.cpu().numpy(), xywh, areas, rles)
    ]


class Dinov2Scorer:
    """Loads the bank and its encoder once per actor; scores batches of images."""

    def __init__(
        self,
        bank: str,
        device: str = "auto",
        nms_thr: float = DEFAULT_NMS_THR,
        max_dets: int = DEFAULT_MAX_DETS,
        min_score: float = 0.0,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
    ):
        self.device = prepare_worker(device, cpu_threads, storage_options)
        self.bank = load_bank(bank)
        self.encoder = load_dinov2(self.bank.encoder, self.device, self.bank.input_size)
        self.class_prototypes = self.bank.class_prototypes.to(self.device)
        self.nms_thr, self.max_dets, self.min_score = nms_thr, max_dets, min_score

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        rows = LabelRows()
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        features = None
        if ok.size:
            pixels = torch.from_numpy(np.ascontiguousarray(batch["dino_pixels"][ok])).permute(0, 3, 1, 2)
            features = self.encoder.patch_features(pixels.to(self.device, non_blocking=True))
        position = {int(index): k for k, index in enumerate(ok)}
        for index in range(len(batch["image_id"])):
            width, height = int(batch["width"][index]), int(batch["height"][index])
            image_id, uri = int(batch["image_id"][index]), str(batch["uri"][index])
            if index not in position:
                rows.add(image_id, uri, 0, 0, STATUS_ERROR, str(batch["error"][index]), [],
                         transfer_bytes=int(batch["transfer_bytes"][index]))
                continue
            payload = payload_from_row(batch, index)
            masks, logits = decode_proposals(payload, self.device)
            iou = torch.from_numpy(payload.iou).to(self.device)
            detections = detections_for_image(
                logits, masks, iou, features[position[index]], self.bank, self.class_prototypes,
                (height, width), self.nms_thr, self.max_dets, self.min_score,
            )
            rows.add(image_id, uri, width, height, STATUS_OK, None, detections,
                     proposals=payload.count, transfer_bytes=int(batch["transfer_bytes"][index]))
        return rows.table()
