"""Cost per image of soft merging on full-size masks (the reference's way, the default)
against merging on the 256 x 256 low-res masks (labeler before it matched the reference).

    .venv/bin/python scripts/soft_merge_bench.py [--kept 100 300 800] [--size 864 1152] [--device cpu]

Proposals are SAM-like: ellipses around a few objects (wholes, parts and
near-duplicates), as logits on the 256 x 256 grid, ranked and labelled with
a few classes. Both paths end with the same output: the 100 best detections
with masks at the image's size, boxes, areas and RLE.

* ``low-res``: overlaps of the 256 x 256 masks (dense product), soft merging,
  then full-size masks of the 100 chosen only.
* ``full-size``: :func:`labeler.method.detections.merge_and_select`:
  full-size masks of every ranked proposal, made once as RLE, overlaps on the
  RLEs with pycocotools, soft merging, the 100 best.

Prints one JSON line per setting: median milliseconds of each path over
``--repeats`` runs, and how many of the 100 detections differ.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from labeler.method.detections import full_size_masks, merge_and_select
from labeler.method.mask_overlaps import overlap_fractions
from labeler.method.scoring import RankedProposals, select_detections, soft_merge


def sam_like_proposals(kept: int, classes: int, seed: int, grid: int = 256) -> tuple[RankedProposals, torch.Tensor]:
    """Ranked proposals and their ``[kept, grid, grid]`` logits."""
    generator = torch.Generator().manual_seed(seed)
    objects = torch.rand(max(1, kept // 12), 2, generator=generator) * grid
    owner = torch.randint(0, objects.shape[0], (kept,), generator=generator)
    centres = objects[owner] + torch.randn(kept, 2, generator=generator) * 6
    radii = 4 + torch.rand(kept, 2, generator=generator) * 40
    ys, xs = torch.meshgrid(torch.arange(grid).float(), torch.arange(grid).float(), indexing="ij")
    distance = ((xs[None] - centres[:, 0, None, None]) / radii[:, 0, None, None]) ** 2 \
        + ((ys[None] - centres[:, 1, None, None]) / radii[:, 1, None, None]) ** 2
    logits = 8 * (1 - distance).clamp(-4, 4)
    noise = torch.randn(kept, 64, generator=generator)
    embeddings = F.normalize(F.normalize(torch.randn(objects.shape[0], 64, generator=generator), dim=1)[owner]
                             + 0.3 * noise, dim=1)
    ranked = RankedProposals(index=torch.arange(kept), labels=owner % classes,
                             scores=0.3 + 0.6 * torch.rand(kept, generator=generator), embeddings=embeddings)
    return ranked, logits


def low_res_path(ranked: RankedProposals, logits: torch.Tensor, image_hw: tuple[int, int],
                 max_dets: int) -> torch.Tensor:
    overlap = overlap_fractions(logits > 0, ranked.labels)
    merged = soft_merge(overlap, ranked.embeddings, ranked.labels, ranked.scores)
    order = select_detections(merged, max_dets)
    full_size_masks(logits[order], image_hw)
    return ranked.index[order]


def timed(function, repeats: int) -> tuple[float, object]:
    times, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kept", type=int, nargs="+", default=[100, 300, 800])
    parser.add_argument("--size", type=int, nargs=2, default=[864, 1152], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    image_hw = tuple(args.size)
    for kept in args.kept:
        ranked, logits = sam_like_proposals(kept, args.classes, seed=kept)
        ranked = RankedProposals(*(t.to(args.device) for t in (ranked.index, ranked.labels, ranked.scores,
                                                                 ranked.embeddings)))
        logits = logits.to(args.device)
        low_ms, low_index = timed(lambda: low_res_path(ranked, logits, image_hw, 100), args.repeats)
        full_ms, chosen = timed(lambda: merge_and_select(ranked, logits, image_hw, 100, 0.0), args.repeats)
        overlap_ms, _ = timed(lambda: overlap_fractions(logits > 0, ranked.labels), args.repeats)
        masks_ms, _ = timed(lambda: full_size_masks(logits, image_hw), args.repeats)
        differing = len(set(low_index.tolist()) - set(chosen.index.tolist()))
        print(json.dumps({
            "kept": kept, "image_hw": list(image_hw), "device": args.device,
            "low_res_ms": round(low_ms, 1), "full_size_ms": round(full_ms, 1),
            "low_res_overlaps_ms": round(overlap_ms, 1), "full_size_masks_rle_ms": round(masks_ms, 1),
            "detections": len(chosen.index), "detections_only_in_low_res": differing,
        }))


if __name__ == "__main__":
    main()
