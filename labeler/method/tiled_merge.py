"""A tiled image's detections from its tiles' ranked proposals (``labeler run --tile``; docs/method.md, "Large
images"), without a full-size mask of any of them in memory.

1. :func:`place_ranked`: each tile's ranked proposals (:func:`labeler.method.scoring.rank_embedded`, per tile)
   become masks at the tile's size, chunk by chunk, and at once COCO RLE in the image's frame
   (:func:`labeler.io.rle.placed_run_lengths`), with their boxes and areas; only the strings stay.
2. :func:`join_across_tiles`: an object cut by a tile's border, or seen whole by two neighbours, is one
   detection: same-class detections of two neighbouring tiles whose masks have an IoU of at least ``join_iou``
   within the band both tiles see are joined (transitively), as the union of their masks, with the class, score,
   embedding and predicted IoU of the member with the largest mask (the view that saw most of it).
3. :func:`merge_tiles`: soft merging (or graph diffusion) over the whole image in rank order (predicted IoU,
   as NMS ranks), on the same-class intersections of masks in the same or neighbouring tiles (no other pair
   can meet), kept as a sparse list, then the best ``max_dets`` (:func:`labeler.method.tiles.tiled_max_dets`).

Memory per image: one tile's proposals at a time on the device (as an untiled image), then per candidate its
RLE string, embedding and a few numbers; the intersections of one pair of neighbouring tiles at a time.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import torch
from pycocotools import mask as mask_utils

from labeler.io.coco import coco_rle
from labeler.io.rle import pack_counts, run_areas
from labeler.method import defaults
from labeler.method.detections import ChosenDetections
from labeler.method.full_size_masks import upsampled_runs
from labeler.method.graph_diffusion import Diffusion, diffused_scores
from labeler.method.scoring import RankedProposals, select_detections

Box = tuple[int, int, int, int]


@dataclass
class Candidates:
    """Detections to be of one image, as masks in its frame (one row each)."""

    index: torch.Tensor  # [K] positions into the image's proposals (all tiles', tile after tile)
    labels: torch.Tensor  # [K] class rows of the bank
    scores: torch.Tensor  # [K] similarity scores
    iou: torch.Tensor  # [K] SAM2 predicted IoUs: the rank
    embeddings: torch.Tensor  # [K, D] unit-norm mask embeddings
    boxes: torch.Tensor  # [K, 4] xyxy in the image, exclusive far edges
    areas: torch.Tensor  # [K] int64
    strings: list[str]  # compressed COCO RLE at the image's size
    tiles: list[tuple[int, ...]]  # the tiles each was seen in

    def __len__(self) -> int:
        return len(self.strings)

    def take(self, rows: torch.Tensor) -> Candidates:
        """The candidates at ``rows``, in that order."""
        picked = rows.tolist()
        return Candidates(self.index[rows], self.labels[rows], self.scores[rows], self.iou[rows],
                          self.embeddings[rows], self.boxes[rows], self.areas[rows],
                          [self.strings[i] for i in picked], [self.tiles[i] for i in picked])

    @classmethod
    def concat(cls, parts: list[Candidates]) -> Candidates:
        return Candidates(*(torch.cat([getattr(p, name) for p in parts]) for name in
                            ("index", "labels", "scores", "iou", "embeddings", "boxes", "areas")),
                          [s for p in parts for s in p.strings], [t for p in parts for t in p.tiles])

    def rles(self, image_hw: tuple[int, int]) -> list[dict]:
        return [coco_rle(text, *image_hw) for text in self.strings]


def place_ranked(
    ranked: RankedProposals, logits: torch.Tensor, iou: torch.Tensor, tile: int, tile_box: Box,
    image_hw: tuple[int, int], first_proposal: int = 0, chunk_pixels: int | None = None,
) -> Candidates:
    """One tile's ranked proposals as :class:`Candidates` of the image.

    Args:
        ranked: the tile's proposals that survive NMS with a positive score.
        logits: ``[P, h, w]`` the tile's low-res logits; ``iou``: its ``[P]`` predicted IoUs.
        tile: the tile's number; ``tile_box``: its ``(x0, y0, x1, y1)`` in the image.
        first_proposal: the image-wide position of the tile's first proposal.
        chunk_pixels: pixels upsampled at once (:func:`labeler.method.full_size_masks.upsampled_runs`).

    A mask with no pixel at the tile's size is dropped, as :func:`labeler.method.detections.merge_and_select`
    drops one with none at the image's.
    """
    x0, y0, x1, y1 = tile_box
    keep, boxes, counts, runs = upsampled_runs(logits[ranked.index], (y1 - y0, x1 - x0), (y0, x0), image_hw,
                                               chunk_pixels)
    index = ranked.index[keep]
    return Candidates(
        index=index + first_proposal, labels=ranked.labels[keep], scores=ranked.scores[keep], iou=iou[index].float(),
        embeddings=ranked.embeddings[keep], boxes=boxes, areas=run_areas(counts, runs), strings=pack_counts(counts, runs, *image_hw).strings().to_pylist(),
        tiles=[(tile,)] * int(index.shape[0]),
    )


def _meet(a: Box, b: Box) -> Box:
    """The window two overlapping boxes share."""
    return max(a[0], b[0]), max(a[1], b[1]), min(a[2], b[2]), min(a[3], b[3])


def neighbour_pairs(tiles: list[Box]) -> list[tuple[int, int]]:
    """``(a, b)``, ``a < b``, of the tiles that overlap: the only ones whose masks can meet."""
    boxes = np.asarray(tiles, dtype=np.int64).reshape(-1, 4)
    meet = ((np.maximum(boxes[:, None, 0], boxes[None, :, 0]) < np.minimum(boxes[:, None, 2], boxes[None, :, 2]))
            & (np.maximum(boxes[:, None, 1], boxes[None, :, 1]) < np.minimum(boxes[:, None, 3], boxes[None, :, 3])))
    first, second = np.nonzero(np.triu(meet, k=1))
    return list(zip(first.tolist(), second.tolist()))


def _window_rle(window: Box, image_hw: tuple[int, int]) -> dict:
    """The window as a mask of the image (pycocotools' box RLE: exact for whole-pixel boxes)."""
    x0, y0, x1, y1 = window
    return mask_utils.frPyObjects(np.array([[x0, y0, x1 - x0, y1 - y0]], dtype=np.float64), *image_hw)[0]


def _inside(boxes: torch.Tensor, window: Box) -> torch.Tensor:
    """Rows of ``[K, 4]`` boxes that meet ``window``."""
    return ((boxes[:, 0] < window[2]) & (boxes[:, 2] > window[0]) & (boxes[:, 1] < window[3])
            & (boxes[:, 3] > window[1])).nonzero()[:, 0]


def _roots(parent: list[int], node: int) -> int:
    while parent[node] != node:
        parent[node] = parent[parent[node]]
        node = parent[node]
    return node


def join_across_tiles(candidates: Candidates, tiles: list[Box], image_hw: tuple[int, int],
                      join_iou: float = defaults.TILE_JOIN_IOU) -> Candidates:
    """Same-class candidates of two neighbouring tiles whose masks, cut to the window both tiles see, have an
    IoU of at least ``join_iou`` are one detection (module doc, step 2); candidates keep their order, a joined
    one at its first member's place."""
    tile_of = torch.tensor([t[0] for t in candidates.tiles], dtype=torch.long)
    labels = candidates.labels.cpu()
    boxes = candidates.boxes.cpu()
    rles = candidates.rles(image_hw)
    parent = list(range(len(candidates)))
    for a, b in neighbour_pairs(tiles):
        window = _meet(tiles[a], tiles[b])
        seen = _inside(boxes, window)
        first, second = seen[tile_of[seen] == a], seen[tile_of[seen] == b]
        if first.numel() == 0 or second.numel() == 0:
            continue
        window_rle = _window_rle(window, image_hw)
        cut = {int(i): mask_utils.merge([rles[i], window_rle], intersect=True) for i in torch.cat([first, second])}
        ious = np.asarray(mask_utils.iou([cut[int(i)] for i in first], [cut[int(j)] for j in second],
                                         [0] * second.numel()), dtype=np.float64).reshape(first.numel(), -1)
        same = (labels[first][:, None] == labels[second][None, :]).numpy()
        for i, j in zip(*np.nonzero((ious >= join_iou) & same)):
            root_i, root_j = _roots(parent, int(first[i])), _roots(parent, int(second[j]))
            parent[max(root_i, root_j)] = min(root_i, root_j)
    groups: dict[int, list[int]] = {}
    for node in range(len(candidates)):
        groups.setdefault(_roots(parent, node), []).append(node)
    if all(len(members) == 1 for members in groups.values()):
        return candidates
    areas = candidates.areas.cpu()
    first_members = sorted(groups)
    representative = [max(groups[root], key=lambda node: (int(areas[node]), -node)) for root in first_members]
    joined = candidates.take(torch.tensor(representative, dtype=torch.long))
    boxes, new_areas = joined.boxes.clone(), joined.areas.clone()
    for row, root in enumerate(first_members):
        members = groups[root]
        if len(members) == 1:
            continue
        union = mask_utils.merge([rles[node] for node in members], intersect=False)
        x, y, w, h = mask_utils.toBbox(union).tolist()
        boxes[row] = torch.tensor([x, y, x + w, y + h], dtype=boxes.dtype)
        new_areas[row] = int(mask_utils.area(union))
        joined.strings[row] = union["counts"].decode("ascii")
        joined.tiles[row] = tuple(sorted({candidates.tiles[node][0] for node in members}))
    return replace(joined, boxes=boxes, areas=new_areas)


def sparse_intersections(candidates: Candidates, tiles: list[Box], image_hw: tuple[int, int]
                         ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``rows, cols, counts``: ``|m_i & m_j|`` of every same-class pair ``i != j`` that meets. Only masks seen in
    the same or in neighbouring tiles can meet, so one pair of neighbouring tiles is intersected at a time (by
    pycocotools, whose ``iou`` against masks marked crowd is the intersection over the first mask's area)."""
    rles = candidates.rles(image_hw)
    labels = candidates.labels.cpu().numpy()
    areas = candidates.areas.cpu().numpy().astype(np.float64)
    seen_in: dict[int, list[int]] = {}
    for node, seen in enumerate(candidates.tiles):
        for tile in seen:
            seen_in.setdefault(tile, []).append(node)
    pairs: dict[tuple[int, int], int] = {}
    tile_pairs = [(tile, tile) for tile in sorted(seen_in)] + neighbour_pairs(tiles)
    for a, b in tile_pairs:
        if a not in seen_in or b not in seen_in:
            continue
        for label in np.intersect1d(labels[seen_in[a]], labels[seen_in[b]]):
            first = [node for node in seen_in[a] if labels[node] == label]
            second = [node for node in seen_in[b] if labels[node] == label]
            fractions = np.asarray(mask_utils.iou([rles[i] for i in first], [rles[j] for j in second],
                                                  [1] * len(second)), dtype=np.float64).reshape(len(first), -1)
            for i, j in zip(*np.nonzero(fractions)):
                node_i, node_j = first[i], second[j]
                if node_i != node_j:
                    count = int(round(fractions[i, j] * areas[node_i]))  # exact: far below 2**52
                    pairs[(node_i, node_j)] = pairs[(node_j, node_i)] = count
    device = candidates.labels.device
    if not pairs:
        none = torch.zeros(0, dtype=torch.long, device=device)
        return none, none.clone(), none.clone()
    keys = torch.tensor(list(pairs), dtype=torch.long, device=device)
    return keys[:, 0], keys[:, 1], torch.tensor(list(pairs.values()), dtype=torch.long, device=device)


def sparse_soft_merge(rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, candidates: Candidates
                      ) -> torch.Tensor:
    """:func:`labeler.method.scoring.soft_merge` on the sparse intersections of candidates in rank order."""
    higher = cols < rows
    rows, cols, counts = rows[higher], cols[higher], counts[higher]
    overlap = (counts.double() / candidates.areas.double().clamp_min(1.0)[rows]).float()
    cosine = (candidates.embeddings[rows] * candidates.embeddings[cols]).sum(dim=1).clamp_min(0.0)
    ios = torch.zeros_like(candidates.scores).scatter_reduce(0, rows, (overlap * cosine).to(candidates.scores.dtype),
                                                             reduce="amax", include_self=True)
    return candidates.scores * (1.0 - ios.clamp(0.0, 1.0)).sqrt()


def sparse_diffused_ios(rows: torch.Tensor, cols: torch.Tensor, counts: torch.Tensor, candidates: Candidates,
                        diffusion: Diffusion) -> torch.Tensor:
    """:func:`labeler.method.graph_diffusion.diffused_ios` on the sparse intersections of candidates in rank
    order (each class's walk with a sparse matrix; the same arithmetic, summed in another order)."""
    labels = candidates.labels
    result = torch.zeros(len(candidates), dtype=torch.float32, device=labels.device)
    higher = cols < rows
    rows, cols, counts = rows[higher], cols[higher], counts[higher]
    for label in torch.unique(labels).tolist():
        members = (labels == label).nonzero()[:, 0]
        size = members.shape[0]
        if size <= 1:
            continue
        local = torch.full((len(candidates),), -1, dtype=torch.long, device=labels.device)
        local[members] = torch.arange(size, device=labels.device)
        inside = local[rows] >= 0
        row, col = local[rows[inside]], local[cols[inside]]
        ios = counts[inside].float() / candidates.areas[members].float().clamp(min=1e-6)[row]
        personal = torch.zeros(size, device=labels.device).scatter_reduce(0, row, ios, reduce="amax")
        walk = torch.sparse_coo_tensor(torch.stack([row, col]), ios, (size, size), check_invariants=True).coalesce()
        pi = torch.ones(size, dtype=torch.float32, device=labels.device) / size
        for _ in range(diffusion.steps):
            previous = pi
            pi = diffusion.alpha * torch.sparse.mm(walk, pi[:, None])[:, 0] + (1 - diffusion.alpha) * personal
            if torch.norm(pi - previous) < diffusion.tol:
                break
        result[members] = pi
    return result


def merge_tiles(
    placed: list[Candidates], tiles: list[Box], image_hw: tuple[int, int], max_dets: int,
    min_score: float | torch.Tensor = 0.0, diffusion: Diffusion | None = None,
    join_iou: float = defaults.TILE_JOIN_IOU,
) -> ChosenDetections:
    """The image's detections from its tiles' :func:`place_ranked` candidates (module doc, steps 2-3):
    joined across tiles, put in rank order, soft merged (or rescored by ``diffusion``), the best ``max_dets``
    above ``min_score`` (one threshold, or one per class row)."""
    candidates = join_across_tiles(Candidates.concat(placed), tiles, image_hw, join_iou)
    candidates = candidates.take(torch.argsort(candidates.iou, descending=True, stable=True))
    rows, cols, counts = sparse_intersections(candidates, tiles, image_hw)
    if diffusion is None:
        merged = sparse_soft_merge(rows, cols, counts, candidates)
    else:
        merged = diffused_scores(candidates.scores,
                                 sparse_diffused_ios(rows, cols, counts, candidates, diffusion), diffusion.lamb)
    labels = candidates.labels
    order = select_detections(merged, max_dets, min_score[labels] if isinstance(min_score, torch.Tensor) else min_score)
    picked = order.tolist()
    return ChosenDetections(
        index=candidates.index[order], labels=labels[order], scores=merged[order].clamp(0.0, 1.0),
        boxes=candidates.boxes[order], areas=candidates.areas[order],
        rle=pa.array([candidates.strings[i] for i in picked], type=pa.string()),
    )
