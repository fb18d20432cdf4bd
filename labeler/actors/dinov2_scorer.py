"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from labeler.actors.bank_scoring import BankScoringStage, ReceivedProposals, Scored, detections_from_choice
from labeler.actors.decode import stack_rows
from labeler.bank.file import BankFile
from labeler.devices import to_device
from labeler.io.proposal_payload import payload_from_columns, split_payload
from labeler.method.detections import embed_on_grid
from labeler.method.tiled_merge import merge_tiles, place_ranked
from labeler.method.tiles import tiled_max_dets
from labeler.models import load_dinov2
from labeler.models.speedups import compile_modules
from labeler.run.progress import report_work


class Dinov2Scorer(BankScoringStage):
    """Loads the bank and its encoder once per actor; scores batches of images.

    Uses the DINOv2 features the SAM2 stage computed (``dino_features``, with
    ``--prompts matched``) when the batch carries them, else encodes the
    images from their SAM2 inputs (``sam2_pixels``), as the reference does.
    One image's steps are :meth:`received`, :meth:`embed`, :meth:`rank` and
    :meth:`select` (docs/method.md section 3; ``labeler bench`` times each).

    A tiled image (``--tile``) is scored tile by tile, ``tiles_per_batch`` tiles encoded at once, each tile's
    proposals embedded with its own features and ranked as an image's; :func:`merge_tiles` then makes the
    image's detections (:meth:`score_tiled`).
    """

    stage = "dinov2"

    def __init__(self, bank: BankFile, tiles_per_batch: int = 8, **settings: Any):
        """``settings``: those of :class:`labeler.actors.bank_scoring.BankScoringStage`."""
        super().__init__(bank, **settings)
        self.tiles_per_batch = tiles_per_batch
        self.encoder = load_dinov2(self.bank.encoder, self.device, self.bank.input_size)
        self.load_compile_cache({"dinov2": self.bank.encoder, "input_size": self.bank.input_size})
        if self.speedups.compile:
            compile_modules(self.encoder.model)

    def features(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> torch.Tensor:
        """``[len(rows), g, g, D]`` float32 DINOv2 features of those rows."""
        if "dino_features" in batch:
            return to_device(stack_rows(batch["dino_features"], rows), self.device).float()
        pixels = to_device(stack_rows(batch["sam2_pixels"], rows), self.device)
        with self.speedups.autocast(self.device):
            return self.encoder.target_features(pixels)

    def received(self, batch: dict[str, np.ndarray], row: int) -> ReceivedProposals:
        """One image's proposals from the payload columns of its row."""
        return ReceivedProposals.unpack(payload_from_columns(batch, row),
                                        (int(batch["height"][row]), int(batch["width"][row])), self.device)

    def embed(self, proposals: ReceivedProposals, features: torch.Tensor) -> torch.Tensor:
        """``[P, D]`` unit-norm mask embeddings from the image's ``[g, g, D]`` features."""
        return embed_on_grid(proposals.masks, features.float())

    def tile_features(self, batch: dict[str, np.ndarray], row: int, tiles: slice) -> torch.Tensor:
        """``[n, g, g, D]`` float32 DINOv2 features of some tiles of a tiled row."""
        if "dino_features" in batch:
            return to_device(np.asarray(batch["dino_features"][row])[tiles], self.device).float()
        pixels = to_device(np.asarray(batch["sam2_pixels"][row])[tiles], self.device)
        with self.speedups.autocast(self.device):
            return self.encoder.target_features(pixels)

    def score_tiled(self, batch: dict[str, np.ndarray], row: int) -> Scored:
        """A tiled image: each tile's proposals embedded and ranked as an image's, placed in the image, and
        merged over the whole image (:mod:`labeler.method.tiled_merge`), keeping :func:`tiled_max_dets`."""
        windows = [tuple(w) for w in np.asarray(batch["tile_boxes"][row]).reshape(-1, 4).tolist()]
        payloads = split_payload(payload_from_columns(batch, row), np.asarray(batch["tile_proposals"][row]),
                                 np.asarray(batch["tile_band_logits"][row]))
        image_hw = (int(batch["height"][row]), int(batch["width"][row]))
        placed, first = [], 0
        for start in range(0, len(windows), self.tiles_per_batch):
            features = self.tile_features(batch, row, slice(start, start + self.tiles_per_batch))
            for k, tile in enumerate(range(start, min(len(windows), start + self.tiles_per_batch))):
                x0, y0, x1, y1 = windows[tile]
                proposals = ReceivedProposals.unpack(payloads[tile], (y1 - y0, x1 - x0), self.device)
                ranked = self.rank(proposals, self.embed(proposals, features[k]))
                placed.append(place_ranked(ranked, proposals.logits, proposals.iou, tile, windows[tile], image_hw,
                                           first))
                first += payloads[tile].count
            report_work(self.tracker, len(features))
        x0, y0, x1, y1 = windows[0]
        max_dets = tiled_max_dets(self.max_dets, image_hw, (y1 - y0, x1 - x0))
        chosen = merge_tiles(placed, windows, image_hw, max_dets, self.min_score, self.diffusion)
        return Scored(detections_from_choice(chosen, self.category_ids), first)

    def score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[Scored]:
        tiled = {row for row in rows if "tile_proposals" in batch and len(batch["tile_proposals"][row]) > 0}
        whole = [row for row in rows if row not in tiled]
        scored = {row: self.score_tiled(batch, row) for row in tiled}
        if whole:
            features = self.features(batch, whole)
            for k, row in enumerate(whole):
                proposals = self.received(batch, row)
                scored[row] = self.scored(proposals, self.embed(proposals, features[k]))
        return [scored[row] for row in rows]
