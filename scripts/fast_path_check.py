"""Each fast path of the model stages against the plain fp32 path, on one device, at the real model sizes;
one JSON row per check, for docs/PERFORMANCE.md's equivalence table.

    python scripts/fast_path_check.py [--device cuda] [--sam2 random:l] [--prompts 256] [--proposals 800]
                                      [--size 864 1152] [--json FILE]

Random weights make SAM2's masks salt-and-pepper noise, on which a mask comparison says little, and cost
seconds per image to score; so the decoder checks compare logits and predicted IoUs prompt by prompt, and
the scoring checks run on pinned SAM-like proposals (``labeler.synthetic.proposal_logits``):

* ``decoder_fp32``: the proposal decoder (``labeler.models.sam2_decoder``) against SAM2's own decoder, both
  fp32: largest logit and IoU gaps over every prompt (none filtered).
* ``decoder_bf16``: each decoder held in bf16 against SAM2's fp32 decoder: largest logit gap, the share of
  low-res mask pixels whose sign differs, and how many prompts change side of ``pred_iou_thr`` 0.4.
* ``decoder_bf16_compiled``: the compiled bf16 proposal decoder against the eager one.
* ``scoring_dense``: the dense full-size-mask path against the RLE path on the device (labels, scores, boxes,
  areas, RLE strings must be identical; the overlaps ``torch.equal``).
* ``rle_device``: packing and parsing COCO RLE on the device against pycocotools' strings.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from pycocotools import mask as mask_utils

from labeler.bench.equivalence import sam2_reference_proposals
from labeler.devices import resolve_device
from labeler.io.rle import pack_masks, unpack_masks
from labeler.method import defaults
from labeler.method import full_size_masks as fsm
from labeler.method.proposals import point_grid
from labeler.method.scoring import RankedProposals
from labeler.models import load_sam2
from labeler.models.sam2_decoder import ProposalDecoder
from labeler.models.sam2_inference import encode_images, point_proposals
from labeler.models.speedups import Speedups, compile_sam2, decoder_in_dtype
from labeler.synthetic import proposal_logits


def gaps(fast, plain) -> dict:
    (logits, iou), (plain_logits, plain_iou) = fast[0], plain[0]
    threshold = defaults.PRED_IOU_THR
    return {
        "prompts": int(plain_logits.shape[0]),
        "max_logit_gap": float((logits - plain_logits).abs().max()),
        "max_iou_gap": float((iou - plain_iou).abs().max()),
        "mask_pixels_of_other_sign": float(((logits > 0) != (plain_logits > 0)).float().mean()),
        "prompts_across_pred_iou_thr": int(((iou > threshold) != (plain_iou > threshold)).sum()),
    }


def decoder_checks(sam2: str, device: torch.device, prompts: int) -> list[dict]:
    plain = load_sam2(sam2, device)
    size = int(plain.image_size)
    pixels = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    features = encode_images(plain, pixels)
    points = [point_grid(defaults.POINTS_PER_SIDE, size)[:prompts].to(device)]
    reference = sam2_reference_proposals(plain, features, points, -1.0)
    rows = [{"check": "decoder_fp32", **gaps(point_proposals(ProposalDecoder(plain), features, points, prompts, -1.0),
                                             reference)}]
    half = load_sam2(sam2, device)
    decoder_in_dtype(half, Speedups("bf16", False))
    rows.append({"check": "decoder_bf16 (SAM2's own)", **gaps(sam2_reference_proposals(half, features, points, -1.0),
                                                            reference)})
    lean = ProposalDecoder(half)
    eager = point_proposals(lean, features, points, prompts, -1.0)
    rows.append({"check": "decoder_bf16 (proposal decoder)", **gaps(eager, reference)})
    compile_sam2(half, lean)
    started = time.perf_counter()
    compiled = point_proposals(lean, features, points, prompts, -1.0, fixed_batch=True)
    rows.append({"check": "decoder_bf16_compiled vs eager bf16", **gaps(compiled, eager),
                 "compile_seconds": round(time.perf_counter() - started, 1)})
    return rows


def scoring_check(device: torch.device, proposals: int, image_hw: tuple[int, int]) -> dict:
    generator = torch.Generator().manual_seed(proposals)
    logits = proposal_logits(proposals, (256, 256), proposals, device=device)
    owner = torch.randint(0, 48, (proposals,), generator=generator)
    embeddings = F.normalize(torch.randn(48, 64, generator=generator)[owner] + 0.3 * torch.randn(proposals, 64,
                             generator=generator), dim=1)
    labels = (owner % 3).to(device)
    dense = fsm.dense_full_size_masks(logits, labels, image_hw)
    rle = fsm.rle_full_size_masks(logits, labels, image_hw)
    ranked = RankedProposals(torch.arange(proposals, device=device), labels,
                             (0.3 + 0.6 * torch.rand(proposals, generator=generator)).to(device), embeddings.to(device))
    from labeler.method.detections import merge_and_select

    chosen = [merge_and_select(ranked, logits, image_hw, defaults.MAX_DETS, 0.0, overlaps=path) for path in ("dense", "rle")]
    same = all(torch.equal(getattr(chosen[0], name), getattr(chosen[1], name))
               for name in ("index", "labels", "scores", "boxes", "areas"))
    return {"check": "scoring_dense vs rle", "proposals": proposals, "image_hw": list(image_hw),
            "overlaps_equal": bool(torch.equal(dense.overlap, rle.overlap)),
            "detections_identical": bool(same and chosen[0].rle.to_pylist() == chosen[1].rle.to_pylist())}


def rle_check(device: torch.device) -> dict:
    masks = proposal_logits(200, (256, 256), 7, device=device) > 0
    masks[0] = False
    masks[1, -1, -1] = True
    reference = mask_utils.encode(np.asfortranarray(masks.cpu().numpy().transpose(1, 2, 0).astype(np.uint8)))
    packed = pack_masks(masks)
    return {"check": "rle_device vs pycocotools", "masks": 200,
            "strings_equal": packed.strings().to_pylist() == [r["counts"].decode() for r in reference],
            "round_trip_equal": bool(torch.equal(unpack_masks(packed, device), masks))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto")
    parser.add_argument("--sam2", default="random:l")
    parser.add_argument("--prompts", type=int, default=defaults.POINTS_PER_BATCH)
    parser.add_argument("--proposals", type=int, default=800)
    parser.add_argument("--size", type=int, nargs=2, default=[864, 1152], metavar=("HEIGHT", "WIDTH"))
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    device = resolve_device(args.device)
    rows = []
    for row in [*decoder_checks(args.sam2, device, args.prompts), scoring_check(device, args.proposals, tuple(args.size)),
                rle_check(device)]:
        row["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(json.dumps(row), flush=True)
        rows.append(row)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(rows, handle, indent=1)


if __name__ == "__main__":
    main()
