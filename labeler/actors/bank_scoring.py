"""What the two scoring stages share: the bank's prototypes and thresholds, the steps of one image that depend
on the bank (docs/method.md 3.3-3.7), and a batch's label rows. :class:`labeler.actors.dinov2_scorer.Dinov2Scorer`
(``labeler run``) embeds the proposals with DINOv2 first; :class:`labeler.actors.rescorer.Rescorer`
(``labeler rescore``) reads the embeddings a run kept."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import torch
import torch.nn.functional as F

from labeler.actors.model_stage import ModelStage
from labeler.bank.file import BankFile
from labeler.io.kept_proposals import EMBEDDING_DTYPES, KeptProposals, kept_table, with_kept_columns
from labeler.io.labels import STATUS_OK, Detections, LabelRows
from labeler.io.proposal_payload import ProposalPayload, decode_proposals, split_payload
from labeler.method import defaults
from labeler.method.detections import ChosenDetections, merge_and_select
from labeler.method.graph_diffusion import Diffusion
from labeler.method.scoring import NegativePrototypes, RankedProposals, rank_embedded
from labeler.method.tiled_merge import merge_tiles, place_ranked
from labeler.method.tiles import tiled_max_dets
from labeler.run.progress import report_work

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
    """One image's proposals as a scoring stage unpacks them (from the hand-off, or from kept proposals)."""

    payload: ProposalPayload  # the packed form they came in
    masks: torch.Tensor  # [P, h, w] boolean low-res masks
    logits: torch.Tensor  # [P, h, w] their logits (exact on the boundary band, labeler.io.proposal_payload)
    iou: torch.Tensor  # [P] SAM2 predicted IoUs
    image_hw: tuple[int, int]  # the original image size

    @classmethod
    def unpack(cls, payload: ProposalPayload, image_hw: tuple[int, int], device: torch.device) -> ReceivedProposals:
        masks, logits = decode_proposals(payload, device)
        return cls(payload, masks, logits, torch.from_numpy(payload.iou).to(device), image_hw)


@dataclass
class Scored:
    """One image's outcome: its detections, how many proposals it scored, and what it keeps for rescoring."""

    detections: Detections
    proposals: int
    kept: KeptProposals | None = None


