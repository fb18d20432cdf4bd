"""Host work of the scoring actor per image, as a GPU node runs it, measured on the CPU.

    .venv/bin/python scripts/scoring_bench.py [--ranked 100 300 800] [--classes 1 3] [--size 864 1152]
                                              [--threads 1] [--repeats 3] [--json FILE]

For each number of ranked proposals and of classes, on SAM-like proposals
(:func:`labeler.synthetic.proposal_logits` on the 256 x 256 low-res grid) of a
``--size`` image, the steps of one image through the hand-off and the scorer:

* ``pack``: the SAM2 actor packs the proposals for the hand-off;
* ``unpack``: the scoring actor unpacks them (``Dinov2Scorer.received``'s work);
* ``rank``: mask embeddings, classes, class-aware NMS on the low-res grid (1024-d features);
* ``select``: full-size masks, overlaps, soft merging, the best 100 with their RLE, by the ``dense`` path
  (GPUs) with a GPU's chunk size, and by the ``rle`` path (the CPU's) for comparison.

Each step is profiled (``labeler.bench.stage_timing.host_split``): ``host_ms`` is its time outside torch
operators (Python, numpy, Arrow: what a GPU node's CPU still does) and ``ops`` the torch operators it
launches (each a few microseconds of launch on a GPU, not counted in ``host_ms``). ``wall_ms`` is this
CPU's whole time, tensor work included. The two ``select`` paths must give identical detections.
Run with ``MALLOC_MMAP_THRESHOLD_=17179869184 MALLOC_TRIM_THRESHOLD_=17179869184`` so that releasing large
CPU tensors, which a GPU's caching allocator never pays, stays out of the host time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

from labeler.bench.stage_timing import StageClock, host_split
from labeler.io.proposal_payload import decode_proposals, encode_proposals
from labeler.method import full_size_masks
from labeler.method.detections import embed_on_grid, merge_and_select
from labeler.method.scoring import RankedProposals, rank_embedded
from labeler.synthetic import proposal_logits

LOW_RES = (256, 256)
FEATURE_GRID, FEATURE_DIM = 37, 1024


def image_inputs(ranked: int, classes: int, seed: int):
    """SAM-like logits and predicted IoUs, DINOv2-sized features, prototypes, and a ranking of all proposals."""
    generator = torch.Generator().manual_seed(seed)
    logits = proposal_logits(ranked, LOW_RES, seed)
    iou = 0.4 + 0.6 * torch.rand(ranked, generator=generator)
    features = torch.randn(FEATURE_GRID, FEATURE_GRID, FEATURE_DIM, generator=generator)
    prototypes = F.normalize(torch.randn(classes, FEATURE_DIM, generator=generator), dim=1)
    regions = max(1, ranked // 12)
    owner = torch.randint(0, regions, (ranked,), generator=generator)
    embeddings = F.normalize(F.normalize(torch.randn(regions, 64, generator=generator), dim=1)[owner]
                             + 0.3 * torch.randn(ranked, 64, generator=generator), dim=1)
    ranking = RankedProposals(index=torch.arange(ranked), labels=owner % classes,
                              scores=0.3 + 0.6 * torch.rand(ranked, generator=generator), embeddings=embeddings)
    return logits, iou, features, prototypes, ranking


def measure(ranked: int, classes: int, image_hw: tuple[int, int], repeats: int) -> dict:
    logits, iou, features, prototypes, ranking = image_inputs(ranked, classes, seed=ranked + classes)
    outputs = {}

    def steps(clock: StageClock) -> None:
        with clock.stage("pack"):
            payload = encode_proposals(logits, iou, image_hw)
        with clock.stage("unpack"):
            masks, received_logits = decode_proposals(payload, "cpu")
        with clock.stage("rank"):
            rank_embedded(masks, iou, embed_on_grid(masks, features), prototypes, nms_thr=0.5, max_dets=100)
        with clock.stage("select_dense"):
            outputs["dense"] = merge_and_select(ranking, received_logits, image_hw, 100, 0.0, overlaps="dense")
        with clock.stage("select_rle"):
            outputs["rle"] = merge_and_select(ranking, received_logits, image_hw, 100, 0.0, overlaps="rle")

    steps(StageClock(torch.device("cpu")))  # warm-up
    walls = []
    for _ in range(repeats):
        clock = StageClock(torch.device("cpu"))
        steps(clock)
        walls.append(dict(clock.seconds))
    splits = [host_split(lambda: steps(StageClock(torch.device("cpu")))) for _ in range(repeats)]
    dense, rle = outputs["dense"], outputs["rle"]
    same = all(torch.equal(getattr(dense, name), getattr(rle, name)) for name in ("index", "labels", "scores", "boxes", "areas"))
    row = {"ranked": ranked, "classes": classes, "image_hw": list(image_hw), "threads": torch.get_num_threads(),
           "identical_detections": same and dense.rle.to_pylist() == rle.rle.to_pylist()}
    for name in walls[0]:
        row[name] = {
            "wall_ms": round(statistics.median(w[name] for w in walls) * 1000, 2),
            "host_ms": round(statistics.median(s[name].host_ms for s in splits), 2),
            "ops": splits[0][name].operators,
        }
    gpu_steps = ("unpack", "rank", "select_dense")
    row["scorer_host_ms"] = round(sum(row[name]["host_ms"] for name in gpu_steps), 2)
    row["scorer_ops"] = sum(row[name]["ops"] for name in gpu_steps)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranked", type=int, nargs="+", default=[100, 300, 800])
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--size", type=int, nargs=2, default=[864, 1152], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", help="also write every row to this file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    # The dense path as a GPU runs it: its chunks of 2**26 pixels, not the CPU's 2**23.
    full_size_masks.UPSAMPLE_PIXELS_PER_CHUNK["cpu"] = full_size_masks.UPSAMPLE_PIXELS_PER_CHUNK["cuda"]
    rows = []
    for classes in args.classes:
        for ranked in args.ranked:
            started = time.perf_counter()
            rows.append(measure(ranked, classes, tuple(args.size), args.repeats))
            rows[-1]["bench_seconds"] = round(time.perf_counter() - started, 1)
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
