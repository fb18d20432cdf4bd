"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from labeler.actors.bank_scoring import BankScoringStage, ReceivedProposals, Scored
from labeler.actors.decode import stack_rows
from labeler.actors.tiles import whole_inputs
from labeler.bank.file import BankFile
from labeler.devices import to_device
from labeler.io.proposal_payload import payload_from_columns
from labeler.method.detections import embed_on_grid
from labeler.models import load_dinov2
from labeler.models.speedups import compile_modules


class Dinov2Scorer(BankScoringStage):
    """Loads the bank and its encoder once per actor; scores batches of images.

    Uses the DINOv2 features the SAM2 stage computed (``dino_features``, with
    ``--prompts matched``) when the batch carries them, else encodes the
    images from their SAM2 inputs (``sam2_pixels``), as the reference does.
    One image's steps are :meth:`received`, :meth:`embed`, :meth:`rank` and
    :meth:`select` (docs/method.md section 3; ``labeler bench`` times each).

    A tiled image (``--tile``) is scored tile by tile (:meth:`score_tiled`), each tile's proposals embedded
    with its own features.
    """

    stage = "dinov2"

    def __init__(self, bank: BankFile, **settings: Any):
        """``settings``: those of :class:`labeler.actors.bank_scoring.BankScoringStage`."""
        super().__init__(bank, **settings)
        self.encoder = load_dinov2(self.bank.encoder, self.device, self.bank.input_size)
        self.load_compile_cache({"dinov2": self.bank.encoder, "input_size": self.bank.input_size})
        if self.speedups.compile:
            compile_modules(self.encoder.model)

    def features(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> torch.Tensor:
        """``[len(rows), g, g, D]`` float32 DINOv2 features of those rows (images labelled whole)."""
        take = whole_inputs if "tiles" in batch else stack_rows  # a tiled run's rows hold stacks
        if "dino_features" in batch:
            return to_device(take(batch["dino_features"], rows), self.device).float()
        pixels = to_device(take(batch["sam2_pixels"], rows), self.device)
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
        """A tiled image (:meth:`scored_tiles`): each proposal embedded with its own tile's features, encoded
        ``tiles_per_batch`` tiles at a time."""
        encoded: dict[int, torch.Tensor] = {}

        def embed_tile(tile: int, proposals: ReceivedProposals) -> torch.Tensor:
            start = tile - tile % self.tiles_per_batch
            if start not in encoded:
                encoded.clear()
                encoded[start] = self.tile_features(batch, row, slice(start, start + self.tiles_per_batch))
            return self.embed(proposals, encoded[start][tile - start])

        return self.scored_tiles(payload_from_columns(batch, row), batch["tiles"][row],
                                 (int(batch["height"][row]), int(batch["width"][row])), embed_tile)

    def score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[Scored]:
        tiled = {row for row in rows if "tiles" in batch and len(batch["tiles"][row]) > 0}
        whole = [row for row in rows if row not in tiled]
        scored = {row: self.score_tiled(batch, row) for row in tiled}
        if whole:
            features = self.features(batch, whole)
            for k, row in enumerate(whole):
                proposals = self.received(batch, row)
                scored[row] = self.scored(proposals, self.embed(proposals, features[k]))
        return [scored[row] for row in rows]
