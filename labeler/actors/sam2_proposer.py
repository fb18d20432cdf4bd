"""SAM2 proposal stage (GPU actors): batches of images -> compact proposal payloads."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from labeler.actors.decode import pixel_column, stack_rows
from labeler.actors.isolation import free_device_memory, is_out_of_memory
from labeler.actors.model_stage import ModelStage
from labeler.actors.tiles import propose_in_tiles
from labeler.bank.file import BankFile
from labeler.devices import to_device
from labeler.io.labels import STATUS_ERROR, STATUS_OK
from labeler.io.proposal_payload import ProposalPayload, encode_proposals, payload_columns
from labeler.method import defaults
from labeler.method.matched_prompts import matched_points, prototype_similarity
from labeler.method.proposals import point_grid
from labeler.models import load_dinov2, load_sam2
from labeler.models.sam2_decoder import ProposalDecoder
from labeler.models.sam2_inference import Sam2Features, encode_images, point_proposals, sam2_input
from labeler.models.speedups import compile_modules, compile_sam2, decoder_in_dtype
from labeler.run.progress import report_work

if TYPE_CHECKING:
    from ray.actor import ActorHandle

FIXED_ROW_BYTES = 64  # ids, sizes, status and offsets of a row, roughly
NO_FEATURES = np.zeros((0, 0, 0), dtype=np.float16)  # an error row's DINOv2 features


def row_nbytes(batch: dict[str, np.ndarray], index: int) -> int:
    """Bytes one row of a SAM2-stage output batch carries to the next stage."""
    total = FIXED_ROW_BYTES + len(str(batch["uri"][index])) + len(str(batch["error"][index]))
    for column in ("sam2_pixels", "dino_features", "rle_lengths", "band_logits", "iou", "tiles"):
        if column in batch:
            total += np.asarray(batch[column][index]).nbytes
    return total + len(batch["rle_blob"][index])


class Sam2Proposer(ModelStage):
    """Encodes a batch of images at once, then decodes the prompts of all its
    images in batches of ``points_per_batch``. Adds the proposal payload
    columns (:mod:`labeler.io.proposal_payload`); ``sam2_pixels`` go on to
    the scoring stage, which makes the DINOv2 input from them.

    With ``prompts="matched"`` it also holds the bank's DINOv2 encoder,
    prompts only the ``matched_points`` grid points most similar to a class
    prototype (:mod:`labeler.method.matched_prompts`), and passes the DINOv2
    features on (``dino_features``, float16) in place of the pixels, so the
    scoring stage does not encode the images again.

    A tiled image's tiles (``--tile``) are model inputs of their own, ``tiles_per_batch`` at a time
    (:mod:`labeler.actors.tiles`).
    """

    stage = "sam2"

    def __init__(
        self,
        sam2: str,
        device: str = "auto",
        points_per_side: int = defaults.POINTS_PER_SIDE,
        grid_layout: str = defaults.GRID_LAYOUT,
        points_per_batch: int = defaults.POINTS_PER_BATCH,
        pred_iou_thr: float = defaults.PRED_IOU_THR,
        dtype: str = "auto",
        compile: bool = False,
        prompts: str = "grid",
        matched_points: int = defaults.MATCHED_POINTS,
        bank: BankFile | None = None,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
        tracker: ActorHandle | None = None,
        compile_cache: str | None = None,
        tiles_per_batch: int = 8,
    ):
        super().__init__(device, dtype, compile, cpu_threads, storage_options, tracker, compile_cache)
        self.tiles_per_batch = tiles_per_batch
        self.model = load_sam2(sam2, self.device)
        decoder_in_dtype(self.model, self.speedups)
        self.decoder = ProposalDecoder(self.model)
        self.load_compile_cache({"sam2": sam2, "points_per_batch": points_per_batch, "prompts": prompts,
                                 "matched_points": matched_points if prompts == "matched" else None})
        if self.speedups.compile:
            compile_sam2(self.model, self.decoder)
        self.grid = point_grid(points_per_side, self.model.image_size, grid_layout).to(self.device)
        self.points_per_batch = points_per_batch
        self.pred_iou_thr = pred_iou_thr
        self.matched_points = matched_points
        self.encoder = self.class_prototypes = None
        if prompts == "matched":
            loaded = bank.load()
            self.encoder = load_dinov2(loaded.encoder, self.device, loaded.input_size)
            if self.speedups.compile:
                compile_modules(self.encoder.model)
            self.class_prototypes = loaded.class_prototypes.to(self.device)

    @property
    def image_size(self) -> int:
        return int(self.model.image_size)

    def prompt_points(self, resized: np.ndarray) -> tuple[list[torch.Tensor], torch.Tensor | None]:
        """Each image's prompt points, and the DINOv2 features when prompts are matched,
        for ``[B, S, S, 3]`` uint8 SAM2 inputs."""
        if self.encoder is None:
            return [self.grid] * len(resized), None
        with self.speedups.autocast(self.device):
            features = self.encoder.target_features(to_device(resized, self.device))
        similarity = prototype_similarity(features, self.class_prototypes)
        points = matched_points(similarity, self.grid, self.image_size, self.matched_points)
        return list(points), features

    def encode(self, resized: np.ndarray) -> Sam2Features:
        """SAM2 image features of ``[B, S, S, 3]`` uint8 images, in one batch."""
        with self.speedups.autocast(self.device):
            return encode_images(self.model, sam2_input(resized, self.device))

    def decode(
        self,
        features: Sam2Features,
        points: list[torch.Tensor],
        pred_iou_thr: float | None = None,
        points_per_batch: int | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Kept proposals (low-res logits, predicted IoUs) of each image's prompt points."""
        threshold = self.pred_iou_thr if pred_iou_thr is None else pred_iou_thr
        with self.speedups.autocast(self.device):
            return point_proposals(
                self.decoder, features, points, points_per_batch or self.points_per_batch, threshold,
                fixed_batch=self.speedups.compile,
            )

    def _propose_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int],
                      points_per_batch: int | None = None) -> list[tuple[ProposalPayload, np.ndarray | None]]:
        """Each row's payload, from its SAM2 input (``sam2_pixels``) and original size, and its float16
        DINOv2 features when prompts are matched (else None)."""
        resized = stack_rows(batch["sam2_pixels"], rows)
        points, features = self.prompt_points(resized)
        proposals = self.decode(self.encode(resized), points, points_per_batch=points_per_batch)
        payloads = [encode_proposals(logits, iou, (int(batch["height"][row]), int(batch["width"][row])))
                    for (logits, iou), row in zip(proposals, rows)]
        features = features.half().cpu().numpy() if features is not None else [None] * len(payloads)
        return list(zip(payloads, features))

    def _propose_alone(self, batch: dict[str, np.ndarray], row: int) -> tuple[ProposalPayload, np.ndarray | None]:
        """One image; out of memory, once more with a quarter of the prompts at a time."""
        try:
            return self._propose_rows(batch, [row])[0]
        except Exception as error:
            if not is_out_of_memory(error) or self.points_per_batch < 4:
                raise
            free_device_memory()
            return self._propose_rows(batch, [row], self.points_per_batch // 4)[0]

    def label(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch in, its proposal payloads out (:meth:`propose`, tile by tile for tiled images), with the
        bytes each row carries on."""
        if "tile_boxes" in batch:
            batch = propose_in_tiles(batch, self.propose, self.tiles_per_batch,
                                     lambda tiles: report_work(self.tracker, tiles))
        else:
            batch = self.propose(batch)
        batch["transfer_bytes"] = np.array([row_nbytes(batch, i) for i in range(len(batch["image_id"]))],
                                           dtype=np.int64)
        return batch

    def propose(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A batch of model inputs in, their proposal payloads out; an image SAM2 fails on becomes an error row."""
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        size = len(batch["image_id"])
        payloads = [ProposalPayload.empty()] * size
        features = [NO_FEATURES] * size if self.encoder is not None else None
        outcomes = self.each_image(lambda rows: self._propose_rows(batch, rows),
                                   lambda row: self._propose_alone(batch, row), ok)
        batch["status"], batch["error"] = batch["status"].copy(), batch["error"].copy()
        for index, outcome in zip(ok, outcomes):
            if isinstance(outcome, str):
                batch["status"][index], batch["error"][index] = STATUS_ERROR, outcome
                continue
            payloads[index] = outcome[0]
            if features is not None:
                features[index] = outcome[1]
        if features is not None:  # matched prompts: the features replace the pixels downstream
            batch["dino_features"] = pixel_column(features)
            del batch["sam2_pixels"]
        batch.update(payload_columns(payloads))
        return batch
