"""Rescoring stage (``labeler rescore``, CPU or GPU actors holding a bank): kept proposals -> detections, with
no model run (docs/method.md 3.3-3.7 on the embeddings a run kept)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch

from labeler.actors.bank_scoring import BankScoringStage, ReceivedProposals, Scored
from labeler.bank.file import BankFile
from labeler.io.kept_proposals import KEPT_SCHEMA, embeddings_tensor, kept_of_row
from labeler.method import defaults

if TYPE_CHECKING:
    from ray.actor import ActorHandle


def by_tile(embeddings: torch.Tensor, tiles: np.ndarray) -> Callable[[int, ReceivedProposals], torch.Tensor]:
    """The kept embeddings of one tile's proposals (payload order: tile after tile, ``tiles[:, 4]`` each)."""
    ends = np.cumsum(tiles[:, 4])

    def of_tile(tile: int, proposals: ReceivedProposals) -> torch.Tensor:
        return embeddings[int(ends[tile] - tiles[tile, 4]) : int(ends[tile])]

    return of_tile


class Rescorer(BankScoringStage):
    """Scores each image's kept proposals (:mod:`labeler.io.kept_proposals`) against a bank, exactly as the
    DINOv2 stage scores its proposals after embedding them."""

    stage = "rescore"

    def __init__(
        self,
        bank: BankFile,
        embedding_dtype: str,
        embedding_dim: int,
        device: str = "auto",
        nms_thr: float = defaults.NMS_THR,
        max_dets: int = defaults.MAX_DETS,
        min_score: float | Sequence[float] = 0.0,
        cpu_threads: int | None = None,
        storage_options: dict | None = None,
        tracker: ActorHandle | None = None,
        merge: str = "soft",
        diffusion: tuple[int, float, float] = (defaults.DIFFUSION_STEPS, defaults.DIFFUSION_ALPHA,
                                               defaults.DIFFUSION_LAMBDA),
    ):
        super().__init__(bank, device, nms_thr, max_dets, min_score, "fp32", False, cpu_threads, storage_options,
                         tracker, merge=merge, diffusion=diffusion)
        self.embedding_dtype, self.embedding_dim = embedding_dtype, embedding_dim

    def score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[Scored]:
        scored = []
        for row in rows:
            kept = kept_of_row({name: batch[name][row] for name in KEPT_SCHEMA.names if name != "image_id"},
                               self.embedding_dtype, self.embedding_dim)
            image_hw = (int(batch["height"][row]), int(batch["width"][row]))
            embeddings = embeddings_tensor(kept, self.device)
            if kept.tiles is None:
                scored.append(self.scored(ReceivedProposals.unpack(kept.payload, image_hw, self.device), embeddings))
            else:
                scored.append(self.scored_tiles(kept.payload, kept.tiles, image_hw, by_tile(embeddings, kept.tiles)))
        return scored
