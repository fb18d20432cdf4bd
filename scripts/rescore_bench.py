"""What keeping proposals costs in storage, and what rescoring costs per image on one CPU core.

    .venv/bin/python scripts/rescore_bench.py [--images 8] [--proposals 800] [--size 864 1152] [--classes 3]
                                              [--dim 1024] [--json FILE]

Each image: ``--proposals`` SAM-like proposals on the 256 x 256 grid (``labeler.synthetic.proposal_logits``,
the bench's pinned default), packed as the hand-off packs them, with ``--dim`` mask embeddings made from
random features on the grid (as DINOv2-L's 1024-d features are embedded); stored as ``labeler run
--keep-proposals`` stores them (one row per image, Parquet with zstd), in float32 and float16. Then each
stored image is rescored as ``labeler rescore``'s actor does it (unpack, classify against ``--classes``
random prototypes, class-aware NMS, full-size masks and soft merging, the best 100), one thread, on the CPU.
Prints one JSON document: bytes per image and per million images, and milliseconds per image.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import time

import pyarrow.parquet as pq
import torch
import torch.nn.functional as F

from labeler.actors.bank_scoring import ReceivedProposals, detections_from_choice
from labeler.io.kept_proposals import KeptProposals, embeddings_tensor, kept_of_row, kept_table, with_footer
from labeler.io.proposal_payload import encode_proposals
from labeler.method import defaults
from labeler.method.detections import embed_on_grid, merge_and_select
from labeler.method.scoring import rank_embedded
from labeler.synthetic import proposal_logits


def stored_images(count: int, proposals: int, image_hw: tuple[int, int], dim: int) -> list[KeptProposals]:
    images = []
    for seed in range(count):
        generator = torch.Generator().manual_seed(seed)
        logits = proposal_logits(proposals, (256, 256), seed)
        iou = 0.4 + 0.6 * torch.rand(proposals, generator=generator)
        features = torch.randn(37, 37, dim, generator=generator)
        embeddings = embed_on_grid(logits > 0, features)
        images.append(KeptProposals(encode_proposals(logits, iou, image_hw), embeddings.numpy()))
    return images


def stored_bytes(images: list[KeptProposals], dtype: str, dim: int) -> tuple[int, bytes]:
    table = with_footer(kept_table(list(range(len(images))), images, dtype),
                        {"embedding_dtype": dtype, "embedding_dim": dim, "encoder": "bench", "sam2": "bench"})
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return len(buffer.getvalue()), buffer.getvalue()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--proposals", type=int, default=800)
    parser.add_argument("--size", type=int, nargs=2, default=[864, 1152], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--classes", type=int, default=3)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--json", help="also write the result to this file")
    args = parser.parse_args()
    torch.set_num_threads(1)
    image_hw = tuple(args.size)
    images = stored_images(args.images, args.proposals, image_hw, args.dim)
    result = {"images": args.images, "proposals": args.proposals, "image_hw": list(image_hw), "dim": args.dim,
              "classes": args.classes, "threads": 1}
    for dtype in ("float32", "float16"):
        size, data = stored_bytes(images, dtype, args.dim)
        result[f"bytes_per_image_{dtype}"] = round(size / args.images)
        result[f"tb_per_million_images_{dtype}"] = round(size / args.images * 1e6 / 1e12, 3)
        if dtype == "float32":
            rows = pq.read_table(io.BytesIO(data)).to_pylist()
    prototypes = F.normalize(torch.randn(args.classes, args.dim, generator=torch.Generator().manual_seed(99)), dim=1)
    times, ranked_counts = [], []
    for row in rows:
        started = time.perf_counter()
        kept = kept_of_row(row, "float32", args.dim)
        proposals = ReceivedProposals.unpack(kept.payload, image_hw, torch.device("cpu"))
        ranked = rank_embedded(proposals.masks, proposals.iou, embeddings_tensor(kept, "cpu"), prototypes)
        chosen = merge_and_select(ranked, proposals.logits, image_hw, defaults.MAX_DETS, 0.0)
        detections_from_choice(chosen, torch.arange(args.classes).numpy())
        times.append(time.perf_counter() - started)
        ranked_counts.append(int(ranked.index.shape[0]))
    per_image = statistics.median(times)
    result["ranked_proposals_per_image"] = statistics.median(ranked_counts)
    result["rescore_ms_per_image_one_core"] = round(per_image * 1000, 1)
    result["cpu_core_hours_per_10k_images"] = round(per_image * 10_000 / 3600, 2)
    print(json.dumps(result))
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
