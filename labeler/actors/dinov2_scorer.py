"""DINOv2 scoring stage (GPU actors holding the bank): proposals -> detections."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from labeler.actors.bank_scoring import BankScoringStage, ReceivedProposals, Scored
from labeler.actors.decode import stack_rows
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

    def score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[Scored]:
        features = self.features(batch, rows)
        scored = []
        for k, row in enumerate(rows):
            proposals = self.received(batch, row)
            scored.append(self.scored(proposals, self.embed(proposals, features[k])))
        return scored
