"""What ``labeler export --format yolo --simplify T`` costs in mask fidelity, and saves in vertices.

    .venv/bin/python scripts/polygon_simplify_bench.py [--tolerances 0 0.5 1 2 4] [--masks 200]

Two kinds of masks at the size of real photos (1152 x 864):

* ``sam-like``: the shapes SAM2 returns: smooth blobs, made as SAM2 makes its
  masks, low-res logits (a few smoothed random bumps on a 256 x 256 grid)
  upsampled bilinearly and thresholded at 0;
* ``shapes``: the generated data set's discs, squares, triangles and stars,
  drawn 3.6 times larger than in the tests.

For each tolerance, each mask goes through the export's path
(:func:`labeler.export.training_sets.mask_to_polygon`, then Ultralytics' rasterisation
:func:`labeler.export.training_sets.polygon_to_mask`), and the IoU with the mask is taken.
Prints one JSON line per (kind, tolerance): vertices per polygon (mean and
max), IoU (mean, 1st percentile, min) and the IoU lost against tolerance 0.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch
import torch.nn.functional as F

from labeler.export.training_sets import mask_to_polygon, polygon_to_mask
from labeler.synthetic import SHAPE_CLASSES, outline

SIZE = (864, 1152)  # height, width


def sam_like_masks(count: int, seed: int) -> list[np.ndarray]:
    generator = torch.Generator().manual_seed(seed)
    masks = []
    yy, xx = torch.meshgrid(torch.arange(256.0), torch.arange(256.0), indexing="ij")
    while len(masks) < count:
        centre = torch.rand(2, generator=generator) * 160 + 48
        logits = torch.full((256, 256), -1.0)
        for _ in range(int(torch.randint(1, 5, (1,), generator=generator))):
            offset = centre + (torch.rand(2, generator=generator) - 0.5) * 40
            radius = torch.rand(2, generator=generator) * 30 + 8
            logits = torch.maximum(logits, 1 - ((yy - offset[0]) / radius[0]) ** 2 - ((xx - offset[1]) / radius[1]) ** 2)
        logits = logits + 0.15 * torch.randn(256, 256, generator=generator)
        logits = F.avg_pool2d(logits[None, None], 5, 1, 2)
        full = F.interpolate(logits, size=SIZE, mode="bilinear", align_corners=False)[0, 0]
        mask = (full > 0).numpy().astype(np.uint8)
        if mask.sum() > 400:
            masks.append(mask)
    return masks


def shape_masks(count: int, seed: int) -> list[np.ndarray]:
    import cv2

    rng = np.random.default_rng(seed)
    masks = []
    for k in range(count):
        kind = SHAPE_CLASSES[k % len(SHAPE_CLASSES)]
        cx, cy = rng.uniform([200, 200], [SIZE[1] - 200, SIZE[0] - 200])
        polygon = outline(kind.name, cx, cy, rng.uniform(60, 180), rng.uniform(0, 2 * np.pi))
        mask = np.zeros(SIZE, np.uint8)
        cv2.fillPoly(mask, [np.round(np.asarray(polygon)).astype(np.int32)], 1)
        masks.append(mask)
    return masks


def iou(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(bool), b.astype(bool)
    return float((a & b).sum() / (a | b).sum())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tolerances", type=float, nargs="+", default=[0.0, 0.5, 1.0, 2.0, 4.0])
    parser.add_argument("--masks", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for kind, masks in (("sam-like", sam_like_masks(args.masks, args.seed)),
                        ("shapes", shape_masks(args.masks, args.seed))):
        exact = None
        for tolerance in args.tolerances:
            vertices, ious = [], []
            for mask in masks:
                polygon = mask_to_polygon(mask, tolerance)
                vertices.append(len(polygon))
                ious.append(iou(polygon_to_mask(polygon, *SIZE), mask))
            mean_iou = float(np.mean(ious))
            exact = mean_iou if exact is None else exact
            print(json.dumps({
                "masks": kind, "tolerance_px": tolerance, "vertices_mean": round(float(np.mean(vertices)), 1),
                "vertices_max": int(np.max(vertices)), "iou_mean": round(mean_iou, 5),
                "iou_p01": round(float(np.percentile(ious, 1)), 5), "iou_min": round(float(np.min(ious)), 5),
                "iou_lost_vs_exact": round(exact - mean_iou, 5),
            }))


if __name__ == "__main__":
    main()