class BankScoringStage(ModelStage):
    """A model stage holding the bank: a subclass implements :meth:`score_rows` with :meth:`rank` and
    :meth:`select` (and :meth:`scored_tiles` for a tiled image); :meth:`label` makes the batch's label rows
    (with the kept proposals when ``keep_proposals`` names their embeddings' dtype). ``merge`` is ``soft`` or
    ``graph-diffusion`` (with ``diffusion``: steps, alpha, lambda); ``tiles_per_batch`` tiles of a tiled image
    are handled at once."""

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
        keep_proposals: str = "off",
        merge: str = "soft",
        diffusion: tuple[int, float, float] = (defaults.DIFFUSION_STEPS, defaults.DIFFUSION_ALPHA,
                                               defaults.DIFFUSION_LAMBDA),
        tiles_per_batch: int = 8,
    ):
        super().__init__(device, dtype, compile, cpu_threads, storage_options, tracker, compile_cache)
        self.tiles_per_batch = tiles_per_batch
        if keep_proposals != "off" and keep_proposals not in EMBEDDING_DTYPES:
            raise ValueError(f"keep_proposals must be off or one of {', '.join(EMBEDDING_DTYPES)}, got {keep_proposals!r}")
        self.bank = bank.load()
        self.class_prototypes = self.bank.class_prototypes.to(self.device)
        self.negatives = None
        if self.bank.has_negatives:
            self.negatives = NegativePrototypes(F.normalize(self.bank.negative_prototypes.float(), dim=1).to(self.device),
                                                self.bank.negative_class.to(self.device))
        self.category_ids = np.asarray(self.bank.category_ids, dtype=np.int64)
        self.nms_thr, self.max_dets = nms_thr, max_dets
        self.min_score = min_score if isinstance(min_score, (int, float)) else torch.tensor(
            list(min_score), dtype=torch.float32, device=self.device)
        self.keep_proposals = keep_proposals
        self.diffusion = Diffusion(*diffusion) if merge == "graph-diffusion" else None

    def rank(self, proposals: ReceivedProposals, embeddings: torch.Tensor) -> RankedProposals:
        """Classes, scores and class-aware NMS on the low-res grid, from the ``[P, D]`` mask embeddings."""
        return rank_embedded(proposals.masks, proposals.iou, embeddings, self.class_prototypes,
                             nms_thr=self.nms_thr, max_dets=self.max_dets, negatives=self.negatives)

    def select(self, ranked: RankedProposals, proposals: ReceivedProposals) -> Detections:
        """The final masks, soft merging and the best ``max_dets``, as label-row detections."""
        chosen = merge_and_select(ranked, proposals.logits, proposals.image_hw, self.max_dets, self.min_score,
                                  diffusion=self.diffusion)
        return detections_from_choice(chosen, self.category_ids)

    def scored(self, proposals: ReceivedProposals, embeddings: torch.Tensor) -> Scored:
        """One image from its proposals and embeddings to its :class:`Scored` outcome."""
        kept = None
        if self.keep_proposals != "off":
            kept = KeptProposals(proposals.payload, embeddings.float().cpu().numpy())
        detections = self.select(self.rank(proposals, embeddings), proposals)
        return Scored(detections, int(proposals.masks.shape[0]), kept)

    def scored_tiles(self, payload: ProposalPayload, tiles: np.ndarray, image_hw: tuple[int, int],
                     embed_tile: Callable[[int, ReceivedProposals], torch.Tensor]) -> Scored:
        """A tiled image (``--tile``) from its joined payload and its ``[n, 6]`` tile table
        (:data:`labeler.actors.tiles.TILE_FIELDS`): each tile's proposals, unpacked at the tile's size and
        embedded by ``embed_tile(tile, proposals)``, ranked as an image's and placed in the image
        (:func:`place_ranked`), then merged over the whole image keeping :func:`tiled_max_dets`
        (:func:`merge_tiles`). Each ``tiles_per_batch`` tiles done count as progress."""
        tiles = np.asarray(tiles, dtype=np.int64).reshape(-1, 6)
        windows = [tuple(window) for window in tiles[:, :4].tolist()]
        placed, embeddings, first = [], [], 0
        for tile, tile_payload in enumerate(split_payload(payload, tiles[:, 4], tiles[:, 5])):
            x0, y0, x1, y1 = windows[tile]
            proposals = ReceivedProposals.unpack(tile_payload, (y1 - y0, x1 - x0), self.device)
            tile_embeddings = embed_tile(tile, proposals)
            placed.append(place_ranked(self.rank(proposals, tile_embeddings), proposals.logits, proposals.iou, tile,
                                       windows[tile], image_hw, first))
            first += tile_payload.count
            if self.keep_proposals != "off":
                embeddings.append(tile_embeddings.float().cpu().numpy())
            if (tile + 1) % self.tiles_per_batch == 0 or tile + 1 == len(windows):
                report_work(self.tracker, (tile % self.tiles_per_batch) + 1)
        x0, y0, x1, y1 = windows[0]
        max_dets = tiled_max_dets(self.max_dets, image_hw, (y1 - y0, x1 - x0))
        chosen = merge_tiles(placed, windows, image_hw, max_dets, self.min_score, self.diffusion)
        kept = None
        if self.keep_proposals != "off":
            kept = KeptProposals(payload, np.concatenate(embeddings), tiles.astype(np.int32))
        return Scored(detections_from_choice(chosen, self.category_ids), first, kept)

    def score_rows(self, batch: dict[str, np.ndarray], rows: Sequence[int]) -> list[Scored]:
        """The ok rows ``rows`` of ``batch``, scored."""
        raise NotImplementedError

    def label(self, batch: dict[str, np.ndarray]) -> pa.Table:
        """A batch in, one label row per image out; an image that fails here is an error row."""
        ok = np.flatnonzero(batch["status"] == STATUS_OK)
        outcomes = self.each_image(lambda rows: self.score_rows(batch, rows),
                                   lambda row: self.score_rows(batch, [row])[0], ok)
        scored = dict(zip(ok.tolist(), outcomes))
        rows, kept = LabelRows(), []
        for index in range(len(batch["image_id"])):
            image_id, uri = int(batch["image_id"][index]), str(batch["uri"][index])
            transfer_bytes = int(batch["transfer_bytes"][index])
            outcome = scored.get(index, str(batch["error"][index]))
            if isinstance(outcome, str):
                rows.add_error(image_id=image_id, uri=uri, error=outcome, transfer_bytes=transfer_bytes)
                kept.append(None)
                continue
            rows.add_ok(image_id=image_id, uri=uri, width=int(batch["width"][index]),
                        height=int(batch["height"][index]), detections=outcome.detections,
                        proposals=outcome.proposals, transfer_bytes=transfer_bytes)
            kept.append(outcome.kept)
        table = rows.table()
        if self.keep_proposals == "off":
            return table
        image_ids = [int(i) for i in batch["image_id"]]
        return with_kept_columns(table, kept_table(image_ids, kept, self.keep_proposals))
